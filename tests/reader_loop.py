"""A training loop that checkpoints its StatefulDataLoader after every step and is killed (SIGKILL, no clean-up)
after `steps` steps: `python tests/reader_loop.py DATASET STEPS WORKERS CHECKPOINT` (tests/test_reader_resume.py)."""

from __future__ import annotations

import os
import signal
import sys

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from jobs.reader import open_dataset


def main(location: str, steps: int, workers: int, checkpoint: str) -> None:
    stream = open_dataset(location, verify=False).torch(columns=["sample_id"], shuffle=True, seed=7)
    loader = StatefulDataLoader(stream, batch_size=32, num_workers=workers)
    seen: list[int] = []
    for step, batch in enumerate(loader):
        seen += batch["sample_id"].tolist()  # the training step
        torch.save({"loader": loader.state_dict(), "seen": seen}, checkpoint + ".tmp")
        os.replace(checkpoint + ".tmp", checkpoint)
        if step + 1 == steps:
            os.kill(os.getpid(), signal.SIGKILL)  # preempted between two steps


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
