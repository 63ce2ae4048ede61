"""A process of a real torch.distributed group (gloo on 127.0.0.1) that reads its share of a dataset through
the reader API: importable by name, as torch.multiprocessing.spawn needs, and light to import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.distributed
from torch.utils.data import DataLoader


def read_share(rank: int, world_size: int, port: int, location: str, out: str) -> None:
    """Save the sample ids this rank reads in one shuffled epoch (2 DataLoader workers) to out/rank-R.npy."""
    from jobs.reader import open_dataset

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        stream = open_dataset(location, verify=False).torch(columns=["sample_id"], shuffle=True, seed=2)  # rank from the group
        ids = np.concatenate([batch["sample_id"].numpy() for batch in DataLoader(stream, batch_size=100, num_workers=2)])
        np.save(Path(out) / f"rank-{rank}.npy", ids)
    finally:
        torch.distributed.destroy_process_group()
