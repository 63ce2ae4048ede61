"""`vaegen generate --recipe-only`: a dataset as its manifest alone, without parts.

Every row is a pure function of (model version, dataset seed, sample id) (contracts 1 and 2), so
a manifest that pins the version and the seed defines the rows of a dataset of any size in
kilobytes; readers regenerate them (`open_dataset(DIR).torch(source="decode")`). Such a manifest
means something new (a committed dataset with no files), so it carries its own format,
RECIPE_FORMAT, that no older vaegen mistakes for a stored dataset, and its folder its own name
(`<dataset id>-recipe`): generating the stored dataset of the same spec never finds it "up to date".
No Ray, no MLflow run: resolve, write one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobs.generate import manifest
from jobs.generate.config import GenerateConfig, GenerateResult, dataset_spec
from jobs.generate.records import Manifest
from jobs.generate.spec import DatasetSpec, spec_from_record
from jobs.generate.storage import Storage, storage_from_env
from vae_core.errors import UsageError

if TYPE_CHECKING:
    from registry.pinned import PinnedModel

RECIPE_FORMAT = "vaegen-recipe/1"  # a manifest without parts; its spec's own format says what parts would be
RECIPE_SUFFIX = "-recipe"


def is_recipe(record: Manifest) -> bool:
    return record.format == RECIPE_FORMAT


def recipe_id(spec: DatasetSpec) -> str:
    return spec.dataset_id + RECIPE_SUFFIX


def build(
    spec: DatasetSpec,
    model: dict[str, Any],
    tracking_uri: str,
    label_counts: dict[str, int] | None,
    redact_provenance: bool,
) -> Manifest:
    record = manifest.describe(
        spec, model, {"tracking_uri": tracking_uri, "run_id": None, "experiment": None}, label_counts
    )
    record.update(
        format=RECIPE_FORMAT,
        dataset_id=recipe_id(spec),
        recipe_only=True,
        timings={"started_at": manifest.utc_now(), "finished_at": manifest.utc_now(), "seconds": 0.0},
        execution={"device": "cpu"},
    )  # the reference bits: a CPU decodes them exactly
    return manifest.as_manifest(manifest.redacted(record) if redact_provenance else record)


def recipe_problems(record: Manifest) -> list[str]:
    """A recipe manifest is consistent: its spec names its folder, and it lists no files."""
    dataset_id = record.dataset_id
    if not dataset_id.endswith(RECIPE_SUFFIX):
        return [f"manifest: a recipe's dataset id ends in {RECIPE_SUFFIX!r}, got {dataset_id!r}"]
    try:
        spec = spec_from_record(
            {**record.to_json(), "dataset_id": dataset_id.removesuffix(RECIPE_SUFFIX)},
            dataset_id.removesuffix(RECIPE_SUFFIX),
        )
    except UsageError as error:
        return [f"manifest: {error}"]
    problems = [] if not record.files and record.total_bytes == 0 else ["manifest: a recipe lists no files"]
    if record.n != spec.n or record.dataset_seed != spec.seed:
        problems.append("manifest: n or dataset_seed disagree with its spec")
    return problems


def balanced_counts(spec: DatasetSpec) -> dict[str, int] | None:
    """Label counts without drawing a label: balanced labels cycle through the classes (contract 1b);
    prior labels would need every row's seed (minutes for 10**9 rows), so a recipe records none."""
    if spec.label_policy != "balanced":
        return None
    classes, n = spec.label_classes, spec.n
    return {
        str(label): n // len(classes) + (index < n % len(classes))
        for index, label in enumerate(classes)
        if n // len(classes) + (index < n % len(classes))
    }


def generate_recipe(
    config: GenerateConfig, log: Callable[[str], None], pinned: PinnedModel | None = None
) -> GenerateResult:
    from registry import models, tracking

    storage: Storage = storage_from_env(config.out)
    storage.check_writable()
    tracking.ensure_reachable()
    pinned = pinned or models.resolve(config.model)
    seed = secrets.randbits(32) if config.seed is None else config.seed
    spec = dataset_spec(config, pinned, models.version_config(pinned), seed)
    dataset_id = recipe_id(spec)
    log(
        f"model {pinned.name}/{pinned.version} (from {pinned.resolved_from}), recipe {dataset_id}, seed {seed}"
        + (" (random: pass --seed to reproduce)" if config.seed is None else "")
    )
    with contextlib.ExitStack() as guard:
        guard.enter_context(storage.writer_guard(dataset_id))
        if config.overwrite:
            storage.delete_dir(dataset_id)
        found = storage.read_json(dataset_id, manifest.MANIFEST)
        if found is not None:
            # compared before parsing: a recipe of other options (or unreadable ones) is "other options", as always
            if found.get("spec_fingerprint") != spec.fingerprint():
                raise UsageError(
                    f"recipe {storage.location(dataset_id)} is committed with other options; use the same "
                    "options, another --out, or --overwrite"
                )
            committed = Manifest.from_json(found, storage.location(dataset_id, manifest.MANIFEST))
            return GenerateResult(
                dataset_id, storage.location(dataset_id), "up-to-date", committed, config.seed is None
            )
        record = build(
            spec, dataclasses.asdict(pinned), tracking.shown_uri(), balanced_counts(spec), config.redact_provenance
        )
        storage.write_json(record.to_json(), dataset_id, manifest.MANIFEST)  # the commit, atomic, and the whole dataset
    return GenerateResult(dataset_id, storage.location(dataset_id), "recipe", record, config.seed is None)
