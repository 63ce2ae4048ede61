"""The generation job as a recipe: resolve once, plan, write shards on Ray, commit the manifest, log lineage.

Start-up: the reference is resolved first (a typo is reported before Ray starts); the rest of the
registry's work (the dataset's guard, what is on disk, reading the weights) runs on a helper thread
while this thread starts or joins Ray and the workers import torch. Ray's start stays on the calling
thread because the processes it spawns die with the thread that spawned them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs import metrics
from jobs.generate import card, croissant, engine, manifest, ray_session, verify
from jobs.generate.config import (  # noqa: F401 (GenerateConfig, GenerateResult, dataset_spec: re-exported)
    DEFAULT_MODEL,
    GenerateConfig,
    GenerateResult,
    dataset_spec,
)
from jobs.generate.parts import SIDECAR_DIR, PartInfo
from jobs.generate.pool import DRAIN_TIMEOUT_S, WorkerPool
from jobs.generate.records import Manifest, ProgressRecord
from jobs.generate.spec import FORMAT, DatasetSpec, spec_from_record
from jobs.generate.storage import Storage, split_location, storage_from_env
from vae_core import sampling
from vae_core.errors import BrokenVersion, UsageError, VaegenError
from vae_core.seeds import row_seeds

if TYPE_CHECKING:  # mlflow is imported on the registry thread, never at import time
    from registry.models import LoadedDecoder
    from registry.pinned import PinnedModel

LABEL_COUNT_CHUNK_ROWS = 1 << 20  # prior labels are re-derived on the driver in chunks this size


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the registry said: the pinned version and the dataset it defines, and what is already on disk."""

    pinned: PinnedModel
    spec: DatasetSpec
    seed_was_random: bool
    committed: Manifest | None  # the manifest when this dataset is committed and kept
    fresh: bool  # no unfinished run of this dataset to continue
    started_on: str | None = None  # the device of the unfinished run's workers, where its record says


def generate(
    config: GenerateConfig,
    log: Callable[[str], None] = lambda message: None,
    on_workers: Callable[[list[Any]], None] | None = None,
    pinned: PinnedModel | None = None,
) -> GenerateResult:
    """`pinned`: config.model already resolved by the caller (refresh), so the manifest records the alias it came
    from."""
    if config.recipe_only:
        from jobs.generate.recipe import generate_recipe

        return generate_recipe(config, log, pinned)
    storage, resume_id = _output(config)
    storage.check_writable()
    if os.environ.get("MLFLOW_TRACKING_URI"):  # a store that is not there is a usage error before Ray starts
        from registry import tracking

        tracking.check_store(os.environ["MLFLOW_TRACKING_URI"])
    # The guard is taken on the registry thread once the dataset id is known, and held to the end; the
    # thread pool is left first, so a plan still running after a failure here has let go of it too.
    with (
        contextlib.ExitStack() as guard,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="vaegen-registry") as registry_thread,
        contextlib.ExitStack() as workers,
    ):
        resolving = registry_thread.submit(_resolve, config, storage, resume_id, pinned)
        planned = registry_thread.submit(_plan, config, storage, resolving, guard)
        resolving.result()  # a wrong model reference is reported before Ray starts, not after (seconds)
        plan, pool = _start(config, storage, planned, workers, log, early=resume_id is None and config.n is not None)
        pinned, spec = plan.pinned, plan.spec
        dataset_id = spec.dataset_id
        log(
            f"model {pinned.name}/{pinned.version} (from {pinned.resolved_from}), "
            f"dataset {dataset_id}, seed {spec.seed}"
            + (" (random: pass --seed to reproduce)" if plan.seed_was_random else "")
        )
        if plan.committed is not None:
            return GenerateResult(
                dataset_id, storage.location(dataset_id), "up-to-date", plan.committed, plan.seed_was_random
            )
        if pool is None:
            pool = workers.enter_context(_worker_pool(config, spec.num_shards, storage, log))
        _check_device(plan, pool.placement.device, storage.location(dataset_id))
        if on_workers is not None:
            on_workers(pool.workers)
        record = _run(plan, registry_thread.submit(_load, pinned), storage, pool, log, config)
    status = "generated" if record.timings["shards_reused"] == 0 else "resumed"
    return GenerateResult(dataset_id, storage.location(dataset_id), status, record, plan.seed_was_random)


def _start(
    config: GenerateConfig,
    storage: Storage,
    planned: Future,
    workers: contextlib.ExitStack,
    log: Callable[[str], None],
    early: bool,
) -> tuple[Plan, WorkerPool | None]:
    """Start or join Ray, then wait for the plan. `early` (the shard count is known without the model: not a
    --resume): the workers start now and import torch while the registry thread takes the guard and reads the
    weights. A failure here leaves no workers (killed first on the way out), and no Ray that this job started."""
    started_ray = ray_session.connect()
    try:
        pool = None
        if early:
            pool = workers.enter_context(
                _worker_pool(config, math.ceil(config.n / config.rows_per_shard), storage, log)
            )
        return planned.result(), pool
    except BaseException:
        workers.close()
        if started_ray:  # nothing ran on it: leave no Ray behind a failed start
            ray_session.stop_local_ray()
        raise


def _check_device(plan: Plan, device: str, location: str) -> None:
    """One device's bits per dataset (docs/decisions.md): a resume decodes where the run it continues did."""
    if plan.started_on not in (None, device):
        raise UsageError(
            f"dataset {location} was started on {plan.started_on} workers and this run would decode on {device}: "
            f"CUDA and CPU decodes differ in the last bits; resume it with --device {plan.started_on}, or pass "
            "--overwrite to start it anew"
        )


def _worker_pool(config: GenerateConfig, num_shards: int, storage: Storage, log: Callable[[str], None]) -> WorkerPool:
    placement = engine.plan_placement(config.engine, num_shards, storage, log)
    return WorkerPool(storage, placement, config.engine.stall_timeout_s, config.engine.metrics)


def _resolve(
    config: GenerateConfig, storage: Storage, resume_id: str | None, resolved: PinnedModel | None
) -> tuple[PinnedModel, DatasetSpec, bool]:
    """Resolve the reference once and define the dataset: (pinned version, spec, whether the seed was drawn here)."""
    from registry import models, tracking

    tracking.ensure_reachable()
    if resume_id is not None:
        found = storage.read_json(resume_id, manifest.PROGRESS) or storage.read_json(resume_id, manifest.MANIFEST)
        if found is None:
            raise UsageError(f"--resume {config.resume}: no dataset in progress at {storage.location(resume_id)}")
        record = ProgressRecord.from_json(found)  # a committed manifest names its format, spec and model alike
        if record.format != FORMAT:
            raise UsageError(
                f"--resume {config.resume}: started by another vaegen version "
                f"(format {str(record.format)[:40]}, "
                f"this one writes {FORMAT}); finish it with that version, or generate it anew without --resume"
            )
        spec = spec_from_record(record.to_json(), resume_id)  # refused unless it names this folder and its model
        pinned, seed_was_random = models.PinnedModel(**record.model), False
        if config.n is not None and config.n != spec.n:
            raise UsageError(
                f"--resume {config.resume}: that dataset has n = {spec.n:,}, not --n {config.n:,}; "
                "drop --n to resume it as it is"
            )
    else:
        from registry import promotion

        # once: a promotion during the job changes nothing in it; an alias must hold what `vaegen promote` put there
        pinned = resolved or promotion.gate_alias(models.resolve(config.model), config.allow_ungated)
        seed_was_random = config.seed is None
        seed = secrets.randbits(32) if seed_was_random else config.seed
        spec = dataset_spec(config, pinned, models.version_config(pinned), seed)
    return pinned, spec, seed_was_random


def _plan(config: GenerateConfig, storage: Storage, resolving: Future, guard: contextlib.ExitStack) -> Plan:
    """The rest of the registry's part of the start-up: take the dataset's writer guard, look at what is on disk."""
    from registry import lineage

    pinned, spec, seed_was_random = resolving.result()
    dataset_id = spec.dataset_id
    guard.enter_context(
        storage.writer_guard(dataset_id)
    )  # one writer per dataset: a second run is refused, naming this one
    if config.overwrite:  # before parsing anything there: a corrupt manifest is what --overwrite repairs
        lineage.end_stale_run(manifest.recorded_run_id(storage, dataset_id))
        storage.delete_dir(dataset_id)
    found = storage.read_json(dataset_id, manifest.MANIFEST)
    if found is not None:
        committed = verify.ensure_intact(storage, dataset_id, found)  # one listing: a damaged one is not up to date
        if committed.spec_fingerprint != spec.fingerprint():
            raise UsageError(
                f"dataset {storage.location(dataset_id)} is committed with other options "
                f"(fingerprint {committed.spec_fingerprint}, this run {spec.fingerprint()}); "
                "use the same options, another --out, or --overwrite"
            )
        manifest.check_provenance(committed, config.redact_provenance, storage.location(dataset_id))
        return Plan(pinned, spec, seed_was_random, committed, fresh=False)
    found = storage.read_json(dataset_id, manifest.PROGRESS)
    in_progress = None if found is None else ProgressRecord.from_json(found)
    if in_progress is not None and in_progress.spec_fingerprint != spec.fingerprint():
        raise UsageError(
            f"an unfinished dataset with other options is at {storage.location(dataset_id)}; "
            f"rerun with its options (`--resume {dataset_id}`) or pass --overwrite"
        )
    if in_progress is not None:  # its job was killed (we hold the guard): its run would say RUNNING forever
        lineage.end_stale_run(manifest.recorded_run_id(storage, dataset_id))
    storage.check_free_space(dataset_id, spec.estimated_bytes)
    return Plan(
        pinned,
        spec,
        seed_was_random,
        None,
        fresh=in_progress is None,
        started_on=None if in_progress is None else in_progress.device,
    )


def _load(pinned: PinnedModel) -> LoadedDecoder:
    from registry import models

    return models.load_decoder(pinned)  # the weights, read once, here on the driver


def _run(
    plan: Plan,
    loading: Future,
    storage: Storage,
    pool: WorkerPool,
    log: Callable[[str], None],
    config: GenerateConfig,
) -> Manifest:
    """Write every shard, commit the manifest, log the lineage run; returns the manifest. From `config`: whether
    to leave provenance out, and whether to export metrics."""
    from registry import lineage, tracking

    spec, pinned, placement = plan.spec, plan.pinned, pool.placement
    dataset_id = spec.dataset_id
    started_at, started = manifest.utc_now(), time.perf_counter()
    # one count of rows, parts, retries and workers for the progress lines and the metrics
    labels = metrics.labels_of(dataset_id, pinned.name, pinned.version)
    monitor = metrics.JobMonitor(spec.n, f"generate {dataset_id}", labels, placement.num_workers, config.engine.metrics)
    try:
        log(
            f"{spec.num_shards} shards of {spec.rows_per_shard:,} rows on {placement} -> {storage.location(dataset_id)}"
        )
        loaded = loading.result()  # before anything is written: a refused version (registry.artifacts) leaves nothing
        _check_planned_shape(spec, pinned, loaded)
        with lineage.dataset_run(dataset_id, spec.fingerprint(), pinned, _run_params(spec, pinned, placement)) as run:
            parts = _write_parts(plan, loaded, storage, pool, run.run_id, config.redact_provenance, monitor)
            seconds = time.perf_counter() - started
            record = manifest.build(
                spec,
                dataclasses.asdict(pinned),
                parts,
                timings={
                    "started_at": started_at,
                    "finished_at": manifest.utc_now(),
                    "seconds": round(seconds, 3),
                    "rows_per_s": round(spec.n / seconds, 1),
                    "shards_reused": sum(part.reused for part in parts),
                },
                lineage={"tracking_uri": tracking.shown_uri(), "run_id": run.run_id, "experiment": run.experiment},
                execution=_execution(pool),
                label_counts=label_counts(spec),
                redact_provenance=config.redact_provenance,
            )
            _commit(storage, dataset_id, record, loaded.tags, run)
    except BrokenVersion:  # a broken version (NaN output, weights that do not fit) never completes this dataset
        if plan.fresh:  # so a fresh one leaves nothing, once no worker can still land a part in it
            pool.stop(let_finish_s=DRAIN_TIMEOUT_S)
            storage.delete_dir(dataset_id)
        raise
    finally:
        monitor.close()
    return record


def _write_parts(
    plan: Plan,
    loaded: LoadedDecoder,
    storage: Storage,
    pool: WorkerPool,
    run_id: str,
    redact_provenance: bool,
    monitor: metrics.JobMonitor,
) -> list[PartInfo]:
    """The progress record first (what a resume reads), then every shard, each part carrying the provenance."""
    from registry import tracking

    spec, model_record = plan.spec, dataclasses.asdict(plan.pinned)
    storage.write_json(
        manifest.progress_record(spec, model_record, run_id, pool.placement.device).to_json(),
        spec.dataset_id,
        manifest.PROGRESS,
    )
    registry = None if redact_provenance else tracking.shown_uri()
    provenance = manifest.provenance_metadata(manifest.recipe_digest(spec, model_record), model_record, registry)
    return pool.run(
        spec,
        loaded.config.to_dict(),
        loaded.state,
        range(spec.num_shards),
        lambda info: None,  # the monitor hears of every part, and the manifest counts the reused ones
        manifest.parquet_metadata(provenance),
        monitor,
    )


def _execution(pool: WorkerPool) -> dict[str, Any]:
    """Where the job ran, for the manifest: a growing pool's size at the end, and how many workers it added."""
    placement = pool.placement
    grown = {"workers_added": pool.added, "max_workers": placement.max_workers} if placement.max_workers else {}
    return {"device": placement.device, "num_workers": len(pool.workers), "nodes": placement.nodes, **grown}


def _run_params(spec: DatasetSpec, pinned: PinnedModel, placement: engine.Placement) -> dict[str, Any]:
    """The dataset run's MLflow parameters: the spec, the version and where it ran."""
    return {
        **{f"spec.{key}": value for key, value in spec.to_dict().items()},
        "model_uri": pinned.uri,
        "resolved_from": pinned.resolved_from,
        "num_workers": placement.num_workers,
        "device": placement.device,
    }


def _check_planned_shape(spec: DatasetSpec, pinned: PinnedModel, loaded: LoadedDecoder) -> None:
    """The spec was planned from the version's tags; the weights' own config must agree, or nothing is written."""
    planned_from = (spec.latent_dim, spec.sample_shape, spec.num_classes)
    if (loaded.config.latent_dim, tuple(loaded.config.input_shape), loaded.config.num_classes) != planned_from:
        raise VaegenError(
            f"{pinned.name}/{pinned.version} is refused: its vaegen.config tag (latent_dim, shape, "
            f"classes {planned_from}) disagrees with its config.json; register it with `vaegen train`"
        )


def _commit(storage: Storage, dataset_id: str, record: Manifest, version_tags: dict[str, str], run: Any) -> None:
    """Card and Croissant file, then the manifest (the commit: last, atomic), then the run's figures."""
    card.write(storage, dataset_id, record, card.from_version_tags(version_tags))
    croissant.write(storage, dataset_id, record)
    storage.write_json(record.to_json(), dataset_id, manifest.MANIFEST)
    _cleanup(storage, dataset_id)
    timings = record.timings
    run.log_metrics(
        {
            "seconds": timings["seconds"],
            "rows_per_s": timings["rows_per_s"],
            "total_bytes": record.total_bytes,
            "shards_reused": timings["shards_reused"],
        }
    )
    run.log_dataset(record.to_json(), storage.location(dataset_id))  # registry reads the JSON form


def _output(config: GenerateConfig) -> tuple[Storage, str | None]:
    """The output root, and the dataset id to resume if --resume names one (an id or a path/URI)."""
    if config.resume and "/" in config.resume.rstrip("/"):
        parent, dataset_id = split_location(config.resume)
        return Storage(parent), dataset_id
    return storage_from_env(config.out), config.resume


def label_counts(spec: DatasetSpec) -> dict[str, int] | None:
    if spec.label_policy is None:
        return None
    counts = np.zeros(spec.num_classes, dtype=np.int64)
    for start in range(0, spec.n, LABEL_COUNT_CHUNK_ROWS):
        ids = np.arange(start, min(start + LABEL_COUNT_CHUNK_ROWS, spec.n), dtype=np.int64)
        seeds = row_seeds(spec.seed, ids) if spec.label_policy == "prior" else None
        labels = sampling.labels_for(
            spec.label_policy, ids, seeds, spec.latent_dim, spec.label_classes, spec.class_prior
        )
        counts += np.bincount(labels, minlength=spec.num_classes)
    return {str(label): int(count) for label, count in enumerate(counts) if count}


def _cleanup(storage: Storage, dataset_id: str) -> None:
    """After the commit: sidecars and the progress record are superseded by the manifest."""
    for name in storage.list(dataset_id, SIDECAR_DIR):
        storage.delete(dataset_id, SIDECAR_DIR, name)
    storage.delete_dir(dataset_id, SIDECAR_DIR)
    storage.delete(dataset_id, manifest.PROGRESS)
    for name in storage.list(dataset_id):
        if name.startswith(".") and name.endswith(".tmp"):  # left by workers killed mid-write
            storage.delete(dataset_id, name)
