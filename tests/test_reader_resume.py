"""The torch reader resumed mid-epoch (jobs/reader_state.py): from its own state in a plain loop, through
torchdata's StatefulDataLoader with 0, 1 and 2 workers, and at another world size (2 gloo ranks resumed as 3,
2 workers resumed as 1). A reader "killed" at a seeded random step leaves only its saved state behind: the
resumed run builds a new dataset object and loader from the folder and that state."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from jobs import reader, reader_state
from tiny_datasets import labelled_spec, tiny_decoder, write_dataset
from vae_core.errors import UsageError

N = 1_000


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> reader.Dataset:
    """1,000 labelled rows in 4 parts of 300 rows: 12 row groups of 128 or fewer rows."""
    config, state = tiny_decoder(num_classes=10)
    return reader.open_dataset(str(write_dataset(tmp_path_factory.mktemp("labelled"), labelled_spec(), config, state)))


def ids_of(batches) -> list[int]:
    return [int(value) for batch in batches for value in np.atleast_1d(batch["sample_id"].numpy())]


# ---------------------------------------------------------------- the pure state arithmetic


def test_ranges_split_skip_and_merge():
    assert reader_state.split_evenly([(0, 10)], 3) == [[(0, 3)], [(3, 6)], [(6, 10)]]
    assert reader_state.split_evenly([(0, 2), (5, 9)], 2) == [[(0, 2), (5, 6)], [(6, 9)]]
    assert reader_state.skip([(0, 2), (5, 9)], 3) == [(6, 9)]
    identity = {"dataset_id": "d", "n": 10, "seed": 1, "shuffle": True, "epoch": 4}
    states = [
        reader_state.slot_state(identity, slot, 2, ranges, consumed)
        for slot, (ranges, consumed) in enumerate([([(0, 5)], 2), ([(5, 10)], 5)])
    ]
    merged = reader_state.merge_states(json.loads(json.dumps(states)))  # survives JSON
    assert merged["remaining"] == [[2, 5]] and merged["epoch"] == 4
    with pytest.raises(UsageError, match=r"one state per reader slot 0..1 .*missing \[1\]"):
        reader_state.merge_states(states[:1])
    with pytest.raises(UsageError, match="different runs"):
        reader_state.merge_states([states[0], {**states[1], "seed": 2}])
    with pytest.raises(UsageError, match="slot 0 of 2, loaded into slot 1 of 3"):
        reader_state.resumed_ranges(states[0], identity, 1, 3)
    with pytest.raises(UsageError, match="not a vaegen reader state"):
        reader_state.merge_states([{"epoch": 1}])


# ---------------------------------------------------------------- one process, a plain loop


@pytest.mark.parametrize("batch_size", [None, 96])
def test_a_plain_loop_resumes_where_it_stopped(labelled, batch_size):
    def stream():
        return labelled.torch(columns=["sample_id"], shuffle=True, seed=3, batch_size=batch_size)

    uninterrupted = stream()
    uninterrupted.set_epoch(1)
    expected = ids_of(uninterrupted)
    killed = stream()
    killed.set_epoch(1)
    steps = random.Random(batch_size).randrange(1, 10 if batch_size else N)  # a random step, the same every run
    iterator = iter(killed)
    seen = ids_of(next(iterator) for _ in range(steps))
    saved = json.loads(json.dumps(killed.state_dict()))  # what a checkpoint keeps
    assert saved["epoch"] == 1 and saved["consumed"] == len(seen)
    resumed = stream()  # a new process: epoch and position come from the state
    resumed.load_state_dict(saved)
    assert seen + ids_of(resumed) == expected
    assert ids_of(resumed) == expected  # the resumed epoch is done: the next pass is a whole epoch, as before
    with pytest.raises(UsageError, match="saved for .*'seed': 3.*not .*'seed': 4"):
        labelled.torch(columns=["sample_id"], shuffle=True, seed=4).load_state_dict(saved)


# ---------------------------------------------------------------- torchdata's StatefulDataLoader


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_a_stateful_dataloader_killed_at_a_random_step_resumes_with_the_same_remaining_rows(labelled, workers):
    def loader() -> StatefulDataLoader:
        stream = labelled.torch(columns=["sample_id", "x", "label"], shuffle=True, seed=7, rank=1, world_size=2)
        return StatefulDataLoader(stream, batch_size=32, num_workers=workers)

    expected = ids_of(loader())
    assert len(expected) == N // 2
    steps = random.Random(workers).randrange(1, len(expected) // 32)
    first = loader()
    seen = []
    for step, batch in enumerate(first):
        seen += ids_of([batch])
        if step + 1 == steps:
            saved = first.state_dict()
            break
    del first  # killed: its workers go; only `saved` is left
    torch.save(saved, buffer := __import__("io").BytesIO())
    buffer.seek(0)
    resumed = loader()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    rest = list(resumed)
    assert seen + ids_of(rest) == expected
    labels = torch.cat([batch["label"] for batch in rest]).numpy()
    np.testing.assert_array_equal(labels, np.array(ids_of(rest)) % 10)  # rows stay whole


def test_a_loop_killed_with_sigkill_resumes_from_its_last_checkpoint(labelled, tmp_path):
    """A real process, 2 DataLoader workers, killed (SIGKILL) at a random step after its checkpoint."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    steps = random.Random(5).randrange(2, N // 32)
    checkpoint = tmp_path / "checkpoint.pt"
    script = Path(__file__).with_name("reader_loop.py")
    done = subprocess.run(
        [sys.executable, str(script), labelled.location, str(steps), "2", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    saved = torch.load(checkpoint, weights_only=True)
    stream = labelled.torch(columns=["sample_id"], shuffle=True, seed=7)  # a new process would build it so
    resumed = StatefulDataLoader(stream, batch_size=32, num_workers=2)
    resumed.load_state_dict(saved["loader"])
    uninterrupted = labelled.torch(columns=["sample_id"], shuffle=True, seed=7)
    expected = ids_of(StatefulDataLoader(uninterrupted, batch_size=32, num_workers=2))
    assert len(saved["seen"]) == steps * 32 and saved["seen"] + ids_of(resumed) == expected


def test_two_workers_resumed_as_one_read_every_row_of_the_epoch_once(labelled):
    """A change of DataLoader workers: the slots' states are merged and the rest is split anew."""
    stream = labelled.torch(columns=["sample_id"], shuffle=True, seed=5)
    first = StatefulDataLoader(stream, batch_size=50, num_workers=2)
    seen = []
    for step, batch in enumerate(first):
        seen += ids_of([batch])
        if step == 6:
            saved = first.state_dict()
            break
    del first
    merged = reader_state.merge_states(reader_state.loader_states(saved))
    resumed = labelled.torch(columns=["sample_id"], shuffle=True, seed=5)
    resumed.load_state_dict(merged)
    rest = ids_of(StatefulDataLoader(resumed, batch_size=50, num_workers=1))
    assert len(seen) == 350 and sorted(seen + rest) == list(range(N))


def test_two_gloo_ranks_resumed_as_three_read_every_row_of_the_epoch_once(labelled, tmp_path):
    """A real gloo group of 3 processes: ranks 0 and 1 read as a world of 2 for a random number of steps,
    gather their states (all_gather_object) into one checkpoint; then all 3 resume it as a world of 3."""
    import torch.multiprocessing

    from ray_cluster import free_port  # tests/ is on sys.path
    from torch_ranks import read_resumed

    steps = random.Random(23).randrange(1, 10)
    torch.multiprocessing.spawn(read_resumed, args=(3, free_port(), labelled.location, str(tmp_path), steps), nprocs=3)
    before = [np.load(tmp_path / f"before-{rank}.npy") for rank in (0, 1)]
    after = [np.load(tmp_path / f"after-{rank}.npy") for rank in (0, 1, 2)]
    assert [len(share) for share in before] == [steps * 20] * 2
    assert max(map(len, after)) - min(map(len, after)) <= 1  # DDP ranks stay in step
    assert np.array_equal(np.sort(np.concatenate(before + after)), np.arange(N))
    checkpoint = json.loads((tmp_path / "checkpoint.json").read_text())
    assert checkpoint["remaining"] == [[steps * 20, 500], [500 + steps * 20, 1_000]]
