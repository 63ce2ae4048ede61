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

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        stream = open_dataset(location, verify=False).torch(
            columns=["sample_id"], shuffle=True, seed=2
        )  # rank from the group
        ids = np.concatenate(
            [batch["sample_id"].numpy() for batch in DataLoader(stream, batch_size=100, num_workers=2)]
        )
        np.save(Path(out) / f"rank-{rank}.npy", ids)
    finally:
        torch.distributed.destroy_process_group()


def read_resumed(rank: int, world_size: int, port: int, location: str, out: str, steps: int) -> None:
    """Ranks 0 and 1 read `steps` batches of 20 as a world of 2 and checkpoint their merged state
    (out/checkpoint.json); then every rank of the group resumes it and saves the rest (out/after-R.npy)."""
    import json

    from jobs.reader import open_dataset
    from jobs.reader_state import merge_states

    address = f"tcp://127.0.0.1:{port}"
    torch.distributed.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size)
    try:
        dataset = open_dataset(location, verify=False)
        state = None
        if rank < 2:
            stream = dataset.torch(columns=["sample_id"], shuffle=True, seed=2, rank=rank, world_size=2)
            batches = iter(DataLoader(stream, batch_size=20))
            ids = [next(batches)["sample_id"].numpy() for _ in range(steps)]
            np.save(Path(out) / f"before-{rank}.npy", np.concatenate(ids))
            state = stream.state_dict()
        states = [None] * world_size
        torch.distributed.all_gather_object(states, state)
        checkpoint = merge_states([saved for saved in states if saved is not None])
        if rank == 0:
            (Path(out) / "checkpoint.json").write_text(json.dumps(checkpoint))
        resumed = dataset.torch(columns=["sample_id"], shuffle=True, seed=2)  # rank and world size from the group
        resumed.load_state_dict(checkpoint)
        ids = [batch["sample_id"].numpy() for batch in DataLoader(resumed, batch_size=20)]
        np.save(Path(out) / f"after-{rank}.npy", np.concatenate(ids))
    finally:
        torch.distributed.destroy_process_group()
