"""Decode on read: a dataset's rows regenerated from its manifest's recipe (the pinned model version,
the seed scheme, the labels) instead of read from its parts, for `Dataset.torch(source="decode")`.

The weights are read once, in the process that builds the reader (without pickle, checked against
the run id the manifest records); DataLoader workers get a copy and build the decoder once each.
Rows are decoded on the job's own block grid (whole blocks of `block_rows` aligned to absolute
sample ids, as jobs/generate/parts.py writes them), so on a CPU they are bit for bit the stored
rows; on another device they differ in the last bits, and the reader warns.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from jobs.generate.recipe import is_recipe  # noqa: F401 (re-exported for the reader)
from jobs.generate.records import Manifest
from jobs.generate.spec import DatasetSpec, part_name
from jobs.reader_state import RowGroup
from vae_core.sampling import block_ranges


class DeviceBitsWarning(UserWarning):
    """Rows decoded on a device whose kernels differ from the one that made the dataset."""


class DecodedRows:
    """The rows of a manifest's recipe, by row group: what RowStream reads when source="decode"."""

    def __init__(self, record: Manifest, device: str):
        from jobs.generate.verify import registered_weights, spec_of

        self.spec = spec_of(record)
        self.device = device
        self.config, self.state = registered_weights(record, "decoding on read")
        made_on = record.execution.get("device", "cpu")
        if device.split(":")[0] != made_on:
            warnings.warn(
                f"decoding on {device}, this dataset was made on {made_on}: x differs from the stored rows "
                "in the last bits (the kernels differ); ids, seeds, z and labels are exact",
                DeviceBitsWarning,
                stacklevel=3,
            )
        self._predictor = None
        self._cached: tuple[int, dict[str, np.ndarray]] | None = None  # the last decoded block

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_predictor": None, "_cached": None}  # workers build their own decoder

    def row_groups(self) -> list[RowGroup]:
        """The row groups the job writes for this spec: each part's stretch of each decode block."""
        return list(spec_row_groups(self.spec))

    def blocks(
        self, plan: Iterator[tuple[int, np.ndarray]], row_groups: Sequence[RowGroup], columns: Sequence[str]
    ) -> Iterator[dict[str, np.ndarray]]:
        """The planned rows, decoded: one block of numpy columns per (row group, rows)."""
        firsts = np.concatenate([[0], np.cumsum([group.rows for group in row_groups])])
        for group, rows in plan:
            first = int(firsts[group])
            block_start = first // self.spec.block_rows * self.spec.block_rows
            decoded = self._block(block_start)
            keep = first - block_start + np.asarray(rows, dtype=np.int64)
            yield {name: decoded[name][keep] for name in columns}

    def _block(self, block_start: int) -> dict[str, np.ndarray]:
        """The whole decode block starting at `block_start`, as the job decodes it (past n too: same bits)."""
        if self._cached is None or self._cached[0] != block_start:
            if self._predictor is None:
                from jobs.generate.predictor import Predictor

                self._predictor = Predictor(self.spec, self.config, self.state, self.device)
            ids = np.arange(block_start, block_start + self.spec.block_rows, dtype=np.int64)
            self._cached = (block_start, self._predictor({"sample_id": ids}))
        return self._cached[1]


@functools.lru_cache(maxsize=4)
def spec_row_groups(spec: DatasetSpec) -> list[RowGroup]:
    """Row groups in sample id order: shard k's ids cut at every multiple of block_rows (PartWriter's grid).
    Cached: 10**9 rows make 244,141 of them, about a second to list."""

    groups = []
    for shard in range(spec.num_shards):
        start, stop = spec.shard_range(shard)
        for index, (block_start, block_stop) in enumerate(block_ranges(start, stop, spec.block_rows)):
            groups.append(RowGroup(part_name(shard), index, min(stop, block_stop) - max(start, block_start)))
    return groups
