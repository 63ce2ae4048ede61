"""Who holds a lock: the record a holder writes about itself, and whether a recorded holder is dead.

One answer for every lock vaegen takes (the refresh lock, a dataset's writer guard on an object
store, a promotion's alias lock): a holder on this host and boot whose process is gone, or whose
pid now names another process (its start time differs), is dead at once; a holder on another host
can only be judged by its age, which each lock does with its own timeout.
"""

from __future__ import annotations

import getpass
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
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else fields[19]


def this_process() -> dict[str, Any]:
    """What a holder records about itself: enough for anyone on this host to tell later whether it is alive."""
    pid = os.getpid()
    return {
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid": pid,
        "pid_start": process_start(pid),
    }


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


def dead_reason(held: dict[str, Any]) -> str | None:
    """Why the holder a lock record names is dead for sure, or None while it may be alive (or is elsewhere).

    Only a holder on this host and boot can be judged at once; a record without a boot id (older
    locks) is judged by its pid alone."""
    if not isinstance(held, dict) or held.get("host") != socket.gethostname():
        return None
    if held.get("boot_id") not in (None, boot_id()):
        return f"its holder ran on {held['host']} before the last reboot"
    pid = held.get("pid")
    pid = int(pid) if isinstance(pid, str) and pid.isdigit() else pid
    if not isinstance(pid, int):
        return None
    start = held.get("pid_start")
    if not alive(pid, start if isinstance(start, str) else None):
        return f"its holder, pid {pid} on this host, is gone"
    return None
