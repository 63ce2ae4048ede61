"""A worker pool that grows with the cluster (`--num-workers MIN:MAX`, `auto`): a node joined to a real
`ray start` cluster mid-job receives shards, and the dataset is the same, byte for byte, as a fixed pool's.

To make "mid-job" certain whatever the machine's speed, the job's only first worker is stopped (SIGSTOP)
before its first shard: nothing can be written until the pool has grown onto the node that joins."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray
from ray.util.state import list_actors

from helpers import invoke
from jobs.generate.config import GROW_UNBOUNDED, EngineOptions, parse_num_workers
from jobs.generate.job import GenerateConfig, generate
from jobs.generate.manifest import MANIFEST
from ray_cluster import as_driver, ray_cluster
from vae_core.errors import UsageError

MODEL = "vae-decoder/1"
N, ROWS_PER_SHARD, SEED = 40_000, 2_000, 11
JOIN_TIMEOUT_S = 180  # a node's `ray start` and its workers' start-up (torch imports), on a loaded 2-core box


def test_num_workers_parses_n_bounds_and_auto():
    assert parse_num_workers(None) == (None, None)
    assert parse_num_workers("3") == (3, None)
    assert parse_num_workers("1:8") == (1, 8)
    assert parse_num_workers("auto") == (None, GROW_UNBOUNDED)
    for bad in ("0", "4:2", "x", "1:", "0:3"):
        with pytest.raises(UsageError, match="--num-workers"):
            parse_num_workers(bad)


def test_a_growing_pool_with_a_local_out_is_refused_in_one_line(untrained_version, tmp_path):
    done = invoke("generate", "--model", MODEL, "--n", "100", "--num-workers", "1:4", "--out", str(tmp_path / "o"))
    assert done.exit_code == 2, done.output
    errors = [line for line in done.output.splitlines() if line.startswith("vaegen: error: ")]
    assert len(errors) == 1 and "--num-workers 1:4 grows the pool" in errors[0] and "--shared-fs" in errors[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    done = invoke("generate", "--model", MODEL, "--n", "100", "--num-workers", "3:2", "--out", str(tmp_path / "o"))
    assert done.exit_code == 2 and "1 <= MIN <= MAX, got '3:2'" in done.output, done.output


@pytest.fixture
def cluster(untrained_version, monkeypatch) -> Iterator:
    """A one-node cluster (`ray start --head --num-cpus 1`) with this process as its driver (RAY_ADDRESS)."""
    with ray_cluster(head_cpus=1, worker_node_cpus=()) as started, as_driver(started, monkeypatch) as driving:
        yield driving


def run(root: Path, engine: EngineOptions, on_workers=None):
    config = GenerateConfig(n=N, model=MODEL, out=str(root), seed=SEED, rows_per_shard=ROWS_PER_SHARD, engine=engine)
    return generate(config, on_workers=on_workers)


def test_a_node_joining_mid_job_receives_shards_and_changes_no_byte(cluster, tmp_path):
    stopped: list[int] = []
    joined = threading.Event()

    def stop_the_first_worker_and_add_a_node(workers: list[Any]) -> None:
        assert len(workers) == 1  # the cluster's one CPU
        stopped.append(ray.get(workers[0].pid.remote()))
        os.kill(stopped[0], signal.SIGSTOP)  # nothing is written until the pool grows

        def join() -> None:
            try:
                cluster.add_node(2)
            finally:
                joined.set()

        threading.Thread(target=join, daemon=True).start()

    grown_root = tmp_path / "grown"
    try:
        result = run(
            grown_root,
            EngineOptions(num_workers=1, max_workers=3, shared_fs=True),
            on_workers=(stop_the_first_worker_and_add_a_node),
        )
    finally:
        if stopped:
            os.kill(stopped[0], signal.SIGCONT)
    assert joined.wait(JOIN_TIMEOUT_S)
    execution = result.manifest["execution"]
    assert execution["workers_added"] == 2 and execution["num_workers"] == 3 and execution["max_workers"] == 3
    # The head's one CPU held the stopped worker: the workers that wrote the parts ran on the node that joined.
    nodes = {actor.node_id for actor in list_actors(filters=[("class_name", "=", "ShardWorker")], detail=True)}
    assert len(nodes) == 2, nodes

    fixed = run(tmp_path / "fixed", EngineOptions(num_workers=1, shared_fs=True))
    assert fixed.dataset_id == result.dataset_id
    grown_parts = json.loads((Path(result.location) / MANIFEST).read_text())["files"]
    fixed_parts = json.loads((Path(fixed.location) / MANIFEST).read_text())["files"]
    assert grown_parts == fixed_parts  # names, rows, sizes and checksums: the same bytes
    assert pq.read_table(result.location).equals(pq.read_table(fixed.location))
