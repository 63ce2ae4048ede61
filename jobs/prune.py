"""Pruning old datasets under an output root, in steps that a kill at any point cannot turn into a
dataset-shaped folder without a manifest: a doomed dataset is first taken out of sight atomically,
then deleted, and whatever a killed prune left is finished by the next one.
"""

from __future__ import annotations

import os
import uuid

from jobs.generate import holds
from jobs.generate.manifest import MANIFEST, utc_now
from jobs.generate.published import committed_datasets
from jobs.generate.storage import Storage
from vae_core.errors import VaegenError

PRUNED = ".pruned."  # a dataset being pruned: `.pruned.ID.TOKEN` (local folder) or `.pruned.ID` (object-store marker)


def select_for_pruning(
    datasets: list[str], keep: int, published: str | None, held: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """Which committed datasets (oldest first) prune deletes, and why it keeps each of the others: the newest
    `keep`, the published one, every one committed after it (unpublished: a failed audit stays until a
    newer dataset publishes), and every one `held` names (tagged or leased: jobs/generate/holds.py)."""
    kept: dict[str, str] = {dataset_id: why for dataset_id, why in (held or {}).items() if dataset_id in datasets}
    for dataset_id in datasets[max(0, len(datasets) - keep) :]:
        kept[dataset_id] = f"one of the newest {keep} (--keep)"
    if published in datasets:
        kept[published] = "`latest` names it"
        for dataset_id in datasets[datasets.index(published) + 1 :]:
            kept.setdefault(dataset_id, "unpublished, newer than `latest`")
    return [dataset_id for dataset_id in datasets if dataset_id not in kept], kept


def prune(storage: Storage, keep: int, protected: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Delete the committed datasets select_for_pruning dooms (`protected`: the published one); never unfinished,
    unreadable, tagged or leased ones. Returns (pruned ids, "ID: why" of those left in place: unreadable, or not
    deleted, {kept id: why})."""
    committed, unreadable = committed_datasets(storage)
    datasets = [dataset_id for dataset_id, _ in committed]
    doomed, kept = select_for_pruning(datasets, keep, protected, holds.holds(storage))
    # Announce, then read the holds again: a reader that leased a doomed dataset after the first read is
    # seen now, or sees the notice and opens nothing (holds.py explains why one of the two always happens).
    holds.announce_retirement(storage, doomed)
    held_now = holds.holds(storage)
    pruned = []
    for dataset_id in doomed:
        if dataset_id in held_now:
            kept[dataset_id] = held_now[dataset_id]
        else:
            retire(storage, dataset_id)
            pruned.append(dataset_id)
        holds.withdraw_retirement(storage, dataset_id)
    return pruned, unreadable + finish_pruning(storage), kept


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
    """Delete what killed prunes left (`.pruned.*`, stale notices); "NAME: why" of each that could not be deleted."""
    holds.clear_stale_notices(storage)
    problems = []
    for name in storage.list():
        if name.startswith(PRUNED):
            try:
                _delete_retired(storage, name)
            except (OSError, VaegenError) as error:
                problems.append(
                    f"{name}: a pruned dataset not fully deleted at {storage.location(name)} "
                    f"({' '.join(str(error).split())[:200]})"
                )
    return problems


def _delete_retired(storage: Storage, name: str) -> None:
    if storage.is_local:
        storage.delete_dir(name)
        return
    dataset_id = name.removeprefix(PRUNED)
    if not storage.exists(dataset_id, MANIFEST):  # committed again since (generated anew): keep it
        storage.delete_dir(dataset_id)
    storage.delete(name)
