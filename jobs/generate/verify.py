"""Check a whole dataset folder against its whole manifest.

Always: the manifest is consistent (its files are exactly the shards that n and the shard size
make, their rows add up to n, ids run 0..n-1 across them); the folder holds exactly what a
committed dataset holds (the manifest, its parts and the dataset card's two files, nothing else); every
part has its size, checksum, row count, id range and spec fingerprint. With `deep`: every
row's id, seed, z (and label) re-derived from the seed scheme (contract 1), and x re-decoded
for whole decode blocks of every part with the registered decoder the manifest pins.

The plain check reads each part once (its checksum, from the page cache where local) and its
footer once, and imports neither torch nor MLflow; only `deep` does.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.generate.card import CARD, HF_YAML
from jobs.generate.croissant import CROISSANT
from jobs.generate.manifest import AUDIT, MANIFEST, PROGRESS, bound_problems
from jobs.generate.recipe import is_recipe, recipe_problems
from jobs.generate.spec import FORMAT, DatasetSpec, part_name, spec_from_record
from jobs.generate.storage import CHECKSUM, CorruptRecord, Storage, split_location
from jobs.progress import Progress
from vae_core.errors import UsageError, VaegenError

DEEP_BLOCKS_PER_PART = 3  # decode blocks re-decoded per part on --deep: its first, middle and last
# Parts verified at once on object stores, where each read waits on the network. Local parts are
# hashed straight from the page cache (mmap) and xxhash holds the GIL: threads only added
# contention there (measured on 1M float32 rows, 16 parts: 0.55 s with one, 0.63-0.78 s with four).
REMOTE_CHECK_THREADS = 4
# Parts re-derived and re-decoded at once on --deep: Arrow's decoding of nested x and the one-thread decode
# release the GIL (1M uint8 rows, 16 parts, 2 cores: 0.93-1.01 s with one thread, 0.60-0.65 s with two,
# 0.72-0.88 s with four).
DEEP_CHECK_THREADS = max(1, min(4, os.cpu_count() or 1))
X_TOLERANCE = {"float32": 1e-4, "float16": 2e-3, "uint8": 1}  # only for CUDA-made datasets checked on a CPU


@dataclasses.dataclass(frozen=True)
class InspectReport:
    location: str
    manifest: dict
    problems: list[str]
    rows_checked_deep: int  # rows whose id, seed, z (and label) were re-derived
    rows_decoded_deep: int = 0  # rows whose x was re-decoded with the registered decoder
    notes: tuple[str, ...] = ()  # what a deep check could not do exactly, e.g. CUDA bits on a CPU

    @property
    def ok(self) -> bool:
        return not self.problems


def open_committed(location: str) -> tuple[Storage, str, dict]:
    """(storage of the parent, dataset id, manifest) of a committed dataset (a folder, or ROOT@latest / ROOT@vN /
    ROOT@TAG, jobs/generate/published.py); anything else is a one-line error."""
    from jobs.generate.published import resolve

    parent, dataset_id = split_location(resolve(location))
    storage = Storage(parent)
    record = storage.read_json(dataset_id, MANIFEST)  # unparsable: CorruptRecord, "corrupt manifest at PATH"
    if record is None:
        if not storage.exists(dataset_id):
            raise UsageError(
                f"dataset {storage.location(dataset_id)} not found: check the path "
                f"(a dataset is the folder that holds {MANIFEST}, under generate's --out)"
            )
        state = (
            "an unfinished dataset (rerun its generate command to resume)"
            if storage.exists(dataset_id, PROGRESS)
            else "no dataset"
        )
        raise UsageError(f"{storage.location(dataset_id)} has no {MANIFEST}: it is {state}")
    broken = structure_problems(record)
    if broken:
        raise CorruptRecord(f"corrupt manifest at {storage.location(dataset_id, MANIFEST)}: {'; '.join(broken[:3])}")
    return storage, dataset_id, record


class DamagedDataset(VaegenError):
    """A committed dataset whose folder no longer matches its manifest."""


def ensure_intact(storage: Storage, dataset_id: str, record: dict[str, Any]) -> None:
    """The cheap half of inspect (the manifest, one listing, sizes; no reads of parts), as a one-line error."""
    problems = manifest_problems(record) or folder_problems(storage.listing(dataset_id), record)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedDataset(
            f"dataset {storage.location(dataset_id)} is committed but damaged: {problems[0]}{more}; "
            "`vaegen inspect` lists every problem; regenerate it with --overwrite"
        )


def inspect(location: str, deep: bool = False, sample_seed: int | None = None) -> InspectReport:
    """`sample_seed`: deep re-decodes one decode block per part chosen from this seed (the publish audit's
    sample) instead of each part's first, middle and last block."""
    storage, dataset_id, record = open_committed(location)
    if is_recipe(record):  # no parts: the manifest is the dataset (jobs/generate/recipe.py)
        problems = recipe_problems(record) or folder_problems(storage.listing(dataset_id), record)
        notes = ("recipe-only: --deep has no stored rows to compare",) if deep else ()
        return InspectReport(storage.location(dataset_id), record, problems, 0, notes=notes)
    problems = manifest_problems(record)
    if problems:  # without a consistent manifest there is nothing to check the files against
        return InspectReport(storage.location(dataset_id), record, problems, 0)
    listing = storage.listing(dataset_id)
    problems += folder_problems(listing, record)
    damaged = {problem.split(":", 1)[0] for problem in problems}
    entries = [entry for entry in record["files"] if entry["name"] not in damaged]
    threads = 1 if storage.is_local else min(REMOTE_CHECK_THREADS, max(1, len(entries)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found in pool.map(lambda entry: _part_problems(storage, dataset_id, entry, record), entries):
            problems += found
    if deep and not problems:
        return _deep(storage, dataset_id, record, sample_seed)
    return InspectReport(storage.location(dataset_id), record, problems, 0)


# ---------------------------------------------------------------- the manifest on its own

REQUIRED = {
    "format": str,
    "dataset_id": str,
    "n": int,
    "rows_per_shard": int,
    "dataset_seed": int,
    "dtype": str,
    "layout": str,
    "latent_dim": int,
    "sample_shape": list,
    "spec": dict,
    "spec_fingerprint": str,
    "model": dict,
    "checksum_algorithm": str,
    "files": list,
    "total_bytes": int,
    "lineage": dict,
    "timings": dict,
}
MODEL_FIELDS = {"name": str, "version": int, "run_id": str}
FILE_FIELDS = {"name": str, "first_sample_id": int, "rows": int, "size_bytes": int, "checksum": str}
JSON_TYPES = {str: "string", int: "integer", list: "list", dict: "object"}


def structure_problems(record: dict[str, Any]) -> list[str]:
    """Fields a manifest cannot do without, with their types."""
    problems = [
        f"field {key!r} is missing or not a JSON {JSON_TYPES[kind]}"
        for key, kind in REQUIRED.items()
        if not isinstance(record.get(key), kind)
    ]
    if problems:
        return problems
    if not isinstance(record.get("labels", ()), (dict, type(None))):
        problems.append("field 'labels' is missing or not an object or null")
    problems += [
        f"field 'model.{key}' is missing or not a JSON {JSON_TYPES[kind]}"
        for key, kind in MODEL_FIELDS.items()
        if not isinstance(record["model"].get(key), kind)
    ]
    if problems:
        return problems
    problems = bound_problems(record)
    if problems:
        return problems
    for index, entry in enumerate(record["files"]):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), kind) for key, kind in FILE_FIELDS.items()
        ):
            return [f"files[{index}] lacks one of {', '.join(FILE_FIELDS)}"]
    return []


def manifest_problems(record: dict[str, Any]) -> list[str]:
    """What makes a manifest unusable or inconsistent: its files must be exactly the shards its n makes."""
    problems = [f"manifest: {problem}" for problem in structure_problems(record)]
    if problems:
        return problems
    files = record["files"]
    if record["checksum_algorithm"] != CHECKSUM:
        problems.append(
            f"manifest: checksum algorithm {record['checksum_algorithm']!r}, this vaegen verifies {CHECKSUM}"
        )
    if record["format"] == FORMAT:  # older formats' specs fingerprint differently; their parts are checked all the same
        try:
            spec = spec_from_record(record, record["dataset_id"])
        except UsageError as error:
            return [f"manifest: {error}"]
        top_level = {
            "n": spec.n,
            "rows_per_shard": spec.rows_per_shard,
            "dataset_seed": spec.seed,
            "dtype": spec.dtype,
            "latent_dim": spec.latent_dim,
            "sample_shape": list(spec.sample_shape),
        }
        problems += [
            f"manifest: {key} = {record[key]!r} but its spec says {value!r}"
            for key, value in top_level.items()
            if record[key] != value
        ]
    n, rows_per_shard = record["n"], record["rows_per_shard"]
    listed_rows = sum(entry["rows"] for entry in files)
    if listed_rows != n:
        problems.append(f"manifest: n = {n:,} but its files hold {listed_rows:,} rows")
    expected = [part_name(shard) for shard in range(-(-n // rows_per_shard))]
    names = [entry["name"] for entry in files]
    if names != expected:
        absent = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        problems.append(
            f"manifest: files[] must list {expected[0]}..{expected[-1]} ({len(expected):,} parts for "
            f"n = {n:,} at {rows_per_shard:,} rows per part) in order"
            + (f"; missing {', '.join(absent[:5])}" if absent else "")
            + (f"; not expected {', '.join(extra[:5])}" if extra else "")
        )
        return problems
    for shard, entry in enumerate(files):
        first, stop = shard * rows_per_shard, min((shard + 1) * rows_per_shard, n)
        if (entry["first_sample_id"], entry["rows"]) != (first, stop - first):
            problems.append(
                f"{entry['name']}: manifest says ids {entry['first_sample_id']:,} + {entry['rows']:,} rows, "
                f"shard {shard} holds ids {first:,}..{stop - 1:,}"
            )
    return problems


def folder_problems(listing: dict[str, int | None], record: dict[str, Any]) -> list[str]:
    """The folder against the manifest from one listing: every part present with its size, nothing else there."""
    problems = []
    for entry in record["files"]:
        size = listing.get(entry["name"], -1)
        if size == -1:
            problems.append(f"{entry['name']}: missing")
        elif size != entry["size_bytes"]:
            problems.append(f"{entry['name']}: {size} bytes, manifest says {entry['size_bytes']}")
    # the card: jobs/generate/card.py; the Croissant file: croissant.py; the publish audit's verdict: jobs/audit.py
    allowed = {MANIFEST, CARD, HF_YAML, CROISSANT, AUDIT, *(entry["name"] for entry in record["files"])}
    for name in sorted(set(listing) - allowed):
        kind = "folder" if listing[name] is None else "file"
        seen = "" if name.startswith((".", "_")) else ": readers would take it for part of the dataset"
        problems.append(f"{name}: unexpected {kind}, not in the manifest{seen}")
    return problems


# ---------------------------------------------------------------- each part: bytes and footer


def _part_problems(storage: Storage, dataset_id: str, entry: dict, record: dict) -> list[str]:
    name = entry["name"]
    if storage.checksum(dataset_id, name) != entry["checksum"]:
        return [f"{name}: checksum mismatch"]
    try:
        with storage.fs.open_input_file(storage.path(dataset_id, name)) as handle:
            metadata = pq.read_metadata(handle)
    except (OSError, pa.ArrowException) as error:
        return [f"{name}: unreadable Parquet ({error})"]
    if metadata.num_rows != entry["rows"]:
        return [f"{name}: {metadata.num_rows} rows, manifest says {entry['rows']}"]
    fingerprint = (metadata.metadata or {}).get(b"vaegen.spec_fingerprint")
    if fingerprint is not None and fingerprint.decode() != record["spec_fingerprint"]:
        return [f"{name}: written for spec {fingerprint.decode()}, the manifest is for {record['spec_fingerprint']}"]
    low, high = _id_range(metadata)
    first, last = entry["first_sample_id"], entry["first_sample_id"] + entry["rows"] - 1
    if low is not None and (low, high) != (first, last):
        return [f"{name}: holds sample ids {low:,}..{high:,}, manifest says {first:,}..{last:,}"]
    return []


def _id_range(metadata: pq.FileMetaData) -> tuple[int | None, int | None]:
    """(min, max) sample_id from the footer's statistics, (None, None) where a writer left them out."""
    column = metadata.schema.names.index("sample_id") if "sample_id" in metadata.schema.names else None
    if column is None or metadata.num_row_groups == 0:
        return None, None
    lows, highs = [], []
    for group in range(metadata.num_row_groups):
        statistics = metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_min_max:
            return None, None
        lows.append(statistics.min)
        highs.append(statistics.max)
    return min(lows), max(highs)


# ---------------------------------------------------------------- --deep: re-derive and re-decode


def _deep(storage: Storage, dataset_id: str, record: dict, sample_seed: int | None = None) -> InspectReport:
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

    def check(entry: dict) -> tuple[list[str], int, int]:
        with storage.fs.open_input_file(storage.path(dataset_id, entry["name"])) as handle:
            return _deep_check(pq.ParquetFile(handle), entry, record, spec, predictor, tolerance, sample_seed)

    problems, derived, decoded = [], 0, 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as CPU workers decode: the same kernels, so the same bits
    try:
        with (
            Progress(record["n"], f"inspect --deep {dataset_id}") as progress,
            ThreadPoolExecutor(max_workers=DEEP_CHECK_THREADS) as pool,
        ):
            for entry, (found, rows_derived, rows_decoded) in zip(
                record["files"], pool.map(check, record["files"]), strict=True
            ):
                problems += found
                derived += rows_derived
                decoded += rows_decoded
                progress.advance(entry["rows"], f"{entry['name']} checked")
    finally:
        torch.set_num_threads(threads)
    return InspectReport(storage.location(dataset_id), record, problems, derived, decoded, notes)


def spec_of(record: dict) -> DatasetSpec:
    """The spec of any format's manifest (an older format's spec has the same fields that decide x)."""
    fields = {field.name for field in dataclasses.fields(DatasetSpec)}
    values = {key: value for key, value in record["spec"].items() if key in fields}
    for key in ("sample_shape", "label_classes", "class_prior"):
        value = values.get(key, ())
        values[key] = tuple(value) if isinstance(value, list) else value
    return DatasetSpec(**values)


def _registered_predictor(record: dict, spec: DatasetSpec) -> tuple[Any, float | None]:
    """The job's own Predictor around the decoder the manifest pins, loaded without pickle, on the device
    that made the dataset where this machine has one; and the tolerance for x (None: bit for bit)."""
    import torch

    from jobs.generate.predictor import Predictor

    config, state = registered_weights(record, "inspect --deep re-decodes x")
    made_on_cuda = record.get("execution", {}).get("device") == "cuda"
    device = "cuda" if made_on_cuda and torch.cuda.is_available() else "cpu"
    tolerance = X_TOLERANCE[spec.dtype] if made_on_cuda and device == "cpu" else None
    return Predictor(spec, config, state, device), tolerance


def registered_weights(record: dict, purpose: str) -> tuple[dict, dict[str, Any]]:
    """(config, weights) of the decoder a manifest pins, from the registry, without pickle; refused unless
    the registry's version comes from the run the manifest records."""
    from registry import models, tracking

    model = record["model"]
    reference = f"{model['name']}/{model['version']}"
    try:
        tracking.ensure_reachable()
        pinned = models.resolve(reference)
    except VaegenError as error:
        raise VaegenError(f"{purpose} with {reference} from the registry: {error}") from None
    if pinned.run_id != model["run_id"]:
        raise VaegenError(
            f"{purpose}: {reference} in this registry ({tracking.shown_uri()}) comes from run "
            f"{pinned.run_id}, this dataset from run {model['run_id']}; point MLFLOW_TRACKING_URI at "
            "the registry that made the dataset"
        )
    loaded = models.load_decoder(pinned)
    return loaded.config.to_dict(), loaded.state


def _deep_check(
    parquet: pq.ParquetFile,
    entry: dict,
    record: dict,
    spec: DatasetSpec,
    predictor: Any,
    tolerance: float | None,
    sample_seed: int | None = None,
) -> tuple[list[str], int, int]:
    """(problems, rows re-derived, rows re-decoded) of one part. Without `sample_seed` (`inspect --deep`) every
    row's seed, z (and label) is re-derived; with it (the publish audit) only the rows of the sampled blocks:
    the checksums already tie every other byte to what the writer wrote."""
    name, first, rows = entry["name"], entry["first_sample_id"], entry["rows"]
    blocks = _deep_blocks(first, first + rows, spec.block_rows, sample_seed)
    spans = [(max(first, start) - first, min(first + rows, stop) - first) for start, stop in blocks]  # part rows
    columns = ["sample_id", "seed", "z"] + (["label"] if spec.label_policy is not None else [])
    derived = 0
    for low, high in [(0, rows)] if sample_seed is None else spans:
        problem = _rederive_problem(_rows(parquet, low, high, columns), name, first, low, record, spec)
        derived += high - low
        if problem is not None:
            return [problem], derived, 0
    decoded = 0
    for (block_start, block_stop), (low, high) in zip(blocks, spans, strict=True):
        block = predictor({"sample_id": np.arange(block_start, block_stop, dtype=np.int64)})  # whole block: same bits
        expected = block["x"][first + low - block_start : first + high - block_start].reshape(high - low, -1)
        stored = _flat_values(_rows(parquet, low, high, ["x"]).column("x").combine_chunks(), spec.dtype)
        mismatch = _x_mismatch(stored.reshape(high - low, -1), expected, tolerance)
        if mismatch is not None:
            return (
                [
                    f"{name}: row {low + mismatch} (sample id {first + low + mismatch}): x differs from what "
                    f"{record['model']['name']}/{record['model']['version']} decodes"
                ],
                derived,
                decoded,
            )
        decoded += high - low
    return [], derived, decoded


def _rederive_problem(table: pa.Table, name: str, first: int, low: int, record: dict, spec: DatasetSpec) -> str | None:
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
        return f"{name}: row {low + _first_difference(stored_seeds, seeds)}: seed differs from {record['seed_scheme']}"
    stored_z = table.column("z").combine_chunks().flatten().to_numpy().reshape(rows, spec.latent_dim)
    if not np.array_equal(stored_z, z):
        return f"{name}: row {low + _first_difference(stored_z, z)}: z differs from {record['seed_scheme']}"
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
