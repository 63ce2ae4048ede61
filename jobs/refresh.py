"""The scheduled refresh: resolve the promoted version once, generate its dataset if it is not
committed yet, move `ROOT/latest`, prune old datasets. Safe to run from cron every minute.

Concurrency: `ROOT/.refresh.lock` names its holder (host, boot, pid) and is created atomically
(a hard link on local disk, which fails if the name exists, NFS included; on object stores,
which pyarrow gives no create-if-absent for, a write then read-back check). The holder touches
it every HEARTBEAT_FRACTION of `lock_timeout_s`. Another refresh that finds it exits 0 "busy",
unless its holder is dead: on the same host a pid that is gone (or reused) is dead at once;
from another host, a lock whose heartbeat is older than `lock_timeout_s` is. A stale lock is
moved aside atomically before it is replaced, so two refreshes cannot both take it over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from jobs import audit
from jobs.generate import card, holds
from jobs.generate.job import GenerateConfig, generate
from jobs.generate.manifest import MANIFEST, utc_now
from jobs.generate.published import LATEST, committed_datasets, latest_dataset
from jobs.liveness import boot_id as _boot_id
from jobs.liveness import owner_alive as _owner_alive
from jobs.liveness import process_start as _process_start
from jobs.generate.storage import Storage, storage_from_env
from registry import lineage, models, promotion, tracking
from vae_core.errors import UsageError, VaegenError

LOCK = ".refresh.lock"
LOCK_OWNER_TAG = "vaegen.refresh_lock_owner"  # on the refresh run: a refresh taking over a dead lock ends that run
SEED_POLICIES = ("fixed", "daily", "new")
DEFAULT_LOCK_TIMEOUT_S = 900.0  # 15 missed heartbeats: a live holder is never taken for dead, a dead one blocks 15 min at most
HEARTBEAT_FRACTION = 1 / 15  # the holder touches its lock every timeout / 15 (every minute by default)


@dataclasses.dataclass(frozen=True)
class RefreshConfig:
    generate: GenerateConfig  # model reference (an alias), n, out, dtype, ...
    keep: int = 3  # newest committed datasets kept (plus the one `latest` names, if older): two rollbacks' worth
    seed_policy: str = "fixed"  # fixed: new data only when the promoted version changes
    seed: int = 0  # the fixed seed, and the base of the daily one
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S  # without a heartbeat for this long, a lock from another host is stale
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
        pid = os.getpid()
        self.token = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "boot_id": _boot_id(), "pid": pid,
                      "pid_start": _process_start(pid), "acquired_at": time.time()}
        self.holder: dict[str, Any] = {}  # after a failed acquire(): what the lock said about its holder
        self.taken_over: str | None = None  # why a dead holder's lock was replaced, if it was
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> bool:
        for _ in range(3):  # a lock found stale is moved aside, then the create is tried again
            if self._create():
                self._heartbeat = threading.Thread(target=self._beat, name="refresh-lock-heartbeat", daemon=True)
                self._heartbeat.start()
                return True
            self.holder = self._read()
            reason = self._stale_reason(self.holder)
            if reason is None or not self._move_aside(self.holder):
                return False
            self.taken_over = reason
        return False

    def still_held(self) -> bool:
        return self._read().get("owner") == self.token["owner"]

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if self.still_held():
            self.storage.delete(LOCK)

    def describe_holder(self) -> str:
        held = self.holder
        if not held:
            return "an unreadable lock"
        age_s = time.time() - held.get("heartbeat_at", held.get("acquired_at", 0))
        return f"pid {held.get('pid')} on {held.get('host')}, last heartbeat {age_s:,.0f} s ago"

    def _read(self) -> dict[str, Any]:
        """The lock's record, with its mtime as `heartbeat_at`; {} if absent or unreadable."""
        try:
            record = json.loads(self.storage.read_bytes(LOCK))
            info = self.storage.fs.get_file_info(self.storage.path(LOCK))
        except (OSError, ValueError):  # gone meanwhile, or half-written by a crashed object-store writer
            return {}
        if not isinstance(record, dict):
            return {}
        if info.mtime is not None:
            record["heartbeat_at"] = info.mtime.timestamp()
        return record

    def _stale_reason(self, held: dict[str, Any]) -> str | None:
        """Why the holder is dead, or None while it may be alive."""
        if held.get("host") == self.token["host"] and held.get("boot_id") == self.token["boot_id"] and "pid" in held:
            if not _owner_alive(int(held["pid"]), held.get("pid_start")):
                return f"its holder, pid {held['pid']} on this host, is gone"
        last_s = held.get("heartbeat_at", held.get("acquired_at"))
        if last_s is None:  # unreadable: judge by the file's age alone
            info = self.storage.fs.get_file_info(self.storage.path(LOCK))
            last_s = info.mtime.timestamp() if info.mtime is not None else 0.0
        if time.time() - last_s > self.timeout_s:
            return f"no heartbeat from {held.get('host', 'its holder')} for over {self.timeout_s:g} s (--lock-timeout)"
        return None

    def _create(self) -> bool:
        data = json.dumps(self.token).encode()
        self.storage.fs.create_dir(self.storage.root, recursive=True)  # check_writable() leaves no folder behind
        if self.storage.is_local:
            temporary = self.storage.path(f"{LOCK}.{self.token['owner']}.tmp")
            with open(temporary, "wb") as handle:
                handle.write(data)
            try:
                os.link(temporary, self.storage.path(LOCK))  # atomic: fails if the lock exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(temporary)
        if self.storage.exists(LOCK):
            return False
        with self.storage.fs.open_output_stream(self.storage.path(LOCK)) as stream:
            stream.write(data)
        return self.still_held()

    def _move_aside(self, stale: dict[str, Any]) -> bool:
        """Remove the stale lock, unless another refresh replaced it meanwhile; True if it is gone."""
        if not self.storage.is_local:
            if self._read().get("owner") != stale.get("owner"):
                return False
            self.storage.delete(LOCK)
            return True
        aside = self.storage.path(f"{LOCK}.stale-{self.token['owner']}")
        try:
            os.rename(self.storage.path(LOCK), aside)  # atomic: of two takers, one moves it
        except FileNotFoundError:
            return True  # another taker moved it: try to create ours
        try:
            moved = json.loads(Path(aside).read_bytes())
        except (OSError, ValueError):
            moved = {}
        if moved.get("owner") != stale.get("owner"):  # a fresh lock, taken meanwhile: put it back
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
                elif self.still_held():
                    with self.storage.fs.open_output_stream(self.storage.path(LOCK)) as stream:
                        stream.write(json.dumps(self.token).encode())


class AuditFailed(VaegenError):
    """The new dataset failed its audit: committed, not published."""


def publish(storage: Storage, dataset_id: str, record: dict[str, Any], config: audit.AuditConfig,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Audit the committed dataset (or reuse this commit's verdict under the same settings), record the verdict
    beside the manifest, in the card and in the dataset's run, then move `latest` to it unless the audit failed.
    Call it holding the root's refresh lock. Returns the audit record."""
    published = latest_dataset(storage)
    if not config.enabled:
        verdict = audit.skipped_record(storage, dataset_id, "--no-audit")
    else:
        verdict = audit.read_record(storage, dataset_id)
        if verdict is None or verdict["verdict"] == "skipped" or verdict.get("config") != config.to_dict():
            log(f"auditing {dataset_id} before publishing it")
            verdict = audit.audit(storage, dataset_id, config, published)
        else:
            log(f"{dataset_id} was audited at {verdict['audited_at']} with these settings: {verdict['verdict']}")
    audit.write_record(storage, verdict)
    card.record_audit(storage, dataset_id, verdict)
    lineage.log_dataset_audit(record, verdict)
    log(f"audit: {audit.summary(verdict)}")
    if verdict["verdict"] == "fail":
        raise AuditFailed(f"audit of {dataset_id} failed, {audit.failure_line(verdict)}; it stays committed but "
                          f"unpublished and `latest` still names {published or 'nothing'}; see "
                          f"{storage.location(dataset_id, audit.AUDIT)}, or publish it anyway with --no-audit")
    move_latest(storage, dataset_id, record, verdict)
    return verdict


def publish_generated(storage: Storage, dataset_id: str, record: dict[str, Any], config: audit.AuditConfig,
                      log: Callable[[str], None]) -> dict[str, Any]:
    """`generate --publish`: publish() under the root's refresh lock, so that it never races a refresh."""
    lock = RefreshLock(storage, DEFAULT_LOCK_TIMEOUT_S)
    if not lock.acquire():
        raise VaegenError(f"a refresh holds {storage.location(LOCK)} ({lock.describe_holder()}); {dataset_id} is "
                          "committed but not published: rerun this command once that refresh has ended")
    try:
        return publish(storage, dataset_id, record, config, log)
    finally:
        lock.release()


def move_latest(storage: Storage, dataset_id: str, record: dict[str, Any],
                verdict: dict[str, Any] | None = None) -> dict[str, Any]:
    pointer = {
        "audit": None if verdict is None else {"verdict": verdict["verdict"], "audited_at": verdict["audited_at"]},
        "dataset_id": dataset_id,
        "location": storage.location(dataset_id),
        "model": {"name": record["model"]["name"], "version": record["model"]["version"]},
        "manifest_sha256": hashlib.sha256(storage.read_bytes(dataset_id, MANIFEST)).hexdigest(),
        "updated_at": utc_now(),
    }
    storage.write_json(pointer, LATEST)
    return pointer


def select_for_pruning(datasets: list[str], keep: int, published: str | None,
                       held: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Which committed datasets (oldest first) prune deletes, and why it keeps each of the others: the newest
    `keep`, the published one, every one committed after it (unpublished: a failed audit stays until a
    newer dataset publishes), and every one `held` names (tagged or leased: jobs/generate/holds.py)."""
    kept: dict[str, str] = {dataset_id: why for dataset_id, why in (held or {}).items() if dataset_id in datasets}
    for dataset_id in datasets[max(0, len(datasets) - keep):]:
        kept[dataset_id] = f"one of the newest {keep} (--keep)"
    if published in datasets:
        kept[published] = "`latest` names it"
        for dataset_id in datasets[datasets.index(published) + 1:]:
            kept.setdefault(dataset_id, "unpublished, newer than `latest`")
    return [dataset_id for dataset_id in datasets if dataset_id not in kept], kept


def prune(storage: Storage, keep: int, protected: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Delete the committed datasets select_for_pruning dooms (`protected`: the published one); never unfinished
    or unreadable ones. Returns (pruned ids, "ID: why" of the unreadable ones, left in place, {kept id: why})."""
    committed, unreadable = committed_datasets(storage)
    datasets = [dataset_id for dataset_id, _ in committed]
    doomed, kept = select_for_pruning(datasets, keep, protected, holds.holds(storage))
    for dataset_id in doomed:
        storage.delete(dataset_id, MANIFEST)  # uncommit first: a reader never sees a half-deleted dataset
        storage.delete_dir(dataset_id)
    return doomed, unreadable, kept


def refresh(config: RefreshConfig, log: Callable[[str], None] = lambda message: None) -> RefreshResult:
    storage = storage_from_env(config.generate.out)
    storage.check_writable()
    tracking.ensure_reachable()
    lock = RefreshLock(storage, config.lock_timeout_s)
    if not lock.acquire():
        log(f"another refresh holds {storage.location(LOCK)} ({lock.describe_holder()}); exiting without work")
        return RefreshResult("busy", None, None, [])
    if lock.taken_over:
        log(f"took over {storage.location(LOCK)}: {lock.taken_over}")
        lineage.end_stale_runs_tagged(lineage.REFRESH_EXPERIMENT, LOCK_OWNER_TAG, str(lock.holder.get("owner")))
    started = time.perf_counter()
    try:
        # once; generation gets the pinned version, alias recorded; an alias must hold what `vaegen promote` put there
        pinned = promotion.gate_alias(models.resolve(config.generate.model), config.generate.allow_ungated)
        seed = seed_for(config)
        params = {"model": config.generate.model, "resolved_version": pinned.version, "seed_policy": config.seed_policy,
                  "seed": seed, "n": config.generate.n, "out": storage.location(), "keep": config.keep}
        with lineage.job_run(lineage.REFRESH_EXPERIMENT, f"refresh-{pinned.name}-v{pinned.version}", params,
                             tags={LOCK_OWNER_TAG: lock.token["owner"]}) as run:  # a refresh that takes over ends it
            result = generate(dataclasses.replace(config.generate, model=f"{pinned.name}/{pinned.version}", seed=seed, out=storage.uri, resume=None),
                              log=log, pinned=pinned)
            if not lock.still_held():
                raise VaegenError(f"{storage.location(LOCK)} was taken over while this refresh ran (it was judged dead: "
                                  f"--lock-timeout {config.lock_timeout_s:g} s); dataset {result.dataset_id} is committed "
                                  "but `latest` was not moved: rerun the refresh")
            if result.status != "up-to-date":
                action = "generated"
            elif latest_dataset(storage) != result.dataset_id:
                action = "pointer-moved"
            else:
                action = "up-to-date"
            if action != "up-to-date":
                try:
                    verdict = publish(storage, result.dataset_id, result.manifest, config.audit_config, log)
                except AuditFailed:
                    run.set_tags({"vaegen.action": "audit-failed", "vaegen.dataset_id": result.dataset_id})
                    raise
                run.set_tags({"vaegen.audit": verdict["verdict"]})
            pruned, unreadable, kept = prune(storage, config.keep, protected=result.dataset_id)
            for problem in unreadable:
                log(f"not pruned: {problem}; repair or delete it by hand")
            run.log_metrics({"seconds": time.perf_counter() - started, "pruned": len(pruned),
                             "unreadable": len(unreadable), "generated": float(action == "generated")})
            run.set_tags({"vaegen.action": action, "vaegen.dataset_id": result.dataset_id})
    finally:
        lock.release()
    return RefreshResult(action, result.dataset_id, pinned.version, pruned, unreadable, kept)
