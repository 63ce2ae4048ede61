"""The two records of a dataset folder as typed values: `_manifest.json` (Manifest, the commit, contract 2) and
`_progress.json` (ProgressRecord, what a resume reads), parsed and validated here, once, from their JSON form.

Each keeps the dict it was read from (`raw`, out of eq and repr): `to_json()` gives back exactly what was read or
built, fields of older formats and of recipe-only manifests included, so that writing a record again gives the
same bytes and `manifest_sha256` does not move. Building them: jobs/generate/manifest.py.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from jobs.generate.spec import MAX_N, MAX_SHARDS
from jobs.generate.storage import CorruptRecord
from vae_core.config import MAX_CLASSES, MAX_INPUT_RANK, MAX_INPUT_VALUES, MAX_LATENT_DIM

RUN_ID = re.compile(r"[0-9a-zA-Z]{1,64}")  # an MLflow run id, as a record may name one
MAX_RECORD_STRING = 4_096  # the longest string a manifest may hold (ids, names, URIs, checksums)
PROVENANCE_REDACTED = "redacted"  # the manifest's `provenance` when names, hosts and locations were left out

REQUIRED = {
    "format": str,
    "dataset_id": str,
    "n": int,
    "rows_per_shard": int,
    "dataset_seed": int,
    "dtype": str,
    "layout": str,
    "latent_dim": int,
    "sample_shape": list,
    "spec": dict,
    "spec_fingerprint": str,
    "model": dict,
    "checksum_algorithm": str,
    "files": list,
    "total_bytes": int,
    "lineage": dict,
    "timings": dict,
}
MODEL_FIELDS = {"name": str, "version": int, "run_id": str}
FILE_FIELDS = {"name": str, "first_sample_id": int, "rows": int, "size_bytes": int, "checksum": str}
JSON_TYPES = {str: "string", int: "integer", list: "list", dict: "object"}


def _raw_field() -> Any:
    return dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """The registered version a manifest pins (registry/pinned.py's PinnedModel as recorded; `source` is None
    in a manifest without provenance, and older formats may lack the optional fields)."""

    name: str
    version: int
    run_id: str
    source: str | None = None
    resolved_from: str | None = None
    alias: str | None = None
    alias_gate: str | None = None
    raw: Mapping[str, Any] = _raw_field()

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ModelRef:
        optional = {key: record.get(key) for key in ("source", "resolved_from", "alias", "alias_gate")}
        return cls(record["name"], record["version"], record["run_id"], **optional, raw=record)

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One part as the manifest commits it."""

    name: str
    first_sample_id: int
    rows: int
    size_bytes: int
    checksum: str

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> FileEntry:
        return cls(*(record[key] for key in FILE_FIELDS))


@dataclasses.dataclass(frozen=True)
class Labels:
    """How a conditional dataset's labels are drawn; None on the manifest of an unconditional one."""

    policy: Any
    classes: list[Any] | dict[str, Any] | None
    counts: dict[str, int] | list[Any] | None

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Labels:
        return cls(record.get("policy"), record.get("classes"), record.get("counts"))


@dataclasses.dataclass(frozen=True)
class Lineage:
    """Where the dataset's MLflow run is (all None in a recipe-only manifest; tracking_uri None when redacted)."""

    tracking_uri: str | None
    run_id: str | None
    experiment: Any

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Lineage:
        return cls(record.get("tracking_uri"), record.get("run_id"), record.get("experiment"))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A committed dataset's `_manifest.json`, validated (`from_json`). `timings` and `execution` stay mappings:
    their fields differ between a stored and a recipe-only dataset."""

    format: str
    dataset_id: str
    n: int
    rows_per_shard: int
    dataset_seed: int
    dtype: str
    layout: str
    latent_dim: int
    sample_shape: tuple[int, ...]
    spec: Mapping[str, Any]  # the spec's JSON form; jobs/generate/spec.py's spec_from_record parses it
    spec_fingerprint: str
    model: ModelRef
    checksum_algorithm: str
    files: tuple[FileEntry, ...]
    total_bytes: int
    lineage: Lineage
    timings: Mapping[str, Any]
    labels: Labels | None
    execution: Mapping[str, Any]
    provenance: str | None
    recipe_digest: str | None
    recipe_only: bool
    seed_scheme: str | None
    compression: str | None
    vaegen_version: str | None
    raw: Mapping[str, Any] = _raw_field()

    @classmethod
    def from_json(cls, record: Mapping[str, Any], location: str | None = None) -> Manifest:
        """The manifest in `record`; CorruptRecord ("corrupt manifest at LOCATION: ...") naming its first
        problems if it lacks a field, has one of the wrong type, or states a size beyond vaegen's caps."""
        broken = structure_problems(record)
        if broken:
            where = "" if location is None else f" at {location}"
            raise CorruptRecord(f"corrupt manifest{where}: {'; '.join(broken[:3])}")
        execution = record.get("execution")
        return cls(
            **{key: record[key] for key in REQUIRED if key not in ("sample_shape", "model", "files", "lineage")},
            sample_shape=tuple(record["sample_shape"]),
            model=ModelRef.from_json(record["model"]),
            files=tuple(FileEntry.from_json(entry) for entry in record["files"]),
            lineage=Lineage.from_json(record["lineage"]),
            labels=Labels.from_json(record["labels"]) if record.get("labels") else None,  # {}: none, as null
            execution=execution if isinstance(execution, dict) else {},
            provenance=record.get("provenance"),
            recipe_digest=record.get("recipe_digest"),
            recipe_only=bool(record.get("recipe_only")),
            seed_scheme=record.get("seed_scheme"),
            compression=record.get("compression"),
            vaegen_version=record.get("vaegen_version"),
            raw=record,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as written: `Storage.write_json(manifest.to_json(), ...)` gives the same bytes as read."""
        return copy.deepcopy(dict(self.raw))

    def __getitem__(self, key: str) -> Any:
        """Read-only: a field of the JSON form, for notebooks that index `open_dataset(...).manifest["n"]`."""
        return copy.deepcopy(self.raw[key])

    __iter__ = None  # not a mapping or a sequence: __getitem__ alone must not make it iterable by index

    @property
    def has_provenance(self) -> bool:
        return self.provenance != PROVENANCE_REDACTED

    @property
    def file_names(self) -> list[str]:
        return [entry.name for entry in self.files]


@dataclasses.dataclass(frozen=True)
class ProgressRecord:
    """`_progress.json`, as recorded. Never refused while parsing: a field that is missing (None) or not what
    vaegen writes is kept as it is, so that the check using it refuses it (a resume's spec_from_record, its
    fingerprint and device comparisons) or ignores it (`valid_run_id`)."""

    format: Any = None
    dataset_id: Any = None
    spec: Any = None
    spec_fingerprint: Any = None
    model: Any = None
    started_at: Any = None
    run_id: Any = None
    device: Any = None  # the workers' (cpu or cuda): a resume on the other one is refused
    raw: Mapping[str, Any] = _raw_field()

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ProgressRecord:
        fields = [field.name for field in dataclasses.fields(cls) if field.name != "raw"]
        return cls(**{key: record.get(key) for key in fields}, raw=record)

    def to_json(self) -> dict[str, Any]:
        return copy.deepcopy(dict(self.raw))

    @property
    def valid_run_id(self) -> str | None:
        """The MLflow run it names, None unless that is a run id."""
        return self.run_id if isinstance(self.run_id, str) and RUN_ID.fullmatch(self.run_id) else None


@dataclasses.dataclass(frozen=True)
class ManifestSummary:
    """What a listing of a root (`vaegen datasets`, prune's order, ROOT@vN) reads of each manifest, leniently: a
    manifest is listed if it says when it was finished; anything else it lacks is None."""

    finished_at: str
    model_version: Any
    n: Any
    total_bytes: Any

    @classmethod
    def from_json(cls, record: Any) -> ManifestSummary:
        """KeyError or TypeError if the record (None: deleted since listed) has no timings.finished_at: the
        folder is listed as unreadable."""
        finished_at = str(record["timings"]["finished_at"])
        model = record.get("model", {})
        version = model.get("version") if isinstance(model, dict) else None
        return cls(finished_at, version, record.get("n"), record.get("total_bytes"))


# ---------------------------------------------------------------- validation of the JSON form


def structure_problems(record: Mapping[str, Any]) -> list[str]:
    """Fields a manifest cannot do without, with their types."""
    problems = [
        f"field {key!r} is missing or not a JSON {JSON_TYPES[kind]}"
        for key, kind in REQUIRED.items()
        if not isinstance(record.get(key), kind)
    ]
    if problems:
        return problems
    if not isinstance(record.get("labels", ()), (dict, type(None))):
        problems.append("field 'labels' is missing or not an object or null")
    problems += [
        f"field 'model.{key}' is missing or not a JSON {JSON_TYPES[kind]}"
        for key, kind in MODEL_FIELDS.items()
        if not isinstance(record["model"].get(key), kind)
    ]
    if problems:
        return problems
    problems = bound_problems(record)
    if problems:
        return problems
    for index, entry in enumerate(record["files"]):
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(key), kind) for key, kind in FILE_FIELDS.items()
        ):
            return [f"files[{index}] lacks one of {', '.join(FILE_FIELDS)}"]
    return []


def bound_problems(record: Mapping[str, Any]) -> list[str]:
    """Every size a manifest of any format states, bounded before anything is built from it (issue 20: a
    hand-edited n = 10**12 at one row per shard made inspect list a trillion part names)."""
    n, rows_per_shard, shape = record["n"], record["rows_per_shard"], record["sample_shape"]
    if not 1 <= n <= MAX_N or rows_per_shard < 1:
        return [f"n = {n} and rows_per_shard = {rows_per_shard} must be positive, n at most 2**63 - 1"]
    shards = -(-n // rows_per_shard)
    if shards > MAX_SHARDS or len(record["files"]) > MAX_SHARDS:
        return [
            f"n = {n:,} at rows_per_shard = {rows_per_shard:,} makes {shards:,} parts and files[] lists "
            f"{len(record['files']):,}; a dataset has at most {MAX_SHARDS:,}"
        ]
    if (
        not 1 <= record["latent_dim"] <= MAX_LATENT_DIM
        or not 1 <= len(shape) <= MAX_INPUT_RANK
        or not all(isinstance(size, int) and 1 <= size <= MAX_INPUT_VALUES for size in shape)
        or math.prod(shape) > MAX_INPUT_VALUES
    ):
        return [
            f"latent_dim {record['latent_dim']} / sample_shape {str(shape)[:60]} exceed vaegen's caps "
            f"(latent_dim {MAX_LATENT_DIM:,}, {MAX_INPUT_RANK} axes, {MAX_INPUT_VALUES:,} values)"
        ]
    labels = record.get("labels") or {}
    for key in ("classes", "counts"):
        if not isinstance(labels.get(key) or [], (list, dict)) or len(labels.get(key) or []) > MAX_CLASSES:
            return [f"labels.{key} must be a list or object of at most {MAX_CLASSES:,} entries"]
    return _long_strings(record)


def _long_strings(record: Mapping[str, Any]) -> list[str]:
    """Strings longer than MAX_RECORD_STRING anywhere in the record, walked without recursion."""
    pending: list[Any] = [record]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending += list(value.keys()) + list(value.values())
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, str) and len(value) > MAX_RECORD_STRING:
            return [f"a string of {len(value):,} characters ({value[:20]!r}...); at most {MAX_RECORD_STRING:,}"]
    return []
