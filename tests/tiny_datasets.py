"""Small committed datasets written without Ray, as the job writes them (its PartWriter, card, Croissant file
and manifest), or as formats 1 and 2 wrote them: for the reader, metadata and README tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from jobs.generate import card, croissant, manifest
from jobs.generate.parts import (
    PartInfo,
    PartWriter,
    arrow_schema,
    parquet_writer,
    record_batch,
)
from jobs.generate.predictor import Predictor
from jobs.generate.records import Manifest
from jobs.generate.spec import DatasetSpec, part_name
from jobs.generate.storage import Storage
from vae_core.config import VAEConfig
from vae_core.model import Decoder
from vae_core.sampling import block_ranges

TINY_MODEL = {
    "name": "tiny",
    "version": 3,
    "run_id": "0123456789abcdef",
    "source": "models:/m-0123",
    "resolved_from": "tiny@champion",
    "alias": "champion",
}
TINY_LINEAGE = {"tracking_uri": "sqlite:///mlflow.db", "run_id": "fedcba9876543210", "experiment": "vaegen-datasets"}


def tiny_decoder(num_classes: int = 0) -> tuple[VAEConfig, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    config = VAEConfig(num_classes=num_classes, class_prior=(1 / num_classes,) * num_classes if num_classes else ())
    decoder = Decoder(config).eval()
    return config, {key: value.numpy().copy() for key, value in decoder.state_dict().items()}


def tiny_spec(**overrides: Any) -> DatasetSpec:
    fields = dict(
        model_name="tiny",
        model_version=3,
        n=1_000,
        seed=42,
        latent_dim=2,
        sample_shape=(8, 8),
        rows_per_shard=300,
        block_rows=128,
    )  # parts of 300 rows: row groups of 128, and shorter ones
    return DatasetSpec(**{**fields, **overrides})


def labelled_spec(**overrides: Any) -> DatasetSpec:
    return tiny_spec(
        num_classes=10, label_policy="balanced", label_classes=tuple(range(10)), class_prior=(0.1,) * 10, **overrides
    )


def rows_of(
    spec: DatasetSpec, config: VAEConfig, state: dict[str, np.ndarray], shard: int
) -> list[dict[str, np.ndarray]]:
    """Shard k's rows, one dict per decode block on the job's grid, as PartWriter decodes them."""
    predictor = Predictor(spec, config.to_dict(), state)
    start, stop = spec.shard_range(shard)
    blocks = []
    for block_start, block_stop in block_ranges(start, stop, spec.block_rows):
        rows = predictor({"sample_id": np.arange(block_start, block_stop, dtype=np.int64)})
        keep = slice(max(start, block_start) - block_start, min(stop, block_stop) - block_start)
        blocks.append({key: value[keep] for key, value in rows.items()})
    return blocks


def write_dataset(
    root: Path,
    spec: DatasetSpec,
    config: VAEConfig,
    state: dict[str, np.ndarray],
    version: int = 3,
    model: dict | None = None,
    lineage: dict | None = None,
    quality: card.Quality | None = None,
) -> Path:
    """A committed dataset written without Ray as vaegen's format `version` wrote it. Format 3: the job's
    PartWriter, card and manifest. Formats 1 and 2: the same rows with the old schema (x an Arrow
    fixed-shape tensor; byte-stream-split values in 2, plain in 1), a manifest of that format, no card."""
    storage = Storage(str(root))
    dataset_id = spec.dataset_id.removesuffix("-f3") + f"-f{version}"
    if version == 3:
        pinned = model or TINY_MODEL
        provenance = manifest.provenance_metadata(
            manifest.recipe_digest(spec, pinned), pinned, (lineage or TINY_LINEAGE)["tracking_uri"]
        )
        metadata = manifest.parquet_metadata(provenance)  # as the job's workers write it
        writer = PartWriter(Predictor(spec, config.to_dict(), state), storage, dataset_id, metadata)
        parts = [writer(shard) for shard in range(spec.num_shards)]
        storage.delete_dir(dataset_id, "_parts")
    else:
        schema = arrow_schema(spec, format_version=2)  # formats 1 and 2 share x's Arrow type
        parts = []
        for shard in range(spec.num_shards):
            with storage.atomic_writer(dataset_id, part_name(shard)) as stream:
                writer = (
                    parquet_writer(stream, schema, spec)
                    if version == 2
                    else pq.ParquetWriter(stream, schema, compression="zstd", use_dictionary=False)
                )
                with writer:
                    for block in rows_of(spec, config, state, shard):
                        writer.write_batch(record_batch(block, schema), row_group_size=spec.block_rows)
            start, stop = spec.shard_range(shard)
            parts.append(
                PartInfo(shard, part_name(shard), start, stop - start, stream.size_bytes, stream.digest.hexdigest())
            )
    label_counts = None
    if spec.label_policy:
        label_counts = {
            str(label): int(count)
            for label, count in enumerate(
                np.bincount(np.arange(spec.n) % len(spec.label_classes), minlength=spec.num_classes)
            )
            if count
        }
    record = manifest.build(
        spec,
        model or TINY_MODEL,
        parts,
        timings={
            "started_at": "2026-11-30T00:00:00+00:00",
            "finished_at": "2026-11-30T00:00:09+00:00",
            "seconds": 9.0,
            "shards_reused": 0,
        },
        lineage=lineage or TINY_LINEAGE,
        execution={"device": "cpu", "num_workers": 1, "nodes": 1},
        label_counts=label_counts,
    )
    record = record.to_json()  # as it reads back
    if version != 3:
        record.update(
            format=f"vaegen-dataset/{version}",
            dataset_id=dataset_id,
            schema=manifest.schema_description(arrow_schema(spec, format_version=2)),
        )
        record["spec"]["format"] = f"vaegen-dataset/{version}"
    else:
        committed = Manifest.from_json(record)
        card.write(storage, dataset_id, committed, quality)
        croissant.write(storage, dataset_id, committed)
    storage.write_json(record, dataset_id, manifest.MANIFEST)
    return root / dataset_id
