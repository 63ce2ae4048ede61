"""A dataset's columns from Arrow to numpy and back, whatever its format and layout (jobs/reader.py's
arrays and Hugging Face tables), and a dataset folder as a Ray Dataset with x as Arrow tensors.

x is decoded by its Arrow type: nested fixed-size lists in format 3, the fixed-shape tensor of
formats 1 and 2, fixed-size binary rows with `--layout binary`. Arrays handed out are writable
(pyarrow's own are read-only and torch warns). Imports pyarrow and numpy only; ray where it is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from vae_core.errors import UsageError

if TYPE_CHECKING:
    import ray.data


def x_numpy(
    column: pa.Array | pa.ChunkedArray, shape: Sequence[int] | None = None, dtype: str | None = None
) -> np.ndarray:
    """x as one writable (N, *shape) array, whatever its layout; `shape` and `dtype` are needed
    only for fixed-size binary rows (the manifest's `sample_shape` and `dtype`)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = [_x_view(chunk, shape, dtype) for chunk in chunks]
    return np.concatenate(views) if views else np.empty((0, *(shape or ())), dtype)  # one copy, writable


def _x_view(array: pa.Array, shape: Sequence[int] | None, dtype: str | None) -> np.ndarray:
    """A read-only (N, *shape) view of one chunk's buffers."""
    if isinstance(array.type, pa.FixedShapeTensorType):  # formats 1 and 2
        shape, array = array.type.shape, array.storage
    if pa.types.is_fixed_size_binary(array.type):  # --layout binary
        if shape is None or dtype is None:
            raise UsageError(
                "x is stored as fixed-size binary rows (--layout binary): pass its shape and dtype "
                "(the manifest's sample_shape and dtype)"
            )
        count = len(array) * math.prod(shape)
        return np.frombuffer(
            array.buffers()[1], dtype=dtype, count=count, offset=array.offset * array.type.byte_width
        ).reshape(-1, *shape)
    sizes = []
    while pa.types.is_fixed_size_list(array.type):  # format 3: one level per dimension
        sizes.append(array.type.list_size)
        array = array.flatten()
    return array.to_numpy().reshape(-1, *(shape or sizes))


def shaped_x(batch: pa.Table) -> pa.Table:
    """x as Arrow's fixed-shape tensor, zero-copy: Ray Data hands out only that type as (N, *shape)
    arrays. `ray.data.read_parquet(DIR).map_batches(shaped_x, batch_format="pyarrow")`."""
    index = batch.schema.get_field_index("x")
    field = batch.schema.field(index)
    metadata = field.metadata or {}
    shape = [int(size) for size in metadata[b"shape"].decode().split(",")] if b"shape" in metadata else None
    dtype = metadata[b"dtype"].decode() if b"dtype" in metadata else None
    chunks = [
        pa.FixedShapeTensorArray.from_numpy_ndarray(_x_view(chunk, shape, dtype))
        for chunk in batch.column(index).chunks
    ]
    column = pa.chunked_array(chunks) if chunks else batch.column(index)
    return batch.set_column(index, pa.field("x", column.type, nullable=False, metadata=field.metadata), column)


def ray_dataset(location: str, **read_options: Any) -> ray.data.Dataset:
    """A dataset folder as a Ray Dataset whose batches hold x as (B, *shape) arrays (shaped_x).

    Ray is reached as `vaegen generate` reaches it (jobs.generate.ray_session.connect): RAY_ADDRESS when set,
    else a private local Ray. A plain ray.data.read_parquet would join whatever /tmp/ray/ray_current_cluster
    names, and hangs when a killed cluster left that file behind."""
    import ray.data

    from jobs.generate import ray_session

    ray_session.connect()
    return ray.data.read_parquet(location, **read_options).map_batches(shaped_x, batch_format="pyarrow")


def nested_x(column: pa.ChunkedArray, shape: Sequence[int], dtype: str) -> pa.ChunkedArray:
    """x of any layout as format 3 stores it: nested fixed-size lists, one level per dimension."""
    chunks = []
    for chunk in column.chunks:
        view = _x_view(chunk, shape, dtype)
        nested = pa.array(view.reshape(-1))
        for size in reversed(view.shape[1:]):
            nested = pa.FixedSizeListArray.from_arrays(nested, size)
        chunks.append(nested)
    return pa.chunked_array(chunks)


def columns_numpy(table: pa.Table, shape: Sequence[int], dtype: str) -> dict[str, np.ndarray]:
    """Every column as a writable numpy array: x (N, *shape), z (N, latent_dim), the others (N,)."""
    out = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "x":
            out[name] = x_numpy(column, shape, dtype)
        elif name == "z":
            width = column.type.list_size
            out[name] = np.concatenate([chunk.flatten().to_numpy().reshape(-1, width) for chunk in column.chunks])
        else:
            out[name] = np.concatenate([chunk.to_numpy() for chunk in column.chunks])
    return out
