"""What keeps a committed dataset from being pruned besides `--keep`: tags and reader leases.

Both are small JSON records under the root, in folders readers skip (a leading '.'), each written whole
with `Storage.write_json` (a temp file, then a move: atomic on local disks; one PUT on object stores):
- `ROOT/.tags/NAME.json` (format `vaegen-tag/1`): {tag, dataset_id, manifest_sha256, by, at}. Moving a
  tag is rewriting its one record. A tagged dataset is never pruned.
- `ROOT/.leases/DATASET_ID.UUID.json` (format `vaegen-lease/1`, a `registry.holders.LockRecord`):
  {dataset_id, host, boot_id, pid, pid_start, started_at, heartbeat_at, timeout_s}. `open_dataset` takes one
  and rewrites it every timeout / HEARTBEAT_DIVISOR while the reader holds it. A lease protects its dataset until it is
  released, its process is gone from this host, or its heartbeat is older than its timeout.
- `ROOT/.retiring/DATASET_ID.json` (format `vaegen-retiring/1`, a `LockRecord` too): a prune's notice that it is
  about to delete a dataset, written BEFORE it reads the tags and leases; a reader or tagger writes its lease or
  tag BEFORE it looks for the notice. On a store where each write is seen by every later read (local disks,
  S3), one of the two always sees the other: the prune finds the lease and keeps the dataset, or the reader
  finds the notice and opens nothing (`retirement_pending`). A notice whose prune is gone (killed) or older
  than RETIRING_TIMEOUT_S does not count, and the next prune removes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import threading
import time
import uuid
from typing import Any

from jobs.generate.manifest import MANIFEST, utc_now
from jobs.generate.storage import Storage
from registry import holders
from registry.holders import LockRecord
from vae_core.errors import UsageError, VaegenError

TAGS, LEASES = ".tags", ".leases"
RETIRING = ".retiring"
TAG_FORMAT, LEASE_FORMAT, RETIRING_FORMAT = "vaegen-tag/1", "vaegen-lease/1", "vaegen-retiring/1"
TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,99}")
RESERVED_TAG = re.compile(r"latest|v[0-9]+")  # ROOT@latest and ROOT@vN mean something else
DEFAULT_LEASE_TIMEOUT_S = 900.0  # as the refresh lock: a live reader is never taken for dead, a dead one holds 15 min
HEARTBEAT_DIVISOR = 15
RETIRING_TIMEOUT_S = 600.0  # a notice lives from before the holds are read until the manifest is gone: seconds


def check_tag_name(name: str) -> str:
    if not TAG_NAME.fullmatch(name) or RESERVED_TAG.fullmatch(name):
        raise UsageError(
            f"tag name {name!r}: use a letter then letters, digits, '.', '_' or '-' (not 'latest' or "
            "vN, which name the published dataset and a model version's), e.g. paper-2026"
        )
    return name


def _read(storage: Storage, *names: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(*names)
    except (OSError, VaegenError):
        return None


@dataclasses.dataclass(frozen=True)
class TagRecord:
    """`ROOT/.tags/NAME.json`: a name for one commit of a dataset, and who set it when."""

    tag: str
    dataset_id: str
    by: str | None = None
    at: str | None = None
    manifest_sha256: str | None = None

    @classmethod
    def from_json(cls, record: Any) -> TagRecord | None:
        """None unless a tag record (its format, a tag and a dataset id): such a file is not a tag."""
        if not isinstance(record, dict) or record.get("format") != TAG_FORMAT:
            return None
        if not all(isinstance(record.get(key), str) for key in ("tag", "dataset_id")):
            return None
        by, at, digest = (record.get(key) for key in ("by", "at", "manifest_sha256"))
        return cls(
            record["tag"],
            record["dataset_id"],
            *(value if isinstance(value, str) else None for value in (by, at, digest)),
        )

    def to_json(self) -> dict[str, Any]:
        return {"format": TAG_FORMAT, **dataclasses.asdict(self)}


def tags(storage: Storage) -> dict[str, TagRecord]:
    """{tag name: its record} of every readable tag under the root."""
    found = {}
    for name in storage.list(TAGS):
        if name.endswith(".json") and not name.startswith("."):
            record = TagRecord.from_json(_read(storage, TAGS, name))
            if record is not None:
                found[name.removesuffix(".json")] = record
    return found


def set_tag(storage: Storage, dataset_id: str, name: str, by: str) -> TagRecord | None:
    """Point tag `name` at a committed dataset (atomically, moving it if it named another); the previous record."""
    check_tag_name(name)
    manifest = storage.read_bytes(dataset_id, MANIFEST) if storage.exists(dataset_id, MANIFEST) else None
    if manifest is None:
        raise UsageError(
            f"{storage.location(dataset_id)} is not a committed dataset (no {MANIFEST}); tag a dataset "
            "that `vaegen datasets` or `vaegen inspect` shows"
        )
    previous = TagRecord.from_json(_read(storage, TAGS, f"{name}.json"))
    record = TagRecord(name, dataset_id, by, utc_now(), hashlib.sha256(manifest).hexdigest())
    storage.write_json(record.to_json(), TAGS, f"{name}.json")
    if retirement_pending(storage, dataset_id):  # being pruned (it read the holds before our write): keep no tag
        storage.delete(TAGS, f"{name}.json")
        raise VaegenError(f"{storage.location(dataset_id)} was pruned while it was being tagged; tag another dataset")
    return previous


def delete_tag(storage: Storage, name: str, dataset_id: str) -> None:
    """Remove tag `name`, which must name `dataset_id` (so a tag moved meanwhile by someone else is not lost)."""
    previous = TagRecord.from_json(_read(storage, TAGS, f"{check_tag_name(name)}.json"))
    if previous is None:
        raise UsageError(
            f"no tag {name!r} under {storage.location()}; `vaegen datasets {storage.location()}` lists them"
        )
    if previous.dataset_id != dataset_id:
        raise UsageError(f"tag {name!r} names {previous.dataset_id}, not {dataset_id}; nothing deleted")
    storage.delete(TAGS, f"{name}.json")


class Lease:
    """A reader's hold on one dataset, with a heartbeat thread; release() (or the process's end) lets go."""

    def __init__(self, storage: Storage, dataset_id: str, timeout_s: float = DEFAULT_LEASE_TIMEOUT_S):
        self.storage, self.dataset_id = storage, dataset_id
        self.name = f"{dataset_id}.{uuid.uuid4().hex}.json"
        now = time.time()
        self.record = dataclasses.replace(
            holders.this_process(),
            format=LEASE_FORMAT,
            dataset_id=dataset_id,
            started_at=now,
            heartbeat_at=now,
            timeout_s=timeout_s,
        )
        self._stop = threading.Event()
        storage.write_json(self.record.to_json(), LEASES, self.name)
        self._thread = threading.Thread(target=self._beat, name="vaegen-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        timeout_s = DEFAULT_LEASE_TIMEOUT_S if self.record.timeout_s is None else self.record.timeout_s
        while not self._stop.wait(timeout_s / HEARTBEAT_DIVISOR):
            self.record = dataclasses.replace(self.record, heartbeat_at=time.time())
            with contextlib.suppress(OSError):  # a transient store error: the next beat tries again, well in time
                self.storage.write_json(self.record.to_json(), LEASES, self.name)

    def release(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            # Unreachable store (at exit, say): the lease stops protecting when its heartbeat ages past timeout_s
            with contextlib.suppress(OSError):
                self.storage.delete(LEASES, self.name)

    def __getstate__(self) -> dict[str, Any]:  # a copy in a DataLoader worker holds nothing: the parent does
        return {"dataset_id": self.dataset_id, "name": self.name, "record": self.record}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, storage=None, _stop=threading.Event(), _thread=None)
        self._stop.set()


def lease_state(record: LockRecord, now: float) -> str | None:
    """None while the lease protects its dataset; else why it does not any more."""
    dead = holders.dead_reason(record)
    if dead is not None:
        return dead.replace("its holder", "its reader")
    age_s = now - float(0 if record.heartbeat_at is None else record.heartbeat_at)
    if age_s > float(DEFAULT_LEASE_TIMEOUT_S if record.timeout_s is None else record.timeout_s):
        return f"no heartbeat from {record.host} for {age_s:,.0f} s (over its {record.timeout_s} s)"
    return None


def leases(storage: Storage) -> list[tuple[str, LockRecord, str | None]]:
    """(record name, record, why it is stale or None) of every readable lease under the root."""
    now, found = time.time(), []
    for name in storage.list(LEASES):
        if name.endswith(".json") and not name.startswith("."):
            record = LockRecord.from_json(_read(storage, LEASES, name))
            if record.format == LEASE_FORMAT:
                found.append((name, record, lease_state(record, now)))
    return found


def holds(storage: Storage) -> dict[str, str]:
    """{dataset id: why it must not be pruned} from the tags and the live leases."""
    held: dict[str, list[str]] = {}
    for name, record in sorted(tags(storage).items()):
        held.setdefault(record.dataset_id, []).append(f"tagged {name}")
    for _, record, stale in leases(storage):
        if stale is None:
            reader = f"leased by pid {record.pid} on {record.host}"
            held.setdefault(record.dataset_id, []).append(reader)
    return {dataset_id: ", ".join(reasons) for dataset_id, reasons in held.items()}


def announce_retirement(storage: Storage, dataset_ids: list[str]) -> None:
    """A prune's notice, per dataset, that it is about to delete it: written before it reads the holds."""
    record = dataclasses.replace(holders.this_process(), format=RETIRING_FORMAT, since=time.time())
    for dataset_id in dataset_ids:
        storage.write_json(dataclasses.replace(record, dataset_id=dataset_id).to_json(), RETIRING, f"{dataset_id}.json")


def withdraw_retirement(storage: Storage, dataset_id: str) -> None:
    storage.delete(RETIRING, f"{dataset_id}.json")


def _notice_counts(record: LockRecord, now: float) -> bool:
    """Whether a notice still stands: its prune may be alive and it is younger than RETIRING_TIMEOUT_S (a notice
    whose `since` is not a number is as old as can be)."""
    if record.format != RETIRING_FORMAT or holders.dead_reason(record) is not None:
        return False
    since = record.since if isinstance(record.since, (int, float)) else 0
    return now - float(since) <= RETIRING_TIMEOUT_S


def retirement_pending(storage: Storage, dataset_id: str) -> bool:
    """Whether a reader or tagger must leave `dataset_id` alone: it is uncommitted, or a live prune announced it.
    Call it AFTER writing the lease or tag (see the module's docstring for why that order is safe)."""
    if not storage.exists(dataset_id, MANIFEST):
        return True
    return _notice_counts(LockRecord.from_json(_read(storage, RETIRING, f"{dataset_id}.json")), time.time())


def clear_stale_notices(storage: Storage) -> None:
    """Remove the notices of killed prunes and of datasets already gone (what a killed prune left)."""
    now = time.time()
    for name in storage.list(RETIRING):
        if name.endswith(".json") and not name.startswith("."):
            record = LockRecord.from_json(_read(storage, RETIRING, name))
            if not _notice_counts(record, now) or not storage.exists(name.removesuffix(".json"), MANIFEST):
                storage.delete(RETIRING, name)
