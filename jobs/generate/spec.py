"""What a dataset is: the frozen config that determines its bytes, its id, and its shards.

A spec is validated where it is built, from the command line or from a record on disk
(`--resume`): its id becomes a folder name, so the model name must be a plain name, and its
plan must be bounded (ids fit int64, part names fit their 5 digits, a part fits one S3 copy,
a decode block fits in memory).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from typing import Any

from vae_core.config import MAX_CLASSES, MAX_INPUT_RANK, MAX_INPUT_VALUES, MAX_LATENT_DIM
from vae_core.errors import UsageError
from vae_core.seeds import MAX_SEED, SEED_SCHEME

FORMAT = "vaegen-dataset/3"  # bump when the bytes of a part change for the same inputs (2: byte-stream-split x;
# 3: x as nested fixed-size lists, its shape visible to every reader)
FORMAT_VERSION = int(FORMAT.rsplit("/", 1)[1])
DTYPES = ("float32", "float16", "uint8")
LAYOUTS = ("tensor", "binary")
COMPRESSIONS = ("zstd", "lz4", "snappy", "gzip", "none")

# A model name becomes the first part of a folder name: letters, digits and . _ + - only, not
# starting with . or _ (readers skip those), short enough for any filesystem's 255-byte names.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
MAX_N = 2**63 - 1  # sample ids are int64
MAX_SHARDS = 100_000  # part-<k, 5 digits>.parquet: more would no longer sort by name (contract 2)
MAX_PART_BYTES = 4 << 30  # a part is committed by one S3 server-side copy, which stops at 5 GB
DEFAULT_BLOCK_ROWS = 4_096  # the default decode grid (GenerateConfig.batch_size)
MAX_BLOCK_BYTES = 1 << 30  # decoded float32 x of one block; a worker holds about three blocks at a time


def check_sizes(n: int | None, rows_per_shard: int, block_rows: int) -> None:
    """The size options of a dataset, checked in one place: by the CLI before anything heavy, and by every spec.
    Bounds that depend on the model's sample shape are the spec's (DatasetSpec._check_plan)."""
    if n is not None and n < 1:
        raise UsageError(f"--n must be a positive integer, got {n}")
    if n is not None and n > MAX_N:
        raise UsageError(f"--n must be at most 2**63 - 1 = {MAX_N:,} (sample ids are int64), got {n:,}")
    if rows_per_shard < 1:
        raise UsageError(f"--rows-per-shard must be a positive integer, got {rows_per_shard}")
    if block_rows < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {block_rows}")
    shards = -(-n // rows_per_shard) if n is not None else 0
    if shards > MAX_SHARDS:
        raise UsageError(
            f"--n {n:,} at --rows-per-shard {rows_per_shard:,} makes {shards:,} part files, more than "
            f"{MAX_SHARDS:,} (part names have 5 digits); raise --rows-per-shard or lower --n "
            f"(at most {MAX_SHARDS * rows_per_shard:,} at this shard size)"
        )
    most_block_rows = max(rows_per_shard, DEFAULT_BLOCK_ROWS)
    if block_rows > most_block_rows:
        raise UsageError(
            f"--batch-size {block_rows:,} is larger than a shard (--rows-per-shard {rows_per_shard:,}): "
            f"each shard would decode rows it never writes; use at most {most_block_rows:,}"
        )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything that decides a part file's bytes. Two runs with equal specs write equal files."""

    model_name: str
    model_version: int
    n: int
    seed: int
    latent_dim: int
    sample_shape: tuple[int, ...]
    dtype: str = "float32"  # full precision by default; uint8 = round(255 x) is 4x smaller
    layout: str = "tensor"  # x with its shape (nested fixed-size lists); "binary" encodes ~2-10x faster (README)
    compression: str = "zstd"  # zstd level 1: ~14% smaller than lz4 for ~20% more encode time
    compression_level: int | None = 1
    rows_per_shard: int = 65_536  # 16 decode blocks; ~200 MB of float32 28x28 per part before compression
    block_rows: int = 4_096  # decode grid (vae_core.sampling); large enough for BLAS, fixed for bit-stability
    num_classes: int = 0
    label_policy: str | None = None  # "balanced" | "prior" | None for unconditional models
    label_classes: tuple[int, ...] = ()
    class_prior: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("model_version", "n", "seed", "latent_dim", "rows_per_shard", "block_rows", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"{name} must be an integer, got {value!r}")
        if not isinstance(self.model_name, str) or not MODEL_NAME.fullmatch(self.model_name):
            raise UsageError(
                f"model name {self.model_name!r} cannot name a dataset folder: use letters, digits and "
                ". _ + -, starting with a letter or digit, at most 128 characters; register the model under such a name"
            )
        if self.model_version < 1:
            raise UsageError(f"model version must be a positive integer, got {self.model_version}")
        check_sizes(self.n, self.rows_per_shard, self.block_rows)
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must lie in [0, 2**64), got {self.seed}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")
        self._check_model_sizes()
        self._check_plan()

    def _check_model_sizes(self) -> None:
        """What the model contributes, within vae_core.config's caps: a spec read back from a record on disk is
        bounded before anything (a label list, a decode block) is built from it."""
        shape, classes, prior = self.sample_shape, self.label_classes, self.class_prior
        if (
            not isinstance(shape, tuple)
            or not 1 <= len(shape) <= MAX_INPUT_RANK
            or not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape)
            or math.prod(shape) > MAX_INPUT_VALUES
            or not 1 <= self.latent_dim <= MAX_LATENT_DIM
        ):
            raise UsageError(
                f"sample shape {str(shape)[:60]} / latent_dim {self.latent_dim} are not a decoder's "
                f"(at most {MAX_INPUT_RANK} axes, {MAX_INPUT_VALUES:,} values, "
                f"latent_dim {MAX_LATENT_DIM:,})"
            )
        if not 0 <= self.num_classes <= MAX_CLASSES:
            raise UsageError(f"num_classes must lie in [0, {MAX_CLASSES:,}], got {self.num_classes:,}")
        if (
            not isinstance(classes, tuple)
            or len(classes) > self.num_classes
            or not all(
                isinstance(label, int) and not isinstance(label, bool) and 0 <= label < self.num_classes
                for label in classes
            )
        ):
            raise UsageError(
                f"label classes {str(classes)[:60]} must be at most num_classes = {self.num_classes} "
                f"integers in 0..{self.num_classes - 1}"
            )
        if (
            not isinstance(prior, tuple)
            or len(prior) not in (0, self.num_classes)
            or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in prior)
        ):
            raise UsageError(f"class prior {str(prior)[:60]} must be num_classes = {self.num_classes} numbers")
        if self.label_policy not in (None, "balanced", "prior") or (self.label_policy is None) != (
            self.num_classes == 0
        ):
            raise UsageError(
                f"label policy {str(self.label_policy)[:40]!r} does not fit num_classes = {self.num_classes}"
            )

    def _check_plan(self) -> None:
        """Bounds that keep a plan runnable: every limit names the option that reaches it."""
        max_rows_per_shard = max(1, MAX_PART_BYTES // self.row_bytes)
        if self.rows_per_shard > max_rows_per_shard:
            raise UsageError(
                f"--rows-per-shard {self.rows_per_shard:,} makes parts of about "
                f"{self.rows_per_shard * self.row_bytes / 2**30:,.1f} GiB; the most is {MAX_PART_BYTES >> 30} GiB "
                f"(one S3 copy commits a part): use at most {max_rows_per_shard:,}"
            )
        block_bytes = self.block_rows * math.prod(self.sample_shape) * 4
        if block_bytes > MAX_BLOCK_BYTES:
            raise UsageError(
                f"--batch-size {self.block_rows:,} decodes {block_bytes / 2**30:,.1f} GiB per block; the most is "
                f"{MAX_BLOCK_BYTES >> 30} GiB: use at most {MAX_BLOCK_BYTES // (math.prod(self.sample_shape) * 4):,}"
            )

    @property
    def row_bytes(self) -> int:
        """Bytes of one row before compression: x in its dtype, z, seed, id and label."""
        x_bytes = math.prod(self.sample_shape) * {"float32": 4, "float16": 2, "uint8": 1}[self.dtype]
        return x_bytes + 4 * self.latent_dim + 8 + 8 + (2 if self.label_policy is not None else 0)

    @property
    def estimated_bytes(self) -> int:
        """The dataset's size before compression: about its size on disk, a little more.

        Measured: float32 x 0.76x, uint8 0.83x.
        """
        return self.n * self.row_bytes

    @property
    def num_shards(self) -> int:
        return math.ceil(self.n / self.rows_per_shard)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Contract 2: shard k holds sample ids [k*R, min((k+1)*R, n))."""
        start = shard * self.rows_per_shard
        return start, min(start + self.rows_per_shard, self.n)

    @property
    def dataset_id(self) -> str:
        """Names the content: model version, seed, n, dtype, layout, labels and format version."""
        parts = [self.model_name, f"v{self.model_version}", f"n{self.n}", f"seed{self.seed}", self.dtype]
        if self.layout != "tensor":
            parts.append(self.layout)
        if self.label_policy is not None:
            parts.append(f"labels-{self.label_policy}")
            if self.label_policy == "balanced" and self.label_classes != tuple(range(self.num_classes)):
                parts.append("classes-" + ".".join(map(str, self.label_classes)))
        parts.append(f"f{FORMAT_VERSION}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "seed_scheme": SEED_SCHEME, **dataclasses.asdict(self)}

    def fingerprint(self) -> str:
        """A digest of every field: a resume or a rerun must match it exactly."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def spec_from_record(record: dict[str, Any], dataset_id: str) -> DatasetSpec:
    """The spec that a `_progress.json` (or manifest) in folder `dataset_id` describes, validated like
    one built from the command line, and refused unless it names exactly that folder and its model."""
    where = f"the record in {dataset_id!r}"
    try:
        fields = {key: value for key, value in record["spec"].items() if key not in ("format", "seed_scheme")}
        for key in ("sample_shape", "label_classes", "class_prior"):
            fields[key] = tuple(fields[key]) if isinstance(fields[key], list) else fields[key]
        spec = DatasetSpec(**fields)
        model = record["model"]
        recorded_id, fingerprint = record["dataset_id"], record["spec_fingerprint"]
        model_matches = model["name"] == spec.model_name and model["version"] == spec.model_version
    except (KeyError, TypeError, AttributeError) as error:
        raise UsageError(
            f"{where} is not a vaegen dataset record ({type(error).__name__}: {error}); "
            "generate the dataset anew instead of resuming it"
        ) from None
    except UsageError as error:
        raise UsageError(f"{where} is refused: {error}") from None
    if spec.dataset_id != dataset_id or recorded_id != dataset_id:
        raise UsageError(
            f"{where} describes dataset {spec.dataset_id!r}, not {dataset_id!r}; a dataset is resumed "
            "only in the folder named by its id"
        )
    if fingerprint != spec.fingerprint() or not model_matches:
        raise UsageError(
            f"{where} is inconsistent (its spec, fingerprint and model disagree); "
            "generate the dataset anew instead of resuming it"
        )
    return spec


def part_name(shard: int) -> str:
    """Contract 2: the name comes from k alone, so a rerun rewrites the same names."""
    return f"part-{shard:05d}.parquet"
