"""Where datasets live: a local folder or any pyarrow filesystem URI (s3://...), with atomic commits.

Every file is written under a hidden temporary name and then moved to its final name: a rename
on local disk, a server-side copy on object stores. Either way a reader sees a whole file or none.
S3 credentials and endpoint come from the usual AWS_* variables (AWS_ENDPOINT_URL_S3 included).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pyarrow.fs as pafs
import xxhash

from vae_core.errors import UsageError

HASH_CHUNK_BYTES = 8 << 20  # 8 MiB reads when verifying checksums
# Checksums of part files. sha256 (1.2 GB/s here) cost ~15% of a float32 job's CPU; xxh3-128
# (9.5 GB/s) detects corruption as well and is a `pip install xxhash` away for any reader.
CHECKSUM = "xxh3_128"


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


def _is_uri(location: str) -> bool:
    return "://" in location


class Storage:
    """A root folder (local path or URI) and the few operations the dataset protocol needs."""

    def __init__(self, root: str):
        if "?" in root:
            raise UsageError(f"output root {root!r} has a query string; give the bare URI and set the endpoint and "
                             "credentials in AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        self.uri = root if _is_uri(root) else str(Path(root).expanduser().resolve())
        try:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri if _is_uri(root) else "file://" + self.uri)
        except Exception as error:  # pyarrow raises several types for unusable URIs
            raise UsageError(f"output root {root!r} is not a usable location ({error}); use a local path or s3://bucket/prefix") from None
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *names: str) -> str:
        return "/".join([self.root.rstrip("/"), *names])

    def location(self, *names: str) -> str:
        """A user-facing location: a local path, or the URI on object stores."""
        if self.is_local:
            return self.path(*names)
        return "/".join([self.uri.rstrip("/"), *names])

    def check_writable(self) -> None:
        """Fail early, before any work, if the root is a file or cannot be written; leave no trace either way
        (local folders the probe had to create are removed again, if still empty: a failed run leaves none)."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.File:
            raise UsageError(f"output root {self.location()} is a file; point --out at a directory")
        created = self._missing_local_folders()
        try:
            self.fs.create_dir(self.root, recursive=True)
            probe = self.path(f".vaegen-write-probe-{uuid.uuid4().hex}")
            with self.fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as error:
            raise UsageError(f"output root {self.location()} is not writable ({error}); fix its permissions or choose another --out") from None
        finally:
            for folder in reversed(created):  # deepest first; rmdir removes only empty folders, so never another run's
                with contextlib.suppress(OSError):
                    folder.rmdir()

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
        with self.fs.open_input_stream(self.path(*names)) as stream:
            return stream.read()

    def read_json(self, *names: str) -> dict | None:
        if not self.exists(*names):
            return None
        return json.loads(self.read_bytes(*names))

    def checksum(self, *names: str) -> str:
        digest = xxhash.xxh3_128()
        with self.fs.open_input_stream(self.path(*names)) as stream:
            while chunk := stream.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        return digest.hexdigest()

    def list(self, *names: str) -> list[str]:
        """Base names directly under a folder; [] if it does not exist."""
        selector = pafs.FileSelector(self.path(*names), allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector))

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
            stream.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")

    def delete(self, *names: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(*names))

    def delete_dir(self, *names: str) -> None:
        path = self.path(*names)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)


def storage_from_env(out: str | None) -> Storage:
    """--out, else VAEGEN_OUTPUT; neither is a usage error naming both."""
    from jobs.generate.config import output_root

    return Storage(output_root(out))

