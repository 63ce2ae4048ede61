"""The scheduled refresh: resolve the promoted version once, generate its dataset if it is not
committed yet, move `ROOT/latest`, prune old datasets. Safe to run from cron every minute.

Concurrency: `ROOT/.refresh.lock` names its holder (host, boot, pid) and is created atomically
(jobs.generate.locks.create_exclusive: a hard link on local disk, a conditional PutObject on
S3). The holder touches
it every HEARTBEAT_FRACTION of `lock_timeout_s`. Another refresh that finds it exits 0 "busy",
unless its holder is dead: on the same host a pid that is gone (or reused) is dead at once;
from another host, a lock whose heartbeat is older than `lock_timeout_s` is. A stale lock is
moved aside atomically (local) or overwritten only if unchanged (S3, `If-Match`) before it is
replaced, so two refreshes cannot both take it over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import math
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from jobs import audit, metrics
from jobs.generate import audit_record, card, locks
from jobs.generate.audit_record import AuditRecord
from jobs.generate.job import GenerateConfig, GenerateResult, generate
from jobs.generate.manifest import utc_now
from jobs.generate.published import LATEST, LatestPointer, latest_dataset
from jobs.generate.records import Manifest
from jobs.generate.storage import Storage, storage_from_env
from jobs.prune import prune
from registry import holders, lineage, models, promotion, tracking
from registry.holders import MAX_LOCK_BYTES, LockRecord
from registry.pinned import PinnedModel
from vae_core.errors import UsageError, VaegenError

LOCK = ".refresh.lock"
LOCK_OWNER_TAG = "vaegen.refresh_lock_owner"  # on the refresh run: a refresh taking over a dead lock ends that run
SEED_POLICIES = ("fixed", "daily", "new")
DEFAULT_LOCK_TIMEOUT_S = (
    900.0  # 15 missed heartbeats: a live holder is never taken for dead, a dead one blocks 15 min at most
)
HEARTBEAT_FRACTION = 1 / 15  # the holder touches its lock every timeout / 15 (every minute by default)


@dataclasses.dataclass(frozen=True)
class RefreshConfig:
    generate: GenerateConfig  # model reference (an alias), n, out, dtype, ...
    keep: int = 3  # newest committed datasets kept (plus the one `latest` names, if older): two rollbacks' worth
    seed_policy: str = "fixed"  # fixed: new data only when the promoted version changes
    seed: int = 0  # the fixed seed, and the base of the daily one
    lock_timeout_s: float = (
        DEFAULT_LOCK_TIMEOUT_S  # without a heartbeat for this long, a lock from another host is stale
    )
    today: dt.date | None = None  # the date the daily policy uses; None = today (UTC)
    audit_config: audit.AuditConfig = audit.AuditConfig()  # checks a new dataset passes before `latest` names it

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise UsageError(f"--keep must be a positive integer, got {self.keep}")
        if self.seed_policy not in SEED_POLICIES:
            raise UsageError(f"--seed-policy must be one of {', '.join(SEED_POLICIES)}, got {self.seed_policy!r}")
        if not self.lock_timeout_s > 0:
            raise UsageError(f"--lock-timeout must be a positive number of seconds, got {self.lock_timeout_s}")


@dataclasses.dataclass(frozen=True)
class RefreshResult:
    action: str  # "generated" | "up-to-date" | "pointer-moved" | "busy"
    dataset_id: str | None
    model_version: int | None
    pruned: list[str]
    unreadable: list[str] = dataclasses.field(default_factory=list)  # "ID: why" of datasets prune could not judge
    kept: dict[str, str] = dataclasses.field(default_factory=dict)  # id -> why prune kept it


def seed_for(config: RefreshConfig) -> int:
    if config.seed_policy == "fixed":
        return config.seed
    if config.seed_policy == "new":
        return secrets.randbits(32)
    day = (config.today or dt.datetime.now(dt.timezone.utc).date()).isoformat()
    return int.from_bytes(hashlib.sha256(f"{config.seed}:{day}".encode()).digest()[:4], "big")


class RefreshLock:
    """ROOT/.refresh.lock: who holds it, and a heartbeat (the file's mtime) while they do."""

    def __init__(self, storage: Storage, timeout_s: float):
        self.storage = storage
        self.timeout_s = timeout_s
        self.token = dataclasses.replace(holders.this_process(), owner=uuid.uuid4().hex, acquired_at=time.time())
        self.holder = LockRecord()  # after a failed acquire(): what the lock said about its holder
        self.taken_over: str | None = None  # why a dead holder's lock was replaced, if it was
        self._data = self.token.to_bytes()
        self._tag: str | None = None  # object stores: the version of the lock last read (its ETag)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> bool:
        self.storage.fs.create_dir(self.storage.root, recursive=True)  # check_writable() leaves no folder behind
        for _ in range(3):  # a lock found stale is moved aside, then the create is tried again
            if locks.create_exclusive(self.storage, self._data, LOCK):
                return self._held()
            self.holder = self._read()
            reason = self._stale_reason(self.holder)
            if reason is None:
                return False
            if not self.storage.is_local:  # replace exactly the stale version: of two takers, one wins
                if not locks.replace_if(self.storage, self._data, self._tag, LOCK):
                    return False
                self.taken_over = reason
                return self._held()
            if not self._move_aside(self.holder):
                return False
            self.taken_over = reason
        return False

    def _held(self) -> bool:
        self._heartbeat = threading.Thread(target=self._beat, name="refresh-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return True

    def still_held(self) -> bool:
        return self._read().owner == self.token.owner

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.still_held():
            if self.storage.is_local:
                self.storage.delete(LOCK)
            else:
                locks.delete_if(self.storage, self._tag, LOCK)

    def describe_holder(self) -> str:
        held = self.holder
        if not held.known:
            return "an unreadable lock"
        age_s = time.time() - (0 if held.last_heard_at is None else held.last_heard_at)
        return f"pid {held.pid} on {held.host}, last heartbeat {age_s:,.0f} s ago"

    def _read(self) -> LockRecord:
        """The lock's record, with its mtime as `heartbeat_at`; LockRecord() (unknown) if absent or unreadable."""
        try:
            raw, self._tag = locks.read_versioned(self.storage, LOCK)
            info = self.storage.fs.get_file_info(self.storage.path(LOCK))
        except (OSError, VaegenError):  # gone meanwhile, or not a regular file
            return LockRecord()
        record = LockRecord.from_bytes(raw) if raw is not None and (info.size or 0) <= MAX_LOCK_BYTES else LockRecord()
        if not record.known:  # absent, half-written, oversized or not a record of short fields
            return record
        if info.mtime is not None:
            record = dataclasses.replace(record, heartbeat_at=info.mtime.timestamp())
        return record

    def _stale_reason(self, held: LockRecord) -> str | None:
        """Why the holder is dead, or None while it may be alive."""
        dead = holders.dead_reason(held)
        if dead is not None:
            return dead
        last_s = held.last_heard_at
        if not isinstance(last_s, (int, float)) or not math.isfinite(
            last_s
        ):  # unreadable: judge by the file's age alone
            info = self.storage.fs.get_file_info(self.storage.path(LOCK))
            last_s = info.mtime.timestamp() if info.mtime is not None else 0.0
        if time.time() - last_s > self.timeout_s:
            host = "its holder" if held.host is None else held.host
            return f"no heartbeat from {host} for over {self.timeout_s:g} s (--lock-timeout)"
        return None

    def _move_aside(self, stale: LockRecord) -> bool:
        """Local roots: remove the stale lock, unless another refresh replaced it meanwhile; True if it is gone."""
        aside_name = f"{LOCK}.stale-{self.token.owner}"
        aside = self.storage.path(aside_name)
        try:
            os.rename(self.storage.path(LOCK), aside)  # atomic: of two takers, one moves it
        except FileNotFoundError:
            return True  # another taker moved it: try to create ours
        try:
            moved = LockRecord.from_bytes(self.storage.read_bytes(aside_name))
        except (OSError, VaegenError):
            moved = LockRecord()
        if moved.owner != stale.owner:  # a fresh lock, taken meanwhile: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.storage.path(LOCK))
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def _beat(self) -> None:
        interval_s = self.timeout_s * HEARTBEAT_FRACTION
        while not self._stop.wait(interval_s):
            with contextlib.suppress(OSError):
                if self.storage.is_local:
                    os.utime(self.storage.path(LOCK))
                elif self.still_held():  # a conditional write: never over a lock taken over meanwhile
                    locks.replace_if(self.storage, self._data, self._tag, LOCK)


class AuditFailed(VaegenError):
    """The new dataset failed its audit: committed, not published."""


def publish(
    storage: Storage, dataset_id: str, record: Manifest, config: audit.AuditConfig, log: Callable[[str], None]
) -> AuditRecord:
    """Audit the committed dataset (or reuse this commit's verdict under the same settings), record the verdict
    beside the manifest, in the card and in the dataset's run, then move `latest` to it unless the audit failed.
    Call it holding the root's refresh lock. Returns the audit record."""
    published = latest_dataset(storage)
    if not config.enabled:
        verdict = audit.skipped_record(storage, dataset_id, "--no-audit")
    else:
        verdict = audit.read_record(storage, dataset_id)
        if verdict is None or verdict.verdict == "skipped" or verdict.config != config.to_dict():
            log(f"auditing {dataset_id} before publishing it")
            verdict = audit.audit(storage, dataset_id, config, published)
        else:
            log(f"{dataset_id} was audited at {verdict.audited_at} with these settings: {verdict.verdict}")
    audit.write_record(storage, verdict)
    card.record_audit(storage, dataset_id, verdict)
    lineage.log_dataset_audit(record.to_json(), verdict.to_json())  # registry reads the JSON forms
    log(f"audit: {audit_record.summary(verdict)}")
    metrics.record_audit(dataset_id, record.model.to_json(), verdict.verdict)
    if verdict.verdict == "fail":
        raise AuditFailed(
            f"audit of {dataset_id} failed, {verdict.failure_line}; it stays committed but "
            f"unpublished and `latest` still names {published or 'nothing'}; see "
            f"{storage.location(dataset_id, audit.AUDIT)}, or publish it anyway with --no-audit"
        )
    move_latest(storage, dataset_id, record, verdict)
    metrics.record_published(dataset_id, record.model.to_json())
    return verdict


def publish_generated(
    storage: Storage, dataset_id: str, record: Manifest, config: audit.AuditConfig, log: Callable[[str], None]
) -> AuditRecord:
    """`generate --publish`: publish() under the root's refresh lock, so that it never races a refresh."""
    lock = RefreshLock(storage, DEFAULT_LOCK_TIMEOUT_S)
    if not lock.acquire():
        raise VaegenError(
            f"a refresh holds {storage.location(LOCK)} ({lock.describe_holder()}); {dataset_id} is "
            "committed but not published: rerun this command once that refresh has ended"
        )
    try:
        return publish(storage, dataset_id, record, config, log)
    finally:
        lock.release()


def move_latest(
    storage: Storage, dataset_id: str, record: Manifest, verdict: AuditRecord | None = None
) -> LatestPointer:
    pointer = LatestPointer(
        dataset_id,
        storage.location(dataset_id),
        record.model.name,
        record.model.version,
        audit.manifest_sha256(storage, dataset_id),
        utc_now(),
        None if verdict is None else verdict.verdict,
        None if verdict is None else verdict.audited_at,
    )
    storage.write_json(pointer.to_json(), LATEST)
    return pointer


def refresh(config: RefreshConfig, log: Callable[[str], None] = lambda message: None) -> RefreshResult:
    storage = storage_from_env(config.generate.out)
    storage.check_writable()
    tracking.ensure_reachable()
    lock = _acquire(storage, config, log)
    if lock is None:
        return RefreshResult("busy", None, None, [])
    started = time.perf_counter()
    try:
        # once; generation gets the pinned version, alias recorded; an alias must hold what `vaegen promote` put there
        pinned = promotion.gate_alias(models.resolve(config.generate.model), config.generate.allow_ungated)
        if lock.taken_over:
            metrics.record_lock_takeover(pinned.name, pinned.version)
        seed = seed_for(config)
        with lineage.job_run(
            lineage.REFRESH_EXPERIMENT,
            f"refresh-{pinned.name}-v{pinned.version}",
            _run_params(config, pinned, seed, storage),
            tags={LOCK_OWNER_TAG: lock.token.owner},
        ) as run:  # a refresh that takes over ends it
            result = _generate_holding(config, storage, lock, pinned, seed, log)
            action = _publish_if_new(storage, result, config.audit_config, run, log)
            pruned, unreadable, kept = prune(storage, config.keep, protected=result.dataset_id)
            for problem in unreadable:
                log(f"not pruned: {problem}; repair or delete it by hand")
            run.log_metrics(
                {
                    "seconds": time.perf_counter() - started,
                    "pruned": len(pruned),
                    "unreadable": len(unreadable),
                    "generated": float(action == "generated"),
                }
            )
            run.set_tags({"vaegen.action": action, "vaegen.dataset_id": result.dataset_id})
    finally:
        lock.release()
    return RefreshResult(action, result.dataset_id, pinned.version, pruned, unreadable, kept)


def _acquire(storage: Storage, config: RefreshConfig, log: Callable[[str], None]) -> RefreshLock | None:
    """The root's refresh lock, or None while a live refresh holds it; taking over a dead holder's lock ends
    the run that holder left open."""
    lock = RefreshLock(storage, config.lock_timeout_s)
    if not lock.acquire():
        log(f"another refresh holds {storage.location(LOCK)} ({lock.describe_holder()}); exiting without work")
        return None
    if lock.taken_over:
        log(f"took over {storage.location(LOCK)}: {lock.taken_over}")
        lineage.end_stale_runs_tagged(lineage.REFRESH_EXPERIMENT, LOCK_OWNER_TAG, str(lock.holder.owner))
    return lock


def _run_params(config: RefreshConfig, pinned: PinnedModel, seed: int, storage: Storage) -> dict[str, Any]:
    """The refresh run's params: the reference asked for beside the version it named, and the seed drawn."""
    return {
        "model": config.generate.model,
        "resolved_version": pinned.version,
        "seed_policy": config.seed_policy,
        "seed": seed,
        "n": config.generate.n,
        "out": storage.location(),
        "keep": config.keep,
    }


def _generate_holding(
    config: RefreshConfig,
    storage: Storage,
    lock: RefreshLock,
    pinned: PinnedModel,
    seed: int,
    log: Callable[[str], None],
) -> GenerateResult:
    """The pinned version's dataset for this seed, generated or found committed; an error if the lock was taken
    over meanwhile, so that only its holder moves `latest`."""
    result = generate(
        dataclasses.replace(
            config.generate, model=f"{pinned.name}/{pinned.version}", seed=seed, out=storage.uri, resume=None
        ),
        log=log,
        pinned=pinned,
    )
    if not lock.still_held():
        raise VaegenError(
            f"{storage.location(LOCK)} was taken over while this refresh ran (it was judged dead: "
            f"--lock-timeout {config.lock_timeout_s:g} s); dataset {result.dataset_id} is committed "
            "but `latest` was not moved: rerun the refresh"
        )
    return result


def _publish_if_new(
    storage: Storage,
    result: GenerateResult,
    audit_config: audit.AuditConfig,
    run: lineage.JobRun,
    log: Callable[[str], None],
) -> str:
    """The refresh's action: "generated" or "pointer-moved" once the dataset is audited and `latest` names it,
    "up-to-date" when `latest` named it already."""
    if result.status != "up-to-date":
        action = "generated"
    elif latest_dataset(storage) != result.dataset_id:
        action = "pointer-moved"
    else:
        return "up-to-date"
    try:
        verdict = publish(storage, result.dataset_id, result.manifest, audit_config, log)
    except AuditFailed:
        run.set_tags({"vaegen.action": "audit-failed", "vaegen.dataset_id": result.dataset_id})
        raise
    run.set_tags({"vaegen.audit": verdict.verdict})
    return action
