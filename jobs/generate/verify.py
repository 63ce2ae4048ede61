"""Check a whole dataset folder against its whole manifest.

Always: the manifest is consistent (its files are exactly the shards that n and the shard size
make, their rows add up to n, ids run 0..n-1 across them); the folder holds exactly what a
committed dataset holds (the manifest, its parts and the dataset card's two files, nothing else); every
part has its size, checksum, row count, id range and spec fingerprint. With `deep`: every
row's id, seed, z (and label) re-derived from the seed scheme (contract 1), and x re-decoded
for whole decode blocks of every part with the registered decoder the manifest pins (deep_check.py).

The plain check reads each part once (its checksum, from the page cache where local) and its
footer once, and imports neither torch nor MLflow; only `deep` does.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.generate import deep_check
from jobs.generate.card import CARD, HF_YAML
from jobs.generate.croissant import CROISSANT

# deep_check.py's public names, importable from here as before (jobs/reader_decode.py, tests/test_cuda.py)
from jobs.generate.deep_check import X_TOLERANCE as X_TOLERANCE
from jobs.generate.deep_check import registered_weights as registered_weights
from jobs.generate.deep_check import spec_of as spec_of
from jobs.generate.manifest import AUDIT, MANIFEST, PROGRESS
from jobs.generate.recipe import is_recipe, recipe_problems
from jobs.generate.records import FileEntry, Manifest, structure_problems
from jobs.generate.spec import FORMAT, part_name, spec_from_record
from jobs.generate.storage import CHECKSUM, Storage, split_location
from vae_core.errors import UsageError, VaegenError

# Parts verified at once on object stores, where each read waits on the network. Local parts are
# hashed straight from the page cache (mmap) and xxhash holds the GIL: threads only added
# contention there (measured on 1M float32 rows, 16 parts: 0.55 s with one, 0.63-0.78 s with four).
REMOTE_CHECK_THREADS = 4


@dataclasses.dataclass(frozen=True)
class InspectReport:
    location: str
    manifest: Manifest
    problems: list[str]
    rows_checked_deep: int  # rows whose id, seed, z (and label) were re-derived
    rows_decoded_deep: int = 0  # rows whose x was re-decoded with the registered decoder
    notes: tuple[str, ...] = ()  # what a deep check could not do exactly, e.g. CUDA bits on a CPU

    @property
    def ok(self) -> bool:
        return not self.problems


def open_committed(location: str) -> tuple[Storage, str, Manifest]:
    """(storage of the parent, dataset id, manifest) of a committed dataset (a folder, or ROOT@latest / ROOT@vN /
    ROOT@TAG, jobs/generate/published.py); anything else is a one-line error."""
    from jobs.generate.published import resolve

    parent, dataset_id = split_location(resolve(location))
    storage = Storage(parent)
    record = storage.read_json(dataset_id, MANIFEST)  # unparsable: CorruptRecord, "corrupt manifest at PATH"
    if record is None:
        if not storage.exists(dataset_id):
            raise UsageError(
                f"dataset {storage.location(dataset_id)} not found: check the path "
                f"(a dataset is the folder that holds {MANIFEST}, under generate's --out)"
            )
        state = (
            "an unfinished dataset (rerun its generate command to resume)"
            if storage.exists(dataset_id, PROGRESS)
            else "no dataset"
        )
        raise UsageError(f"{storage.location(dataset_id)} has no {MANIFEST}: it is {state}")
    return storage, dataset_id, Manifest.from_json(record, storage.location(dataset_id, MANIFEST))


class DamagedDataset(VaegenError):
    """A committed dataset whose folder no longer matches its manifest."""


def ensure_intact(storage: Storage, dataset_id: str, record: dict[str, Any]) -> Manifest:
    """The cheap half of inspect (the manifest, one listing, sizes; no reads of parts), as a one-line error;
    returns the manifest, parsed."""
    problems = manifest_problems(record)
    manifest = None if problems else Manifest.from_json(record)
    problems = problems or folder_problems(storage.listing(dataset_id), manifest)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedDataset(
            f"dataset {storage.location(dataset_id)} is committed but damaged: {problems[0]}{more}; "
            "`vaegen inspect` lists every problem; regenerate it with --overwrite"
        )
    return manifest


def inspect(location: str, deep: bool = False, sample_seed: int | None = None) -> InspectReport:
    """`sample_seed`: deep re-decodes one decode block per part chosen from this seed (the publish audit's
    sample) instead of each part's first, middle and last block."""
    storage, dataset_id, record = open_committed(location)
    if is_recipe(record):  # no parts: the manifest is the dataset (jobs/generate/recipe.py)
        problems = recipe_problems(record) or folder_problems(storage.listing(dataset_id), record)
        notes = ("recipe-only: --deep has no stored rows to compare",) if deep else ()
        return InspectReport(storage.location(dataset_id), record, problems, 0, notes=notes)
    problems = manifest_problems(record)
    if problems:  # without a consistent manifest there is nothing to check the files against
        return InspectReport(storage.location(dataset_id), record, problems, 0)
    listing = storage.listing(dataset_id)
    problems += folder_problems(listing, record)
    damaged = {problem.split(":", 1)[0] for problem in problems}
    entries = [entry for entry in record.files if entry.name not in damaged]
    threads = 1 if storage.is_local else min(REMOTE_CHECK_THREADS, max(1, len(entries)))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for found in pool.map(lambda entry: _part_problems(storage, dataset_id, entry, record), entries):
            problems += found
    if deep and not problems:
        problems, derived, decoded, notes = deep_check.check(storage, dataset_id, record, sample_seed)
        return InspectReport(storage.location(dataset_id), record, problems, derived, decoded, notes)
    return InspectReport(storage.location(dataset_id), record, problems, 0)


# ---------------------------------------------------------------- the manifest on its own


def manifest_problems(record: Manifest | dict[str, Any]) -> list[str]:
    """What makes a manifest unusable or inconsistent: its files must be exactly the shards its n makes. `record`:
    a Manifest, or the JSON form, whose missing fields and wrong types are problems here too."""
    if not isinstance(record, Manifest):
        problems = [f"manifest: {problem}" for problem in structure_problems(record)]
        if problems:
            return problems
        record = Manifest.from_json(record)
    problems = []
    files = record.files
    if record.checksum_algorithm != CHECKSUM:
        problems.append(f"manifest: checksum algorithm {record.checksum_algorithm!r}, this vaegen verifies {CHECKSUM}")
    if record.format == FORMAT:  # older formats' specs fingerprint differently; their parts are checked all the same
        try:
            problems += _spec_problems(record)
        except UsageError as error:
            return [f"manifest: {error}"]
    n, rows_per_shard = record.n, record.rows_per_shard
    listed_rows = sum(entry.rows for entry in files)
    if listed_rows != n:
        problems.append(f"manifest: n = {n:,} but its files hold {listed_rows:,} rows")
    expected = [part_name(shard) for shard in range(-(-n // rows_per_shard))]
    names = record.file_names
    if names != expected:
        absent = sorted(set(expected) - set(names))
        extra = sorted(set(names) - set(expected))
        problems.append(
            f"manifest: files[] must list {expected[0]}..{expected[-1]} ({len(expected):,} parts for "
            f"n = {n:,} at {rows_per_shard:,} rows per part) in order"
            + (f"; missing {', '.join(absent[:5])}" if absent else "")
            + (f"; not expected {', '.join(extra[:5])}" if extra else "")
        )
        return problems
    for shard, entry in enumerate(files):
        first, stop = shard * rows_per_shard, min((shard + 1) * rows_per_shard, n)
        if (entry.first_sample_id, entry.rows) != (first, stop - first):
            problems.append(
                f"{entry.name}: manifest says ids {entry.first_sample_id:,} + {entry.rows:,} rows, "
                f"shard {shard} holds ids {first:,}..{stop - 1:,}"
            )
    return problems


def _spec_problems(record: Manifest) -> list[str]:
    """The top-level fields against the spec they copy; UsageError if the spec itself is refused."""
    spec = spec_from_record(record.to_json(), record.dataset_id)
    top_level = {
        "n": (record.n, spec.n),
        "rows_per_shard": (record.rows_per_shard, spec.rows_per_shard),
        "dataset_seed": (record.dataset_seed, spec.seed),
        "dtype": (record.dtype, spec.dtype),
        "latent_dim": (record.latent_dim, spec.latent_dim),
        "sample_shape": (list(record.sample_shape), list(spec.sample_shape)),
    }
    return [
        f"manifest: {key} = {recorded!r} but its spec says {value!r}"
        for key, (recorded, value) in top_level.items()
        if recorded != value
    ]


def folder_problems(listing: dict[str, int | None], record: Manifest) -> list[str]:
    """The folder against the manifest from one listing: every part present with its size, nothing else there."""
    problems = []
    for entry in record.files:
        size = listing.get(entry.name, -1)
        if size == -1:
            problems.append(f"{entry.name}: missing")
        elif size != entry.size_bytes:
            problems.append(f"{entry.name}: {size} bytes, manifest says {entry.size_bytes}")
    # the card: jobs/generate/card.py; the Croissant file: croissant.py; the publish audit's verdict: jobs/audit.py
    allowed = {MANIFEST, CARD, HF_YAML, CROISSANT, AUDIT, *record.file_names}
    for name in sorted(set(listing) - allowed):
        kind = "folder" if listing[name] is None else "file"
        seen = "" if name.startswith((".", "_")) else ": readers would take it for part of the dataset"
        problems.append(f"{name}: unexpected {kind}, not in the manifest{seen}")
    return problems


# ---------------------------------------------------------------- each part: bytes and footer


def _part_problems(storage: Storage, dataset_id: str, entry: FileEntry, record: Manifest) -> list[str]:
    name = entry.name
    if storage.checksum(dataset_id, name) != entry.checksum:
        return [f"{name}: checksum mismatch"]
    try:
        with storage.fs.open_input_file(storage.path(dataset_id, name)) as handle:
            metadata = pq.read_metadata(handle)
    except (OSError, pa.ArrowException) as error:
        return [f"{name}: unreadable Parquet ({error})"]
    if metadata.num_rows != entry.rows:
        return [f"{name}: {metadata.num_rows} rows, manifest says {entry.rows}"]
    fingerprint = (metadata.metadata or {}).get(b"vaegen.spec_fingerprint")
    if fingerprint is not None and fingerprint.decode() != record.spec_fingerprint:
        return [f"{name}: written for spec {fingerprint.decode()}, the manifest is for {record.spec_fingerprint}"]
    low, high = _id_range(metadata)
    first, last = entry.first_sample_id, entry.first_sample_id + entry.rows - 1
    if low is not None and (low, high) != (first, last):
        return [f"{name}: holds sample ids {low:,}..{high:,}, manifest says {first:,}..{last:,}"]
    return []


def _id_range(metadata: pq.FileMetaData) -> tuple[int | None, int | None]:
    """(min, max) sample_id from the footer's statistics, (None, None) where a writer left them out."""
    column = metadata.schema.names.index("sample_id") if "sample_id" in metadata.schema.names else None
    if column is None or metadata.num_row_groups == 0:
        return None, None
    lows, highs = [], []
    for group in range(metadata.num_row_groups):
        statistics = metadata.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_min_max:
            return None, None
        lows.append(statistics.min)
        highs.append(statistics.max)
    return min(lows), max(highs)
