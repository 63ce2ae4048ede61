"""Pruning old datasets under an output root, in steps that a kill at any point cannot turn into a
dataset-shaped folder without a manifest: a doomed dataset is first taken out of sight atomically,
then deleted, and whatever a killed prune left is finished by the next one.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from jobs.generate.manifest import MANIFEST, utc_now
from jobs.generate.storage import Storage
from vae_core.errors import VaegenError

LATEST = "latest"  # the pointer refresh moves (jobs.refresh): never a dataset
PRUNED = ".pruned."  # a dataset being pruned: `.pruned.ID.TOKEN` (local folder) or `.pruned.ID` (object-store marker)


def committed_datasets(storage: Storage) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(id, manifest) of every committed dataset under the root, oldest first; and "ID: why" of
    each folder whose manifest exists but cannot be read (truncated, edited): never pruned blindly."""
    found, unreadable = [], []
    for name in storage.list():
        if name.startswith((".", "_")) or name == LATEST or not storage.exists(name, MANIFEST):
            continue
        try:
            record = storage.read_json(name, MANIFEST)
            finished_at = str(record["timings"]["finished_at"])
        except (OSError, ValueError, KeyError, TypeError, VaegenError) as error:
            where = storage.location(name, MANIFEST)
            unreadable.append(f"{name}: unreadable manifest at {where} ({type(error).__name__})")
            continue
        found.append((finished_at, name, record))
    return [(name, record) for _, name, record in sorted(found)], unreadable


def prune(storage: Storage, keep: int, protected: str) -> tuple[list[str], list[str]]:
    """Delete committed datasets beyond the newest `keep`, never `protected`, unfinished or unreadable
    ones; returns (pruned ids, "ID: why" of those left in place: unreadable, or not deleted)."""
    committed, unreadable = committed_datasets(storage)
    datasets = [dataset_id for dataset_id, _ in committed]
    doomed = [dataset_id for dataset_id in datasets[: max(0, len(datasets) - keep)] if dataset_id != protected]
    for dataset_id in doomed:
        retire(storage, dataset_id)
    return doomed, unreadable + finish_pruning(storage)


def retire(storage: Storage, dataset_id: str) -> None:
    """Take a dataset out of sight in one atomic step, then delete it. A prune killed halfway leaves a
    `.pruned.*` name, which every refresh finishes deleting (finish_pruning), never a folder that looks
    unfinished and stays forever. Local: the folder is renamed aside. Object stores have no atomic
    rename: a `.pruned.ID` marker is written first, then the manifest (the commit) deleted, then the rest."""
    if storage.is_local:
        aside = f"{PRUNED}{dataset_id}.{uuid.uuid4().hex[:8]}"
        os.rename(storage.path(dataset_id), storage.path(aside))
    else:
        aside = f"{PRUNED}{dataset_id}"
        storage.write_json({"dataset_id": dataset_id, "since": utc_now()}, aside)
        storage.delete(dataset_id, MANIFEST)  # uncommit first: a reader never sees a half-deleted dataset
    _delete_retired(storage, aside)


def finish_pruning(storage: Storage) -> list[str]:
    """Delete what killed prunes left (`.pruned.*`); "NAME: why" of each that could not be deleted."""
    problems = []
    for name in storage.list():
        if name.startswith(PRUNED):
            try:
                _delete_retired(storage, name)
            except (OSError, VaegenError) as error:
                problems.append(f"{name}: a pruned dataset not fully deleted at {storage.location(name)} "
                                f"({' '.join(str(error).split())[:200]})")
    return problems


def _delete_retired(storage: Storage, name: str) -> None:
    if storage.is_local:
        storage.delete_dir(name)
        return
    dataset_id = name.removeprefix(PRUNED)
    if not storage.exists(dataset_id, MANIFEST):  # committed again since (generated anew): keep it
        storage.delete_dir(dataset_id)
    storage.delete(name)
