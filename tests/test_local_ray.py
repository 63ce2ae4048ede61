"""The private Ray that a job without RAY_ADDRESS starts (jobs/generate/ray_session.py connect / stop_local_ray):
every server of it listens on loopback only, and stopping it leaves no process behind."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ray_cluster import make_ray_env, stop_tagged, tagged_pids, wait_until

pytestmark = pytest.mark.slow  # starts a real local Ray

DRIVER = """
import os, sys
from jobs.generate import ray_session
assert ray_session.connect(), "expected to start a private Ray"
import ray

@ray.remote
class Probe:
    def pid(self):
        return os.getpid()

probe = Probe.remote()
ray.get(probe.pid.remote())  # a worker process is up and serving too
print("ready", flush=True)
sys.stdin.readline()
ray_session.stop_local_ray()
os._exit(0)
"""


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} write addresses as 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))


def listening_addresses(pids: list[int]) -> set[str]:
    inodes = _socket_inodes(pids)
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                found.add(str(_address(local.split(":")[0])))
    return found


def describe(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            lines.append(f"{pid}: {command[:120]}")
        except OSError:
            pass
    return lines


def is_loopback(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    mapped = getattr(parsed, "ipv4_mapped", None)
    return parsed.is_loopback or (mapped is not None and mapped.is_loopback)


def test_address_decoding():
    assert _address("0100007F") == ipaddress.ip_address("127.0.0.1")
    assert is_loopback(str(_address("0000000000000000FFFF00000100007F")))  # ::ffff:127.0.0.1
    assert not is_loopback(str(_address("00000000")))  # 0.0.0.0: every interface


def test_the_private_ray_listens_on_loopback_only_and_stops_without_leftovers():
    env = make_ray_env()
    variables = {**env.environ(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    variables.pop("RAY_AUTH_MODE")  # as a user's shell has it: Ray's default, token authentication on
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER],
        env=variables,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=env.root,
    )
    try:
        assert driver.stdout.readline().strip() == "ready", driver.stderr.read()[-3000:]
        pids = tagged_pids(env.tag)
        addresses = listening_addresses(pids)
        assert len(pids) >= 4 and len(addresses) >= 1, (pids, addresses)  # driver, GCS, raylet, worker at least
        assert all(is_loopback(address) for address in addresses), f"listening beyond loopback: {addresses}"
        started = time.monotonic()
        driver.stdin.write("\n")
        driver.stdin.flush()
        assert driver.wait(timeout=60) == 0, driver.stderr.read()[-3000:]
        wait_until(
            lambda: not tagged_pids(env.tag),
            10,
            f"the private Ray's processes to exit: {describe(tagged_pids(env.tag))}",
        )
        assert time.monotonic() - started < 10
    finally:
        driver.kill()
        survivors = stop_tagged(env.tag)
        assert not survivors, survivors
