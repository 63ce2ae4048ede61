"""Tags, reader leases and ROOT@REF resolution on a local root, without Ray or MLflow: records written and
read back as files, a lease held by a real process killed with -9, and the prune selection they feed."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.generate import holds, published
from jobs.generate.manifest import AUDIT, MANIFEST
from jobs.generate.storage import Storage, json_bytes
from jobs.prune import select_for_pruning
from registry import holders
from registry.holders import MAX_LOCK_FIELD_CHARS, LockRecord
from vae_core.errors import UsageError


def commit(root: Path, dataset_id: str, version: int, finished_at: str, verdict: str | None = None) -> None:
    """A folder with the fields committed_datasets and resolution read (not a full manifest)."""
    (root / dataset_id).mkdir(parents=True)
    (root / dataset_id / MANIFEST).write_text(
        json.dumps({"dataset_id": dataset_id, "model": {"version": version}, "timings": {"finished_at": finished_at}})
    )
    if verdict:
        (root / dataset_id / AUDIT).write_text(json.dumps({"verdict": verdict}))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    commit(tmp_path, "a", 1, "2026-01-01T00:00:00", "pass")
    commit(tmp_path, "b", 1, "2026-01-02T00:00:00", "fail")
    commit(tmp_path, "c", 2, "2026-01-03T00:00:00", "pass")
    (tmp_path / "latest").write_text(json.dumps({"dataset_id": "c"}))
    return tmp_path


def test_tags_move_atomically_resolve_and_are_deleted_only_for_their_dataset(root):
    storage = Storage(str(root))
    assert holds.set_tag(storage, "a", "paper", "alice") is None
    assert published.resolve(f"{root}@paper") == str(root / "a")
    assert holds.set_tag(storage, "b", "paper", "bob").dataset_id == "a"  # moved: one record, rewritten
    assert json.loads((root / ".tags" / "paper.json").read_text())["dataset_id"] == "b"
    assert [path.name for path in (root / ".tags").iterdir()] == ["paper.json"]  # no temp file left
    with pytest.raises(UsageError, match="names b, not a; nothing deleted"):
        holds.delete_tag(storage, "paper", "a")
    holds.delete_tag(storage, "paper", "b")
    with pytest.raises(UsageError, match="no tag 'paper'"):
        published.resolve(f"{root}@paper")
    with pytest.raises(UsageError, match="is not a committed dataset"):
        holds.set_tag(storage, "nope", "paper", "alice")


def test_references_resolve_to_the_published_and_the_newest_published_of_a_version(root):
    assert published.resolve(f"{root}@latest") == str(root / "c")
    assert published.resolve(f"{root}@v1") == str(root / "a")  # b failed its audit: not published
    assert published.resolve(str(root / "a")) == str(root / "a")
    with pytest.raises(UsageError, match="no published dataset of model version 3"):
        published.resolve(f"{root}@v3")
    (root / "odd@latest").mkdir()  # a folder really named so wins over the reference
    assert published.resolve(f"{root}/odd@latest") == f"{root}/odd@latest"


def test_a_lease_protects_until_released_and_a_killed_readers_lease_stops_at_once(root):
    storage = Storage(str(root))
    lease = holds.Lease(storage, "a", timeout_s=300)
    assert holds.holds(storage) == {"a": f"leased by pid {lease.record.pid} on {lease.record.host}"}
    lease.release()
    assert holds.holds(storage) == {}
    script = (
        "import os, signal, sys; from jobs.generate.storage import Storage; "
        "from jobs.generate.holds import Lease; Lease(Storage(sys.argv[1]), 'b'); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    [(_, record, stale)] = holds.leases(storage)  # the record survived kill -9, whole
    assert record.dataset_id == "b" and "is gone" in stale
    assert holds.holds(storage) == {}
    holds.set_tag(storage, "a", "keep-me", "alice")
    doomed, kept = select_for_pruning(["a", "b", "c"], keep=1, published="c", held=holds.holds(storage))
    assert doomed == ["b"] and kept["a"] == "tagged keep-me"


def test_the_root_listing_says_what_each_dataset_is(root):
    storage = Storage(str(root))
    holds.set_tag(storage, "a", "paper", "alice")
    (root / "d").mkdir()
    (root / "d" / "_progress.json").write_text("{}")
    rows = {row["dataset_id"]: (row["states"], row["audit"]) for row in published.listing(storage)}
    assert rows == {
        "a": (["tagged paper"], "pass"),
        "b": (["unpublished"], "fail"),
        "c": (["published"], "pass"),
        "d": (["unfinished"], "none"),
    }


def test_a_lease_that_cannot_be_written_is_a_warning_not_a_failure(root, monkeypatch):
    """A root the reader may only read (a public bucket; root ignores chmod here, so the write is refused by hand)."""
    from jobs import reader

    def refuse(*args, **kwargs):
        raise PermissionError("read-only bucket")

    monkeypatch.setattr(holds.Lease, "__init__", refuse)
    with pytest.warns(UserWarning, match="without a lease"):
        assert reader._take_lease(Storage(str(root)), "a", 60) is None


def test_a_lock_record_writes_the_bytes_each_lock_wrote_as_a_dict_and_reads_them_back():
    process = holders.this_process()
    fields = {"user": process.user, "host": process.host, "boot_id": process.boot_id, "pid": process.pid}
    fields["pid_start"] = process.pid_start
    assert process.to_bytes() == json.dumps(fields).encode()  # the promotion lock's holder tag
    guard = dataclasses.replace(process, since="2026-12-07T11:00:00+00:00", token="t0")
    assert guard.to_bytes() == json.dumps({**fields, "since": "2026-12-07T11:00:00+00:00", "token": "t0"}).encode()
    refresh = dataclasses.replace(process, owner="o1", acquired_at=1.5e9)
    assert refresh.to_bytes() == json.dumps({"owner": "o1", **fields, "acquired_at": 1.5e9}).encode()
    lease = dataclasses.replace(
        process, format=holds.LEASE_FORMAT, dataset_id="a", started_at=1.0, heartbeat_at=2.0, timeout_s=300
    )
    old_lease = {"format": holds.LEASE_FORMAT, "dataset_id": "a", **fields}
    old_lease.update(started_at=1.0, heartbeat_at=2.0, timeout_s=300)
    assert json_bytes(lease.to_json()) == json_bytes(old_lease)
    for record in (process, guard, refresh, lease):
        assert LockRecord.from_bytes(record.to_bytes()) == record
    assert dataclasses.replace(process, pid_start=None).to_json()["pid_start"] is None  # as this_process wrote it


def test_a_hand_edited_lock_record_reads_as_bounded_fields_or_an_unknown_holder():
    unknown = LockRecord()
    for data in (b"", b"[]", b"null", b"\xff", b"{" * 100_000, json.dumps({"pid": 1, "pad": "x" * 5_000}).encode()):
        assert LockRecord.from_bytes(data) == unknown and not unknown.known
    hostile = {
        "pid": "123",
        "host": "h" * (MAX_LOCK_FIELD_CHARS + 1),
        "user": "a\nb",
        "since": True,
        "timeout_s": "300",
        "token": ["x"],
        "owner": {"a": 1},
        "heartbeat_at": 7,
        "unknown": 1,
    }
    assert LockRecord.from_json(hostile) == LockRecord(pid=123, heartbeat_at=7)
    assert LockRecord.from_json({"pid": "²"}) == unknown  # a digit to str.isdigit, not to int()
    assert LockRecord.from_json({"heartbeat_at": 5, "acquired_at": 1}).last_heard_at == 5
    assert LockRecord(acquired_at=1).last_heard_at == 1 and unknown.last_heard_at is None
