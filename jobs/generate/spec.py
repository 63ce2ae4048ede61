"""What a dataset is: the frozen config that determines its bytes, its id, and its shards."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from vae_core.errors import UsageError
from vae_core.seeds import MAX_SEED, SEED_SCHEME

FORMAT = "vaegen-dataset/3"  # bump when the bytes of a part change for the same inputs (2: byte-stream-split x;
# 3: x as nested fixed-size lists, its shape visible to every reader)
FORMAT_VERSION = int(FORMAT.rsplit("/", 1)[1])
DTYPES = ("float32", "float16", "uint8")
LAYOUTS = ("tensor", "binary")
COMPRESSIONS = ("zstd", "lz4", "snappy", "gzip", "none")


def check_sizes(n: int | None, rows_per_shard: int, block_rows: int) -> None:
    """The size options of a dataset, checked in one place: by the CLI before anything heavy, and by every spec."""
    if n is not None and n < 1:
        raise UsageError(f"--n must be a positive integer, got {n}")
    if rows_per_shard < 1:
        raise UsageError(f"--rows-per-shard must be a positive integer, got {rows_per_shard}")
    if block_rows < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {block_rows}")


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
        check_sizes(self.n, self.rows_per_shard, self.block_rows)
        if not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"--seed must lie in [0, 2**64), got {self.seed}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.compression not in COMPRESSIONS:
            raise UsageError(f"--compression must be one of {', '.join(COMPRESSIONS)}, got {self.compression!r}")

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


def part_name(shard: int) -> str:
    """Contract 2: the name comes from k alone, so a rerun rewrites the same names."""
    return f"part-{shard:05d}.parquet"
