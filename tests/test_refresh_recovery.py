"""Issue 16's refresh probes, reproduced as the issue describes them: a refresh killed with -9 left a lock
that made every later refresh "busy" for 6 h; one truncated manifest of an old dataset made every later
refresh fail at the prune step; refresh-made manifests lost the alias. And the lock's rules on their own:
a dead holder on this host is taken over at once, a live one never, another host's only once its
heartbeat is older than --lock-timeout. Real files, a real SQLite registry, a real local Ray."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import private_local_ray
from helpers import invoke
from jobs.generate.storage import Storage
from jobs.refresh import LATEST, LOCK, RefreshLock
from registry import promotion
from registry.holders import LockRecord

MODEL = "vae-decoder@champion"
N, ROWS_PER_SHARD = 2_000, 1_000


def refresh(root: Path, *extra: str):
    result = invoke(
        "refresh",
        "--model",
        MODEL,
        "--n",
        str(N),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--num-workers",
        "1",
        "--out",
        str(root),
        *extra,
    )
    assert result.exit_code == 0, result.output
    return result


def action(result) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("refresh: "))


@pytest.fixture(scope="module")
def champion(untrained_version) -> Iterator[str]:
    promotion.promote("vae-decoder/1", promotion.PromotionConfig(reason="serve", by="tester"))
    with private_local_ray():
        yield MODEL


def lock_held_by_a_killed_process(root: Path) -> dict:
    """What `kill -9` of a refresh holding the lock leaves: the lock of a process that no longer exists."""
    script = (
        "import os, signal, sys; from jobs.generate.storage import Storage; from jobs.refresh import RefreshLock; "
        "assert RefreshLock(Storage(sys.argv[1]), 900.0).acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return json.loads((root / LOCK).read_text())


@pytest.mark.slow  # a trained model, a local Ray
def test_a_refresh_killed_with_kill_9_blocks_no_later_one_and_manifests_keep_the_alias(champion, tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    dead = lock_held_by_a_killed_process(root)
    assert dead["host"] == socket.gethostname() and not Path(f"/proc/{dead['pid']}").exists()

    result = refresh(root)  # the default --lock-timeout: before the fix, "busy" for 6 h
    assert action(result).startswith("refresh: generated"), result.output
    assert f"took over {root / LOCK}: its holder, pid {dead['pid']} on this host, is gone" in result.stderr
    assert not (root / LOCK).exists() and (root / LATEST).exists()

    # Issue 16 too: refresh-made manifests lost the alias (alias null, resolved_from "vae-decoder/1").
    dataset_id = action(result).split()[2]
    model = json.loads((root / dataset_id / "_manifest.json").read_text())["model"]
    assert (model["alias"], model["resolved_from"], model["version"]) == ("champion", MODEL, 1)


def test_lock_rules_live_holder_other_host_and_heartbeat(tmp_path):
    storage = Storage(str(tmp_path))
    holder = RefreshLock(storage, timeout_s=1.5)
    assert holder.acquire()
    try:
        contender = RefreshLock(storage, timeout_s=1.5)
        assert not contender.acquire()  # a live holder on this host: busy, whatever its age
        assert contender.describe_holder().startswith(f"pid {os.getpid()} on {socket.gethostname()}")
        time.sleep(2.5)  # longer than the timeout: only the holder's heartbeat keeps the lock fresh
        elsewhere = dict(json.loads((tmp_path / LOCK).read_text()), host="elsewhere")
        fresh = LockRecord.from_json({**elsewhere, "heartbeat_at": time.time()})
        assert RefreshLock(storage, timeout_s=1.5)._stale_reason(fresh) is None
        assert not RefreshLock(storage, timeout_s=1.5).acquire()
    finally:
        holder.release()
    assert not (tmp_path / LOCK).exists()

    other_host = {"owner": "x", "host": "elsewhere", "boot_id": "b", "pid": 1, "acquired_at": time.time()}
    (tmp_path / LOCK).write_text(json.dumps(other_host))
    assert not RefreshLock(storage, timeout_s=60).acquire()  # another host, fresh heartbeat: busy
    os.utime(tmp_path / LOCK, (time.time() - 120,) * 2)  # its heartbeat stopped two minutes ago
    taker = RefreshLock(storage, timeout_s=60)
    assert taker.acquire() and "no heartbeat from elsewhere" in taker.taken_over
    taker.release()
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no temporary or moved-aside lock left


@pytest.mark.slow  # a trained model, a local Ray
def test_a_truncated_old_manifest_is_skipped_and_reported_not_fatal(champion, tmp_path):
    root = tmp_path / "out"
    first = refresh(root, "--seed-policy", "new")
    old = action(first).split()[2]
    manifest = root / old / "_manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:100])  # truncated, as a full disk or a bad copy leaves it
    second = refresh(root, "--seed-policy", "new", "--keep", "1")
    third = refresh(root, "--seed-policy", "new", "--keep", "1")
    assert action(second).startswith("refresh: generated") and action(third).startswith("refresh: generated")
    assert f"pruned: {action(second).split()[2]}" in third.stdout  # pruning goes on around it
    assert f"not pruned: {old}: unreadable manifest at {manifest} (CorruptRecord)" in third.stderr
    assert manifest.exists() and len(list((root / old).glob("part-*.parquet"))) == N // ROWS_PER_SHARD  # left in place
    assert json.loads((root / LATEST).read_text())["dataset_id"] == action(third).split()[2]
