"""Prune racing readers and taggers, with real processes, on a local root and on moto's S3 server.

Readers in other processes open datasets (`open_dataset`, which takes a lease) and read every row, in a loop,
while this process prunes the same root again and again with `--keep 1`'s selection; a tagger process tags
doomed datasets meanwhile. Whatever the interleaving, a reader either is refused at open (the dataset is gone
or being pruned) or reads every row of it: never a dataset pruned under it. A tag either stands on a dataset
that survives, or its tagger was told the dataset was pruned. The retirement notices
(jobs/generate/holds.py) are what make this hold; without them a reader that leased after prune read the
holds lost its dataset mid-read."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from jobs.generate import holds
from jobs.generate.published import LATEST, committed_datasets
from jobs.generate.storage import Storage
from jobs.prune import PRUNED, prune
from tiny_datasets import tiny_decoder, tiny_spec, write_dataset  # tests/ is on sys.path (rootdir conftest)
from vae_core.errors import VaegenError

DATASETS = 10  # the last one is `latest`; prune dooms the other nine
READERS = 3
# Prune rounds, each dooming whatever is neither newest nor held; readers and the tagger keep some alive. Fewer
# on moto, whose server shares this process's interpreter with the pruning (a round takes ~1 s there).
PRUNE_ROUNDS = {"local": 40, "s3": 4}
PAUSE_S = {"local": 0.0, "s3": 0.05}  # between a reader's opens: moto answers every reader in this process too
TIMEOUT_S = 120

READER = """
import json, sys, time
from pathlib import Path
from jobs.reader import open_dataset
from vae_core.errors import VaegenError
root, ids, stop, report = sys.argv[1], sys.argv[2].split(","), Path(sys.argv[3]), Path(sys.argv[4])
pause_s = float(sys.argv[5])
tally = {"read": 0, "refused": 0}
while not stop.exists():
    for dataset_id in ids:
        time.sleep(pause_s)
        try:
            dataset = open_dataset(f"{root}/{dataset_id}", verify=False)
        except VaegenError:
            tally["refused"] += 1
            continue
        with dataset:
            for _ in range(2):  # twice, with a pause: a prune that missed the lease would delete it meanwhile
                assert dataset.read(["sample_id"]).num_rows == dataset.n, dataset_id
                time.sleep(0.01)
        tally["read"] += 1
    report.write_text(json.dumps(tally))
report.write_text(json.dumps(tally))
"""

TAGGER = """
import json, sys
from pathlib import Path
from jobs.generate import holds
from jobs.generate.storage import Storage
from vae_core.errors import UsageError, VaegenError
storage, ids, report = Storage(sys.argv[1]), sys.argv[2].split(","), Path(sys.argv[3])
tagged, refused = [], []
for round in range(3):
    for dataset_id in ids:
        name = f"keep-{dataset_id[-12:-3]}-{round}"
        try:
            holds.set_tag(storage, dataset_id, name, "tagger")
            tagged.append([name, dataset_id])
        except (UsageError, VaegenError):
            refused.append(dataset_id)
report.write_text(json.dumps({"tagged": tagged, "refused": refused}))
"""


def make_root(location: str, scratch: Path) -> list[str]:
    """DATASETS committed tiny datasets (written locally, copied to the root), `latest` naming the last one."""
    config, state = tiny_decoder()
    ids = []
    for seed in range(DATASETS):
        folder = write_dataset(scratch, tiny_spec(n=200, rows_per_shard=100, seed=seed), config, state)
        ids.append(folder.name)
    filesystem, path = pafs.FileSystem.from_uri(location)
    for dataset_id in ids:
        filesystem.create_dir(f"{path}/{dataset_id}")
        pafs.copy_files(
            str(scratch / dataset_id),
            f"{path}/{dataset_id}",
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=filesystem,
        )
    storage = Storage(location)
    ordered = [dataset_id for dataset_id, _ in committed_datasets(storage)[0]]  # oldest first, as prune sees them
    assert sorted(ordered) == sorted(ids)
    storage.write_json({"dataset_id": ordered[-1]}, LATEST)
    return ordered


def run_race(location: str, tmp_path: Path, kind: str) -> None:
    ids = make_root(location, tmp_path / "scratch")
    storage, newest = Storage(location), ids[-1]
    doomed = [dataset_id for dataset_id in ids if dataset_id != newest]
    stop = tmp_path / "stop"
    python = [sys.executable, "-c"]
    reports = [tmp_path / f"reader-{index}.json" for index in range(READERS)]
    # Each reader walks the doomed datasets in its own order, so that leases come and go all over the root.
    readers = [
        subprocess.Popen(
            [
                *python,
                READER,
                location,
                ",".join(doomed if index % 2 else doomed[::-1]),
                str(stop),
                str(report),
                str(PAUSE_S[kind]),
            ]
        )
        for index, report in enumerate(reports)
    ]
    tagger_report = tmp_path / "tagger.json"
    tagger = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not all(report.exists() for report in reports):  # every reader is reading
            assert time.monotonic() < deadline and all(reader.poll() is None for reader in readers)
            time.sleep(0.05)
        tagger = subprocess.Popen([*python, TAGGER, location, ",".join(doomed[1::2]), str(tagger_report)])
        pruned: set[str] = set()
        for _ in range(PRUNE_ROUNDS[kind]):
            gone, problems, _ = prune(storage, keep=1, protected=newest)
            assert problems == []
            pruned.update(gone)
        assert tagger.wait(TIMEOUT_S) == 0
    finally:
        stop.touch()
        codes = [reader.wait(TIMEOUT_S) for reader in readers]
        if tagger is not None and tagger.poll() is None:
            tagger.kill()
    assert codes == [0] * READERS, "a reader lost its dataset mid-read (its traceback is above)"
    tallies = [json.loads(report.read_text()) for report in reports]
    assert sum(tally["read"] for tally in tallies) > 0, tallies

    # Every tag that its tagger was told stands names a dataset still committed (or pruned after the tag moved on).
    tags = holds.tags(storage)
    remaining = {dataset_id for dataset_id, _ in committed_datasets(storage)[0]}
    assert all(record.dataset_id in remaining for record in tags.values()), (tags, remaining)
    assert set(pruned).isdisjoint(remaining)
    # Readers gone, tags removed: the next prune deletes all but the newest, and leaves no notice behind.
    for name, record in tags.items():
        holds.delete_tag(storage, name, record.dataset_id)
    prune(storage, keep=1, protected=newest)
    assert [dataset_id for dataset_id, _ in committed_datasets(storage)[0]] == [newest]
    assert storage.list(holds.RETIRING) == [] and not any(name.startswith(PRUNED) for name in storage.list())
    assert [name for name in storage.list(holds.LEASES) if name.endswith(".json")] == []
    assert len(pruned) >= 1, "no prune round ever deleted a dataset: the race was not run"


def test_readers_and_taggers_racing_prune_on_a_local_root(tmp_path):
    run_race(str(tmp_path / "root"), tmp_path, "local")


def test_readers_and_taggers_racing_prune_on_an_object_store(moto_s3, tmp_path):
    run_race(f"{moto_s3}/race", tmp_path, "s3")


def test_a_notice_left_by_a_killed_prune_does_not_block_readers_and_is_cleared(tmp_path):
    ids = make_root(str(tmp_path / "root"), tmp_path / "scratch")
    storage = Storage(str(tmp_path / "root"))
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from jobs.generate import holds; "
            "from jobs.generate.storage import Storage; "
            "holds.announce_retirement(Storage(sys.argv[1]), [sys.argv[2]])",
            str(tmp_path / "root"),
            ids[0],
        ],
        check=True,
    )
    assert killed.returncode == 0 and storage.exists(holds.RETIRING, f"{ids[0]}.json")
    assert not holds.retirement_pending(storage, ids[0])  # its prune is gone: the notice does not count
    holds.announce_retirement(storage, [ids[1]])  # a live prune's (this process's) notice counts
    assert holds.retirement_pending(storage, ids[1])
    with pytest.raises(VaegenError, match="was pruned while it was being tagged"):
        holds.set_tag(storage, ids[1], "mine", "me")
    assert holds.tags(storage) == {}
    holds.withdraw_retirement(storage, ids[1])
    prune(storage, keep=DATASETS, protected=ids[-1])  # prunes nothing, clears the dead prune's notice
    assert storage.list(holds.RETIRING) == []
