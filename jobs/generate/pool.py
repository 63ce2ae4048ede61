"""The driver's side of running shards: the job's actors, and the loop that hands each shard to
whichever worker is free and retries a failed one itself (WorkerPool). A retried shard rewrites
the same part name atomically, so each row lands exactly once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError, RayTaskError

from jobs import metrics
from jobs.generate.config import DEFAULT_STALL_TIMEOUT_S
from jobs.generate.engine import Placement, ShardWorker, room_to_grow
from jobs.generate.parts import PartInfo
from jobs.generate.spec import DatasetSpec
from jobs.generate.storage import Storage
from vae_core.errors import VaegenError

MAX_SHARD_ATTEMPTS = 3  # a shard whose worker dies or that raises an unexpected error is tried this often
POLL_S = 1.0  # the driver looks up from ray.wait this often to check the stall clock
GROW_CHECK_S = 2.0  # a growing pool looks at the cluster's resources this often
START_WAIT_S = 5.0  # on exit, how long workers still being created get to come up before they are killed
DRAIN_TIMEOUT_S = 10.0  # on exit, how long the killed workers' in-flight shards get to report
DEATH_POLL_S = 0.05  # on exit, how often the driver asks whether Ray has seen its killed workers die


@dataclasses.dataclass
class _Worker:
    """The driver's view of one actor: whether it takes shards now, and what it holds."""

    handle: Any
    alive: bool = False  # True once it answered a ping: at start-up, and again after Ray restarted it
    was_up: bool = False  # it answered a ping once: coming back after that is a restart
    next_ping_s: float = dataclasses.field(default_factory=time.monotonic)  # while down: when to ask (0: never)
    in_flight: int = 0
    last_done_s: float | None = None  # when its last shard finished (time.monotonic)


@dataclasses.dataclass(frozen=True)
class _Task:
    shard: int
    worker: int  # index into the pool
    isolated: bool  # a retry, running alone on its worker so that a crash is its own


class WorkerPool:
    """The job's actors (started on entry, killed on exit) and the driver's dispatch loop.

    Retries are the driver's, per shard, not Ray's per actor (`max_task_retries=0`): a shard
    whose worker dies or that raises an unexpected error is tried again, alone on an idle
    worker, up to MAX_SHARD_ATTEMPTS times; then the job fails naming it. So one poison shard
    stops the job after its own attempts instead of burning every worker's restarts, and a
    lost node's shards move to the workers that remain. Every wait is bounded: a job in which
    no shard finishes for `stall_timeout_s` fails with a line that says how to resume.
    """

    def __init__(
        self,
        storage: Storage,
        placement: Placement,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
        export_metrics: bool = True,
    ):
        self.placement = placement
        self.storage = storage
        self.stall_timeout_s = stall_timeout_s
        self.export_metrics = export_metrics
        self._started: list[Any] = []  # one ping per worker, answered once Ray has created it
        self.workers = [self._start_worker() for _ in range(placement.num_workers)]
        self.idle_tail_s = 0.0  # after run(): summed over live workers, the time from their last shard to the job's end
        self._outstanding: set[Any] = set()  # refs not collected yet: drained on exit so that no error goes unhandled

    def _start_worker(self) -> Any:
        placement = self.placement
        worker = ShardWorker.options(
            num_cpus=placement.cpus_per_worker,
            num_gpus=placement.gpus_per_worker,
            max_restarts=-1,  # the driver bounds failures per shard and in time; Ray just brings workers back
            max_task_retries=0,
            max_concurrency=placement.threads_per_worker,
        ).remote(self.storage.uri, placement.device, placement.threads_per_worker, self.export_metrics)
        self._started.append(worker.pid.remote())
        return worker

    def grow(self, shards_left: int) -> list[Any]:
        """The workers added for nodes that joined (--num-workers MIN:MAX, auto); [] when the pool is fixed or full.
        Contract 2 makes the content independent of which worker writes which shard: growing changes no byte."""
        added = [self._start_worker() for _ in range(room_to_grow(self.placement, len(self.workers), shards_left))]
        self.workers += added
        return added

    @property
    def added(self) -> int:
        """Workers a growing pool started after the job began."""
        return len(self.workers) - self.placement.num_workers

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self, let_finish_s: float = 0.0) -> None:
        """Kill the workers, after giving their shards in flight up to `let_finish_s` to end (a shard that returned
        has renamed its part into place: a failed job that deletes its dataset then deletes it too); returns once
        Ray reports every worker dead and what was in flight has reported (each wait bounded). Idempotent."""
        if let_finish_s and self._outstanding:
            ray.wait(list(self._outstanding), num_returns=len(self._outstanding), timeout=let_finish_s)
        # An actor killed while Ray is still creating it can keep its CPU lease ("Mismatched ActorID: ignoring
        # KillActor"), and a later job's actors are then never scheduled (CI hung once): workers still starting
        # get START_WAIT_S to come up first. Bounded, so one that cannot be placed at all is killed all the same.
        if self._started:
            ray.wait(self._started, num_returns=len(self._started), timeout=START_WAIT_S)
        for worker in self.workers:
            ray.kill(worker)
        _drain([*self._outstanding, *self._started])
        self._outstanding.clear()
        self._started.clear()
        _await_death(self.workers)

    def run(
        self,
        spec: DatasetSpec,
        config: dict,
        state: dict,
        shards: Sequence[int],
        on_part: Callable[[PartInfo], None],
        metadata: dict[str, str] | None = None,
        monitor: metrics.Unmonitored = metrics.UNMONITORED,
    ) -> list[PartInfo]:
        """Write every shard (a lazy sequence: `range(num_shards)`), each on whichever worker is free.

        The weights go into the object store once; each task carries the reference, and Ray
        hands workers the arrays zero-copy from their node's store. A worker holds only the
        shards it runs at once (`threads_per_worker`), none queued: a queued shard can wait
        behind a slow worker while another sits idle at the end of the job (the idle tail,
        benchmarks/tail.py), and the driver's round trip between two shards costs milliseconds.
        `monitor` hears of every committed part, retry, lost and restarted worker, and of each poll.
        """
        job = _Job(self, spec, config, ray.put(state), shards, metadata, monitor)
        next_grow_s = time.monotonic() + GROW_CHECK_S
        while job.unsubmitted or job.retries or job.tasks:
            if self.placement.max_workers and time.monotonic() >= next_grow_s:
                next_grow_s = time.monotonic() + GROW_CHECK_S
                for handle in self.grow(job.unsubmitted):
                    job.workers.append(_Worker(handle))  # pinged like any starting worker, fed once it answers
                    monitor.worker_added()
            job.dispatch()
            monitor.tick(len(job.tasks), sum(worker.alive for worker in job.workers), len(job.workers))
            for ref in job.wait():
                self._outstanding.discard(ref)
                info = job.collect(ref)
                if info is not None:
                    monitor.part(info.rows, info.size_bytes)
                    on_part(info)
        finished = time.monotonic()
        self.idle_tail_s = sum(
            finished - worker.last_done_s for worker in job.workers if worker.alive and worker.last_done_s is not None
        )
        return job.done

    def resume_hint(self, spec: DatasetSpec, committed: int) -> str:
        return (
            f"the {committed} shard(s) written are kept: rerun the same command, or "
            f"`vaegen generate --resume {self.storage.location(spec.dataset_id)}`, to finish the rest"
        )


class _Job:
    """One run of the pool: which shards are where, what failed how often, which workers are down."""

    def __init__(
        self,
        pool: WorkerPool,
        spec: DatasetSpec,
        config: dict,
        state_ref: Any,
        shards: Sequence[int],
        metadata: dict[str, str] | None = None,
        monitor: metrics.Unmonitored = metrics.UNMONITORED,
    ):
        self.pool, self.spec, self.config, self.state_ref = pool, spec, config, state_ref
        self.monitor = monitor
        self.metadata = metadata  # Parquet key-value metadata of every part
        self.workers = [_Worker(handle) for handle in pool.workers]
        self.fresh = iter(shards)
        self.unsubmitted = len(shards)
        self.retries: collections.deque[int] = collections.deque()
        self.attempts: collections.Counter[int] = collections.Counter()
        self.tasks: dict[Any, _Task] = {}
        self.pings: dict[Any, int] = {}  # ref -> worker index, for workers that are down
        self.done: list[PartInfo] = []
        self.last_progress_s = time.monotonic()
        self.gone_reason = ""  # why the last worker that cannot come back died

    def submit(self, index: int, shard: int, isolated: bool) -> None:
        ref = self.workers[index].handle.write.remote(self.spec, self.config, self.state_ref, shard, self.metadata)
        self.tasks[ref] = _Task(shard, index, isolated)
        self.pool._outstanding.add(ref)
        self.workers[index].in_flight += 1

    def dispatch(self) -> None:
        """Retries first, each alone on a worker that has drained; then fresh shards to free slots."""
        live = [index for index, worker in enumerate(self.workers) if worker.alive]
        self.ping_down_workers()
        if not live and not self.pings and not any(worker.next_ping_s for worker in self.workers):
            raise VaegenError(
                f"all {len(self.workers)} worker(s) are gone and Ray cannot restart them "
                f"({self.gone_reason}); {self.pool.resume_hint(self.spec, len(self.done))}"
            )
        running_retry = {task.worker for task in self.tasks.values() if task.isolated}
        reserved: set[int] = set()
        for _ in range(len(self.retries)):
            candidates = [index for index in live if index not in running_retry | reserved]
            if not candidates:
                break
            target = min(candidates, key=lambda index: self.workers[index].in_flight)
            if self.workers[target].in_flight == 0:
                self.submit(target, self.retries.popleft(), isolated=True)
                running_retry.add(target)
            else:
                reserved.add(target)  # fed nothing new until it is empty
        for index in sorted(live, key=lambda index: self.workers[index].in_flight):
            if index in running_retry | reserved:
                continue
            while self.unsubmitted and self.workers[index].in_flight < self.pool.placement.threads_per_worker:
                self.submit(index, next(self.fresh), isolated=False)
                self.unsubmitted -= 1

    def ping_down_workers(self) -> None:
        """Ask each worker that is starting or down, once a poll interval, whether it is up. No shard
        waits on a worker that never came up: seen here with Ray 2.60, an actor killed while its process
        started kept its CPU (cf. ray-project/ray#27743), and the next job's actor waited for one forever.
        Pings go without retries: Ray's own would log "(raylet) Task ShardWorker.pid failed ... will be
        retried" each time."""
        now = time.monotonic()
        asked = set(self.pings.values())
        for index, worker in enumerate(self.workers):
            if not worker.alive and worker.next_ping_s and index not in asked and now >= worker.next_ping_s:
                ref = worker.handle.pid.remote()
                self.pings[ref] = index
                self.pool._outstanding.add(ref)

    def wait(self) -> list[Any]:
        """What finished within a poll interval; raises once nothing has for the stall timeout."""
        stalled_s = time.monotonic() - self.last_progress_s
        if stalled_s > self.pool.stall_timeout_s:
            raise self.stalled()
        timeout_s = min(POLL_S, self.pool.stall_timeout_s - stalled_s)
        refs = [*self.tasks, *self.pings]
        if not refs:  # every worker is down, between two pings
            time.sleep(timeout_s)
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
        return ready

    def collect(self, ref: Any) -> PartInfo | None:
        """The part a finished task wrote; None for a ping or a failure (then retried, or the job fails)."""
        if ref in self.pings:
            worker = self.workers[self.pings.pop(ref)]
            try:
                ray.get(ref, timeout=0)
                if worker.was_up:
                    self.monitor.worker_restarted()
                worker.alive, worker.was_up, worker.next_ping_s = True, True, 0.0
            except ActorDiedError as error:  # gone for good (its constructor raised, it was killed): never asked again
                worker.next_ping_s = 0.0
                self.gone_reason = " ".join(str(error).split())[:500]
            except RayActorError:
                worker.next_ping_s = time.monotonic() + POLL_S
            return None
        task = self.tasks.pop(ref)
        worker = self.workers[task.worker]
        worker.in_flight -= 1
        try:
            info = ray.get(ref, timeout=0)  # ready: returns or raises at once
        except RayTaskError as error:
            if isinstance(error.cause, VaegenError):  # deterministic (a NaN decoder, bad input): no retry
                raise error.cause from None
            reason = f"{type(error.cause).__name__}: {error.cause}"
        except RayActorError as error:
            reason = f"its worker died ({type(error).__name__})"
            if worker.alive:
                worker.alive, worker.next_ping_s = False, time.monotonic()
                self.monitor.worker_lost()
        except RayError as error:  # the result was lost with its node's object store, ...
            reason = type(error).__name__
        else:
            worker.last_done_s = self.last_progress_s = time.monotonic()
            self.done.append(info)
            return info
        self.attempts[task.shard] += 1
        if self.attempts[task.shard] >= MAX_SHARD_ATTEMPTS:
            raise VaegenError(
                f"shard {task.shard} failed {self.attempts[task.shard]} times, last: {' '.join(reason.split())}; "
                f"{self.pool.resume_hint(self.spec, len(self.done))}"
            )
        self.retries.append(task.shard)
        self.monitor.shard_retried()
        return None

    def stalled(self) -> VaegenError:
        in_flight = sorted(task.shard for task in self.tasks.values())
        down = sum(not worker.alive for worker in self.workers)
        shown = ", ".join(map(str, in_flight[:5])) + (", ..." if len(in_flight) > 5 else "")
        return VaegenError(
            f"no shard finished in {self.pool.stall_timeout_s:g} s (--stall-timeout): {len(in_flight)} in flight "
            f"({shown or 'none'}), {down} of {len(self.workers)} worker(s) down or not started (a lost node, a hung "
            f"worker, no free CPU/GPU); "
            f"{self.pool.resume_hint(self.spec, len(self.done))}"
        )


def _drain(refs: list[Any]) -> None:
    """Collect what the shards still in flight return, so a failed job does not end in Ray's
    "Unhandled error" tracebacks of its other shards; bounded, for workers that never answer."""
    if not refs:
        return
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=DRAIN_TIMEOUT_S)
    for ref in ready:
        with contextlib.suppress(Exception):
            ray.get(ref, timeout=0)


def _await_death(workers: list[Any]) -> None:
    """Until Ray reports each killed worker dead (bounded): `ray.kill` returns before the kill lands, and a worker
    it has not reached yet still runs its shard, so a failed job's cleanup could race a part landing."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while workers and time.monotonic() < deadline:
        refs = [worker.pid.remote() for worker in workers]
        ray.wait(refs, num_returns=len(refs), timeout=max(0.0, deadline - time.monotonic()))
        workers = [worker for worker, ref in zip(workers, refs, strict=True) if _answers(ref)]
        if workers:
            time.sleep(DEATH_POLL_S)


def _answers(ref: Any) -> bool:
    """Whether a ping returned (its worker is alive), or is still pending; False once its worker is dead."""
    try:
        ray.get(ref, timeout=0)
    except GetTimeoutError:  # pending: not known dead yet
        return True
    except RayError:  # ActorDiedError, ...: gone
        return False
    return True
