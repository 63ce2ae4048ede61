"""Running shards on Ray: one long-lived actor per GPU (or per CPU), each holding one decoder.

Why actors and not Ray Data: a shard's decode and its Parquet encode happen in the same
process, so the decoded samples (3 GB per million float32 28x28 rows) never cross the object
store, and each part file is written by exactly one task under a name fixed by its shard.
Ray provides the rest: placement on CPUs/GPUs, backpressure (at most `max_concurrency + 1`
shards in flight per actor), and fault tolerance (a killed worker process is restarted and
its in-flight shards retried: `max_restarts`, `max_task_retries`). A retried shard rewrites
the same part name atomically, so each row lands exactly once.

The weights are read once on the driver and `ray.put` once; actors get them by reference
from the object store and never call MLflow (DESIGN.md contract 3).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
from typing import Any, Callable, Iterator

import ray
from ray.exceptions import RayActorError, RayTaskError

from jobs.generate.config import EngineOptions
from jobs.generate.parts import PartInfo, PartWriter
from jobs.generate.spec import DatasetSpec
from jobs.generate.storage import Storage
from vae_core.errors import UsageError, VaegenError

MAX_RESTARTS = 3  # a worker process that dies (OOM, preemption, kill) comes back this often
MAX_TASK_RETRIES = 3  # and the shards it held are retried this often
AUTOSCALE_CPUS_PER_GPU = 4  # CPUs asked beside each GPU when no GPU node exists yet (common cloud shapes have >= 4)


@dataclasses.dataclass(frozen=True)
class Placement:
    device: str
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int  # torch intra-op threads, and shards a GPU worker runs at once
    nodes: int


def connect() -> bool:
    """Join the cluster RAY_ADDRESS names, or start a private local Ray; True when started here.

    Without RAY_ADDRESS the job starts its own Ray, bound to 127.0.0.1, even where a `ray start`
    cluster runs on this machine or a killed one left /tmp/ray/ray_current_cluster behind: a plain
    `vaegen generate` should not silently land on whatever cluster happens to be there, nor fail
    because of one. `RAY_ADDRESS=auto` (or the cluster's address) joins a running cluster on
    purpose; inside `ray job submit`, Ray sets RAY_ADDRESS to the job's own cluster.
    """
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING, log_to_driver=True)
        return False
    # Ray's own default (token authentication on, ~/.ray/auth_token written) stays; its notice about it on
    # every job is noise here (README, "Run on a Ray cluster", says what it means for `ray start`).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    with _loopback_only():
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    return True


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the Ray started inside this block serve 127.0.0.1 only, not every interface.

    Ray resolves a node IP of 127.0.0.1 given to ray.init() to the host's routable address, and its
    servers bind that address or all interfaces. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it treats the
    host as it treats a laptop: node IP 127.0.0.1, every server on loopback (tests/test_engine_local.py
    checks the listening sockets). The variable reaches the processes ray.init spawns; this process reads
    the constant computed at import, so both are set, and restored once the cluster is up.
    """
    from ray._private import ray_constants

    saved_env, saved_constant = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def stop_local_ray() -> None:
    """Disconnect, then kill without the graceful waits of `ray.shutdown()` the Ray this process started.

    Called by the command line after its last line: everything is committed by then, and a local
    cluster's graceful shutdown takes seconds that a finished job should not make its caller wait.
    The driver disconnects first, so that it does not report its own cluster's death.
    """
    node = ray._private.worker._global_node
    if node is None or not node.ray_init_cluster:
        return
    ray._private.worker._global_node = None  # ray.shutdown() below then only disconnects this driver
    ray.shutdown()
    node.kill_all_processes(check_alive=False, allow_graceful=False)


def plan_placement(options: EngineOptions, num_shards: int, storage: Storage) -> Placement:
    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    if nodes > 1 and storage.is_local and not options.shared_fs:
        raise UsageError(
            f"--out {storage.location()} is a local path but the Ray cluster has {nodes} nodes: parts written "
            "on other nodes would land on their own disks; use an object store (s3://...) or, for a shared "
            "filesystem mounted at the same path on every node, pass --shared-fs"
        )
    device = options.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    if device == "cuda" and gpus == 0 and options.num_workers is None:
        raise UsageError("--device cuda but the Ray cluster has no GPUs now; use --device cpu or auto, or pass "
                         "--num-workers N to ask an autoscaling cluster for N GPU workers")
    if device == "cuda":
        workers = min(options.num_workers or gpus, num_shards)
        # The CPUs beside each GPU encode its Parquet; an autoscaling cluster with no GPU node up
        # yet cannot tell us its node shape, so ask for a modest share there.
        cpus_per_worker = max(1, cpus // gpus) if gpus else AUTOSCALE_CPUS_PER_GPU
        return Placement(device, workers, cpus_per_worker, 1.0, cpus_per_worker, nodes)
    workers = min(options.num_workers or max(cpus, 1), num_shards)
    # More workers than CPUs would wait forever for a whole CPU each; share them out instead.
    cpus_per_worker = 1.0 if workers <= cpus else cpus / workers
    return Placement(device, workers, cpus_per_worker, 0.0, 1, nodes)


@ray.remote
class ShardWorker:
    """Starts empty (importing torch and pyarrow while the driver resolves and loads the model);
    each shard task brings the spec and the weights' object-store reference, so a restarted
    worker needs nothing from its constructor. The decoder is built once per dataset."""

    def __init__(self, storage_uri: str, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.storage = Storage(storage_uri)
        self.device = device
        self.writer: PartWriter | None = None

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def write(self, spec: DatasetSpec, config: dict, state: dict, shard: int) -> PartInfo:
        from jobs.generate.predictor import Predictor  # torch: imported by workers, never by the driver

        if self.writer is None or self.writer.spec != spec:
            self.writer = PartWriter(Predictor(spec, config, state, self.device), self.storage, spec.dataset_id)
        return self.writer(shard)


class WorkerPool:
    """The job's actors: started on entry, killed on exit."""

    def __init__(self, storage: Storage, placement: Placement):
        self.placement = placement
        worker_class = ShardWorker.options(
            num_cpus=placement.cpus_per_worker,
            num_gpus=placement.gpus_per_worker,
            max_restarts=MAX_RESTARTS,
            max_task_retries=MAX_TASK_RETRIES,
            max_concurrency=placement.threads_per_worker,
        )
        self.workers = [worker_class.remote(storage.uri, placement.device, placement.threads_per_worker)
                        for _ in range(placement.num_workers)]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        for worker in self.workers:
            ray.kill(worker)

    def run(self, spec: DatasetSpec, config: dict, state: dict, shards: list[int],
            on_part: Callable[[PartInfo], None]) -> list[PartInfo]:
        """Write every listed shard, keeping each actor busy with one shard queued behind its running ones.

        The weights go into the object store once; each task carries the reference, and Ray
        hands workers the arrays zero-copy from their node's store.
        """
        state_ref = ray.put(state)
        queue = collections.deque(shards)
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (shard, worker index)
        load = [0] * len(self.workers)
        per_worker = self.placement.threads_per_worker + 1
        done: list[PartInfo] = []
        while queue or in_flight:
            for index, worker in enumerate(self.workers):
                while queue and load[index] < per_worker:
                    shard = queue.popleft()
                    in_flight[worker.write.remote(spec, config, state_ref, shard)] = (shard, index)
                    load[index] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                shard, index = in_flight.pop(ref)
                load[index] -= 1
                info = _result(ref, shard)
                done.append(info)
                on_part(info)
        return done


def _result(ref: Any, shard: int) -> PartInfo:
    try:
        return ray.get(ref)
    except RayTaskError as error:
        cause = error.cause
        if isinstance(cause, VaegenError):
            raise cause from None
        raise VaegenError(f"shard {shard} failed: {type(cause).__name__}: {cause}") from None
    except RayActorError as error:
        raise VaegenError(
            f"shard {shard}: its worker died {MAX_RESTARTS + 1} times ({error.__class__.__name__}); "
            "committed shards are kept, rerun the same command to resume"
        ) from None
