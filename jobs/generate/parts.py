"""Rows -> one Parquet part file, decoding and encoding overlapped (contract 2).

A part covers shard k's sample ids. Decoding walks the global block grid (vae_core.sampling),
and each decoded block is handed to a single writer thread while the next block decodes:
torch and pyarrow both release the GIL in their heavy loops, so the two overlap on one core
pair. A sidecar `_parts/part-k.json` written after the part records its checksum for resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.generate.spec import FORMAT_VERSION, DatasetSpec, part_name
from jobs.generate.storage import Storage
from vae_core.sampling import block_ranges

if TYPE_CHECKING:  # the driver never builds a predictor: it must not import torch
    from jobs.generate.predictor import Predictor

SIDECAR_DIR = "_parts"  # readers skip names starting with "_" or "."


SIDECAR_FIELDS = {"first_sample_id": int, "rows": int, "size_bytes": int, "checksum": str, "spec_fingerprint": str}
MAX_CHECKSUM_CHARS = 128


def sidecar_matches(sidecar: dict[str, Any], fingerprint: str, shard_range: tuple[int, int]) -> bool:
    """A part's sidecar (written after the part) vouches for it only if it is whole and names this spec and shard;
    anything else (edited, half-written, another spec's) means the part is written again."""
    if not all(
        isinstance(sidecar.get(key), kind) and not isinstance(sidecar.get(key), bool)
        for key, kind in SIDECAR_FIELDS.items()
    ):
        return False
    start, stop = shard_range
    return (
        sidecar["spec_fingerprint"] == fingerprint
        and (sidecar["first_sample_id"], sidecar["rows"]) == (start, stop - start)
        and sidecar["size_bytes"] >= 0
        and len(sidecar["checksum"]) <= MAX_CHECKSUM_CHARS
    )


@dataclasses.dataclass(frozen=True)
class PartInfo:
    shard: int
    name: str
    first_sample_id: int
    rows: int
    size_bytes: int
    checksum: str  # storage.CHECKSUM of the file's bytes
    reused: bool = False  # True when a resume verified an existing part instead of writing it
    decode_s: float = dataclasses.field(default=0.0, compare=False)  # time spent decoding its rows (metrics only)
    encode_s: float = dataclasses.field(default=0.0, compare=False)  # time spent encoding its Parquet (metrics only)

    def to_dict(self) -> dict:
        """What the manifest and the sidecar record: the file, not how long it took."""
        return {
            key: value
            for key, value in dataclasses.asdict(self).items()
            if key not in ("reused", "decode_s", "encode_s")
        }


def x_type(spec: DatasetSpec, format_version: int = FORMAT_VERSION) -> pa.DataType:
    """x's Arrow type. Format 3: nested fixed-size lists, H lists of W values for (H, W), which
    Parquet's stored Arrow schema hands back as polars `Array(shape=(H, W))`, a Hugging Face
    fixed-length list of lists, DuckDB `FLOAT[][]` and pandas cells of H rows; formats 1 and 2 (kept
    to benchmark and test against older datasets): the fixed-shape tensor extension, which only
    pyarrow and Ray Data understand (docs/decisions.md)."""
    value_type = pa.from_numpy_dtype(np.dtype(spec.dtype))
    if spec.layout == "binary":  # one opaque row of C-ordered values; shape and dtype live in the field metadata
        return pa.binary(math.prod(spec.sample_shape) * np.dtype(spec.dtype).itemsize)
    if format_version < 3:
        return pa.fixed_shape_tensor(value_type, list(spec.sample_shape))
    nested = value_type
    for size in reversed(spec.sample_shape):
        nested = pa.list_(pa.field("item", nested, nullable=False), size)  # no nulls: cheaper levels to encode
    return nested


def arrow_schema(spec: DatasetSpec, format_version: int = FORMAT_VERSION) -> pa.Schema:
    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("seed", pa.uint64(), nullable=False),
        pa.field("z", pa.list_(pa.float32(), spec.latent_dim), nullable=False),
    ]
    if spec.label_policy is not None:
        fields.append(pa.field("label", pa.int16(), nullable=False))
    x_metadata = {"dtype": spec.dtype, "shape": ",".join(map(str, spec.sample_shape)), "layout": spec.layout}
    fields.append(pa.field("x", x_type(spec, format_version), nullable=False, metadata=x_metadata))
    return pa.schema(
        fields,
        metadata={"vaegen.format": f"vaegen-dataset/{format_version}", "vaegen.spec_fingerprint": spec.fingerprint()},
    )


def _nested(values: pa.Array, list_type: pa.DataType) -> pa.Array:
    """Flat values -> (nested) fixed-size lists of `list_type`, zero-copy."""
    if not pa.types.is_fixed_size_list(list_type):
        return values
    return pa.FixedSizeListArray.from_arrays(_nested(values, list_type.value_type), type=list_type)


def record_batch(rows: dict[str, np.ndarray], schema: pa.Schema) -> pa.RecordBatch:
    """Zero-copy where Arrow allows: numpy buffers become Arrow buffers."""
    count = len(rows["sample_id"])
    x = np.ascontiguousarray(rows["x"])
    x_type = schema.field("x").type
    if isinstance(x_type, pa.FixedShapeTensorType):
        x_array = pa.ExtensionArray.from_storage(x_type, _nested(pa.array(x.reshape(-1)), x_type.storage_type))
    elif pa.types.is_fixed_size_list(x_type):
        x_array = _nested(pa.array(x.reshape(-1)), x_type)
    else:
        x_array = pa.FixedSizeBinaryArray.from_buffers(x_type, count, [None, pa.py_buffer(x)])
    z = pa.FixedSizeListArray.from_arrays(pa.array(rows["z"].reshape(-1)), rows["z"].shape[1])
    columns = [pa.array(rows["sample_id"]), pa.array(rows["seed"]), z]
    if "label" in rows:
        columns.append(pa.array(rows["label"]))
    columns.append(x_array)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


# x values of these dtypes are stored BYTE_STREAM_SPLIT: byte k of every value together, so the
# exponent bytes of [0, 1] floats and the three zero bytes of uint8 (an INT32 in Parquet) compress
# almost to nothing. Measured on 1M float32 rows: 2.72 -> 2.38 GB and 13% less encode time with
# zstd; uint8: 0.96 -> 0.67 GB, 2.2x faster. pyarrow, pandas, polars, DuckDB and Ray Data read it;
# DuckDB refuses it on float16 (a FIXED_LEN_BYTE_ARRAY), which stays PLAIN.
BYTE_STREAM_SPLIT_DTYPES = ("float32", "uint8")


def x_leaf_path(x_type: pa.DataType) -> str:
    """The Parquet column path of x's values: one `.list.element` per level of (nested) lists."""
    list_type = x_type.storage_type if isinstance(x_type, pa.BaseExtensionType) else x_type
    path = "x"
    while pa.types.is_fixed_size_list(list_type):
        path, list_type = path + ".list.element", list_type.value_type
    return path


def parquet_writer(where: Any, schema: pa.Schema, spec: DatasetSpec) -> pq.ParquetWriter:
    """The one place that decides how parts are encoded."""
    encodings = {}
    if spec.layout == "tensor" and spec.dtype in BYTE_STREAM_SPLIT_DTYPES:
        encodings[x_leaf_path(schema.field("x").type)] = "BYTE_STREAM_SPLIT"
    return pq.ParquetWriter(
        where,
        schema,
        compression=spec.compression,
        compression_level=spec.compression_level,
        use_dictionary=False,  # random floats and seeds never repeat: dictionaries only cost time
        column_encoding=encodings or None,
        write_statistics=["sample_id"],  # lets readers prune row groups by id; x statistics are useless
    )


class PartWriter:
    """Writes (or, on a resume, verifies) the part file of one shard."""

    def __init__(self, predictor: Predictor, storage: Storage, dataset_id: str, metadata: dict[str, str] | None = None):
        self.predictor = predictor
        self.spec = predictor.spec
        self.storage = storage
        self.dataset_id = dataset_id
        self.metadata = metadata or {}  # manifest.parquet_metadata: AI-generated, the generator, the recipe digest
        schema = arrow_schema(self.spec)
        extra = {key.encode(): value.encode() for key, value in self.metadata.items()}
        self.schema = schema.with_metadata({**schema.metadata, **extra})

    def __call__(self, shard: int) -> PartInfo:
        return self.verified(shard) or self.write(shard)

    def verified(self, shard: int) -> PartInfo | None:
        """The existing part if its sidecar matches this spec and its bytes still hash the same."""
        name = part_name(shard)
        sidecar = self.storage.read_json(self.dataset_id, SIDECAR_DIR, name + ".json")
        if sidecar is None or not sidecar_matches(sidecar, self.spec.fingerprint(), self.spec.shard_range(shard)):
            return None
        if (
            not self.storage.exists(self.dataset_id, name)
            or self.storage.size(self.dataset_id, name) != sidecar["size_bytes"]
        ):
            return None
        if self.storage.checksum(self.dataset_id, name) != sidecar["checksum"]:
            return None
        return PartInfo(
            shard,
            name,
            sidecar["first_sample_id"],
            sidecar["rows"],
            sidecar["size_bytes"],
            sidecar["checksum"],
            reused=True,
        )

    def write(self, shard: int) -> PartInfo:
        spec = self.spec
        start, stop = spec.shard_range(shard)
        name = part_name(shard)
        decode_s, encode_s = 0.0, [0.0]  # per block, not per row: two clock reads each

        def encode(batch: pa.RecordBatch) -> None:
            began = time.perf_counter()
            writer.write_batch(batch, row_group_size=spec.block_rows)
            encode_s[0] += time.perf_counter() - began

        with (
            self.storage.atomic_writer(self.dataset_id, name) as stream,
            parquet_writer(stream, self.schema, spec) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as pool,
        ):
            pending: Future | None = None
            for block_start, block_stop in block_ranges(start, stop, spec.block_rows):
                began = time.perf_counter()
                rows = self.predictor({"sample_id": np.arange(block_start, block_stop, dtype=np.int64)})
                keep = slice(max(start, block_start) - block_start, min(stop, block_stop) - block_start)
                batch = record_batch({key: value[keep] for key, value in rows.items()}, self.schema)
                decode_s += time.perf_counter() - began
                if pending is not None:
                    pending.result()  # at most one block encoding while the next decodes
                pending = pool.submit(encode, batch)
            if pending is not None:
                pending.result()
        info = PartInfo(
            shard,
            name,
            start,
            stop - start,
            stream.size_bytes,
            stream.digest.hexdigest(),
            decode_s=decode_s,
            encode_s=encode_s[0],
        )
        self.storage.write_json(
            {**info.to_dict(), "spec_fingerprint": spec.fingerprint()}, self.dataset_id, SIDECAR_DIR, name + ".json"
        )
        return info
