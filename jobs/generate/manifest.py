"""`_manifest.json`: the commit record of a dataset (contract 2), written last and atomically.

Also `_progress.json`, written first: the spec and pinned model of a dataset still being
written, so that `--resume` (or the same command again) continues exactly that dataset, and
the MLflow run writing it, so that a rerun can end the run of a killed job.

Provenance (the user and host that made a dataset, the tracking URI, the model's artifact
location) is recorded by default: inside an organisation it says who to ask. A dataset meant
for publication is written with `redact_provenance`, which leaves those fields out.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
from importlib import metadata
from typing import TYPE_CHECKING, Any

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


PROVENANCE_REDACTED = "redacted"  # the manifest's `provenance` when names, hosts and locations were left out


def progress_record(spec: DatasetSpec, model: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    return {"format": FORMAT, "dataset_id": spec.dataset_id, "spec": spec.to_dict(),
            "spec_fingerprint": spec.fingerprint(), "model": model, "started_at": utc_now(), "run_id": run_id}


def redacted(record: dict[str, Any]) -> dict[str, Any]:
    """A manifest without provenance: no user or host, no tracking URI, no model artifact location.

    What regenerates and verifies the data stays: the spec, the model's name, version and run id,
    the files and their checksums, the MLflow run id of the dataset."""
    model = {**record["model"], "source": None}
    lineage = {**record["lineage"], "tracking_uri": None}
    return {**record, "model": model, "lineage": lineage, "created_by": None, "provenance": PROVENANCE_REDACTED}


def has_provenance(record: dict[str, Any]) -> bool:
    return record.get("provenance") != PROVENANCE_REDACTED


def check_provenance(committed: dict[str, Any], redact_provenance: bool, location: str) -> None:
    """A committed dataset is reused as it is: asking for less provenance than it records needs a rewrite."""
    if redact_provenance and has_provenance(committed):
        raise UsageError(f"dataset {location} is committed with provenance (user, host, locations); "
                         "--redact-provenance applies when a dataset is written: add --overwrite to rewrite it without")


def recorded_run_id(storage: Storage, dataset_id: str) -> str | None:
    """The MLflow run that an unfinished dataset's `_progress.json` names; None if none or unreadable."""
    try:
        record = storage.read_json(dataset_id, PROGRESS)
    except CorruptRecord:
        return None
    return None if record is None else record.get("run_id")


def build(
    spec: DatasetSpec,
    model: dict[str, Any],
    parts: list[PartInfo],
    timings: dict[str, Any],
    lineage: dict[str, Any],
    execution: dict[str, Any],
    label_counts: dict[str, int] | None,
    redact_provenance: bool = False,
) -> dict[str, Any]:
    from jobs.generate.parts import arrow_schema

    parts = sorted(parts, key=lambda part: part.shard)
    assert [part.shard for part in parts] == list(range(spec.num_shards)), "every shard must be committed once"
    assert sum(part.rows for part in parts) == spec.n, "shard rows must add up to n"
    record = {
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
        "labels": None if spec.label_policy is None else {
            "policy": spec.label_policy, "classes": list(spec.label_classes), "counts": label_counts},
        "spec": spec.to_dict(),
        "spec_fingerprint": spec.fingerprint(),
        "schema": schema_description(arrow_schema(spec)),
        "model": model,
        "checksum_algorithm": CHECKSUM,
        "files": [part.to_dict() for part in parts],
        "total_bytes": sum(part.size_bytes for part in parts),
        "timings": timings,
        "execution": execution,
        "lineage": lineage,
        "created_by": {"user": getpass.getuser(), "host": socket.gethostname()},
        "provenance": "recorded",
        "vaegen_version": vaegen_version(),
    }
    return redacted(record) if redact_provenance else record
