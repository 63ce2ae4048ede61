"""`_manifest.json`: the commit record of a dataset (contract 2), written last and atomically.

Also `_progress.json`, written first: the spec and pinned model of a dataset still being
written, so that `--resume` (or the same command again) continues exactly that dataset, and
the MLflow run writing it, so that a rerun can end the run of a killed job.

Provenance (the user and host that made a dataset, the tracking URI, the model's artifact
location) is recorded by default: inside an organisation it says who to ask. A dataset meant
for publication is written with `redact_provenance`, which leaves those fields out.

The records as typed values (Manifest, ProgressRecord), and their validation: jobs/generate/records.py.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import socket
from importlib import metadata
from typing import TYPE_CHECKING, Any

from jobs.generate.records import PROVENANCE_REDACTED, Manifest, ProgressRecord
from jobs.generate.spec import FORMAT, DatasetSpec
from jobs.generate.storage import CHECKSUM, CorruptRecord, Storage
from vae_core.errors import UsageError
from vae_core.seeds import SEED_SCHEME

if TYPE_CHECKING:  # parts imports the decoder (torch); `vaegen inspect` reads manifests without it
    import pyarrow as pa

    from jobs.generate.parts import PartInfo

MANIFEST = "_manifest.json"
PROGRESS = "_progress.json"
AUDIT = "_audit.json"  # the publish audit's verdict, beside the manifest (jobs/audit.py); written after the commit


def vaegen_version() -> str:
    try:
        return metadata.version("vaegen")
    except metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def schema_description(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": field.name, "type": str(field.type)} for field in schema]


def progress_record(
    spec: DatasetSpec, model: dict[str, Any], run_id: str | None = None, device: str | None = None
) -> ProgressRecord:
    """`device`: the workers' (cpu or cuda); a resume on the other one is refused, so that every part of a dataset
    comes from the device its manifest names."""
    record = {
        "format": FORMAT,
        "dataset_id": spec.dataset_id,
        "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(),
        "model": model,
        "started_at": utc_now(),
        "run_id": run_id,
        "device": device,
    }
    return ProgressRecord.from_json(record)


def redacted(record: dict[str, Any]) -> dict[str, Any]:
    """A manifest without provenance: no user or host, no tracking URI, no model artifact location.

    What regenerates and verifies the data stays: the spec, the model's name, version and run id,
    the files and their checksums, the MLflow run id of the dataset."""
    model = {**record["model"], "source": None}
    lineage = {**record["lineage"], "tracking_uri": None}
    return {**record, "model": model, "lineage": lineage, "created_by": None, "provenance": PROVENANCE_REDACTED}


def check_provenance(committed: Manifest, redact_provenance: bool, location: str) -> None:
    """A committed dataset is reused as it is: asking for less provenance than it records needs a rewrite."""
    if redact_provenance and committed.has_provenance:
        raise UsageError(
            f"dataset {location} is committed with provenance (user, host, locations); "
            "--redact-provenance applies when a dataset is written: add --overwrite to rewrite it without"
        )


def recorded_run_id(storage: Storage, dataset_id: str) -> str | None:
    """The MLflow run that an unfinished dataset's `_progress.json` names; None if none or unreadable."""
    try:
        record = storage.read_json(dataset_id, PROGRESS)
    except CorruptRecord:
        return None
    return None if record is None else ProgressRecord.from_json(record).valid_run_id


def build(
    spec: DatasetSpec,
    model: dict[str, Any],
    parts: list[PartInfo],
    timings: dict[str, Any],
    lineage: dict[str, Any],
    execution: dict[str, Any],
    label_counts: dict[str, int] | None,
    redact_provenance: bool = False,
) -> Manifest:
    parts = sorted(parts, key=lambda part: part.shard)
    assert [part.shard for part in parts] == list(range(spec.num_shards)), "every shard must be committed once"
    assert sum(part.rows for part in parts) == spec.n, "shard rows must add up to n"
    record = describe(spec, model, lineage, label_counts)
    record.update(
        files=[part.to_dict() for part in parts],
        total_bytes=sum(part.size_bytes for part in parts),
        timings=timings,
        execution=execution,
    )
    return as_manifest(redacted(record) if redact_provenance else record)


def as_manifest(record: dict[str, Any]) -> Manifest:
    """A record just built, as it will read back (tuples become lists), validated like a committed one."""
    return Manifest.from_json(json.loads(json_bytes(record)))


def describe(
    spec: DatasetSpec, model: dict[str, Any], lineage: dict[str, Any], label_counts: dict[str, int] | None
) -> dict[str, Any]:
    """The fields every manifest has, stored or recipe-only (jobs/generate/recipe.py), in their order."""
    from jobs.generate.parts import arrow_schema

    return {
        "format": FORMAT,
        "dataset_id": spec.dataset_id,
        "n": spec.n,
        "rows_per_shard": spec.rows_per_shard,
        "dataset_seed": spec.seed,
        "seed_scheme": SEED_SCHEME,
        "dtype": spec.dtype,
        "layout": spec.layout,
        "compression": spec.compression,
        "compression_level": spec.compression_level,
        "latent_dim": spec.latent_dim,
        "sample_shape": list(spec.sample_shape),
        "labels": None
        if spec.label_policy is None
        else {"policy": spec.label_policy, "classes": list(spec.label_classes), "counts": label_counts},
        "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(),
        "schema": schema_description(arrow_schema(spec)),
        "model": model,
        "recipe_digest": recipe_digest(spec, model),
        "checksum_algorithm": CHECKSUM,
        "files": [],
        "total_bytes": 0,
        "timings": {},
        "execution": {},
        "lineage": lineage,
        "created_by": {"user": getpass.getuser(), "host": socket.gethostname()},
        "provenance": "recorded",
        "vaegen_version": vaegen_version(),
    }


def recipe_digest(spec: DatasetSpec, model: dict[str, Any]) -> str:
    """sha256 of what defines every row (the spec and the pinned version), known before any part is written:
    the parts carry it, since they cannot carry the digest of the manifest that commits their checksums."""
    return _digest(spec.to_dict(), model)


def _digest(spec: dict[str, Any], model: dict[str, Any]) -> str:
    recipe = {"spec": spec, "model": {key: model[key] for key in ("name", "version", "run_id")}}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def manifest_digest(record: Manifest) -> str:
    """sha256 of `_manifest.json`'s bytes as Storage.write_json writes this record."""
    return hashlib.sha256(json_bytes(record.to_json())).hexdigest()


def json_bytes(record: dict[str, Any]) -> bytes:
    from jobs.generate.storage import json_bytes as encode

    return encode(record)


def provenance_metadata(digest: str, model: dict[str, Any], registry: str | None) -> dict[str, Any]:
    """What every part, the card and the Croissant file say about where the rows come from: AI-generated,
    by which registered model (registry None when provenance is redacted), with which seed scheme, and the
    recipe digest."""
    generator = {"model": model["name"], "version": model["version"], "run_id": model["run_id"], "registry": registry}
    return {"ai_generated": True, "generator": generator, "seed_scheme": SEED_SCHEME, "recipe_digest": digest}


def parquet_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """provenance_metadata as Parquet key-value metadata (strings; JSON for the generator)."""
    return {
        "ai_generated": "true",
        "vaegen.generator": json.dumps(provenance["generator"], sort_keys=True),
        "vaegen.seed_scheme": provenance["seed_scheme"],
        "vaegen.recipe_digest": provenance["recipe_digest"],
    }


def record_provenance(record: Manifest) -> dict[str, Any]:
    """provenance_metadata of a record about to be committed (or committed), plus the manifest's own digest."""
    registry = record.lineage.tracking_uri if record.has_provenance else None
    model = record.model.to_json()
    digest = record.recipe_digest or _digest(dict(record.spec), model)
    return {**provenance_metadata(digest, model, registry), "manifest_sha256": manifest_digest(record)}
