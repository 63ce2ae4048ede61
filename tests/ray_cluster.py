"""Real Ray for tests, isolated and cleaned up by process id.

Every Ray a test starts gets its own HOME, temp dir and auth mode (MEASURED.md: a local `ray.init()`
writes ~/.ray/auth_token, which later turns token auth on for `ray start`), and an environment tag
that its processes inherit. Teardown signals exactly the processes carrying that tag: `ray stop`
would kill every Ray process on the machine, other test runs' included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

TAG_VARIABLE = "VAEGEN_TEST_RAY_TAG"
STOP_GRACE_S = (
    1  # SIGTERM first: raylet and GCS shut their workers down; then SIGKILL what is left (a test cluster keeps nothing)
)
START_TIMEOUT_S = 180  # `ray start` takes ~5 s alone; far longer on a loaded 2-core CI box
RAY_BIN = str(Path(sys.executable).with_name("ray"))


_HANDED_OUT: set[int] = set()  # ports free_port() gave this process: a cluster's ports must all differ


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (bound, read, released), never one this process
    was given before: the OS may hand a just-released port out again, and a `ray start` given one port for two
    of its components refuses to start."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclasses.dataclass(frozen=True)
class RayEnv:
    """A short private root (Unix socket paths must stay under 108 bytes) and a tag for its processes."""

    root: Path
    tag: str

    @property
    def temp_dir(self) -> Path:
        return self.root / "ray"

    @property
    def home(self) -> Path:
        return self.root / "home"

    def variables(self) -> dict[str, str]:
        """What a Ray process (server or client) of this environment must see."""
        return {
            "HOME": str(self.home),
            "RAY_TMPDIR": str(self.root),
            "RAY_AUTH_MODE": "disabled",  # the same on servers and clients; no token file is read or written
            "RAY_USAGE_STATS_ENABLED": "0",
            TAG_VARIABLE: self.tag,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def environ(self, **extra: str) -> dict[str, str]:
        """A full environment for a subprocess: ours, minus any RAY_ADDRESS, plus this Ray's variables."""
        env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
        return {**env, **self.variables(), **extra}


def make_ray_env() -> RayEnv:
    root = Path(tempfile.mkdtemp(prefix="vg-ray-", dir="/tmp"))
    env = RayEnv(root, uuid.uuid4().hex)
    env.home.mkdir()
    return env


def tagged_pids(tag: str) -> list[int]:
    """Processes (other than this one) whose environment carries TAG_VARIABLE=tag."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in Path("/proc", entry, "environ").read_bytes().split(b"\0"):
                pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    with contextlib.suppress(OSError):
        state = Path("/proc", str(pid), "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False


def stop_tagged(tag: str, grace_s: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM every tagged process, SIGKILL the survivors after grace_s; returns those still alive."""
    pids = tagged_pids(tag)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.2)
    for pid in tagged_pids(tag):  # late children too
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    return [pid for pid in tagged_pids(tag) if _alive(pid)]


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")


def agent_healthy(port: int) -> bool:
    """Whether a node's dashboard agent answers its health check (it registers for jobs right after)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/healthz", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@dataclasses.dataclass
class RayCluster:
    """A `ray start --head` on 127.0.0.1, plus worker nodes joined with `ray start --address`."""

    env: RayEnv
    head_cpus: int = 1
    worker_node_cpus: tuple[int, ...] = (1,)
    gcs_port: int = dataclasses.field(default_factory=free_port)
    dashboard_port: int = dataclasses.field(default_factory=free_port)
    metrics_port: int = dataclasses.field(default_factory=free_port)  # the head's --metrics-export-port
    agent_port: int = dataclasses.field(default_factory=free_port)  # the head's --dashboard-agent-listen-port
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)  # for the Ray processes (RAY_* settings)
    log: list[str] = dataclasses.field(default_factory=list)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_ports(self, metrics_port: int | None = None, agent_port: int | None = None) -> list[str]:
        """Every fixed-default port moved to a free one: two nodes (and other runs) share this host."""
        options = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
        ]
        ports = [part for option in options for part in (option, str(free_port()))]
        return [
            *ports,
            "--dashboard-agent-listen-port",
            str(agent_port or free_port()),
            "--metrics-export-port",
            str(metrics_port or free_port()),
        ]

    def _ray_start(self, arguments: list[str], metrics_port: int | None = None, agent_port: int | None = None) -> None:
        command = [
            RAY_BIN,
            "start",
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            *arguments,
            *self._node_ports(metrics_port, agent_port),
        ]
        done = subprocess.run(
            command,
            env=self.env.environ(**self.extra_env),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            start_new_session=True,
            cwd=self.env.root,
        )
        self.log.append(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}):\n" + self.log[-1][-4000:])

    def start(self) -> None:
        self._ray_start(
            [
                "--head",
                "--port",
                str(self.gcs_port),
                "--num-cpus",
                str(self.head_cpus),
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
                "--temp-dir",
                str(self.env.temp_dir),
            ],
            self.metrics_port,
            self.agent_port,
        )
        # `ray start` returns before the head's job agent serves: a submission then fails "No available agent"
        wait_until(lambda: agent_healthy(self.agent_port), START_TIMEOUT_S, "the head's job agent to serve")
        for cpus in self.worker_node_cpus:
            self.add_node(cpus)
        wait_until(
            lambda: len(self.alive_nodes()) == 1 + len(self.worker_node_cpus), START_TIMEOUT_S, "every node alive"
        )

    def add_node(self, cpus: int) -> None:
        """A worker node joined with `cpus` CPUs (as an autoscaler's new node would); stopped with the cluster."""
        self._ray_start(["--address", self.gcs_address, "--num-cpus", str(cpus)])

    def alive_nodes(self) -> list[dict]:
        try:
            with urllib.request.urlopen(f"{self.dashboard_url}/nodes?view=summary", timeout=5) as response:
                summary = json.load(response)["data"]["summary"]
        except (OSError, ValueError, KeyError):
            return []
        return [node for node in summary if node.get("raylet", {}).get("state") == "ALIVE"]

    def stop(self) -> list[int]:
        return stop_tagged(self.env.tag)


@contextlib.contextmanager
def ray_cluster(
    head_cpus: int = 1, worker_node_cpus: tuple[int, ...] = (1,), extra_env: dict[str, str] | None = None
) -> Iterator[RayCluster]:
    """Start a cluster; ALWAYS stop its processes (by pid) and remove its files afterwards."""
    cluster = RayCluster(make_ray_env(), head_cpus, worker_node_cpus, extra_env=extra_env or {})
    try:
        cluster.start()
        yield cluster
    finally:
        survivors = cluster.stop()
        shutil.rmtree(cluster.env.root, ignore_errors=True)
        assert not survivors, f"Ray processes survived teardown: {survivors}"


@contextlib.contextmanager
def as_driver(cluster: RayCluster, monkeypatch) -> Iterator[RayCluster]:
    """This process as a Ray driver of `cluster` through RAY_ADDRESS, as a job on it would be; disconnected after."""
    import ray

    ray.shutdown()
    for key, value in cluster.env.variables().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RAY_ADDRESS", cluster.gcs_address)
    try:
        yield cluster
    finally:
        ray.shutdown()
