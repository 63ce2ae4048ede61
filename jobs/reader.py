"""Read a committed dataset (DESIGN.md contract 2): open it by path or URI, verify it against its
manifest, and hand it to numpy, PyTorch or Hugging Face `datasets`, x in its shape.

    from jobs.reader import open_dataset
    data = open_dataset("datasets/vae-decoder-v7-n1000000-seed42-float32-f3")   # verified: checksums, rows
    arrays = data.to_numpy()                                  # {"x": (N, 28, 28), "label": (N,), ...}
    loader = DataLoader(data.torch(shuffle=True, seed=0), batch_size=256, num_workers=4)
    hf = data.to_hf()                                         # datasets.Dataset, x as Array2D

Every format (1 to 3) and layout reads the same (jobs/reader_arrow.py decodes x by its Arrow type).
This module opens a dataset and holds it; the torch epoch is jobs/reader_stream.py's RowStream, given
torch's base class in jobs/reader_torch.py. Every public name of those is importable from here.
Importing this module imports pyarrow and numpy only; torch and datasets where they are used.
"""

from __future__ import annotations

import atexit
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import reader_decode
from jobs.generate.holds import DEFAULT_LEASE_TIMEOUT_S, Lease, retirement_pending
from jobs.generate.records import Manifest
from jobs.generate.storage import Storage
from jobs.generate.verify import inspect, open_committed
from jobs.reader_arrow import columns_numpy, nested_x, ray_dataset, shaped_x, x_numpy
from jobs.reader_state import RowGroup
from jobs.reader_stream import SOURCES, Ranks, RowStream, torch_rank_and_world_size
from registry import tracking
from vae_core.errors import UsageError, VaegenError

if TYPE_CHECKING:
    import datasets

    from jobs.reader_torch import TorchDataset

# TorchDataset is importable too (__getattr__), but unlisted: `from jobs.reader import *` would import torch
__all__ = [
    "COLUMNS",
    "SOURCES",
    "Dataset",
    "Ranks",
    "RowStream",
    "columns_numpy",
    "nested_x",
    "open_dataset",
    "ray_dataset",
    "shaped_x",
    "torch_dataset_class",
    "torch_rank_and_world_size",
    "x_numpy",
]

COLUMNS = ("sample_id", "seed", "z", "label", "x")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A committed dataset: where it is, its manifest, and ways to read it."""

    location: str
    manifest: Manifest  # typed (jobs/generate/records.py); `manifest["n"]` still reads the JSON form
    storage: Storage  # of the dataset's parent folder (local or a pyarrow filesystem URI)
    dataset_id: str
    lease: Any = dataclasses.field(default=None, compare=False, repr=False)  # jobs.generate.holds.Lease, or None

    def close(self) -> None:
        """Release the lease (prune may then delete the dataset); reading after it still works, unprotected."""
        if self.lease is not None:
            self.lease.release()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def n(self) -> int:
        return self.manifest.n

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.manifest.sample_shape

    @property
    def dtype(self) -> str:
        return self.manifest.dtype

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest.labels)

    @property
    def recipe_only(self) -> bool:
        """A manifest without parts (`vaegen generate --recipe-only`): rows exist only as torch(source="decode")."""
        return reader_decode.is_recipe(self.manifest)

    @property
    def parts(self) -> list[str]:
        if self.recipe_only:  # every reader of parts goes through here
            raise UsageError(f"{self.location} is recipe-only (no parts): read it with torch(source='decode')")
        return self.manifest.file_names

    def parquet_file(self, part: str) -> pq.ParquetFile:
        """A part opened for reading; close() it (or use it in a `with` block) when done."""
        return pq.ParquetFile(self.storage.fs.open_input_file(self.storage.path(self.dataset_id, part)))

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Every part's rows, as stored (x in the Arrow type of the dataset's format)."""
        tables = []
        for part in self.parts:
            with self.parquet_file(part) as parquet:
                tables.append(parquet.read(columns=columns))
        return pa.concat_tables(tables)

    def row_groups(self) -> list[RowGroup]:
        """Every row group of every part, in sample id order (one footer read per part)."""
        groups = []
        for part in self.parts:
            with self.parquet_file(part) as parquet:
                metadata = parquet.metadata
            groups += [
                RowGroup(part, index, metadata.row_group(index).num_rows) for index in range(metadata.num_row_groups)
            ]
        return groups

    def _columns(self, columns: Sequence[str] | None) -> list[str]:
        available = [name for name in COLUMNS if name != "label" or self.has_labels]
        if columns is None:
            return available
        unknown = [name for name in columns if name not in available]
        if unknown:
            raise UsageError(
                f"{self.location} has no column {', '.join(map(repr, unknown))}; it has {', '.join(available)}"
            )
        return list(columns)

    def iter_numpy(
        self, columns: Sequence[str] | None = None, parts: Sequence[str] | None = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """One dict of writable arrays per row group, in sample id order: memory stays one row group."""
        names = self._columns(columns)
        for part in parts or self.parts:
            with self.parquet_file(part) as parquet:
                for index in range(parquet.metadata.num_row_groups):
                    yield columns_numpy(parquet.read_row_group(index, columns=names), self.sample_shape, self.dtype)

    def to_numpy(self, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The whole dataset in memory (3.1 GB per million float32 28x28 rows).

        Use torch() or iter_numpy() to stream instead.
        """
        return columns_numpy(self.read(self._columns(columns)), self.sample_shape, self.dtype)

    def torch(
        self,
        columns: Sequence[str] | None = None,
        shuffle: bool = False,
        seed: int = 0,
        batch_size: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        source: str = "stored",
        device: str = "cpu",
    ) -> TorchDataset:
        """A torch IterableDataset over the parts (see TorchDataset); columns default to x and label.
        source="decode" regenerates the rows on `device` from the pinned model the manifest names."""
        names = self._columns(columns if columns is not None else ["x", "label"] if self.has_labels else ["x"])
        return torch_dataset_class()(
            self,
            names,
            shuffle=shuffle,
            seed=seed,
            batch_size=batch_size,
            ranks=Ranks(rank, world_size),
            source=source,
            device=device,
        )

    def hf_features(self) -> datasets.Features:
        """The columns as Hugging Face features; x as Array2D..Array5D (any layout: the reader decodes it)."""
        import datasets

        array_types = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}
        if len(self.sample_shape) not in (1, *array_types):
            raise UsageError(
                f"Hugging Face datasets has no array type for x of shape {self.sample_shape}; use to_numpy()"
            )
        features = {
            "sample_id": datasets.Value("int64"),
            "seed": datasets.Value("uint64"),
            "z": datasets.Sequence(datasets.Value("float32"), length=self.manifest.latent_dim),
        }
        if self.has_labels:
            features["label"] = datasets.Value("int16")
        if len(self.sample_shape) == 1:  # (N, features) rows
            features["x"] = datasets.Sequence(datasets.Value(self.dtype), length=self.sample_shape[0])
        else:
            features["x"] = array_types[len(self.sample_shape)](shape=self.sample_shape, dtype=self.dtype)
        return datasets.Features(features)

    def to_hf(self, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        """A Hugging Face dataset of every column. In memory unless streaming (an IterableDataset that
        reads a row group at a time and shards the parts over DataLoader workers); for a
        memory-mapped copy in Hugging Face's cache, `load_dataset(DIR)` reads the card instead."""
        import datasets
        from datasets.table import InMemoryTable

        if streaming:
            return datasets.IterableDataset.from_generator(
                _hf_rows, features=self.hf_features(), gen_kwargs={"dataset": self, "parts": self.parts}
            )
        table = self.read()
        index = table.schema.get_field_index("x")
        table = table.set_column(index, "x", nested_x(table.column(index), self.sample_shape, self.dtype))
        return datasets.Dataset(InMemoryTable(table)).cast(self.hf_features())  # x: nested lists -> ArrayND


def _hf_rows(dataset: Dataset, parts: list[str]) -> Iterator[dict[str, Any]]:
    for block in dataset.iter_numpy(parts=parts):
        names = list(block)
        for row in range(len(block[names[0]])):
            yield {name: block[name][row] for name in names}


def open_dataset(
    location: str,
    verify: bool = True,
    deep: bool = False,
    lease: bool = True,
    lease_timeout_s: float = DEFAULT_LEASE_TIMEOUT_S,
    log_to_mlflow: bool | None = None,
) -> Dataset:
    """A committed dataset by path or URI (s3://...), or ROOT@latest / ROOT@vN / ROOT@TAG (resolved once: the
    returned dataset_id says which). `verify` checks every part's size, checksum and row count against the
    manifest (reads every byte once); `deep` also re-derives sampled rows. `lease` holds the dataset against
    `refresh --keep` until close() (or `with`, or the process's end); a root this process cannot write to is
    read without one, with a warning. `log_to_mlflow`: log the dataset as an input (context "training") of the
    active MLflow run; None (default) does when a run is active, True also starts one, False never logs."""
    storage, dataset_id, record = open_committed(location)
    held = _take_lease(storage, dataset_id, lease_timeout_s) if lease else None
    try:
        _verify(location, storage, dataset_id, verify, deep)
    except BaseException:
        if held is not None:
            held.release()
        raise
    if log_to_mlflow or (log_to_mlflow is None and tracking.active_run_id() is not None):
        from registry import lineage  # imports mlflow: only for a run that consumes the dataset

        lineage.log_consumed_dataset(record.to_json(), storage.location(dataset_id))  # registry reads JSON
    return Dataset(storage.location(dataset_id), record, storage, dataset_id, held)


def _take_lease(storage: Storage, dataset_id: str, timeout_s: float) -> Lease | None:
    try:
        held = Lease(storage, dataset_id, timeout_s)
    except OSError as error:
        warnings.warn(
            f"reading {storage.location(dataset_id)} without a lease (prune may delete it meanwhile): "
            f"cannot write under {storage.location()}: {error}",
            stacklevel=3,
        )
        return None
    atexit.register(held.release)
    if retirement_pending(storage, dataset_id):  # pruned, or being pruned, between resolving and leasing
        held.release()
        raise VaegenError(f"{storage.location(dataset_id)} was pruned while it was being opened; open it again")
    return held


def _verify(location: str, storage: Storage, dataset_id: str, verify: bool, deep: bool) -> None:
    if verify:
        report = inspect(storage.location(dataset_id), deep=deep)
        if not report.ok:
            raise VaegenError(
                f"{report.location} does not match its manifest ({report.problems[0]}"
                + (f", and {len(report.problems) - 1} more" if len(report.problems) > 1 else "")
                + f"); `vaegen inspect {location}` lists every problem"
            )


def torch_dataset_class() -> type[TorchDataset]:
    """TorchDataset, imported on first use: its module imports torch, which importing this one never does."""
    from jobs.reader_torch import TorchDataset

    return TorchDataset


def __getattr__(name: str) -> Any:
    """`jobs.reader.TorchDataset` by name (PEP 562), imported on first use as torch_dataset_class() does."""
    if name == "TorchDataset":
        return torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
