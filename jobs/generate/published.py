"""What an output root publishes, and how a consumer names it.

`ROOT/latest` (a JSON pointer written by `refresh` and `generate --publish` after the audit) names the
published dataset. A consumer may name a dataset by its folder or by a reference on the root:
`ROOT@latest` (what the pointer names now), `ROOT@vN` (the newest published dataset of model version N:
committed, with an audit record that passed or was skipped with --no-audit), or `ROOT@TAG` (`vaegen tag`).
Resolution returns the dataset's own folder, so a run can pin the dataset id it read.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from jobs.generate import audit_record
from jobs.generate.manifest import MANIFEST
from jobs.generate.records import ManifestSummary
from jobs.generate.storage import Storage, check_name
from vae_core.errors import UsageError, VaegenError

LATEST = "latest"
VERSION_REFERENCE = re.compile(r"v(?P<version>[0-9]+)")


def committed_datasets(storage: Storage) -> tuple[list[tuple[str, ManifestSummary]], list[str]]:
    """(id, manifest) of every committed dataset under the root, oldest first; and "ID: why" of
    each folder whose manifest exists but cannot be read (truncated, edited): never pruned blindly."""
    found, unreadable = [], []
    for name in storage.list():
        if name.startswith((".", "_")) or name == LATEST or not storage.exists(name, MANIFEST):
            continue
        try:
            record = ManifestSummary.from_json(storage.read_json(name, MANIFEST))
        except (OSError, ValueError, KeyError, TypeError, VaegenError) as error:
            unreadable.append(
                f"{name}: unreadable manifest at {storage.location(name, MANIFEST)} ({type(error).__name__})"
            )
            continue
        found.append((record.finished_at, name, record))
    return [(name, record) for _, name, record in sorted(found)], unreadable


@dataclasses.dataclass(frozen=True)
class LatestPointer:
    """`ROOT/latest`: the published dataset, the model version it was made from, its audit verdict and when it
    was published. Written by refresh and `generate --publish` (jobs/refresh.py); read leniently: a field that is
    missing or not what vaegen writes reads as None."""

    dataset_id: str | None
    location: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    manifest_sha256: str | None = None
    updated_at: str | None = None
    audit_verdict: str | None = None  # None: published before audits existed
    audited_at: str | None = None

    @classmethod
    def from_json(cls, record: Any) -> LatestPointer:
        record = record if isinstance(record, dict) else {}
        model = record.get("model") if isinstance(record.get("model"), dict) else {}
        audit = record.get("audit") if isinstance(record.get("audit"), dict) else {}
        found = {
            "dataset_id": record.get("dataset_id"),
            "location": record.get("location"),
            "model_name": model.get("name"),
            "manifest_sha256": record.get("manifest_sha256"),
            "updated_at": record.get("updated_at"),
            "audit_verdict": audit.get("verdict"),
            "audited_at": audit.get("audited_at"),
        }
        version = model.get("version")
        return cls(
            **{key: value if isinstance(value, str) else None for key, value in found.items()},
            model_version=version if isinstance(version, int) and not isinstance(version, bool) else None,
        )

    def to_json(self) -> dict[str, Any]:
        audit = None if self.audit_verdict is None else {"verdict": self.audit_verdict, "audited_at": self.audited_at}
        return {
            "audit": audit,
            "dataset_id": self.dataset_id,
            "location": self.location,
            "model": {"name": self.model_name, "version": self.model_version},
            "manifest_sha256": self.manifest_sha256,
            "updated_at": self.updated_at,
        }

    @classmethod
    def read(cls, storage: Storage) -> LatestPointer | None:
        """None if there is no pointer; an unreadable one reads as naming nothing (it is rewritten then)."""
        try:
            record = storage.read_json(LATEST)
        except (OSError, VaegenError):
            return cls(None)
        return None if record is None else cls.from_json(record)


def latest_dataset(storage: Storage) -> str | None:
    """The id `latest` names; None if there is no pointer or it cannot be read (it is rewritten then)."""
    pointer = LatestPointer.read(storage)
    try:
        return None if pointer is None or pointer.dataset_id is None else check_name(pointer.dataset_id)
    except (ValueError, VaegenError):
        return None


def split_reference(location: str) -> tuple[str, str] | None:
    """(root, reference) of `ROOT@REF`; None for a plain folder (including one whose name holds an '@')."""
    root, separator, reference = location.rstrip("/").rpartition("@")
    if not separator or not root or "/" in reference:
        return None
    parent, _, name = location.rstrip("/").rpartition("/")
    if Storage(parent or ".").exists(name):  # a folder really named like that wins
        return None
    return root, reference


def resolve(location: str) -> str:
    """The dataset folder that `location` names: itself, or what `ROOT@latest` / `ROOT@vN` names now."""
    parts = split_reference(location)
    if parts is None:
        return location
    root, reference = parts
    storage = Storage(root)
    if reference == LATEST:
        dataset_id = latest_dataset(storage)
        if dataset_id is None:
            raise UsageError(
                f"{storage.location()} has no readable `latest`: nothing is published there yet "
                "(`vaegen refresh` or `vaegen generate --publish` publishes)"
            )
        return storage.location(dataset_id)
    match = VERSION_REFERENCE.fullmatch(reference)
    if match is None:
        from jobs.generate.holds import tags

        tagged = tags(storage).get(reference)
        if tagged is None:
            raise UsageError(
                f"{location}: no tag {reference!r} under {storage.location()}; use ROOT@latest, ROOT@vN "
                "(a model version) or ROOT@TAG (`vaegen datasets ROOT` lists the tags)"
            )
        return storage.location(tagged.dataset_id)
    version, named = int(match["version"]), latest_dataset(storage)
    published = [
        dataset_id
        for dataset_id, record in committed_datasets(storage)[0]
        if record.model_version == version and (dataset_id == named or _was_published(storage, dataset_id))
    ]
    if not published:
        raise UsageError(f"{location}: no published dataset of model version {version} under {storage.location()}")
    return storage.location(published[-1])


def _was_published(storage: Storage, dataset_id: str) -> bool:
    verdict = audit_record.read(storage, dataset_id)
    return verdict is not None and verdict.verdict in ("pass", "skipped")


def listing(storage: Storage) -> list[dict[str, Any]]:
    """Every dataset folder under the root, oldest committed first, then the unfinished ones: id, model version,
    n, bytes, states (published, tagged NAME, leased, unpublished, unfinished, unreadable) and audit verdict."""
    from jobs.generate.holds import leases, tags
    from jobs.generate.manifest import PROGRESS

    committed, unreadable = committed_datasets(storage)
    named, tag_records = latest_dataset(storage), tags(storage)
    live = [record.dataset_id for _, record, stale in leases(storage) if stale is None]
    rows = []
    for dataset_id, record in committed:
        verdict = audit_record.read(storage, dataset_id)
        states = ["published"] if dataset_id == named else []
        states += [f"tagged {name}" for name, tag in sorted(tag_records.items()) if tag.dataset_id == dataset_id]
        states += [f"leased x{live.count(dataset_id)}"] if dataset_id in live else []
        if verdict is not None and verdict.verdict == "fail":
            states.append("unpublished")
        rows.append(
            {
                "dataset_id": dataset_id,
                "model_version": record.model_version,
                "n": record.n,
                "bytes": record.total_bytes,
                "states": states,
                "audit": "none" if verdict is None else verdict.verdict,
            }
        )
    rows += [
        {
            "dataset_id": problem.split(":", 1)[0],
            "model_version": None,
            "n": None,
            "bytes": None,
            "states": ["unreadable"],
            "audit": "none",
        }
        for problem in unreadable
    ]
    for name in storage.list():
        if (
            not name.startswith((".", "_"))
            and name != LATEST
            and storage.exists(name, PROGRESS)
            and not storage.exists(name, MANIFEST)
        ):
            rows.append(
                {
                    "dataset_id": name,
                    "model_version": None,
                    "n": None,
                    "bytes": None,
                    "states": ["unfinished"],
                    "audit": "none",
                }
            )
    return rows
