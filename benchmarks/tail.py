"""The idle tail of a generate job: how long workers sit idle at the end while others still write.

    python benchmarks/tail.py [--shards 12] [--rows-per-shard 32768] [--repeats 5] [--out benchmarks/out/tail.json]

Idle tail = the sum over workers of the time between a worker's last shard finishing and the
job's last shard finishing. Two dispatch policies run on the same actors, model and shards:
  before  main@0ba858f's loop: every worker always holds threads + 1 shards (one queued behind
          the one it runs), filled in worker order
  after   WorkerPool.run: a worker holds only what it runs; each shard goes to whichever worker
          is free
in two settings on a local Ray with one CPU worker per core:
  uniform      the workers run at the same speed
  slow-worker  worker 1 runs a quarter of the time: stopped for 150 ms, continued for 50 ms
               (SIGSTOP/SIGCONT, the duty cycle a cgroup CPU quota of 25% imposes), as a node
               with a noisy neighbour or an older GPU would be
Each run writes a fresh dataset (2 -> 128 -> 784 decoder with random weights, float32, seed 42)
into a temporary folder; worker start-up is excluded.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def decoder_state() -> tuple[dict, dict]:
    import torch

    from vae_core.config import VAEConfig
    from vae_core.model import Decoder

    torch.manual_seed(0)
    config = VAEConfig(input_shape=(28, 28))
    decoder = Decoder(config)
    return config.to_dict(), {key: value.detach().numpy().copy() for key, value in decoder.state_dict().items()}


class QuarterSpeed(threading.Thread):
    """Runs a process a quarter of the time: RUN_S running, then 3 * RUN_S stopped."""

    RUN_S = 0.05

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(3 * self.RUN_S)
                os.kill(self.pid, signal.SIGCONT)
                time.sleep(self.RUN_S)
        finally:
            os.kill(self.pid, signal.SIGCONT)


def dispatch_before(pool, spec, config: dict, state: dict) -> list[float | None]:
    """main@0ba858f's WorkerPool.run, timed per worker: when each worker's last shard finished."""
    import ray

    state_ref = ray.put(state)
    queue = collections.deque(range(spec.num_shards))
    in_flight: dict = {}
    load = [0] * len(pool.workers)
    last_done: list[float | None] = [None] * len(pool.workers)
    per_worker = pool.placement.threads_per_worker + 1
    while queue or in_flight:
        for index, worker in enumerate(pool.workers):
            while queue and load[index] < per_worker:
                in_flight[worker.write.remote(spec, config, state_ref, queue.popleft())] = index
                load[index] += 1
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            index = in_flight.pop(ref)
            load[index] -= 1
            ray.get(ref)
            last_done[index] = time.monotonic()
    return last_done


def run_once(policy: str, slow_worker: bool, spec, config: dict, state: dict, root: Path) -> dict:
    import ray

    from jobs.generate.engine import Placement
    from jobs.generate.pool import WorkerPool
    from jobs.generate.storage import Storage

    workers = os.cpu_count()
    placement = Placement("cpu", workers, 1.0, 0.0, 1, 1)
    throttle = None
    with tempfile.TemporaryDirectory(dir=root) as out, WorkerPool(Storage(out), placement) as pool:
        pids = ray.get([worker.pid.remote() for worker in pool.workers])  # started: start-up is not timed
        if slow_worker:
            throttle = QuarterSpeed(pids[1])
            throttle.start()
        try:
            started = time.monotonic()
            if policy == "before":
                last_done = dispatch_before(pool, spec, config, state)
                finished = max(time.monotonic() if done is None else done for done in last_done)
                idle_tail_s = sum(finished - done for done in last_done if done is not None)
            else:
                pool.run(spec, config, state, range(spec.num_shards), lambda info: None)
                finished, idle_tail_s = time.monotonic(), pool.idle_tail_s
        finally:
            if throttle is not None:
                throttle.stop.set()
                throttle.join()
    seconds = finished - started
    return {
        "policy": policy,
        "setting": "slow-worker" if slow_worker else "uniform",
        "seconds": seconds,
        "idle_tail_s": idle_tail_s,
        "idle_tail_share": idle_tail_s / (seconds * workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=12)
    parser.add_argument("--rows-per-shard", type=int, default=32_768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "tail.json"))
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("benchmarks/tail.py needs at least 2 CPUs (one worker per core, one of them slowed)")

    import logging

    import ray

    from jobs.generate.spec import DatasetSpec

    config, state = decoder_state()
    spec = DatasetSpec(
        model_name="bench-decoder",
        model_version=1,
        n=args.shards * args.rows_per_shard,
        seed=42,
        latent_dim=2,
        sample_shape=(28, 28),
        rows_per_shard=args.rows_per_shard,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="vaegen-tail-") as folder:
        os.environ.update(
            {"RAY_TMPDIR": folder, "HOME": folder, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        )
        ray.init(
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            logging_level=logging.WARNING,
            _temp_dir=str(Path(folder) / "ray"),
        )
        try:
            for repeat in range(args.repeats):  # interleaved, so that load changes on the box hit both alike
                for slow_worker in (False, True):
                    for policy in ("before", "after"):
                        result = run_once(policy, slow_worker, spec, config, state, Path(folder))
                        results.append({**result, "repeat": repeat})
                        print(
                            f"{result['setting']:12} {policy:7} {result['seconds']:6.2f} s  idle tail "
                            f"{result['idle_tail_s']:5.2f} s ({100 * result['idle_tail_share']:4.1f}% of worker time)",
                            file=sys.stderr,
                            flush=True,
                        )
        finally:
            ray.shutdown()
    summary = {}
    for setting in ("uniform", "slow-worker"):
        for policy in ("before", "after"):
            runs = [r for r in results if r["setting"] == setting and r["policy"] == policy]
            summary[f"{setting}/{policy}"] = {
                "median_seconds": statistics.median(r["seconds"] for r in runs),
                "median_idle_tail_s": statistics.median(r["idle_tail_s"] for r in runs),
            }
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "shards": args.shards,
        "rows_per_shard": args.rows_per_shard,
        "results": results,
        "summary": summary,
        "command": "python benchmarks/tail.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
