"""The driver's Ray session: join the cluster RAY_ADDRESS names or start a private local Ray bound to 127.0.0.1,
and kill that private Ray at once when the command is done. Everything that touches Ray's process-wide settings
(its SIGTERM handler, its default agent port, its loopback switch) does so here, inside a `with` that restores it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants


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
    with _own_sigterm():
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING, log_to_driver=True)
            return False
        # Ray's own default (token authentication on, ~/.ray/auth_token written) stays; its notice about it on
        # every job is noise here (README, "Run on a Ray cluster", says what it means for `ray start`).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        with _loopback_only(), free_ports_only():
            ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    return True


@contextlib.contextmanager
def _own_sigterm() -> Iterator[None]:
    """Keep the process's SIGTERM handler across ray.init, which replaces it twice: with `sys.exit(15)` in
    Python, then with the core worker's C++ handler that dumps every thread's stack. The command line's
    handler (jobs.cli.plumbing) ends a job as Ctrl-C does: one line, exit 143, locks released, runs marked KILLED."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    saved = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    try:
        yield
    finally:
        if saved is not None:  # None: a handler not installed from Python; nothing to restore
            signal.signal(signal.SIGTERM, saved)


@contextlib.contextmanager
def free_ports_only() -> Iterator[None]:
    """Make the private Ray take free ports only. ray.init() asks the OS for free ports for everything but
    the dashboard agent, which gets Ray's default 52365: a `ray start --head` begun while the job runs
    then comes up without a job agent ("No available agent to submit job"). Port 0 lets the OS choose
    (Ray's Node treats 0 as "pick one", as it does for the other agents' ports)."""
    original = ray._private.parameter.RayParams

    def free_ports(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dashboard_agent_listen_port", 0)
        return original(*args, **kwargs)

    ray._private.parameter.RayParams = free_ports
    try:
        yield
    finally:
        ray._private.parameter.RayParams = original


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make the Ray started inside this block serve 127.0.0.1 only, not every interface.

    Ray resolves a node IP of 127.0.0.1 given to ray.init() to the host's routable address, and its
    servers bind that address or all interfaces. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 it treats the
    host as it treats a laptop: node IP 127.0.0.1, every server on loopback (tests/test_local_ray.py
    checks the listening sockets). The variable reaches the processes ray.init spawns; this process reads
    the constant computed at import, so both are set, and restored once the cluster is up.
    """

    saved_env, saved_constant = (
        os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR),
        ray_constants.ENABLE_RAY_CLUSTER,
    )
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
    # Worker processes are the raylet's children, not the node's: one still starting up when the raylet
    # dies notices it only when it next tries to connect, seconds later. They are this cluster's: kill them too.
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, [])
    workers = [child for info in raylets for child in _children(info.process.pid)]
    node.kill_all_processes(check_alive=False, allow_graceful=False)
    for pid in workers:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc (empty where there is none)."""
    children = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses
                    if int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
    return children
