"""Faults on a two-node Ray cluster (`ray start` head + one joined node, tests/ray_cluster.py) during
real generate jobs: a poison shard whose worker is killed every time it writes it (as an OOM killer
would), a hung worker (SIGSTOP), and the second node lost mid-job (its raylet and everything under
it SIGKILLed). MLflow is conftest.py's SQLite store; output is a local folder shared by both nodes.
The node-loss test runs last: the module's cluster has one node fewer afterwards."""

from __future__ import annotations

import collections.abc
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from helpers import invoke, metric_value, scrape_metrics
from jobs.generate import card, ray_session
from jobs.generate.config import EngineOptions
from jobs.generate.croissant import CROISSANT
from jobs.generate.engine import Placement
from jobs.generate.job import GenerateConfig, dataset_spec, generate
from jobs.generate.manifest import MANIFEST
from jobs.generate.pool import MAX_SHARD_ATTEMPTS, WorkerPool
from jobs.generate.spec import FORMAT, part_name
from jobs.generate.storage import Storage
from ray_cluster import as_driver, ray_cluster, tagged_pids, wait_until
from registry import models
from vae_core.errors import VaegenError

pytestmark = pytest.mark.slow  # a two-node Ray cluster, jobs killed in the middle

MODEL = "vae-decoder/1"
N, R = 400_000, 25_000  # 16 parts of ~6 MB: a part takes long enough to be caught mid-write
POISON = 3
STALL_S = 8.0  # the hung-worker test's --stall-timeout
VAEGEN = str(Path(sys.executable).with_name("vaegen"))
SUBPROCESS_TIMEOUT_S = 300


# ---------------------------------------------------------------- helpers


def dataset_id(seed: int) -> str:
    return f"vae-decoder-v1-n{N}-seed{seed}-float32-f{FORMAT.rsplit('/', 1)[1]}"


def config(out: Path, seed: int, **engine_options: Any) -> GenerateConfig:
    return GenerateConfig(
        n=N,
        model=MODEL,
        out=str(out),
        seed=seed,
        rows_per_shard=R,
        engine=EngineOptions(num_workers=2, shared_fs=True, **engine_options),
    )


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def descendants(root_pid: int, pids: list[int]) -> list[int]:
    """root_pid and every process below it, among pids."""
    parent = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            parent[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = {root_pid}, [root_pid]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parent.items() if ppid == current and pid not in found]
        found.update(children)
        frontier.extend(children)
    return sorted(found)


class PartKiller(threading.Thread):
    """Kills whichever cluster process has a temporary file of part `shard` open, every time one appears:
    an OOM killer that always strikes the same shard."""

    def __init__(self, tag: str, directory: Path, shard: int):
        super().__init__(daemon=True)
        self.tag, self.directory, self.prefix = tag, directory, f".{part_name(shard)}."
        self.kills: list[int] = []
        self.stop = threading.Event()

    def holders(self, temporary: str) -> list[int]:
        found = []
        for pid in tagged_pids(self.tag):
            with contextlib.suppress(OSError):
                if any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(temporary) for fd in os.listdir(f"/proc/{pid}/fd")):
                    found.append(pid)
        return found

    def run(self) -> None:
        seen: set[str] = set()
        while not self.stop.wait(0.005):
            with contextlib.suppress(OSError):
                for name in os.listdir(self.directory):
                    if name.startswith(self.prefix) and name.endswith(".tmp") and name not in seen:
                        for pid in self.holders(name):
                            os.kill(pid, signal.SIGKILL)
                            self.kills.append(pid)
                            seen.add(name)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    """`ray start --head --num-cpus 1` on 127.0.0.1 and a second node joined with 1 CPU; stopped by pid."""
    with ray_cluster(head_cpus=1, worker_node_cpus=(1,)) as started:
        yield started


@pytest.fixture
def driver(cluster, monkeypatch) -> Iterator:
    """This process as a Ray driver of the cluster through RAY_ADDRESS, as a job on it would be."""
    with as_driver(cluster, monkeypatch) as driving:
        yield driving


# ---------------------------------------------------------------- tests


def run_with_a_poison_shard(cluster, untrained_version, tmp_path: Path, seed: int):
    """`vaegen generate` on the cluster while a PartKiller strikes every attempt at shard POISON."""
    out = tmp_path / f"out-{seed}"
    directory = out / dataset_id(seed)
    directory.mkdir(parents=True)
    killer = PartKiller(cluster.env.tag, directory, POISON)
    killer.start()
    command = [
        VAEGEN,
        "generate",
        "--model",
        MODEL,
        "--n",
        str(N),
        "--seed",
        str(seed),
        "--rows-per-shard",
        str(R),
        "--num-workers",
        "2",
        "--out",
        str(out),
        "--shared-fs",
    ]
    env = cluster.env.environ(RAY_ADDRESS=cluster.gcs_address, MLFLOW_TRACKING_URI=untrained_version.uri)
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        killer.stop.set()
        killer.join(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    return directory, killer, process, stdout, stderr


def test_a_poison_shard_fails_the_job_after_its_own_attempts_naming_it(cluster, untrained_version, tmp_path):
    # The killer is a thread of this process polling the folder; on a loaded box it can miss a part's few
    # hundred milliseconds and the shard then simply succeeds. That is the harness missing its fault, not the
    # product passing: run again with another seed (a dataset of its own, metrics with their own labels).
    for seed in (1, 11, 21):
        directory, killer, process, stdout, stderr = run_with_a_poison_shard(cluster, untrained_version, tmp_path, seed)
        if not (process.returncode == 0 and len(killer.kills) < MAX_SHARD_ATTEMPTS):
            break
    assert process.returncode == 1, stderr[-3000:]
    assert stdout == ""  # results only on stdout, and there are none: no "(raylet) ..." lines either
    errors = [line for line in stderr.splitlines() if line.startswith("vaegen: error: ")]
    assert len(errors) == 1, stderr[-3000:]  # Ray's own "(raylet) A worker died" lines may stay, on stderr
    assert f"shard {POISON} failed {MAX_SHARD_ATTEMPTS} times, last: its worker died" in errors[0], errors[0]
    assert f"--resume {directory}" in errors[0], errors[0]
    assert "Traceback" not in stderr and "Unhandled error" not in stderr, stderr[-3000:]
    assert "retries remaining" not in stderr, stderr[-3000:]  # the driver retries, not Ray
    assert len(killer.kills) == MAX_SHARD_ATTEMPTS, killer.kills  # it was tried 3 times, and stopped there
    assert not (directory / part_name(POISON)).exists() and not (directory / "_manifest.json").exists()
    # the driver's metrics, flushed as it exits: 2 retries, 3 workers lost (each attempt killed its worker)
    labels = {"dataset_id": dataset_id(seed), "model_name": "vae-decoder", "model_version": "1"}

    def exported() -> dict | None:
        samples = scrape_metrics(cluster.metrics_port)
        return samples if metric_value(samples, "ray_vaegen_workers_lost_total", **labels) else None

    samples = wait_until(exported, 30, "the job's metrics", interval_s=0.5)
    assert metric_value(samples, "ray_vaegen_shards_retried_total", **labels) == MAX_SHARD_ATTEMPTS - 1
    assert metric_value(samples, "ray_vaegen_workers_lost_total", **labels) == MAX_SHARD_ATTEMPTS

    # Only the poison shard's attempts cost worker restarts: none for the other shards, none beyond.
    from ray.util.state import list_actors, list_jobs

    job = next(
        job
        for job in list_jobs(address=cluster.dashboard_url, detail=True)
        if job.driver_info is not None and int(job.driver_info.pid) == process.pid
    )
    workers = list_actors(
        address=cluster.dashboard_url,
        detail=True,
        filters=[("class_name", "=", "ShardWorker"), ("job_id", "=", job.job_id)],
    )
    assert len(workers) == 2 and sum(worker.num_restarts for worker in workers) == MAX_SHARD_ATTEMPTS, workers


@ray.remote(num_cpus=1)
class CpuHolder:
    """Holds one CPU of the cluster, as a killed actor's leftover worker process did here (pool.py)."""

    def ready(self) -> bool:
        return True


def test_shards_are_read_lazily_and_only_go_to_workers_that_started(driver, untrained_version, tmp_path):
    class CountingShards(collections.abc.Sequence):
        """range(count), recording how far the pool has read it."""

        def __init__(self, count: int):
            self.count, self.read = count, 0

        def __len__(self) -> int:
            return self.count

        def __getitem__(self, index: int) -> int:
            if index >= self.count:
                raise IndexError(index)
            self.read = max(self.read, index + 1)
            return index

    ray_session.connect()
    pinned = models.resolve(MODEL)
    loaded = models.load_decoder(pinned)
    spec = dataset_spec(GenerateConfig(n=12_000, rows_per_shard=1_000), pinned, loaded.config, seed=2)
    shards, written, ahead = CountingShards(spec.num_shards), [], []

    def on_part(info) -> None:
        written.append(info.shard)
        ahead.append(shards.read - len(written))

    holder = CpuHolder.remote()
    assert ray.get(holder.ready.remote(), timeout=120)
    try:  # one CPU left for two workers: the second never starts, and no shard may wait for it
        placement = Placement(
            "cpu", num_workers=2, cpus_per_worker=1.0, gpus_per_worker=0.0, threads_per_worker=1, nodes=2
        )
        with WorkerPool(Storage(str(tmp_path)), placement, stall_timeout_s=120) as pool:
            parts = pool.run(spec, loaded.config.to_dict(), loaded.state, shards, on_part)
    finally:
        ray.kill(holder)
    assert sorted(part.shard for part in parts) == list(range(spec.num_shards))
    assert max(ahead) <= placement.threads_per_worker, ahead  # read as dispatched, never the whole list
    assert pool.idle_tail_s < 0.1  # one worker: its last shard ended the job


def test_a_hung_worker_fails_the_job_within_the_stall_timeout(driver, untrained_version, tmp_path):
    stopped: dict[str, Any] = {}
    directory = tmp_path / dataset_id(4)

    def stop_one_after_the_first_part(workers: list[Any]) -> None:
        pid = ray.get(workers[1].pid.remote())

        def stop() -> None:
            wait_until(lambda: any(directory.glob("part-*.parquet")), 120, "the first part file")
            os.kill(pid, signal.SIGSTOP)  # alive to Ray, doing nothing: a hung GPU, a stuck NFS mount
            stopped["pid"] = pid

        threading.Thread(target=stop, daemon=True).start()

    try:
        with pytest.raises(VaegenError) as failure:
            generate(config(tmp_path, 4, stall_timeout_s=STALL_S), on_workers=stop_one_after_the_first_part)
        failed_at = time.time()
    finally:
        if "pid" in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped["pid"], signal.SIGCONT)
    message = str(failure.value)
    assert "pid" in stopped
    assert f"no shard finished in {STALL_S:g} s (--stall-timeout)" in message and "\n" not in message, message
    assert f"--resume {directory}" in message, message
    last_progress = max(path.stat().st_mtime for path in directory.glob("part-*.parquet"))
    waited_s = failed_at - last_progress
    assert STALL_S <= waited_s <= STALL_S + 15, waited_s  # bounded by the configured timeout, plus the drain
    print(f"\n[fault figures] hung worker: failed {waited_s:.1f} s after the last part (--stall-timeout {STALL_S:g})")

    resumed = generate(config(tmp_path, 4))  # what the message says to do
    assert resumed.status == "resumed"
    np.testing.assert_array_equal(pq.read_table(directory, columns=["sample_id"])["sample_id"].to_numpy(), np.arange(N))


def test_second_node_lost_mid_job_the_job_finishes_on_what_remains(driver, untrained_version, tmp_path):
    seen: dict[str, Any] = {}
    directory = tmp_path / dataset_id(5)

    def lose_the_second_node_after_two_parts(workers: list[Any]) -> None:
        head = next(node for node in ray.nodes() if "node:__internal_head__" in node["Resources"])
        other = next(node for node in ray.nodes() if node["Alive"] and node["NodeID"] != head["NodeID"])
        worker_nodes = ray.get([worker.node_id.remote() for worker in workers])
        assert sorted(worker_nodes) == sorted([head["NodeID"], other["NodeID"]]), worker_nodes

        def lose() -> None:
            wait_until(lambda: len(list(directory.glob("part-*.parquet"))) >= 2, 120, "two part files")
            pids = tagged_pids(driver.env.tag)
            raylet = next(
                pid
                for pid in pids
                if "raylet/raylet " in cmdline(pid)
                and f"--node_manager_port={other['NodeManagerPort']} " in cmdline(pid)
            )
            seen["parts_before"] = len(list(directory.glob("part-*.parquet")))
            for pid in descendants(raylet, pids):  # the node's raylet, its agents and its workers
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            seen["lost_at"] = time.monotonic()

        seen["thread"] = threading.Thread(target=lose, daemon=True)
        seen["thread"].start()

    result = generate(config(tmp_path, 5), on_workers=lose_the_second_node_after_two_parts)
    finished_at = time.monotonic()
    seen["thread"].join(timeout=30)
    assert "lost_at" in seen and seen["parts_before"] <= N // R - 4, seen  # lost with shards still in flight on it
    # "resumed" when the lost node committed a part before it died: the shard's retry verified and kept it
    assert result.status in ("generated", "resumed") and result.manifest["execution"]["nodes"] == 2
    ids = pq.read_table(directory, columns=["sample_id"])["sample_id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(N))  # every row exactly once
    inspected = invoke("inspect", str(directory), "--deep")
    assert inspected.exit_code == 0 and f"verified: {N // R} files" in inspected.stdout, inspected.output
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        [MANIFEST, card.CARD, card.HF_YAML, CROISSANT, *(part_name(shard) for shard in range(N // R))]
    )  # nothing left over
    print(
        f"\n[fault figures] second node lost after {seen['parts_before']} of {N // R} parts: the job finished on "
        f"the head {finished_at - seen['lost_at']:.1f} s later"
    )
