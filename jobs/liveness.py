"""Is the process that wrote a record (a lock, a lease) still alive? Host, boot and pid with its start time
name one process; these helpers answer for this host (another host's records go stale by their heartbeat)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


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
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def owner_alive(pid: int, start: str | None) -> bool:
    """`start`: the holder's recorded start time; None in a lock written without it (then the pid alone counts)."""
    if Path("/proc/self/stat").exists():
        current = process_start(pid)
        return current is not None and start in (None, current)
    try:  # no /proc: signal 0 says whether the pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def identity() -> dict[str, Any]:
    """What a record says about the process that writes it."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid, "pid_start": process_start(pid)}


def dead_on_this_host(record: dict[str, Any]) -> bool:
    """True when the record's writer ran on this host, in this boot, and is gone (or its pid was reused)."""
    if record.get("host") != socket.gethostname() or record.get("boot_id") != boot_id() or "pid" not in record:
        return False
    return not owner_alive(int(record["pid"]), record.get("pid_start"))
