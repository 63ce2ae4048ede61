"""What a `generate` run is asked to do: the job's frozen config, checked before anything heavy is imported.

Kept apart from job.py and engine.py (which import mlflow, pyarrow and ray) so that the command
line can refuse bad input in milliseconds.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

from jobs.generate.spec import DatasetSpec, check_sizes
from registry.tracking import RAY_JOB_MARKER
from vae_core.errors import UsageError

if TYPE_CHECKING:
    from jobs.generate.records import Manifest
    from registry.pinned import PinnedModel
    from vae_core.config import VAEConfig

DEFAULT_MODEL = "vae-decoder@champion"
DEVICES = ("auto", "cpu", "cuda")
LABEL_POLICIES = ("balanced", "prior")
DEFAULT_STALL_TIMEOUT_S = (
    600.0  # no shard finished for this long: fail (a lost node no restart can replace, a hung worker)
)


GROW_UNBOUNDED = 2**31 - 1  # --num-workers auto's maximum: as many as the cluster can run, at most one per shard


def parse_num_workers(text: str | None) -> tuple[int | None, int | None]:
    """--num-workers: N (that many, fixed), MIN:MAX (start on what the cluster has, at least MIN, and grow up to
    MAX as nodes join) or auto (1:as many as the cluster grows to). Returns (num_workers, max_workers)."""
    if text is None:
        return None, None
    if text.strip().lower() == "auto":
        return None, GROW_UNBOUNDED
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high) if sep else int(low))
    except ValueError:
        raise UsageError(f"--num-workers must be N, MIN:MAX or auto (e.g. 4, 1:8), got {text!r}") from None
    if bounds[0] < 1 or bounds[1] < bounds[0]:
        raise UsageError(f"--num-workers needs 1 <= MIN <= MAX, got {text!r}: e.g. 1:8")
    return bounds[0], (bounds[1] if sep else None)


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    num_workers: int | None = None  # None: one per GPU, else one per CPU of the cluster; with max_workers: the minimum
    max_workers: int | None = None  # grow the pool up to this many as nodes join (MIN:MAX, auto); None: never grows
    device: str = "auto"  # auto: CUDA when the cluster has GPUs
    shared_fs: bool = False  # a local --out is visible to every node (NFS, a mounted volume)
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S  # covers worker start-up and a node's replacement by an autoscaler
    metrics: bool = (
        True  # export Prometheus metrics through Ray's metrics agent (jobs/metrics.py); off: to measure their cost
    )

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.num_workers is not None and self.num_workers < 1:
            raise UsageError(f"--num-workers must be a positive integer, got {self.num_workers}")
        if self.max_workers is not None and self.max_workers < (self.num_workers or 1):
            raise UsageError(f"--num-workers MIN:MAX needs MAX >= MIN, got {self.num_workers}:{self.max_workers}")
        if not self.stall_timeout_s > 0:
            raise UsageError(f"--stall-timeout must be a positive number of seconds, got {self.stall_timeout_s}")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    n: int | None  # None only with `resume`: the unfinished dataset's record says
    model: str = DEFAULT_MODEL  # the promoted version: what a scheduled job should serve
    out: str | None = None  # else VAEGEN_OUTPUT
    seed: int | None = None  # None: a fresh random seed, printed and recorded in the manifest
    dtype: str = "float32"
    layout: str = "tensor"
    compression: str = "zstd"
    compression_level: int | None = 1
    rows_per_shard: int = 65_536
    batch_size: int = 4_096
    labels: str = "balanced"  # conditional models: balanced | prior | comma-separated classes
    engine: EngineOptions = EngineOptions()
    overwrite: bool = False  # replace a committed dataset with the same id
    resume: str | None = None  # a dataset id under --out, or the dataset's own path/URI
    redact_provenance: bool = False  # leave users, hosts and locations out of the manifest: for datasets to publish
    recipe_only: bool = False  # write the manifest alone (jobs/generate/recipe.py): rows are decoded on read
    allow_ungated: bool = False  # use an alias holder that vaegen promote did not put there (recorded)

    def __post_init__(self) -> None:
        if self.n is None and self.resume is None:
            raise UsageError("--n is required: pass the number of samples, e.g. --n 1000000")
        check_sizes(self.n, self.rows_per_shard, self.batch_size)
        if self.recipe_only and self.resume is not None:
            raise UsageError("--recipe-only writes one file at once, there is nothing to --resume; drop --resume")

    def check_output(self) -> None:
        """Where the run would write, checked without touching it: the command line asks before importing Ray."""
        if self.resume is not None and "/" in self.resume.rstrip("/"):  # a resume by path names its own root
            root = checked_root(self.resume)
        else:
            root = output_root(self.out)
        check_growth(self.engine, root, local="://" not in root or root.startswith("file://"))


def check_growth(engine: EngineOptions, location: str, local: bool) -> None:
    """A pool that grows (--num-workers MIN:MAX, auto) puts workers on nodes that join: they must see the output."""
    if engine.max_workers is None or engine.shared_fs or not local:
        return
    given = "auto" if engine.max_workers == GROW_UNBOUNDED else f"{engine.num_workers or 1}:{engine.max_workers}"
    raise UsageError(
        f"--num-workers {given} grows the pool onto nodes that join, but --out {location} is a local path only "
        "this node sees; use an object store (s3://...), --shared-fs for a filesystem mounted on every node, "
        "or a fixed --num-workers N"
    )


def output_root(out: str | None) -> str:
    """--out, else VAEGEN_OUTPUT; neither is a usage error naming both."""
    root = out or os.environ.get("VAEGEN_OUTPUT")
    if not root:
        raise UsageError("no output root: pass --out DIR_OR_URI or set VAEGEN_OUTPUT")
    return checked_root(root)


def checked_root(root: str) -> str:
    """Inside a Ray job a relative local root would land in Ray's temporary copy of the working directory."""
    if RAY_JOB_MARKER in os.environ and "://" not in root and not os.path.isabs(os.path.expanduser(root)):
        raise UsageError(
            f"output root {root!r} is a relative path, which inside a Ray job means Ray's temporary "
            "copy of the working directory; pass an absolute path shared by the nodes, or s3://bucket/prefix"
        )
    return root


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    dataset_id: str
    location: str
    status: str  # "generated" | "resumed" | "up-to-date"
    manifest: Manifest
    seed_was_random: bool = False


def dataset_spec(config: GenerateConfig, pinned: PinnedModel, model_config: VAEConfig, seed: int) -> DatasetSpec:
    label_policy, classes = None, ()
    if model_config.conditional:
        label_policy, classes = parse_labels(config.labels, model_config.num_classes)
    elif config.labels != GenerateConfig.labels:  # the default, balanced, means nothing here and is accepted
        raise UsageError(
            f"--labels {config.labels}: {pinned.name}/{pinned.version} is unconditional "
            "(it draws no labels); drop --labels, or use a version trained with --conditional"
        )
    return DatasetSpec(
        model_name=pinned.name,
        model_version=pinned.version,
        n=config.n,
        seed=seed,
        latent_dim=model_config.latent_dim,
        sample_shape=tuple(model_config.input_shape),
        dtype=config.dtype,
        layout=config.layout,
        compression=config.compression,
        compression_level=config.compression_level if config.compression in ("zstd", "gzip") else None,
        rows_per_shard=config.rows_per_shard,
        block_rows=config.batch_size,
        num_classes=model_config.num_classes,
        label_policy=label_policy,
        label_classes=classes,
        class_prior=tuple(model_config.class_prior),
    )


def parse_labels(text: str, num_classes: int) -> tuple[str, tuple[int, ...]]:
    """`balanced` (all classes), `prior`, or a comma-separated subset, balanced over it (contract 1b)."""
    if text in LABEL_POLICIES:
        return text, tuple(range(num_classes))
    try:
        classes = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        classes = ()
    if not classes or classes[0] < 0 or classes[-1] >= num_classes:
        raise UsageError(f"--labels must be balanced, prior or classes in 0..{num_classes - 1} like 3,5; got {text!r}")
    return "balanced", classes
