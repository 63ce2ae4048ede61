"""Parquet encoding of x before and after format 3, in one run so the ratio is fair under load.

    python benchmarks/encode_formats.py [--n 1000000] [--repeats 5] [--out benchmarks/out/encode_formats.json]

Like benchmarks/generate.py's "encode" scenario: CPU seconds on one core to encode 32 decoded
blocks (131,072 rows of the benchmark's 28x28 decoder) with the job's own record_batch and
parquet_writer, scaled to n rows; bytes per row from the file written. Format 2 stores x as the
Arrow fixed-shape tensor, format 3 as nested fixed-size lists; everything else is the same. The
two formats alternate within each repeat (2, 3, 2, 3, ...) on the same decoded rows, so a burst of
load from other processes hits both; the minimum over repeats is the least disturbed figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from generate import job_pieces, setup_model  # noqa: E402 (the benchmark's model and the job's own pieces)

BLOCKS = 32  # decode blocks of 4,096 rows: 131,072 rows, as the generate benchmark's encode scenario
FORMATS = (2, 3)


def encode_seconds(batches: list, schema, spec, path: Path) -> float:
    from jobs.generate.parts import parquet_writer

    started = time.process_time()
    with parquet_writer(str(path), schema, spec) as writer:
        for batch in batches:
            writer.write_batch(batch, row_group_size=spec.block_rows)
    return time.process_time() - started


def measure(model: str, n: int, dtype: str, repeats: int, out: Path) -> dict:
    import numpy as np
    import torch

    from jobs.generate.parts import arrow_schema, record_batch

    torch.set_num_threads(1)
    spec, predictor, _ = job_pieces(model, n, dtype, "tensor")
    rows = [predictor({"sample_id": np.arange(j * spec.block_rows, (j + 1) * spec.block_rows)}) for j in range(BLOCKS)]
    measured_rows = BLOCKS * spec.block_rows
    scale = n / measured_rows
    schemas = {version: arrow_schema(spec, version) for version in FORMATS}
    batches = {version: [record_batch(block, schemas[version]) for block in rows] for version in FORMATS}
    seconds: dict[int, list[float]] = {version: [] for version in FORMATS}
    size_bytes: dict[int, int] = {}
    for _ in range(repeats):
        for version in FORMATS:
            path = out / f"{dtype}-f{version}.parquet"
            seconds[version].append(encode_seconds(batches[version], schemas[version], spec, path) * scale)
            size_bytes[version] = path.stat().st_size
    result = {"dtype": dtype, "n": n, "rows_measured": measured_rows, "repeats": repeats}
    for version in FORMATS:
        result[f"format{version}"] = {
            "seconds_min": min(seconds[version]),
            "seconds_median": statistics.median(seconds[version]),
            "seconds_all": seconds[version],
            "bytes_per_row": size_bytes[version] / measured_rows,
            "x_type": str(schemas[version].field("x").type),
        }
    before, after = result["format2"], result["format3"]
    result["ratio_seconds_min"] = after["seconds_min"] / before["seconds_min"]
    result["ratio_seconds_median"] = after["seconds_median"] / before["seconds_median"]
    result["ratio_bytes"] = after["bytes_per_row"] / before["bytes_per_row"]
    print(
        f"{dtype:8} format 2 {before['seconds_min']:6.2f} s ({before['bytes_per_row']:7.1f} B/row)  "
        f"format 3 {after['seconds_min']:6.2f} s ({after['bytes_per_row']:7.1f} B/row)  "
        f"time x{result['ratio_seconds_min']:.3f} (median x{result['ratio_seconds_median']:.3f})  "
        f"size x{result['ratio_bytes']:.4f}",
        file=sys.stderr,
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="rows the CPU time is scaled to")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,float16,uint8")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "encode_formats.json"))
    args = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory(prefix="vaegen-encode-") as folder:
        store = Path(folder)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        model = setup_model(store)
        results = [measure(model, args.n, dtype, args.repeats, store) for dtype in args.dtypes.split(",")]
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m": os.getloadavg()[0],
        },
        "model": model,
        "results": results,
        "command": "python benchmarks/encode_formats.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(
        json.dumps(
            {
                result["dtype"]: {
                    key: round(result[key], 4) for key in ("ratio_seconds_min", "ratio_seconds_median", "ratio_bytes")
                }
                for result in results
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
