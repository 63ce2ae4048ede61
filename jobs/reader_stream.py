"""One epoch of a dataset's rows for torch, split over distributed ranks and DataLoader workers:
RowStream, which jobs/reader_torch.py's TorchDataset gives torch's base class. Where a reader stands
in the epoch is jobs/reader_state.py's; rows decoded instead of read are jobs/reader_decode.py's.
Importing it does not import torch: the methods that use torch import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jobs import reader_decode, reader_state
from jobs.reader_arrow import columns_numpy
from vae_core.errors import UsageError

SOURCES = ("stored", "decode")  # torch(source=...): read the parts, or regenerate rows from the manifest's recipe


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
        dataset: Any,  # a jobs.reader.Dataset, which imports this module: not imported back (no cycle)
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
