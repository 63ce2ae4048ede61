"""`_manifest.json`: the commit record of a dataset (contract 2), written last and atomically.

Also `_progress.json`, written first: the spec and pinned model of a dataset still being
written, so that `--resume` (or the same command again) continues exactly that dataset.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
from importlib import metadata
from typing import Any

import pyarrow as pa

from jobs.generate.parts import PartInfo, arrow_schema
from jobs.generate.spec import FORMAT, DatasetSpec
from jobs.generate.storage import CHECKSUM
from vae_core.seeds import SEED_SCHEME

MANIFEST = "_manifest.json"
PROGRESS = "_progress.json"


def vaegen_version() -> str:
    try:
        return metadata.version("vaegen")
    except metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def schema_description(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": field.name, "type": str(field.type)} for field in schema]


def progress_record(spec: DatasetSpec, model: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "dataset_id": spec.dataset_id, "spec": spec.to_dict(),
            "spec_fingerprint": spec.fingerprint(), "model": model, "started_at": utc_now()}


def build(
    spec: DatasetSpec,
    model: dict[str, Any],
    parts: list[PartInfo],
    timings: dict[str, Any],
    lineage: dict[str, Any],
    execution: dict[str, Any],
    label_counts: dict[str, int] | None,
) -> dict[str, Any]:
    parts = sorted(parts, key=lambda part: part.shard)
    assert [part.shard for part in parts] == list(range(spec.num_shards)), "every shard must be committed once"
    assert sum(part.rows for part in parts) == spec.n, "shard rows must add up to n"
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
        "vaegen_version": vaegen_version(),
    }
