"""The dataset card's "Load it" section: at most three lines per reader that give x its shape; README.md
"Reading a dataset" says the same in general."""

from __future__ import annotations

from jobs.generate.records import Manifest


def loading_text(record: Manifest, location: str, parts: str) -> str:
    """`parts`: the glob of the dataset's part files, for the readers that take files rather than a folder."""
    if record.layout == "binary":
        dims = ", ".join(map(str, record.sample_shape))
        return (
            "x is one fixed-size binary value per row; vaegen's reader API gives it its shape:\n\n```python\n"
            "from jobs.reader import open_dataset\n"
            f"data = open_dataset({location!r}).to_numpy()  # data['x']: (N, {dims}) {record.dtype}\n```\n"
        )
    blocks = _table_snippets(record, location, parts) + _framework_snippets(record, location, parts)
    return "\n\n".join(f"{name}:\n\n```python\n{code}\n```" for name, code in blocks) + "\n"


def _table_snippets(record: Manifest, location: str, parts: str) -> list[tuple[str, str]]:
    """(reader, code) for the table libraries, which read x as nested lists: each reshapes or casts it."""
    shape = tuple(record.sample_shape)
    dims = ", ".join(map(str, shape))
    duckdb_type = {"float32": "FLOAT", "float16": "FLOAT", "uint8": "UTINYINT"}[record.dtype] + "".join(
        f"[{size}]" for size in shape
    )
    pandas_x = {1: "np.stack(frame['x'])", 2: "np.stack(frame['x'].map(np.stack))"}.get(
        len(shape), "np.stack([np.array(cell.tolist()) for cell in frame['x']])"
    )
    return [
        (
            "pyarrow",
            "import pyarrow.parquet as pq\n"
            f"table = pq.read_table({location!r})  # x: nested fixed-size lists, one level per dimension\n"
            f"x = table['x'].combine_chunks(){'.flatten()' * len(shape)}.to_numpy().reshape(-1, {dims})",
        ),
        (
            "pandas",
            "import numpy as np, pandas as pd\n"
            f"frame = pd.read_parquet({location!r})  # each x cell: nested arrays\n"
            f"x = {pandas_x}  # (N, {dims})",
        ),
        (
            "polars",
            "import polars as pl\n"
            f"frame = pl.read_parquet({parts!r})  # x: Array(shape=({dims}))\n"
            f"x = frame['x'].to_numpy()  # frame.drop('seed').to_torch('dict') for torch: polars refuses uint64",
        ),
        (
            "DuckDB",
            "import duckdb  # x is a nested list; the cast makes it the fixed ARRAY type\n"
            f"rel = duckdb.sql(\"SELECT sample_id, x::{duckdb_type} AS x FROM read_parquet('{parts}')\")",
        ),
    ]


def _framework_snippets(record: Manifest, location: str, parts: str) -> list[tuple[str, str]]:
    """(reader, code) for Ray Data, Hugging Face datasets and PyTorch."""
    rank = len(record.sample_shape)
    hf_type = f"Array{rank}D" if 2 <= rank <= 5 else "fixed-length lists"
    return [
        (
            "Ray Data",
            "import ray.data\n"
            "from jobs.reader import shaped_x  # Ray Data shapes only Arrow tensors: this makes x one, zero-copy\n"
            f"data = ray.data.read_parquet({location!r}).map_batches(shaped_x, batch_format='pyarrow')",
        ),
        (
            "Hugging Face datasets (reads this card's header, `.huggingface.yaml`)",
            "from datasets import load_dataset\n"
            f"data = load_dataset({location!r}, split='train').with_format('numpy')  # x: {hf_type}",
        ),
        (
            "Hugging Face datasets, the Parquet files only",
            f"from datasets import load_dataset\ndata = load_dataset('parquet', data_files={parts!r}, split='train')",
        ),
        (
            "PyTorch (vaegen's reader: streams parts, shards over workers and ranks)",
            "from torch.utils.data import DataLoader\nfrom jobs.reader import open_dataset\n"
            f"loader = DataLoader(open_dataset({location!r}).torch(shuffle=True, seed=0), "
            "batch_size=256, num_workers=2)",
        ),
    ]
