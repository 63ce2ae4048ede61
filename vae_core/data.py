"""Training data sources, each returning float32 images in [0, 1] of shape (N, *shape) and labels.

Specs: `digits` (scikit-learn's bundled 8x8 set, the default), `mnist:DIR` (IDX files as
published, gzipped or not), `npz:FILE[:KEY]`, `parquet:PATH[:COLUMN]`. Optional readers
(scikit-learn, pyarrow) are imported only when their source is used.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
from pathlib import Path

import numpy as np

from vae_core.errors import UsageError

SOURCES_HELP = "use digits, mnist:DIR, npz:FILE[:KEY] or parquet:PATH[:COLUMN]"
_NPZ_IMAGE_KEYS = ("x", "images", "X")
_NPZ_LABEL_KEYS = ("y", "labels", "label")
_IDX_UBYTE = 0x08


@dataclasses.dataclass(frozen=True)
class Dataset:
    source: str
    images: np.ndarray  # (N, *shape) float32 in [0, 1]
    labels: np.ndarray | None  # (N,) int64 in [0, K) or None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    def content_sha256(self) -> str:
        """A digest of the pixels and labels: names the data in the registry and in caches."""
        digest = hashlib.sha256(np.ascontiguousarray(self.images).tobytes())
        digest.update(str(self.images.shape).encode())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def split(self, holdout_fraction: float) -> tuple[Dataset, Dataset]:
        """Train on the first rows, hold out the LAST round(N * fraction): reproducible, no shuffle."""
        n_holdout = max(1, round(len(self.images) * holdout_fraction))
        n_train = len(self.images) - n_holdout
        if n_train < 1:
            raise UsageError(f"data source {self.source} has {len(self.images)} rows: too few to hold out any")
        cut = lambda array: (None, None) if array is None else (array[:n_train], array[n_train:])  # noqa: E731
        train_labels, holdout_labels = cut(self.labels)
        return (
            Dataset(self.source, self.images[:n_train], train_labels),
            Dataset(self.source, self.images[n_train:], holdout_labels),
        )


def load(spec: str) -> Dataset:
    """Load and validate a data source; every problem is a one-line UsageError naming the fix."""
    kind, _, rest = spec.partition(":")
    if kind == "digits" and not rest:
        images, labels = _load_digits()
    elif kind == "mnist" and rest:
        images, labels = _load_mnist(Path(rest), spec)
    elif kind == "npz" and rest:
        images, labels = _load_npz(rest, spec)
    elif kind == "parquet" and rest:
        images, labels = _load_parquet(rest, spec)
    else:
        raise UsageError(f"unknown data source {spec!r}: {SOURCES_HELP}")
    return Dataset(spec, _validated_images(images, spec), _validated_labels(labels, len(images), spec))


def _validated_images(images: np.ndarray, spec: str) -> np.ndarray:
    if images.size == 0 or len(images) == 0:
        raise UsageError(f"data source {spec} is empty: point it at a file or folder with images")
    if images.ndim < 2:
        raise UsageError(f"data source {spec} gives shape {images.shape}: need (N, height, width) or (N, features)")
    images = images.astype(np.float32, copy=False)
    if np.isnan(images).any():
        raise UsageError(f"data source {spec} contains NaN: clean or drop those rows first")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise UsageError(
            f"data source {spec} has values in [{low:g}, {high:g}], outside [0, 1]: "
            "scale pixels to [0, 1] first (e.g. divide 8-bit images by 255)"
        )
    return np.ascontiguousarray(images)


def _validated_labels(labels: np.ndarray | None, n: int, spec: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise UsageError(f"data source {spec}: labels have shape {labels.shape}, expected ({n},)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise UsageError(f"data source {spec}: labels must be non-negative integers 0..K-1")
    return labels.astype(np.int64)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images / 16.0, digits.target  # pixels are counts 0..16


def _read_idx(path: Path, spec: str) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise UsageError(f"data source {spec}: {path.name} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise UsageError(f"data source {spec}: {path.name} is truncated ({body.size} of {math.prod(dims)} bytes)")
    return body.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_mnist(directory: Path, spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Train split first, then t10k, whichever of the two is present."""
    if not directory.is_dir():
        raise UsageError(f"data source {spec}: {directory} is not a directory holding MNIST IDX files")
    images, labels = [], []
    for split in ("train", "t10k"):
        image_file = _find_idx(directory, f"{split}-images-idx3-ubyte")
        if image_file is None:
            continue
        images.append(_read_idx(image_file, spec) / 255.0)
        label_file = _find_idx(directory, f"{split}-labels-idx1-ubyte")
        labels.append(None if label_file is None else _read_idx(label_file, spec))
    if not images:
        raise UsageError(
            f"data source {spec}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz] in {directory}"
        )
    all_labels = None if any(part is None for part in labels) else np.concatenate(labels)
    return np.concatenate(images), all_labels


def _load_npz(rest: str, spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    path, _, key = rest.partition(":")
    if not Path(path).is_file():
        raise UsageError(f"data source {spec}: no file {path}")
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if not key:
            candidates = [name for name in _NPZ_IMAGE_KEYS if name in keys] or (keys if len(keys) == 1 else [])
            if not candidates:
                raise UsageError(f"data source {spec}: name the image array, e.g. npz:{path}:KEY, one of {keys}")
            key = candidates[0]
        if key not in keys:
            raise UsageError(f"data source {spec}: no array {key!r} in {path}; it holds {keys}")
        label_key = next((name for name in _NPZ_LABEL_KEYS if name in keys and name != key), None)
        return archive[key], None if label_key is None else archive[label_key]


def _load_parquet(rest: str, spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, _, column = rest.partition(":")
    column = column or "x"
    if not Path(path).exists():
        raise UsageError(f"data source {spec}: no file or directory {path}")
    table = pq.read_table(path)
    if column not in table.column_names:
        raise UsageError(f"data source {spec}: no column {column!r}; columns are {table.column_names}")
    values = table.column(column).combine_chunks()
    if isinstance(values.type, pa.FixedShapeTensorType):
        images = values.to_numpy_ndarray()
    elif pa.types.is_fixed_size_list(values.type) and pa.types.is_fixed_size_list(values.type.value_type):
        shape = []  # nested fixed-size lists (vaegen format 3): one level per dimension
        while pa.types.is_fixed_size_list(values.type):
            shape.append(values.type.list_size)
            values = values.flatten()
        images = values.to_numpy(zero_copy_only=False).reshape(-1, *shape)
    elif pa.types.is_fixed_size_list(values.type) or pa.types.is_list(values.type):
        rows = values.to_numpy(zero_copy_only=False)
        if len({len(row) for row in rows}) > 1:
            raise UsageError(
                f"data source {spec}: rows of column {column!r} have different lengths; need one image size"
            )
        flat = np.stack(rows) if len(rows) else np.empty((0, 0))  # an empty column is reported as empty below
        side = math.isqrt(flat.shape[1])
        images = flat.reshape(-1, side, side) if len(flat) and side * side == flat.shape[1] else flat
    else:
        raise UsageError(f"data source {spec}: column {column!r} has type {values.type}; need a list or tensor")
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    return images, labels
