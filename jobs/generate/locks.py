"""Locks on a dataset root: one writer per dataset (`writer_guard`), and the create-if-absent and
replace-if-unchanged primitives every lock record is built on (the refresh lock uses them too).

Local roots: an flock for the writer guard (the kernel drops it when its process dies), a hard
link for create-if-absent. S3: conditional writes (`If-None-Match: *` to create, `If-Match: ETAG`
to replace or delete exactly the version that was read), through boto3, because pyarrow's S3
filesystem has none. Other object stores have no such primitive here and are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import stat
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from jobs.generate.storage import DatasetBusy, NotRegularFile, Storage, check_name
from registry import holders
from registry.holders import MAX_LOCK_BYTES, LockRecord
from vae_core.errors import UsageError

# The variables a boto3 client reads once, when it is made: a client is reused while they stay the same.
S3_SETTINGS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)
_CLIENTS: dict[tuple[str | None, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def create_exclusive(storage: Storage, data: bytes, *names: str) -> bool:
    """Write a new file atomically unless the name exists; True if this call created it. Two callers
    can never both succeed: a hard link on local disk (fails if the name exists, NFS included), a
    conditional PutObject (`If-None-Match: *`) on S3."""
    if storage.is_local:
        final = storage.path(*names)
        temporary = f"{final}.{uuid.uuid4().hex}.tmp"
        with open(temporary, "wb") as handle:
            handle.write(data)
        try:
            os.link(temporary, final)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
    return _s3_conditional(storage, data, names, IfNoneMatch="*")


def read_versioned(storage: Storage, *names: str) -> tuple[bytes | None, str | None]:
    """(the file's bytes, a tag naming this exact version), (None, None) if absent: the tag lets
    replace_if() and delete_if() act only on the version that was read (S3 ETag; local: None)."""
    if not storage.is_local and _is_s3(storage):
        client, bucket, key = _s3(storage, names)
        try:
            answer = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None, None
        return answer["Body"].read(), answer["ETag"]
    return (storage.read_bytes(*names), None) if storage.exists(*names) else (None, None)


def replace_if(storage: Storage, data: bytes, tag: str | None, *names: str) -> bool:
    """Overwrite a file only if it is still the version `tag` names (S3: `If-Match`); True if replaced."""
    return _s3_conditional(storage, data, names, IfMatch=tag) if tag else False


def delete_if(storage: Storage, tag: str | None, *names: str) -> None:
    """Delete a file only if it is still the version `tag` names; a newer one is left alone."""
    if tag is None:
        return
    client, bucket, key = _s3(storage, names)
    with contextlib.suppress(client.exceptions.ClientError):
        client.delete_object(Bucket=bucket, Key=key, IfMatch=tag)


def _is_s3(storage: Storage) -> bool:
    return storage.fs.type_name == "s3"


def _s3(storage: Storage, names: tuple[str, ...]) -> tuple[Any, str, str]:
    """boto3's client for this root (endpoint, region and credentials from the same AWS_* variables as
    pyarrow's), and the bucket and key of a name: pyarrow's S3 filesystem has no conditional writes."""
    import boto3.session

    if not _is_s3(storage):
        raise UsageError(
            f"output root {storage.location()}: vaegen can lock datasets only on a local filesystem or "
            "S3 (conditional writes); use one of those for --out"
        )
    bucket, _, key = storage.path(*names).partition("/")
    settings = tuple(os.environ.get(name) for name in S3_SETTINGS)
    with _CLIENTS_LOCK:  # creating clients is slow (~0.1 s) and not thread-safe; using one is both fast and safe
        if settings not in _CLIENTS:
            _CLIENTS[settings] = boto3.session.Session().client("s3")
        return _CLIENTS[settings], bucket, key


def _s3_conditional(storage: Storage, data: bytes, names: tuple[str, ...], **condition: str) -> bool:
    client, bucket, key = _s3(storage, names)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
    except client.exceptions.ClientError as error:
        # 412: the condition failed; 409: a concurrent conditional write to the same key won
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
            return False
        raise
    return True


@contextlib.contextmanager
def writer_guard(storage: Storage, dataset_id: str) -> Iterator[None]:
    """Hold `ROOT/.<dataset id>.lock` while writing a dataset: a second writer is refused, naming the holder.

    Local roots use an flock, which the kernel drops when its process dies (kill -9 included),
    so a dead holder never blocks. Object stores have no locks: a JSON record created with a
    conditional write, so that of two writers exactly one creates it; a record whose process is
    gone from this host is replaced by a conditional overwrite of exactly that record, one from
    another host must be deleted by hand if its run died (the message names it).
    """
    name = f".{check_name(dataset_id)}.lock"
    holder = dataclasses.replace(
        holders.this_process(),
        since=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        token=uuid.uuid4().hex,
    )
    created = storage._missing_local_folders()
    storage.fs.create_dir(storage.root, recursive=True)
    try:
        if storage.is_local:
            with _flocked(storage.path(name), holder, lambda held: _busy(storage, dataset_id, name, held)):
                yield
        else:
            with _lock_record(storage, dataset_id, name, holder):
                yield
    finally:
        for folder in reversed(created):  # as check_writable: a refused or failed run leaves no empty root
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def _lock_record(storage: Storage, dataset_id: str, name: str, holder: LockRecord) -> Iterator[None]:
    data = holder.to_bytes()
    if not create_exclusive(storage, data, name):
        raw, tag = read_versioned(storage, name)
        held = _parsed_record(raw)
        if raw is None:  # released meanwhile: one more try, as a newcomer
            if not create_exclusive(storage, data, name):
                raise _busy(storage, dataset_id, name, _parsed_record(read_versioned(storage, name)[0]))
        elif holders.dead_reason(held) is None or not replace_if(storage, data, tag, name):
            raise _busy(storage, dataset_id, name, held)
    try:
        yield
    finally:
        raw, tag = read_versioned(storage, name)
        if _parsed_record(raw).token == holder.token:
            delete_if(storage, tag, name)


def _busy(storage: Storage, dataset_id: str, name: str, held: LockRecord) -> DatasetBusy:
    who = f"pid {_shown(held.pid)} on {_shown(held.host)}, user {_shown(held.user)}, since {_shown(held.since)}"
    hint = "" if storage.is_local else f"; if that run is dead, delete {storage.location(name)}"
    return DatasetBusy(
        f"dataset {storage.location(dataset_id)} is being written by another vaegen run ({who}); "
        f"wait for it to finish and rerun (the dataset will then be committed){hint}"
    )


def _shown(value: Any) -> Any:
    return "?" if value is None else value


def _parsed_record(raw: bytes | None) -> LockRecord:
    """A lock record's bounded fields; the unknown holder, LockRecord(), for an absent or unreadable one."""
    return LockRecord() if raw is None else LockRecord.from_bytes(raw)


@contextlib.contextmanager
def _flocked(path: str, holder: LockRecord, busy: Any) -> Iterator[None]:
    import fcntl

    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # a FIFO or device put there: never a lock
            os.close(descriptor)
            raise NotRegularFile(f"{path} is not a regular file; it cannot be a vaegen lock: remove it")
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = LockRecord.from_bytes(os.pread(descriptor, MAX_LOCK_BYTES, 0))
            os.close(descriptor)
            raise busy(held) from None
        # The previous holder unlinks the file before unlocking it: if it did so between our
        # open and our flock, we hold a lock on a file nobody else will open. Start again.
        try:
            current = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, holder.to_bytes(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(descriptor)
