"""Check a dataset against its manifest: every file's checksum and row count, and on --deep a
sample of rows re-derived from the seed scheme (contract 1)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq

from jobs.generate.manifest import MANIFEST, PROGRESS
from jobs.generate.storage import Storage
from vae_core import sampling
from vae_core.errors import UsageError
from vae_core.seeds import row_seeds

DEEP_ROWS_PER_FILE = 256  # re-derived rows per part on --deep: spread over the whole dataset, cheap


@dataclasses.dataclass(frozen=True)
class InspectReport:
    location: str
    manifest: dict
    problems: list[str]
    rows_checked_deep: int

    @property
    def ok(self) -> bool:
        return not self.problems


def open_committed(location: str) -> tuple[Storage, str, dict]:
    """(storage of the parent, dataset id, manifest) of a committed dataset; anything else is a UsageError."""
    parent, _, dataset_id = location.rstrip("/").rpartition("/")
    storage = Storage(parent or ".")
    record = storage.read_json(dataset_id, MANIFEST)
    if record is None:
        state = "an unfinished dataset (rerun its generate command to resume)" if storage.exists(dataset_id, PROGRESS) else "no dataset"
        raise UsageError(f"{storage.location(dataset_id)} has no {MANIFEST}: it is {state}")
    return storage, dataset_id, record


def inspect(location: str, deep: bool = False) -> InspectReport:
    storage, dataset_id, record = open_committed(location)
    problems: list[str] = []
    deep_rows = 0
    for entry in record["files"]:
        name = entry["name"]
        if not storage.exists(dataset_id, name):
            problems.append(f"{name}: missing")
            continue
        size_bytes = storage.size(dataset_id, name)
        if size_bytes != entry["size_bytes"]:
            problems.append(f"{name}: {size_bytes} bytes, manifest says {entry['size_bytes']}")
            continue
        if storage.checksum(dataset_id, name) != entry["checksum"]:
            problems.append(f"{name}: checksum mismatch")
            continue
        parquet = pq.ParquetFile(storage.fs.open_input_file(storage.path(dataset_id, name)))
        if parquet.metadata.num_rows != entry["rows"]:
            problems.append(f"{name}: {parquet.metadata.num_rows} rows, manifest says {entry['rows']}")
            continue
        if deep:
            problems += _deep_check(parquet, entry, record)
            deep_rows += min(entry["rows"], DEEP_ROWS_PER_FILE)
    return InspectReport(storage.location(dataset_id), record, problems, deep_rows)


def _deep_check(parquet: pq.ParquetFile, entry: dict, record: dict) -> list[str]:
    columns = ["sample_id", "seed", "z"] + (["label"] if record["labels"] else [])
    table = parquet.read(columns=columns)
    rows = entry["rows"]
    pick = np.unique(np.linspace(0, rows - 1, min(rows, DEEP_ROWS_PER_FILE)).astype(np.int64))
    ids = table.column("sample_id").to_numpy()
    problems = []
    expected_ids = np.arange(entry["first_sample_id"], entry["first_sample_id"] + rows)
    if not np.array_equal(ids, expected_ids):
        problems.append(f"{entry['name']}: sample ids are not the contiguous range starting at {entry['first_sample_id']}")
        return problems
    seeds = row_seeds(record["dataset_seed"], ids[pick])
    z = np.stack(table.column("z").take(pick).to_numpy(zero_copy_only=False))
    if not np.array_equal(table.column("seed").to_numpy()[pick], seeds):
        problems.append(f"{entry['name']}: seeds differ from {record['seed_scheme']}")
    if not np.array_equal(z, sampling.draw(record["dataset_seed"], ids[pick], record["latent_dim"])[1]):
        problems.append(f"{entry['name']}: z differs from {record['seed_scheme']}")
    if record["labels"]:
        spec = record["spec"]
        labels = sampling.labels_for(spec["label_policy"], ids[pick], seeds, spec["latent_dim"],
                                     tuple(spec["label_classes"]), tuple(spec["class_prior"]))
        if not np.array_equal(table.column("label").to_numpy()[pick], labels):
            problems.append(f"{entry['name']}: labels differ from contract 1b")
    return problems
