"""Read a committed dataset (DESIGN.md contract 2): open it by path or URI, verify it against its
manifest, and hand it to numpy, PyTorch or Hugging Face `datasets`, x in its shape.

    from jobs.reader import open_dataset
    data = open_dataset("datasets/vae-decoder-v7-n1000000-seed42-float32-f3")   # verified: checksums, rows
    arrays = data.to_numpy()                                  # {"x": (N, 28, 28), "label": (N,), ...}
    loader = DataLoader(data.torch(shuffle=True, seed=0), batch_size=256, num_workers=4)
    hf = data.to_hf()                                         # datasets.Dataset, x as Array2D

Every format (1 to 3) and layout reads the same: x is decoded by its Arrow type (nested fixed-size
lists in format 3, the fixed-shape tensor of formats 1 and 2, fixed-size binary rows with
`--layout binary`). Arrays handed out are writable (pyarrow's own are read-only and torch warns).
Importing this module imports pyarrow and numpy only; torch and datasets where they are used.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs import reader_decode, reader_state
from jobs.generate.holds import DEFAULT_LEASE_TIMEOUT_S, Lease, retirement_pending
from jobs.generate.storage import Storage
from jobs.generate.verify import inspect, open_committed
from jobs.reader_state import RowGroup
from registry import tracking
from vae_core.errors import UsageError, VaegenError

if TYPE_CHECKING:
    import datasets
    import ray.data

COLUMNS = ("sample_id", "seed", "z", "label", "x")
SOURCES = ("stored", "decode")  # torch(source=...): read the parts, or regenerate rows from the manifest's recipe


def x_numpy(
    column: pa.Array | pa.ChunkedArray, shape: Sequence[int] | None = None, dtype: str | None = None
) -> np.ndarray:
    """x as one writable (N, *shape) array, whatever its layout; `shape` and `dtype` are needed
    only for fixed-size binary rows (the manifest's `sample_shape` and `dtype`)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = [_x_view(chunk, shape, dtype) for chunk in chunks]
    return np.concatenate(views) if views else np.empty((0, *(shape or ())), dtype)  # one copy, writable


def _x_view(array: pa.Array, shape: Sequence[int] | None, dtype: str | None) -> np.ndarray:
    """A read-only (N, *shape) view of one chunk's buffers."""
    if isinstance(array.type, pa.FixedShapeTensorType):  # formats 1 and 2
        shape, array = array.type.shape, array.storage
    if pa.types.is_fixed_size_binary(array.type):  # --layout binary
        if shape is None or dtype is None:
            raise UsageError(
                "x is stored as fixed-size binary rows (--layout binary): pass its shape and dtype "
                "(the manifest's sample_shape and dtype)"
            )
        count = len(array) * math.prod(shape)
        return np.frombuffer(
            array.buffers()[1], dtype=dtype, count=count, offset=array.offset * array.type.byte_width
        ).reshape(-1, *shape)
    sizes = []
    while pa.types.is_fixed_size_list(array.type):  # format 3: one level per dimension
        sizes.append(array.type.list_size)
        array = array.flatten()
    return array.to_numpy().reshape(-1, *(shape or sizes))


def shaped_x(batch: pa.Table) -> pa.Table:
    """x as Arrow's fixed-shape tensor, zero-copy: Ray Data hands out only that type as (N, *shape)
    arrays. `ray.data.read_parquet(DIR).map_batches(shaped_x, batch_format="pyarrow")`."""
    index = batch.schema.get_field_index("x")
    field = batch.schema.field(index)
    metadata = field.metadata or {}
    shape = [int(size) for size in metadata[b"shape"].decode().split(",")] if b"shape" in metadata else None
    dtype = metadata[b"dtype"].decode() if b"dtype" in metadata else None
    chunks = [
        pa.FixedShapeTensorArray.from_numpy_ndarray(_x_view(chunk, shape, dtype))
        for chunk in batch.column(index).chunks
    ]
    column = pa.chunked_array(chunks) if chunks else batch.column(index)
    return batch.set_column(index, pa.field("x", column.type, nullable=False, metadata=field.metadata), column)


def ray_dataset(location: str, **read_options: Any) -> ray.data.Dataset:
    """A dataset folder as a Ray Dataset whose batches hold x as (B, *shape) arrays (shaped_x).

    Ray is reached as `vaegen generate` reaches it (jobs.generate.ray_session.connect): RAY_ADDRESS when set,
    else a private local Ray. A plain ray.data.read_parquet would join whatever /tmp/ray/ray_current_cluster
    names, and hangs when a killed cluster left that file behind."""
    import ray.data

    from jobs.generate import ray_session

    ray_session.connect()
    return ray.data.read_parquet(location, **read_options).map_batches(shaped_x, batch_format="pyarrow")


def nested_x(column: pa.ChunkedArray, shape: Sequence[int], dtype: str) -> pa.ChunkedArray:
    """x of any layout as format 3 stores it: nested fixed-size lists, one level per dimension."""
    chunks = []
    for chunk in column.chunks:
        view = _x_view(chunk, shape, dtype)
        nested = pa.array(view.reshape(-1))
        for size in reversed(view.shape[1:]):
            nested = pa.FixedSizeListArray.from_arrays(nested, size)
        chunks.append(nested)
    return pa.chunked_array(chunks)


def columns_numpy(table: pa.Table, shape: Sequence[int], dtype: str) -> dict[str, np.ndarray]:
    """Every column as a writable numpy array: x (N, *shape), z (N, latent_dim), the others (N,)."""
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "x":
            out[name] = x_numpy(column, shape, dtype)
        elif name == "z":
            width = column.type.list_size
            out[name] = np.concatenate([chunk.flatten().to_numpy().reshape(-1, width) for chunk in column.chunks])
        else:
            out[name] = np.concatenate([chunk.to_numpy() for chunk in column.chunks])
    return out


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A committed dataset: where it is, its manifest, and ways to read it."""

    location: str
    manifest: dict[str, Any]
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
        return self.manifest["n"]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["sample_shape"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest["labels"])

    @property
    def recipe_only(self) -> bool:
        """A manifest without parts (`vaegen generate --recipe-only`): rows exist only as torch(source="decode")."""
        return reader_decode.is_recipe(self.manifest)

    @property
    def parts(self) -> list[str]:
        if self.recipe_only:  # every reader of parts goes through here
            raise UsageError(f"{self.location} is recipe-only (no parts): read it with torch(source='decode')")
        return [entry["name"] for entry in self.manifest["files"]]

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
            "z": datasets.Sequence(datasets.Value("float32"), length=self.manifest["latent_dim"]),
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

        lineage.log_consumed_dataset(record, storage.location(dataset_id))
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


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This reader's place among distributed ranks, as given to Dataset.torch(): both or neither (None asks
    torch.distributed, see torch_rank_and_world_size)."""

    rank: int | None = None
    world_size: int | None = None


def torch_rank_and_world_size(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Given ones win; else torch.distributed's when it is initialised (call init_process_group
    before building the dataset); else one process."""
    if (rank is None) != (world_size is None):
        raise UsageError("pass both rank and world_size, or neither (then torch.distributed's are used)")
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise UsageError(f"rank must lie in [0, world_size = {world_size}), got {rank}")
        return rank, world_size
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RowStream(reader_state.Resumable):
    """The rows of one epoch, split over distributed ranks and DataLoader workers (TorchDataset
    is this plus torch's IterableDataset base class).

    An epoch is the dataset's row groups in an order (shuffled from (seed, epoch) when asked,
    identical on every rank and worker), each row group's rows in an order (shuffled from
    (seed, epoch, row group)), laid end to end: n positions. Reader slot s of S (S = ranks x
    workers, s = rank x workers + worker) takes positions [s n / S, (s + 1) n / S): every row once
    per epoch across all of them, shares within one row of each other, and each reader holds one
    row group at a time. state_dict() / load_state_dict() resume mid-epoch, at the same or another
    world size (jobs/reader_state.py). With source="decode" the rows are regenerated from the
    manifest's recipe instead of read (jobs/reader_decode.py), in the same order and split.
    """

    def __init__(
        self,
        dataset: Dataset,
        columns: list[str],
        *,
        shuffle: bool,
        seed: int,
        batch_size: int | None,
        ranks: Ranks = Ranks(),
        source: str = "stored",
        device: str = "cpu",
    ):
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"batch_size must be a positive integer or None, got {batch_size}")
        if source not in SOURCES:
            raise UsageError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.source = source
        self.decoded = reader_decode.DecodedRows(dataset.manifest, device) if source == "decode" else None
        self.dataset = dataset
        self.columns = columns
        self.shuffle = shuffle
        self.seed = seed
        # None: one row at a time (DataLoader batches); else batches (DataLoader(batch_size=None))
        self.batch_size = batch_size
        # here, in the training process: DataLoader workers are other processes, outside the process group
        self.rank, self.world_size = torch_rank_and_world_size(ranks.rank, ranks.world_size)
        # here, once: DataLoader workers get a copy, not a footer read each
        self.row_groups = self.decoded.row_groups() if self.decoded else dataset.row_groups()
        self.n = sum(group.rows for group in self.row_groups)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch's iteration, as with DistributedSampler (workers copy the stream at
        each epoch's start unless the DataLoader has persistent_workers)."""
        self.epoch = epoch

    def plan(self, slot: int, slots: int) -> Iterator[tuple[int, np.ndarray]]:
        """(row group, its rows to read in order) for reader slot `slot` of `slots` this epoch."""
        return self.plan_ranges(reader_state.split_evenly([(0, self.n)], slots)[slot])

    def plan_ranges(self, ranges: Sequence[tuple[int, int]]) -> Iterator[tuple[int, np.ndarray]]:
        """(row group, its rows to read in order) for position ranges of this epoch's sequence, made as they
        are read: a recipe of 10**9 rows has 244,141 row groups."""
        groups = len(self.row_groups)
        order = (
            np.random.default_rng([self.seed, self.epoch]).permutation(groups) if self.shuffle else np.arange(groups)
        )
        sizes = np.array([self.row_groups[index].rows for index in order], dtype=np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        for low, high in ranges:
            for position in range(int(np.searchsorted(ends, low, side="right")), groups):
                first, last = max(low, int(starts[position])), min(high, int(ends[position]))
                if first >= last:
                    break
                group = int(order[position])
                within = (
                    np.random.default_rng([self.seed, self.epoch, group]).permutation(int(sizes[position]))
                    if self.shuffle
                    else np.arange(sizes[position])
                )
                yield group, within[first - starts[position] : last - starts[position]]

    def blocks(self, slot: int, slots: int) -> Iterator[dict[str, np.ndarray]]:
        """This slot's rows as numpy blocks, one per row group it touches; one part open at a time."""
        return self.blocks_of(self.plan(slot, slots))

    def blocks_of(self, plan: Iterator[tuple[int, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        """The planned rows as numpy blocks, one per (row group, rows); one part open at a time."""
        if self.source == "decode":
            yield from self.decoded.blocks(plan, self.row_groups, self.columns)
            return
        part, parquet = None, None
        try:
            for group, rows in plan:
                where = self.row_groups[group]
                if where.part != part:
                    if parquet is not None:
                        parquet.close()
                    part, parquet = where.part, self.dataset.parquet_file(where.part)
                table = parquet.read_row_group(where.index, columns=self.columns).take(rows)
                yield columns_numpy(table, self.dataset.sample_shape, self.dataset.dtype)
        finally:
            if parquet is not None:
                parquet.close()

    def identity(self) -> dict[str, Any]:
        """What a saved reader state must match to resume this stream (jobs/reader_state.py)."""
        return {
            "dataset_id": self.dataset.dataset_id,
            "n": self.n,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
        }

    def reader_slot(self) -> tuple[int, int]:
        """(slot, slots) of this process: slot = rank x DataLoader workers + worker."""
        from torch.utils.data import get_worker_info

        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        return self.rank * workers + worker_id, self.world_size * workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch

        blocks = self.blocks_of(self.plan_ranges(self.start(*self.reader_slot())))
        for block in _rebatched(blocks, self.batch_size) if self.batch_size else blocks:
            tensors = {
                name: torch.from_numpy(values.astype(np.int64) if name == "label" else values)  # losses want int64
                for name, values in block.items()
            }
            rows = len(tensors[self.columns[0]])
            if self.batch_size:
                self.advance(rows)  # before the yield: a state taken after the batch leaves counts it
                yield tensors
            else:
                for row in range(rows):
                    self.advance(1)
                    yield {name: values[row] for name, values in tensors.items()}
        self.finish()


def _rebatched(blocks: Iterator[dict[str, np.ndarray]], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of any size -> blocks of batch_size rows (views; the last one may be shorter)."""
    carry: dict[str, np.ndarray] | None = None
    for block in blocks:
        if carry is not None:
            block = {name: np.concatenate([carry[name], values]) for name, values in block.items()}
        rows = len(next(iter(block.values())))
        whole = rows - rows % batch_size
        for start in range(0, whole, batch_size):
            yield {name: values[start : start + batch_size] for name, values in block.items()}
        carry = {name: values[whole:] for name, values in block.items()} if whole < rows else None
    if carry is not None:
        yield carry


def torch_dataset_class() -> type:
    """TorchDataset, defined on first use so that importing this module never imports torch."""
    if "TorchDataset" not in globals():
        from torch.utils.data import IterableDataset

        class TorchDataset(RowStream, IterableDataset):
            """A torch IterableDataset of a dataset's rows: dicts of tensors (x (H, W) in the stored
            dtype, label int64), streamed a row group at a time; see RowStream for the sharding."""

        TorchDataset.__module__, TorchDataset.__qualname__ = __name__, "TorchDataset"  # pickled by name
        globals()["TorchDataset"] = TorchDataset
    return globals()["TorchDataset"]


if TYPE_CHECKING:  # the static name of the class torch_dataset_class() builds on first use (for annotations)
    from torch.utils.data import IterableDataset

    class TorchDataset(RowStream, IterableDataset): ...


def __getattr__(name: str) -> Any:
    """`jobs.reader.TorchDataset` by name, as DataLoader workers started with spawn unpickle it."""
    if name == "TorchDataset":
        return torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
