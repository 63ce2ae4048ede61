"""`inspect --deep`: every row's id, seed, z (and label) re-derived from the seed scheme (contract 1), and x
re-decoded for whole decode blocks of every part with the registered decoder the manifest pins.

torch and MLflow are imported only as a check runs, so the plain check (verify.py) that imports this stays light.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.generate.records import FileEntry, Manifest
from jobs.generate.spec import DatasetSpec
from jobs.generate.storage import Storage
from jobs.progress import Progress
from vae_core.errors import VaegenError

DEEP_BLOCKS_PER_PART = 3  # decode blocks re-decoded per part on --deep: its first, middle and last
# Parts re-derived and re-decoded at once on --deep: Arrow's decoding of nested x and the one-thread decode
# release the GIL (1M uint8 rows, 16 parts, 2 cores: 0.93-1.01 s with one thread, 0.60-0.65 s with two,
# 0.72-0.88 s with four).
DEEP_CHECK_THREADS = max(1, min(4, os.cpu_count() or 1))
X_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "uint8": 1}  # only for CUDA-made datasets checked on a CPU


def check(
    storage: Storage, dataset_id: str, record: Manifest, sample_seed: int | None = None
) -> tuple[list[str], int, int, tuple[str, ...]]:
    """(problems, rows re-derived, rows re-decoded, notes on what could not be checked exactly) of a dataset
    whose parts already match its manifest."""
    import torch

    spec = spec_of(record)
    predictor, tolerance = _registered_predictor(record, spec)
    notes = (
        ()
        if tolerance is None
        else (
            f"made on CUDA, re-decoded on this CPU: x compared within {tolerance} "
            "(CPU and CUDA kernels differ in the last bits)",
        )
    )

    def check_part(entry: FileEntry) -> tuple[list[str], int, int]:
        with storage.fs.open_input_file(storage.path(dataset_id, entry.name)) as handle:
            return _part_check(pq.ParquetFile(handle), entry, record, spec, predictor, tolerance, sample_seed)

    problems, derived, decoded = [], 0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as CPU workers decode: the same kernels, so the same bits
    try:
        with (
            Progress(record.n, f"inspect --deep {dataset_id}") as progress,
            ThreadPoolExecutor(max_workers=DEEP_CHECK_THREADS) as pool,
        ):
            for entry, (found, rows_derived, rows_decoded) in zip(
                record.files, pool.map(check_part, record.files), strict=True
            ):
                problems += found
                derived += rows_derived
                decoded += rows_decoded
                progress.advance(entry.rows, f"{entry.name} checked")
    finally:
        torch.set_num_threads(threads)
    return problems, derived, decoded, notes


def spec_of(record: Manifest) -> DatasetSpec:
    """The spec of any format's manifest (an older format's spec has the same fields that decide x)."""
    fields = {field.name for field in dataclasses.fields(DatasetSpec)}
    values = {key: value for key, value in record.spec.items() if key in fields}
    for key in ("sample_shape", "label_classes", "class_prior"):
        value = values.get(key, ())
        values[key] = tuple(value) if isinstance(value, list) else value
    return DatasetSpec(**values)


def _registered_predictor(record: Manifest, spec: DatasetSpec) -> tuple[Any, float | None]:
    """The job's own Predictor around the decoder the manifest pins, loaded without pickle, on the device
    that made the dataset where this machine has one; and the tolerance for x (None: bit for bit)."""
    import torch

    from jobs.generate.predictor import Predictor

    config, state = registered_weights(record, "inspect --deep re-decodes x")
    made_on_cuda = record.execution.get("device") == "cuda"
    device = "cuda" if made_on_cuda and torch.cuda.is_available() else "cpu"
    tolerance = X_TOLERANCE[spec.dtype] if made_on_cuda and device == "cpu" else None
    return Predictor(spec, config, state, device), tolerance


def registered_weights(record: Manifest, purpose: str) -> tuple[dict, dict[str, Any]]:
    """(config, weights) of the decoder a manifest pins, from the registry, without pickle; refused unless
    the registry's version comes from the run the manifest records."""
    from registry import models, tracking

    model = record.model
    reference = f"{model.name}/{model.version}"
    try:
        tracking.ensure_reachable()
        pinned = models.resolve(reference)
    except VaegenError as error:
        raise VaegenError(f"{purpose} with {reference} from the registry: {error}") from None
    if pinned.run_id != model.run_id:
        raise VaegenError(
            f"{purpose}: {reference} in this registry ({tracking.shown_uri()}) comes from run "
            f"{pinned.run_id}, this dataset from run {model.run_id}; point MLFLOW_TRACKING_URI at "
            "the registry that made the dataset"
        )
    loaded = models.load_decoder(pinned)
    return loaded.config.to_dict(), loaded.state


def _part_check(
    parquet: pq.ParquetFile,
    entry: FileEntry,
    record: Manifest,
    spec: DatasetSpec,
    predictor: Any,
    tolerance: float | None,
    sample_seed: int | None = None,
) -> tuple[list[str], int, int]:
    """(problems, rows re-derived, rows re-decoded) of one part. Without `sample_seed` (`inspect --deep`) every
    row's seed, z (and label) is re-derived; with it (the publish audit) only the rows of the sampled blocks:
    the checksums already tie every other byte to what the writer wrote."""
    name, first, rows = entry.name, entry.first_sample_id, entry.rows
    blocks = _deep_blocks(first, first + rows, spec.block_rows, sample_seed)
    spans = [(max(first, start) - first, min(first + rows, stop) - first) for start, stop in blocks]  # part rows
    columns = ["sample_id", "seed", "z"] + (["label"] if spec.label_policy is not None else [])
    sampled = sample_seed is not None
    derived = 0
    if not sampled:  # every row's ids, seeds and z in one read; x below, of the re-decoded blocks alone
        problem = _rederive_problem(_rows(parquet, 0, rows, columns), name, first, 0, record, spec)
        derived = rows
        if problem is not None:
            return [problem], derived, 0
    decoded = 0
    for (block_start, block_stop), (low, high) in zip(blocks, spans, strict=True):
        table = _rows(parquet, low, high, [*columns, "x"] if sampled else ["x"])  # a sampled block's rows: one read
        if sampled:
            problem = _rederive_problem(table, name, first, low, record, spec)
            derived += high - low
            if problem is not None:
                return [problem], derived, decoded
        block = predictor({"sample_id": np.arange(block_start, block_stop, dtype=np.int64)})  # whole block: same bits
        expected = block["x"][first + low - block_start : first + high - block_start].reshape(high - low, -1)
        stored = _flat_values(table.column("x").combine_chunks(), spec.dtype)
        mismatch = _x_mismatch(stored.reshape(high - low, -1), expected, tolerance)
        if mismatch is not None:
            return (
                [
                    f"{name}: row {low + mismatch} (sample id {first + low + mismatch}): x differs from what "
                    f"{record.model.name}/{record.model.version} decodes"
                ],
                derived,
                decoded,
            )
        decoded += high - low
    return [], derived, decoded


def _rederive_problem(
    table: pa.Table, name: str, first: int, low: int, record: Manifest, spec: DatasetSpec
) -> str | None:
    """What differs between the stored ids, seeds, z (and labels) of the part's rows from `low` on (the part
    starts at sample id `first`) and the seed scheme's; None where nothing does."""
    from vae_core import sampling

    rows = table.num_rows
    ids = table.column("sample_id").to_numpy()
    if not np.array_equal(ids, np.arange(first + low, first + low + rows)):
        return f"{name}: sample ids are not the contiguous range starting at {first}"
    seeds, z = sampling.draw(spec.seed, ids, spec.latent_dim)
    stored_seeds = table.column("seed").to_numpy()
    if not np.array_equal(stored_seeds, seeds):
        return f"{name}: row {low + _first_difference(stored_seeds, seeds)}: seed differs from {record.seed_scheme}"
    stored_z = table.column("z").combine_chunks().flatten().to_numpy().reshape(rows, spec.latent_dim)
    if not np.array_equal(stored_z, z):
        return f"{name}: row {low + _first_difference(stored_z, z)}: z differs from {record.seed_scheme}"
    if spec.label_policy is not None:
        labels = sampling.labels_for(
            spec.label_policy, ids, seeds, spec.latent_dim, spec.label_classes, spec.class_prior
        )
        stored_labels = table.column("label").to_numpy()
        if not np.array_equal(stored_labels, labels):
            return f"{name}: row {low + _first_difference(stored_labels, labels)}: label differs from contract 1b"
    return None


def _deep_blocks(start: int, stop: int, block_rows: int, sample_seed: int | None = None) -> list[tuple[int, int]]:
    """The first, middle and last of the decode blocks (vae_core.sampling's grid) that cover [start, stop);
    with `sample_seed`, one of them drawn from (seed, start): the same block on every audit of this part."""
    from vae_core.sampling import block_ranges

    blocks = block_ranges(start, stop, block_rows)
    if sample_seed is not None:
        return [blocks[int(np.random.default_rng([sample_seed, start]).integers(len(blocks)))]]
    picks = sorted({0, len(blocks) // 2, len(blocks) - 1})[:DEEP_BLOCKS_PER_PART]
    return [blocks[index] for index in picks]


def _rows(parquet: pq.ParquetFile, low: int, high: int, columns: list[str]) -> pa.Table:
    """Rows [low, high) of the part, reading only the row groups that hold them."""
    groups, offset, skip = [], 0, None
    for group in range(parquet.metadata.num_row_groups):
        count = parquet.metadata.row_group(group).num_rows
        if offset < high and offset + count > low:
            groups.append(group)
            skip = offset if skip is None else skip
        offset += count
    return parquet.read_row_groups(groups, columns=columns).slice(low - skip, high - low)


def _flat_values(array: pa.Array, dtype: str) -> np.ndarray:
    """The values of x whatever its Arrow layout: a tensor extension, (nested) fixed-size lists, or binary rows."""
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    while pa.types.is_fixed_size_list(array.type) or pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = array.flatten()
    if pa.types.is_fixed_size_binary(array.type):  # --layout binary: raw C-ordered rows
        width = array.type.byte_width
        return np.frombuffer(array.buffers()[1], dtype=np.uint8)[
            array.offset * width : (array.offset + len(array)) * width
        ].view(dtype)
    return array.to_numpy(zero_copy_only=False).astype(np.dtype(dtype), copy=False)


def _x_mismatch(stored: np.ndarray, expected: np.ndarray, tolerance: float | None) -> int | None:
    """The first row where x differs (bit for bit, or beyond `tolerance` for CUDA bits), None if none."""
    if stored.shape != expected.shape or stored.dtype != expected.dtype:
        return 0
    if tolerance is None:
        difference = stored.view(np.uint8).reshape(len(stored), -1) != expected.view(np.uint8).reshape(
            len(expected), -1
        )
    else:
        difference = np.abs(stored.astype(np.float64) - expected.astype(np.float64)) > tolerance
    rows = np.flatnonzero(difference.any(axis=1))
    return int(rows[0]) if len(rows) else None


def _first_difference(stored: np.ndarray, expected: np.ndarray) -> int:
    differing = stored != expected
    rows = np.flatnonzero(differing.reshape(len(differing), -1).any(axis=1))
    return int(rows[0]) if len(rows) else 0
