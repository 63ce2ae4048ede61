"""Where datasets live: a local folder or any pyarrow filesystem URI (s3://...), with atomic commits.

Every file is written under a hidden temporary name and then moved to its final name: a rename
on local disk, a server-side copy on object stores. Either way a reader sees a whole file or none.
S3 credentials and endpoint come from the usual AWS_* variables (AWS_ENDPOINT_URL_S3 included).

A local root is a path, never a URI: it goes to pyarrow's LocalFileSystem as it is, so `#`,
`%41`, spaces and non-ASCII letters name exactly that directory. Every name joined under the
root is one plain path component, so no computed path leaves its root. One writer per dataset
at a time (`writer_guard`).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import xxhash

from registry.redaction import has_credentials, has_scheme, redact_text, redact_uri
from vae_core.errors import UsageError, VaegenError

HASH_CHUNK_BYTES = 8 << 20  # 8 MiB reads when verifying checksums
# Checksums of part files. sha256 (1.2 GB/s here) cost ~15% of a float32 job's CPU; xxh3-128
# (9.5 GB/s) detects corruption as well and is a `pip install xxhash` away for any reader.
CHECKSUM = "xxh3_128"
MAX_RECORD_BYTES = 32 << 20  # a manifest of 100,000 parts is ~20 MB; a record larger than this is not vaegen's


class HashingStream:
    """A write-only file object that hashes (CHECKSUM) and counts what passes through it."""

    def __init__(self, sink: Any):
        self.sink = sink
        self.digest = xxhash.xxh3_128()
        self.size_bytes = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size_bytes += view.nbytes
        self.sink.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size_bytes

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


class CorruptRecord(VaegenError):
    """A JSON record (manifest, progress, pointer) that exists but cannot be parsed."""


class DatasetBusy(VaegenError):
    """Another run holds a dataset's writer guard."""


class NotRegularFile(VaegenError):
    """A record or part name that is a FIFO, a device, a socket or a folder: never read as data."""


def open_regular(path: str) -> int:
    """A read-only descriptor of `path`, refused unless it is a regular file. The one way vaegen opens a
    local record or part: a FIFO named `_manifest.json` would block `open` or `read` forever, and a device
    would feed a reader without end. O_NONBLOCK makes the open of a FIFO return at once; fstat then looks
    at what was opened, not at what the name pointed to a moment before."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = (
                "FIFO"
                if stat.S_ISFIFO(mode)
                else "device"
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "folder"
                if stat.S_ISDIR(mode)
                else "socket"
                if stat.S_ISSOCK(mode)
                else "special file"
            )
            raise NotRegularFile(
                f"{path} is a {kind}, not a regular file; vaegen reads records and parts only from "
                "regular files: remove it, or regenerate the dataset (generate --overwrite)"
            )
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def split_location(location: str) -> tuple[str, str]:
    """(root, name) of a dataset's path or URI: `/X` is X under `/` (never under the current folder), a bare
    `X` is X under `.`, `s3://b/p/X` is X under `s3://b/p`."""
    trimmed = location.rstrip("/") or location
    parent, slash, name = trimmed.rpartition("/")
    return (parent or slash or ".", name)


def check_name(name: str) -> str:
    """One plain path component: joined under a root, it can only name something inside it."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(character) < 32 for character in name)
    ):
        raise UsageError(
            f"{name!r} is not a plain file or folder name (no '/', '..', or control characters); "
            "a dataset id or file name can only name something inside its root"
        )
    return name


class Storage:
    """A root folder (local path or URI) and the few operations the dataset protocol needs."""

    def __init__(self, root: str):
        if has_scheme(root):
            shown = redact_uri(root)
            if has_credentials(root):
                raise UsageError(
                    f"output root {shown} carries credentials; give the bare URI and set "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL_S3) instead"
                )
            if "?" in root:
                raise UsageError(
                    f"output root {shown} has a query string; give the bare URI and set the endpoint and "
                    "credentials in AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            self.uri = root
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(root)
            except Exception as error:  # pyarrow raises several types for unusable URIs
                raise UsageError(
                    f"output root {shown} is not a usable location ({redact_text(str(error))}); "
                    "use a local path or s3://bucket/prefix"
                ) from None
        else:  # a path, never parsed as a URI: '#', '%41', ' ' and 'é' are just characters
            self.uri = self.root = str(Path(root).expanduser().resolve())
            self.fs = pafs.LocalFileSystem()
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *names: str) -> str:
        base = self.root.rstrip("/")
        return "/".join([base, *map(check_name, names)]) if names else base or self.root

    def location(self, *names: str) -> str:
        """A user-facing location: a local path, or the URI (credentials never shown) on object stores."""
        if self.is_local:
            return self.path(*names)
        return redact_uri("/".join([self.uri.rstrip("/"), *map(check_name, names)]))

    def free_bytes(self) -> int | None:
        """Free space under a local root (its nearest existing ancestor); None on object stores."""
        if not self.is_local:
            return None
        folder = Path(self.root)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        return shutil.disk_usage(folder).free

    def check_free_space(self, dataset_id: str, needed_bytes: int) -> None:
        """Refuse, before any work, a local dataset that cannot fit; its parts already written count as done."""
        free = self.free_bytes()
        if free is None:
            return
        written = sum(size for name, size in self.listing(dataset_id).items() if size is not None)
        missing = needed_bytes - written
        if missing > free:
            raise UsageError(
                f"{self.location(dataset_id)} needs about {missing / 1e9:,.1f} GB more but its filesystem has "
                f"{free / 1e9:,.1f} GB free; free some space, choose another --out, or lower --n"
            )

    def check_writable(self) -> None:
        """Fail early, before any work, if the root is a file or cannot be written; leave no trace either way
        (local folders the probe had to create are removed again, if still empty: a failed run leaves none)."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise UsageError(f"output root {self.location()} is a file; point --out at a directory")
        self.check_outside_datasets()
        created = self._missing_local_folders()
        try:
            self.fs.create_dir(self.root, recursive=True)
            probe = self.path(f".vaegen-write-probe-{uuid.uuid4().hex}")
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as error:
            raise UsageError(
                f"output root {self.location()} is not writable ({error}); fix its permissions or choose another --out"
            ) from None
        finally:
            for folder in reversed(created):  # deepest first; rmdir removes only empty folders, so never another run's
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def check_outside_datasets(self) -> None:
        """Refuse a root inside a committed dataset (the root itself or any folder above it holds a manifest):
        every dataset or lock written there would damage the dataset it is in."""
        from jobs.generate.manifest import MANIFEST

        folder = self.root.rstrip("/")
        while folder and "/" in folder:
            if self.fs.get_file_info(f"{folder}/{MANIFEST}").type != pafs.FileType.NotFound:
                shown = folder if self.is_local else redact_uri(f"{self.fs.type_name}://{folder}")
                raise UsageError(
                    f"output root {self.location()} is inside the committed dataset {shown} (it holds "
                    f"{MANIFEST}); writing there would damage it: choose an --out outside it, e.g. "
                    "its parent"
                )
            folder = folder.rpartition("/")[0]

    def _missing_local_folders(self) -> list[Path]:
        """The local root and those of its parents that do not exist yet, outermost first."""
        if not self.is_local:
            return []
        missing, folder = [], Path(self.root)
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        return missing[::-1]

    def exists(self, *names: str) -> bool:
        return self.fs.get_file_info(self.path(*names)).type != pafs.FileType.NotFound

    def size(self, *names: str) -> int:
        return self.fs.get_file_info(self.path(*names)).size

    def read_bytes(self, *names: str) -> bytes:
        if self.is_local:
            with open(open_regular(self.path(*names)), "rb") as handle:
                return handle.read()
        try:
            with self.fs.open_input_stream(self.path(*names)) as stream:
                return stream.read()
        except OSError as error:
            # An object deleted between the open and the read (a prune, a released lease) fails the read with
            # whatever the store and the timing say (NO_SUCH_KEY, RESOURCE_NOT_FOUND, a broken response stream):
            # asking again tells absent from a real failure.
            if not self.exists(*names):
                raise FileNotFoundError(self.location(*names)) from error
            raise

    def read_json(self, *names: str) -> dict | None:
        """The parsed record, None if absent; unparsable (truncated, edited) is a one-line CorruptRecord."""
        if not self.exists(*names):
            return None
        size = self.size(*names)  # None for what is not a regular file: read_bytes refuses it (NotRegularFile)
        if size is not None and size > MAX_RECORD_BYTES:  # bounded before it is read: a record's size is an allocation
            record, reason = None, f"{size:,} bytes, more than the {MAX_RECORD_BYTES:,} a record may have"
        else:
            try:
                record = json.loads(self.read_bytes(*names))
            except FileNotFoundError:  # deleted since exists() (a prune, a released lease): absent after all
                return None
            except (ValueError, UnicodeDecodeError, RecursionError) as error:
                record, reason = None, f"not valid JSON ({' '.join(str(error).split())[:200]})"
            else:
                reason = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
        if reason is not None:
            what = names[-1].removeprefix("_").removesuffix(".json")
            raise CorruptRecord(
                f"corrupt {what} at {self.location(*names)}: {reason}; "
                "regenerate the dataset (generate --overwrite) or delete it"
            )
        return record

    def checksum(self, *names: str) -> str:
        """CHECKSUM of a file's bytes; a local file is hashed from the page cache without copies."""
        digest = xxhash.xxh3_128()
        if self.is_local:
            with open(open_regular(self.path(*names)), "rb") as handle:
                if os.fstat(handle.fileno()).st_size:
                    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                        digest.update(mapped)
            return digest.hexdigest()
        with self.fs.open_input_stream(self.path(*names)) as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    def list(self, *names: str) -> list[str]:
        """Base names directly under a folder; [] if it does not exist."""
        return sorted(self.listing(*names))

    def listing(self, *names: str) -> dict[str, int | None]:
        """{base name: size in bytes, None for a folder} directly under a folder, in one call.

        {} if the folder does not exist.
        """
        selector = pafs.FileSelector(self.path(*names), allow_not_found=True)
        return {
            info.base_name: info.size if info.type == pafs.FileType.File else None
            for info in self.fs.get_file_info(selector)
        }

    @contextlib.contextmanager
    def atomic_writer(self, *names: str) -> Iterator[HashingStream]:
        """Yield a hashing stream; the file appears under its name only if the block succeeds."""
        final = self.path(*names)
        parent, base = final.rsplit("/", 1)
        temporary = f"{parent}/.{base}.{uuid.uuid4().hex}.tmp"
        self.fs.create_dir(parent, recursive=True)
        try:
            with self.fs.open_output_stream(temporary) as sink:
                stream = HashingStream(sink)
                yield stream
            self.fs.move(temporary, final)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(temporary)
            raise

    def write_json(self, data: dict, *names: str) -> None:
        with self.atomic_writer(*names) as stream:
            stream.write(json_bytes(data))

    def delete(self, *names: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(*names))

    def delete_dir(self, *names: str) -> None:
        path = self.path(*names)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def writer_guard(self, dataset_id: str) -> contextlib.AbstractContextManager[None]:
        """Hold `ROOT/.<dataset id>.lock` while writing a dataset (jobs.generate.locks.writer_guard)."""
        from jobs.generate import locks

        return locks.writer_guard(self, dataset_id)


def storage_from_env(out: str | None) -> Storage:
    """--out, else VAEGEN_OUTPUT; neither is a usage error naming both."""
    from jobs.generate.config import output_root

    return Storage(output_root(out))


def json_bytes(data: dict) -> bytes:
    """How Storage.write_json encodes a record (manifest digests are of these bytes)."""
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
