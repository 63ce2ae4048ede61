"""The benchmark's single-process scenarios, run small against a real SQLite registry: the
figures in the README come from running them, so they must keep working and keep writing
the rows the job writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
MODEL = "vae-decoder/1"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_generate", REPO / "benchmarks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_writes_every_row_once_in_the_job_schema(trained_version, tmp_path):
    from jobs.generate.job import GenerateConfig, dataset_spec
    from jobs.generate.parts import arrow_schema
    from registry import models

    result = load_benchmark().scenario_floor(MODEL, 10_000, "uint8", "tensor", tmp_path)
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert result["seconds"] > 0 and result["bytes"] == sum(path.stat().st_size for path in parts)
    table = pq.read_table(parts)
    np.testing.assert_array_equal(table["sample_id"].to_numpy(), np.arange(10_000))
    pinned = models.resolve(MODEL)
    spec = dataset_spec(GenerateConfig(n=10_000, dtype="uint8"), pinned, models.version_config(pinned), seed=42)
    assert table.schema.remove_metadata() == arrow_schema(spec).remove_metadata()


def test_encode_scales_its_sample_to_n(trained_version, tmp_path):
    small = load_benchmark().scenario_encode(MODEL, 1_000_000, "float32", "binary", tmp_path)
    assert small["rows_measured"] == 32 * 4_096
    written = (tmp_path / "encode.parquet").stat().st_size
    assert small["bytes"] == written * 1_000_000 / small["rows_measured"] and small["seconds"] > 0


def test_encode_formats_measures_format_2_and_3_on_the_same_rows(trained_version, tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark_encode_formats", REPO / "benchmarks" / "encode_formats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.measure(MODEL, 1_000_000, "uint8", repeats=2, out=tmp_path)
    assert result["rows_measured"] == 32 * 4_096 and len(result["format2"]["seconds_all"]) == 2
    assert result["format2"]["x_type"].startswith("extension<arrow.fixed_shape_tensor")
    assert result["format3"]["x_type"].startswith(
        "fixed_size_list<item: fixed_size_list<item: uint8 not null>[8] not null>[8]"
    )
    old, new = (pq.read_table(tmp_path / f"uint8-f{version}.parquet") for version in (2, 3))
    assert (
        old["x"].combine_chunks().to_numpy_ndarray().tobytes()
        == new["x"].combine_chunks().flatten().flatten().to_numpy().tobytes()
    )
    assert result["ratio_bytes"] == result["format3"]["bytes_per_row"] / result["format2"]["bytes_per_row"]
