"""Who holds a lock: the record a holder writes about itself (`LockRecord`), and whether a recorded holder is dead.

One answer for every lock vaegen takes (the refresh lock, a dataset's writer guard on an object
store, a promotion's alias lock) and every lease and retirement notice: a holder on this host and
boot whose process is gone, or whose pid now names another process (its start time differs), is
dead at once; a holder on another host can only be judged by its age, which each lock does with
its own timeout.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import socket
from pathlib import Path
from typing import Any

MAX_LOCK_BYTES = 4_096  # a lock or lease record: a few short fields
MAX_LOCK_FIELD_CHARS = 256


@dataclasses.dataclass(frozen=True)
class LockRecord:
    """A lock, lease or retirement notice's record of its holder. Every field is optional: a record names only
    what its kind carries, and a field that is absent, too long or of the wrong type reads as None (unknown).

    Field order is the order records are written in (`to_json`); each kind's own fields:
    - writer guard (`ROOT/.ID.lock`): the process fields, since (ISO time), token;
    - refresh lock (`ROOT/.refresh.lock`): owner, the process fields, acquired_at (heartbeat_at: its mtime, read);
    - lease (`ROOT/.leases/`): format, dataset_id, the process fields, started_at, heartbeat_at, timeout_s;
    - retirement notice (`ROOT/.retiring/`): format, the process fields, since (epoch s), dataset_id;
    - promotion lock (its `vaegen.lock_holder` tag): the process fields alone.
    """

    format: str | None = None  # leases and retirement notices: "vaegen-lease/1", "vaegen-retiring/1"
    owner: str | None = None  # the refresh lock's token, known only to its holder
    user: str | None = None  # the process fields (this_process): user, host, boot_id, pid, pid_start
    host: str | None = None
    boot_id: str | None = None  # "" where the platform has none
    pid: int | None = None
    pid_start: str | None = None  # clock ticks since boot (process_start); None where the platform has none
    dataset_id: str | None = None  # what a lease or notice is about
    since: str | float | None = None  # writer guard: ISO 8601 UTC; retirement notice: epoch seconds
    token: str | None = None  # the writer guard's token, known only to its holder
    acquired_at: float | None = None  # refresh lock: epoch seconds
    started_at: float | None = None  # lease: epoch seconds
    heartbeat_at: float | None = None  # lease: epoch seconds; refresh lock: its file's mtime, as read
    timeout_s: float | None = None  # lease: without a heartbeat for this long, it protects nothing

    @classmethod
    def from_json(cls, record: Any) -> LockRecord:
        """The fields of a parsed record, bounded: strings printable and at most MAX_LOCK_FIELD_CHARS, numbers
        finite or not but never bool, a digit-string pid as its number; anything else, an unknown field or a
        record that is not an object is dropped, so a hand-edited record can neither crash its reader nor flood
        the message that names its holder."""
        if not isinstance(record, dict):
            return cls()
        fields = {}
        for field in dataclasses.fields(cls):
            value = record.get(field.name)
            if field.name == "pid" and isinstance(value, str) and value.isascii() and value.isdigit():
                value = int(value)
            if _fits(value, _FIELD_TYPES[field.name]):
                fields[field.name] = value
        return cls(**fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> LockRecord:
        """A record from its bytes; the unknown holder, LockRecord(), unless they are a JSON object of at most
        MAX_LOCK_BYTES."""
        if len(data) > MAX_LOCK_BYTES:
            return cls()
        try:
            return cls.from_json(json.loads(data or b"{}"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return cls()

    def to_json(self) -> dict[str, Any]:
        """The record as it is written: its fields in order, those that are None left out, except pid_start,
        which this_process() records beside every pid (null where the platform has no start times)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if getattr(self, field.name) is not None or (field.name == "pid_start" and self.pid is not None)
        }

    def to_bytes(self) -> bytes:
        """The compact JSON that a lock file or tag holds."""
        return json.dumps(self.to_json()).encode()

    @property
    def known(self) -> bool:
        """Whether the record names anything (an absent, unreadable or hand-emptied one does not)."""
        return self != LockRecord()

    @property
    def last_heard_at(self) -> float | None:
        """The holder's last sign of life: its heartbeat, else when it took the lock (None: neither is known)."""
        return self.acquired_at if self.heartbeat_at is None else self.heartbeat_at


_FIELD_TYPES = {
    "pid": (int,),
    "since": (str, int, float),
    **{name: (int, float) for name in ("acquired_at", "started_at", "heartbeat_at", "timeout_s")},
}
_FIELD_TYPES.update({field.name: (str,) for field in dataclasses.fields(LockRecord) if field.name not in _FIELD_TYPES})


def _fits(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    return not isinstance(value, str) or (len(value) <= MAX_LOCK_FIELD_CHARS and value.isprintable())


def boot_id() -> str:
    """Distinguishes two boots of one host: a pid from before a reboot names nobody."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone or a zombie.
    With the pid it names one process: a pid reused by another process has another start time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def this_process() -> LockRecord:
    """What a holder records about itself: enough for anyone on this host to tell later whether it is alive."""
    pid = os.getpid()
    return LockRecord(
        user=getpass.getuser(),
        host=socket.gethostname(),
        boot_id=boot_id(),
        pid=pid,
        pid_start=process_start(pid),
    )


def alive(pid: Any, start: str | None = None) -> bool:
    """Whether `pid` on this host still runs; `start`: its recorded start time (None: the pid alone counts)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if Path("/proc/self/stat").exists():
        current = process_start(pid)
        return current is not None and start in (None, current)
    try:  # no /proc: signal 0 says whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def dead_reason(held: LockRecord) -> str | None:
    """Why the holder a lock record names is dead for sure, or None while it may be alive (or is elsewhere).

    Only a holder on this host and boot can be judged at once; a record without a boot id (older
    locks) is judged by its pid alone."""
    if held.host != socket.gethostname():
        return None
    if held.boot_id not in (None, boot_id()):
        return f"its holder ran on {held.host} before the last reboot"
    if held.pid is None:
        return None
    if not alive(held.pid, held.pid_start):
        return f"its holder, pid {held.pid} on this host, is gone"
    return None
