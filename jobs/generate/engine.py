"""Running shards on Ray: where the workers go (placement: one long-lived actor per GPU, or per CPU),
and that actor, which holds one decoder and writes a shard per task.

Why actors and not Ray Data: a shard's decode and its Parquet encode happen in the same
process, so the decoded samples (3 GB per million float32 28x28 rows) never cross the object
store, and each part file is written by exactly one task under a name fixed by its shard.
Ray provides placement on CPUs/GPUs and restarts a worker process that dies; the driver's
side (dispatch and retries) is `pool.py`.

The weights are read once on the driver and `ray.put` once; actors get them by reference
from the object store and never call MLflow (DESIGN.md contract 3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ray

from jobs import metrics
from jobs.generate.config import EngineOptions, check_growth
from jobs.generate.parts import PartInfo, PartWriter
from jobs.generate.spec import DatasetSpec
from jobs.generate.storage import Storage
from vae_core.errors import UsageError

AUTOSCALE_CPUS_PER_GPU = 4  # CPUs asked beside each GPU when no GPU node exists yet (common cloud shapes have >= 4)


@dataclasses.dataclass(frozen=True)
class Placement:
    device: str
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads_per_worker: int  # torch intra-op threads, and shards a GPU worker runs at once
    nodes: int
    # the pool grows up to this many as nodes join (--num-workers MIN:MAX, auto); 0: it never grows
    max_workers: int = 0

    def __str__(self) -> str:
        """Where the job runs, as its start-up line says."""
        growing = f", growing up to {self.max_workers} as nodes join" if self.max_workers else ""
        return f"{self.num_workers} {self.device} worker(s) across {self.nodes} node(s){growing}"


def plan_placement(
    options: EngineOptions, num_shards: int, storage: Storage, log: Callable[[str], None] = lambda message: None
) -> Placement:
    """Workers for the cluster as it is: one per GPU (or CPU), never more than it can run at once or than shards."""
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
        raise UsageError(
            "--device cuda but the Ray cluster has no GPUs now; use --device cpu or auto, or pass "
            "--num-workers N to ask an autoscaling cluster for N GPU workers"
        )
    # Each worker holds a whole CPU (or GPU) and a decoder: more than the cluster has would only
    # share them out in slivers, each worker one more process with torch loaded (~0.5 GB).
    capacity = gpus if device == "cuda" else cpus
    if options.max_workers is not None:  # MIN:MAX, auto: what the cluster has now, at least MIN (the autoscaler's cue)
        check_growth(options, storage.location(), storage.is_local)
        workers = min(max(capacity, options.num_workers or 1), options.max_workers, num_shards)
        return _placement(device, workers, cpus, gpus, nodes, max_workers=min(options.max_workers, num_shards))
    workers = options.num_workers or max(capacity, 1)
    if capacity > 0 and workers > capacity:
        log(
            f"--num-workers {workers} capped at {capacity}: the Ray cluster has {capacity} "
            f"{'GPU' if device == 'cuda' else 'CPU'}(s) now"
        )
        workers = capacity
    return _placement(device, min(workers, num_shards), cpus, gpus, nodes)


def _placement(device: str, workers: int, cpus: int, gpus: int, nodes: int, max_workers: int = 0) -> Placement:
    if device == "cuda":
        # The CPUs beside each GPU encode its Parquet; an autoscaling cluster with no GPU node up
        # yet cannot tell us its node shape, so ask for a modest share there.
        cpus_per_worker = max(1, cpus // gpus) if gpus else AUTOSCALE_CPUS_PER_GPU
        return Placement(device, workers, cpus_per_worker, 1.0, cpus_per_worker, nodes, max_workers)
    return Placement(device, workers, 1.0, 0.0, 1, nodes, max_workers)


def room_to_grow(placement: Placement, workers: int, shards_left: int) -> int:
    """How many workers a growing pool adds now: what the cluster can run beyond the `workers` it has (each holds
    cpus_per_worker CPUs, or a GPU), up to max_workers and to one per shard not yet handed out."""
    if placement.max_workers <= workers or shards_left <= 0:
        return 0
    resources = ray.cluster_resources()
    if placement.device == "cuda":
        capacity = int(resources.get("GPU", 0) // placement.gpus_per_worker)
    else:
        capacity = int(resources.get("CPU", 0) // placement.cpus_per_worker)
    return max(0, min(capacity, placement.max_workers, workers + shards_left) - workers)


@ray.remote
class ShardWorker:
    """Starts empty (importing torch and pyarrow while the driver resolves and loads the model);
    each shard task brings the spec and the weights' object-store reference, so a restarted
    worker needs nothing from its constructor. The decoder is built once per dataset."""

    def __init__(self, storage_uri: str, device: str, threads: int, export_metrics: bool = True):
        import torch

        torch.set_num_threads(threads)
        self.storage = Storage(storage_uri)
        self.device = device
        self.export_metrics = export_metrics
        self.writer: PartWriter | None = None

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def write(self, spec: DatasetSpec, config: dict, state: dict, shard: int, metadata: dict | None = None) -> PartInfo:
        from jobs.generate.predictor import Predictor  # torch: imported by workers, never by the driver

        if self.writer is None or self.writer.spec != spec or self.writer.metadata != (metadata or {}):
            predictor = Predictor(spec, config, state, self.device)
            self.writer = PartWriter(predictor, self.storage, spec.dataset_id, metadata)
        info = self.writer(shard)
        if self.export_metrics and not info.reused:
            metrics.record_part_timings(
                metrics.labels_of(spec.dataset_id, spec.model_name, spec.model_version), info.decode_s, info.encode_s
            )
        return info
