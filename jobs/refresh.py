"""The scheduled refresh: resolve the promoted version once, generate its dataset if it is not
committed yet, move `ROOT/latest`, prune old datasets. Safe to run from cron every minute.

Concurrency: `ROOT/.refresh.lock` is created exclusively (O_EXCL on local disk; on object
stores, which pyarrow gives no create-if-absent for, a write then read-back check). A second
refresh that finds it held exits 0 without work. A lock older than `lock_timeout_s` belongs
to a crashed refresh and is taken over.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import time
import uuid
from typing import Any, Callable

from jobs.generate.job import GenerateConfig, generate
from jobs.generate.manifest import MANIFEST, utc_now
from jobs.generate.storage import Storage, storage_from_env
from registry import lineage, models, tracking
from vae_core.errors import UsageError

LATEST = "latest"
LOCK = ".refresh.lock"
SEED_POLICIES = ("fixed", "daily", "new")


@dataclasses.dataclass(frozen=True)
class RefreshConfig:
    generate: GenerateConfig  # model reference (an alias), n, out, dtype, ...
    keep: int = 3  # newest committed datasets kept (plus the one `latest` names, if older): two rollbacks' worth
    seed_policy: str = "fixed"  # fixed: new data only when the promoted version changes
    seed: int = 0  # the fixed seed, and the base of the daily one
    lock_timeout_s: float = 6 * 3600.0  # longer than any refresh should take; then the lock is stale
    today: dt.date | None = None  # the date the daily policy uses; None = today (UTC)

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise UsageError(f"--keep must be a positive integer, got {self.keep}")
        if self.seed_policy not in SEED_POLICIES:
            raise UsageError(f"--seed-policy must be one of {', '.join(SEED_POLICIES)}, got {self.seed_policy!r}")


@dataclasses.dataclass(frozen=True)
class RefreshResult:
    action: str  # "generated" | "up-to-date" | "pointer-moved" | "busy"
    dataset_id: str | None
    model_version: int | None
    pruned: list[str]


def seed_for(config: RefreshConfig) -> int:
    if config.seed_policy == "fixed":
        return config.seed
    if config.seed_policy == "new":
        return secrets.randbits(32)
    day = (config.today or dt.datetime.now(dt.timezone.utc).date()).isoformat()
    return int.from_bytes(hashlib.sha256(f"{config.seed}:{day}".encode()).digest()[:4], "big")


class RefreshLock:
    def __init__(self, storage: Storage, timeout_s: float):
        self.storage = storage
        self.timeout_s = timeout_s
        self.token = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "acquired_at": time.time()}

    def acquire(self) -> bool:
        held = self.storage.read_json(LOCK)
        if held is not None and time.time() - held.get("acquired_at", 0) > self.timeout_s:
            self.storage.delete(LOCK)  # stale: its refresh crashed
        data = json.dumps(self.token).encode()
        if self.storage.is_local:
            try:
                descriptor = os.open(self.storage.path(LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            return True
        if self.storage.exists(LOCK):
            return False
        with self.storage.fs.open_output_stream(self.storage.path(LOCK)) as stream:
            stream.write(data)
        return (self.storage.read_json(LOCK) or {}).get("owner") == self.token["owner"]

    def release(self) -> None:
        if (self.storage.read_json(LOCK) or {}).get("owner") == self.token["owner"]:
            self.storage.delete(LOCK)


def committed_datasets(storage: Storage) -> list[tuple[str, dict[str, Any]]]:
    """(id, manifest) of every committed dataset under the root, oldest first."""
    found = []
    for name in storage.list():
        if name.startswith((".", "_")) or name == LATEST:
            continue
        record = storage.read_json(name, MANIFEST)
        if record is not None:
            found.append((name, record))
    return sorted(found, key=lambda item: item[1]["timings"]["finished_at"])


def move_latest(storage: Storage, dataset_id: str, record: dict[str, Any]) -> dict[str, Any]:
    pointer = {
        "dataset_id": dataset_id,
        "location": storage.location(dataset_id),
        "model": {"name": record["model"]["name"], "version": record["model"]["version"]},
        "manifest_sha256": hashlib.sha256(storage.read_bytes(dataset_id, MANIFEST)).hexdigest(),
        "updated_at": utc_now(),
    }
    storage.write_json(pointer, LATEST)
    return pointer


def prune(storage: Storage, keep: int, protected: str) -> list[str]:
    """Delete committed datasets beyond the newest `keep`, never `protected` nor unfinished ones."""
    datasets = [dataset_id for dataset_id, _ in committed_datasets(storage)]
    doomed = [dataset_id for dataset_id in datasets[: max(0, len(datasets) - keep)] if dataset_id != protected]
    for dataset_id in doomed:
        storage.delete(dataset_id, MANIFEST)  # uncommit first: a reader never sees a half-deleted dataset
        storage.delete_dir(dataset_id)
    return doomed


def refresh(config: RefreshConfig, log: Callable[[str], None] = lambda message: None) -> RefreshResult:
    storage = storage_from_env(config.generate.out)
    storage.check_writable()
    tracking.ensure_reachable()
    lock = RefreshLock(storage, config.lock_timeout_s)
    if not lock.acquire():
        log(f"another refresh holds {storage.location(LOCK)}; exiting without work")
        return RefreshResult("busy", None, None, [])
    started = time.perf_counter()
    try:
        pinned = models.resolve(config.generate.model)  # once; generation gets the pinned version
        seed = seed_for(config)
        params = {"model": config.generate.model, "resolved_version": pinned.version, "seed_policy": config.seed_policy,
                  "seed": seed, "n": config.generate.n, "out": storage.location(), "keep": config.keep}
        with lineage.job_run(lineage.REFRESH_EXPERIMENT, f"refresh-{pinned.name}-v{pinned.version}", params) as run:
            result = generate(dataclasses.replace(config.generate, model=f"{pinned.name}/{pinned.version}", seed=seed,
                                                  out=storage.uri, resume=None), log=log)
            pointer = storage.read_json(LATEST) or {}
            if result.status != "up-to-date":
                action = "generated"
            elif pointer.get("dataset_id") != result.dataset_id:
                action = "pointer-moved"
            else:
                action = "up-to-date"
            if action != "up-to-date":
                move_latest(storage, result.dataset_id, result.manifest)
            pruned = prune(storage, config.keep, protected=result.dataset_id)
            run.log_metrics({"seconds": time.perf_counter() - started, "pruned": len(pruned),
                                 "generated": float(action == "generated")})
            run.set_tags({"vaegen.action": action, "vaegen.dataset_id": result.dataset_id})
    finally:
        lock.release()
    return RefreshResult(action, result.dataset_id, pinned.version, pruned)
