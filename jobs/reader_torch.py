"""TorchDataset: RowStream (jobs/reader_stream.py) with torch's IterableDataset as base class.

A module of its own because it imports torch as it is imported: jobs.reader imports it on first
use, so `import jobs.reader` stays free of torch, and DataLoader workers started with spawn
unpickle the class by its name here.
"""

from __future__ import annotations

from torch.utils.data import IterableDataset

from jobs.reader_stream import RowStream


class TorchDataset(RowStream, IterableDataset):
    """A torch IterableDataset of a dataset's rows: dicts of tensors (x (H, W) in the stored
    dtype, label int64), streamed a row group at a time; see RowStream for the sharding."""
