"""Generate millions of samples from a registered decoder with Ray: the predictor and part writer
without Ray, then the real job on a real local Ray, on `ray start` clusters (one and two nodes,
`ray job submit`), through crashes of a worker and of the driver, read back by pyarrow, pandas,
polars, DuckDB and Ray Data. MLflow is a real SQLite store in a temp folder (conftest.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from helpers import assert_one_error_line, checksum_file, invoke, part_hashes, x_from_arrow
from jobs.generate.engine import EngineOptions
from jobs.generate.job import GenerateConfig, GenerateResult, generate
from jobs.generate.parts import PartWriter
from jobs.generate.predictor import NonFiniteOutput, Predictor
from jobs.generate.records import Manifest
from jobs.generate.spec import DatasetSpec, part_name
from jobs.generate.storage import Storage
from ray_cluster import (  # tests/ is on sys.path (rootdir conftest)
    RayEnv,
    as_driver,
    make_ray_env,
    ray_cluster,
    stop_tagged,
    wait_until,
)
from registry import models
from vae_core import seeds
from vae_core.config import VAEConfig
from vae_core.errors import UsageError
from vae_core.model import VAE, Decoder
from vae_core.sampling import block_ranges
from vae_core.training import TrainResult

MODEL = "vae-decoder/1"
BLOCK_ROWS = 4_096  # GenerateConfig's default decode grid
N, SEED = 50_000, 11  # the end-to-end dataset
FAULT_N, FAULT_SEED, FAULT_R = 200_000, 7, 4_096  # 49 parts: long enough to be killed in the middle
SUBPROCESS_TIMEOUT_S = 300
COMMITTED_FILES = (
    ".huggingface.yaml",
    "_README.md",
    "_croissant.json",
    "_manifest.json",
)  # beside the parts: the card and Croissant, then the manifest
VAEGEN = str(Path(sys.executable).with_name("vaegen"))


# ---------------------------------------------------------------- helpers


def dataset_id(n: int, seed: int, name: str = "vae-decoder", version: int = 1, dtype: str = "float32") -> str:
    return f"{name}-v{version}-n{n}-seed{seed}-{dtype}-f3"


def as_json(record: dict) -> dict:
    """A record as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(record))


def mtimes(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in sorted(directory.rglob("*"))}


def dataset_leftovers(root: Path) -> list[Path]:
    """Anything a reader could take for (part of) a dataset."""
    return sorted([*root.rglob("*.parquet"), *root.rglob("_manifest.json")]) if root.exists() else []


def run_generate(
    root: Path,
    n: int = N,
    seed: int = SEED,
    rows_per_shard: int = 16_384,
    num_workers: int | None = None,
    shared_fs: bool = False,
    on_workers: Callable[[list[Any]], None] | None = None,
    **options,
) -> GenerateResult:
    config = GenerateConfig(
        n=n,
        model=MODEL,
        out=str(root),
        seed=seed,
        rows_per_shard=rows_per_shard,
        engine=EngineOptions(num_workers=num_workers, shared_fs=shared_fs),
        **options,
    )
    return generate(config, on_workers=on_workers)


@dataclasses.dataclass(frozen=True)
class Expected:
    """The rows contract 1 and the registered decoder define, computed here without the job's code paths."""

    ids: np.ndarray
    seeds: np.ndarray
    z: np.ndarray
    x: np.ndarray  # (n, 8, 8) float32


def assert_table_is(table, expected: Expected) -> None:
    """pyarrow's read of a dataset: every id once, in order, and every value bit for bit."""
    np.testing.assert_array_equal(table["sample_id"].to_numpy(), expected.ids)
    np.testing.assert_array_equal(table["seed"].to_numpy(), expected.seeds)
    z = table["z"].combine_chunks().flatten().to_numpy().reshape(len(expected.ids), -1)
    np.testing.assert_array_equal(z, expected.z)
    assert table.schema.field("x").type == pa.list_(
        pa.field("item", pa.list_(pa.field("item", pa.float32(), False), 8), False), 8
    )
    x = x_from_arrow(table["x"])
    assert x.dtype == np.float32 and x.shape == expected.x.shape
    assert np.array_equal(x, expected.x)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference(trained_version) -> Callable[[int, int], Expected]:
    """expected(n, seed): seeds and z from vae_core.seeds, x from the decoder that load_decoder returns,
    decoded on the job's block grid (absolute blocks of BLOCK_ROWS ids, each decoded whole; see
    vae_core.sampling) on one thread as the CPU workers do, so equality is exact."""
    loaded = models.load_decoder(models.resolve(MODEL))
    decoder = loaded.build()
    cache: dict[tuple[int, int], Expected] = {}

    def expected(n: int, seed: int) -> Expected:
        if (n, seed) not in cache:
            blocks = block_ranges(0, n, BLOCK_ROWS)
            ids = np.arange(blocks[-1][1], dtype=np.int64)
            row_seeds = seeds.row_seeds(seed, ids)
            z = seeds.latents(row_seeds, loaded.config.latent_dim)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with torch.no_grad():
                    x = np.concatenate([decoder(torch.from_numpy(z[start:stop])).numpy() for start, stop in blocks])
            finally:
                torch.set_num_threads(threads)
            cache[n, seed] = Expected(ids[:n], row_seeds[:n], z[:n], x[:n])
        return cache[n, seed]

    return expected


@dataclasses.dataclass(frozen=True)
class Datasets:
    two_workers: GenerateResult  # R = 16,384, 2 workers
    one_worker: GenerateResult  # R = 16,384, 1 worker
    other_shards: GenerateResult  # R = 10,000, default workers

    @staticmethod
    def path(result: GenerateResult) -> Path:
        return Path(result.location)


@pytest.fixture(scope="module")
def datasets(trained_version, local_ray_module, tmp_path_factory) -> Datasets:
    local_ray_module.ensure()
    root = tmp_path_factory.mktemp("datasets")
    return Datasets(
        two_workers=run_generate(root / "two-workers", num_workers=2),
        one_worker=run_generate(root / "one-worker", num_workers=1),
        other_shards=run_generate(root / "other-shards", rows_per_shard=10_000),
    )


@pytest.fixture(scope="module")
def nan_version(trained_version) -> str:
    """A registered version whose decoder has one NaN weight: every output is NaN."""
    torch.manual_seed(0)
    model = VAE(VAEConfig())
    with torch.no_grad():
        model.decoder.net[0].weight[0, 0] = float("nan")
    result = TrainResult(model=model, history=[], val_neg_elbo=float("nan"), train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("vaegen-train", "nan-decoder", {}) as run:
        pinned = run.register(result, "vae-nan", {})
    return f"{pinned.name}/{pinned.version}"


@pytest.fixture(scope="module")
def clean_fault_run(trained_version, local_ray_module, tmp_path_factory) -> Path:
    """The dataset the fault tests must reproduce byte for byte, from an undisturbed run."""
    local_ray_module.ensure()
    result = run_generate(tmp_path_factory.mktemp("clean"), n=FAULT_N, seed=FAULT_SEED, rows_per_shard=FAULT_R)
    assert result.status == "generated"
    return Path(result.location)


@pytest.fixture
def subprocess_ray_env() -> Iterator[RayEnv]:
    """For a `vaegen` subprocess that starts its own local Ray: its processes are stopped by tag afterwards."""
    env = make_ray_env()
    try:
        yield env
    finally:
        survivors = stop_tagged(env.tag)
        shutil.rmtree(env.root, ignore_errors=True)
        assert not survivors, survivors


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    """`ray start --head --num-cpus 1` on 127.0.0.1 and a second node joined with 1 CPU; stopped by pid."""
    with ray_cluster(head_cpus=1, worker_node_cpus=(1,)) as started:
        yield started


@pytest.fixture
def cluster_driver(cluster, monkeypatch) -> Iterator:
    """This process as a Ray driver of the cluster through RAY_ADDRESS, as a job on it would be."""
    with as_driver(cluster, monkeypatch) as driving:
        yield driving


# ---------------------------------------------------------------- 1. units, no Ray


def tiny_spec(**overrides) -> DatasetSpec:
    fields = dict(
        model_name="tiny",
        model_version=3,
        n=10_000,
        seed=42,
        latent_dim=2,
        sample_shape=(8, 8),
        rows_per_shard=4_096,
        block_rows=1_024,
    )
    return DatasetSpec(**{**fields, **overrides})


def tiny_decoder_state() -> tuple[dict, dict[str, np.ndarray], Decoder]:
    torch.manual_seed(0)
    decoder = Decoder(VAEConfig()).eval()
    return VAEConfig().to_dict(), {key: value.numpy().copy() for key, value in decoder.state_dict().items()}, decoder


def test_predictor_rows_follow_contract_1_and_the_decoder():
    config, state, decoder = tiny_decoder_state()
    ids = np.array([0, 1, 7, 999_999], dtype=np.int64)
    rows = Predictor(tiny_spec(), config, state)({"sample_id": ids})
    np.testing.assert_array_equal(rows["sample_id"], ids)
    assert rows["seed"].dtype == np.uint64 and rows["z"].dtype == np.float32 and rows["z"].shape == (4, 2)
    np.testing.assert_array_equal(rows["seed"], seeds.row_seeds(42, ids))
    np.testing.assert_array_equal(rows["z"], seeds.latents(seeds.row_seeds(42, ids), 2))
    # DESIGN.md's test vectors (42, 0) and (42, 999999)
    assert int(rows["seed"][0]) == 13679457532755275413 and int(rows["seed"][3]) == 15868137721870187777
    np.testing.assert_allclose(rows["z"][0], [1.406144963, -0.401378328], rtol=0, atol=1e-6)
    np.testing.assert_allclose(rows["z"][3], [-0.413530887, -2.659981118], rtol=0, atol=1e-6)
    with torch.no_grad():
        x = decoder(torch.from_numpy(rows["z"])).numpy()
    assert rows["x"].dtype == np.float32 and rows["x"].shape == (4, 8, 8)
    assert np.array_equal(rows["x"], x)
    assert "label" not in rows


def test_predictor_dtypes():
    config, state, _ = tiny_decoder_state()
    ids = np.arange(300, dtype=np.int64)
    x = Predictor(tiny_spec(), config, state)({"sample_id": ids})["x"]
    as_uint8 = Predictor(tiny_spec(dtype="uint8"), config, state)({"sample_id": ids})["x"]
    as_half = Predictor(tiny_spec(dtype="float16"), config, state)({"sample_id": ids})["x"]
    assert as_uint8.dtype == np.uint8 and np.array_equal(as_uint8, np.rint(255.0 * x).astype(np.uint8))
    assert as_uint8.min() < as_uint8.max()  # not a constant image
    assert as_half.dtype == np.float16 and np.array_equal(as_half, x.astype(np.float16))


def test_predictor_nan_decoder_raises():
    config, state, _ = tiny_decoder_state()
    state["net.0.weight"][0, 0] = np.nan
    with pytest.raises(NonFiniteOutput, match=r"tiny/3 decodes sample ids 5\.\.9 to NaN"):
        Predictor(tiny_spec(), config, state)({"sample_id": np.arange(5, 10)})


def test_part_writer_writes_verifies_and_rewrites_a_corrupted_part(tmp_path):
    config, state, _ = tiny_decoder_state()
    spec = tiny_spec()
    predictor = Predictor(spec, config, state)
    writer = PartWriter(predictor, Storage(str(tmp_path)), "ds")
    info = writer(1)
    path = tmp_path / "ds" / "part-00001.parquet"
    assert (info.shard, info.name, info.first_sample_id, info.rows, info.reused) == (1, path.name, 4_096, 4_096, False)
    assert info.checksum == checksum_file(path) and info.size_bytes == path.stat().st_size
    table = pq.read_table(path)
    np.testing.assert_array_equal(table["sample_id"].to_numpy(), np.arange(4_096, 8_192))
    np.testing.assert_array_equal(table["seed"].to_numpy(), seeds.row_seeds(42, np.arange(4_096, 8_192)))
    # x decoded on the block grid of 1,024 ids
    grid = np.concatenate(
        [predictor({"sample_id": np.arange(a, b)})["x"] for a, b in block_ranges(4_096, 8_192, 1_024)]
    )
    assert np.array_equal(x_from_arrow(table["x"]), grid)
    last = writer(2)
    assert (last.first_sample_id, last.rows) == (8_192, 10_000 - 8_192)
    np.testing.assert_array_equal(
        pq.read_table(tmp_path / "ds" / last.name)["sample_id"].to_numpy(), np.arange(8_192, 10_000)
    )

    before = path.stat().st_mtime_ns
    again = writer(1)
    assert again.reused and again.checksum == info.checksum and path.stat().st_mtime_ns == before
    assert writer.verified(1) is not None

    corrupted = bytearray(path.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    path.write_bytes(bytes(corrupted))
    assert writer.verified(1) is None
    rewritten = writer(1)
    assert not rewritten.reused and rewritten.checksum == info.checksum == checksum_file(path)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"n": 0}, "--n must be a positive integer, got 0"),
        ({"n": -5}, "--n must be a positive integer, got -5"),
        ({"rows_per_shard": 0}, "--rows-per-shard must be a positive integer, got 0"),
        ({"rows_per_shard": -1}, "--rows-per-shard must be a positive integer, got -1"),
        ({"dtype": "int8"}, "--dtype must be one of float32, float16, uint8, got 'int8'"),
    ],
)
def test_dataset_spec_rejects_bad_values(overrides, fragment):
    with pytest.raises(UsageError) as error:
        tiny_spec(**overrides)
    assert fragment in str(error.value)


def test_shards_cover_ids_once():
    spec = tiny_spec(n=10, rows_per_shard=4)
    assert spec.num_shards == 3
    assert [spec.shard_range(k) for k in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert tiny_spec(n=8, rows_per_shard=4).num_shards == 2 and tiny_spec(n=1, rows_per_shard=4).num_shards == 1
    assert part_name(3) == "part-00003.parquet" and part_name(12_345) == "part-12345.parquet"


# ---------------------------------------------------------------- 2. end to end on a local Ray (2 CPUs)


@pytest.mark.slow
def test_generated_rows_are_contract_1_and_the_registered_decoder(datasets, reference):
    directory = Datasets.path(datasets.two_workers)
    assert datasets.two_workers.status == "generated" and directory.name == dataset_id(N, SEED)
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        [*COMMITTED_FILES, *[part_name(k) for k in range(4)]]
    )
    table = pq.read_table(directory)
    assert table.num_rows == N
    assert_table_is(table, reference(N, SEED))


@pytest.mark.slow
def test_content_is_the_same_for_any_worker_count_and_shard_size(datasets):
    two, one, other = (
        Datasets.path(result) for result in (datasets.two_workers, datasets.one_worker, datasets.other_shards)
    )
    assert len(part_hashes(two)) == 4 and part_hashes(one) == part_hashes(two)  # byte-identical parts
    assert (
        len(part_hashes(other)) == 5
        and part_hashes(other)["part-00004.parquet"] != part_hashes(two)["part-00003.parquet"]
    )
    assert pq.read_table(other).equals(pq.read_table(two))  # same rows and values, other file boundaries
    assert datasets.two_workers.manifest["execution"]["num_workers"] == 2
    assert datasets.one_worker.manifest["execution"]["num_workers"] == 1


@pytest.mark.slow
def test_manifest_and_lineage(datasets, trained_version):
    import mlflow

    result = datasets.two_workers
    directory = Datasets.path(result)
    record = json.loads((directory / "_manifest.json").read_text())
    assert record == as_json(result.manifest.to_json()) and result.manifest == Manifest.from_json(record)
    assert (record["dataset_id"], record["n"], record["rows_per_shard"], record["dataset_seed"]) == (
        dataset_id(N, SEED),
        N,
        16_384,
        SEED,
    )
    assert record["seed_scheme"] == seeds.SEED_SCHEME and record["dtype"] == "float32" and record["latent_dim"] == 2
    pinned = trained_version.result.pinned
    assert (record["model"]["name"], record["model"]["version"], record["model"]["run_id"]) == (
        "vae-decoder",
        1,
        pinned.run_id,
    )
    assert record["model"]["resolved_from"] == MODEL
    rows = [16_384, 16_384, 16_384, N - 3 * 16_384]
    assert [(f["name"], f["first_sample_id"], f["rows"]) for f in record["files"]] == [
        (part_name(k), 16_384 * k, rows[k]) for k in range(4)
    ]
    for entry in record["files"]:
        path = directory / entry["name"]
        assert entry["checksum"] == checksum_file(path) and entry["size_bytes"] == path.stat().st_size
        metadata = pq.ParquetFile(path).schema_arrow.metadata  # written by the Ray workers (issue 23)
        assert (
            metadata[b"ai_generated"] == b"true"
            and metadata[b"vaegen.recipe_digest"].decode() == record["recipe_digest"]
        )
        assert json.loads(metadata[b"vaegen.generator"])["run_id"] == pinned.run_id
    assert record["total_bytes"] == sum(entry["size_bytes"] for entry in record["files"])
    assert record["timings"]["shards_reused"] == 0
    assert json.loads((directory / "_croissant.json").read_text())["vaegen:recipe_digest"] == record["recipe_digest"]
    assert [field["name"] for field in record["schema"]] == ["sample_id", "seed", "z", "x"]

    run = mlflow.MlflowClient().get_run(record["lineage"]["run_id"])
    assert run.info.status == "FINISHED"
    # filed beside the version's logged model (the experiment of its training run): the UI links them there
    assert run.info.experiment_id == mlflow.get_run(pinned.run_id).info.experiment_id
    assert mlflow.get_experiment(run.info.experiment_id).name == "vaegen-train" == record["lineage"]["experiment"]
    assert run.data.tags["vaegen.dataset_id"] == record["dataset_id"]
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/manifest.json") == record
    inputs = run.inputs.dataset_inputs
    assert [(item.dataset.name, item.dataset.digest) for item in inputs] == [
        (record["dataset_id"], record["spec_fingerprint"])
    ]


@pytest.mark.slow
def test_inspect_deep_passes_then_fails_on_a_corrupted_part(datasets, tmp_path):
    directory = Datasets.path(datasets.two_workers)
    result = invoke("inspect", str(directory), "--deep")
    assert result.exit_code == 0, result.output
    assert f"dataset: {dataset_id(N, SEED)}" in result.stdout
    # every row's seed and z; x for the first, middle and last decode block of each part (3 x 12,288 + 848 rows)
    assert "verified: 4 files, 50,000 rows re-derived, x of 37,712 re-decoded" in result.stdout
    assert f"inspect --deep {directory.name}: 50,000/50,000 rows, " in result.stderr, result.stderr  # progress

    copy = tmp_path / "root" / directory.name
    shutil.copytree(directory, copy)
    part = copy / "part-00001.parquet"
    corrupted = bytearray(part.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0x01
    part.write_bytes(bytes(corrupted))
    broken = invoke("inspect", str(copy), "--deep")
    assert "PROBLEM part-00001.parquet: checksum mismatch" in broken.stdout
    assert_one_error_line(broken, 1, "1 problem(s)")


@pytest.mark.slow
def test_rerun_is_up_to_date_and_changes_nothing(datasets, local_ray):
    import mlflow

    directory = Datasets.path(datasets.two_workers)
    before, runs_before = mtimes(directory), len(mlflow.search_runs(search_all_experiments=True))
    again = run_generate(directory.parent, num_workers=2)
    assert again.status == "up-to-date" and again.manifest.to_json() == as_json(datasets.two_workers.manifest.to_json())
    cli = invoke(
        "generate",
        "--model",
        MODEL,
        "--n",
        str(N),
        "--seed",
        str(SEED),
        "--rows-per-shard",
        "16384",
        "--out",
        str(directory.parent),
    )
    assert cli.exit_code == 0, cli.output
    assert "already committed; nothing to do" in cli.stderr and f"dataset_id: {directory.name}" in cli.stdout
    assert mtimes(directory) == before
    assert len(mlflow.search_runs(search_all_experiments=True)) == runs_before


@pytest.mark.slow
def test_other_shard_size_into_a_committed_id_is_a_usage_error(datasets, local_ray):
    directory = Datasets.path(datasets.two_workers)
    before = mtimes(directory)
    with pytest.raises(UsageError, match="is committed with other options"):
        run_generate(directory.parent, rows_per_shard=10_000)
    assert mtimes(directory) == before


@pytest.mark.slow
def test_overwrite_regenerates(datasets, local_ray, tmp_path):
    original = Datasets.path(datasets.two_workers)
    copy = tmp_path / original.name
    shutil.copytree(original, copy)
    (copy / "stale.txt").write_text("left from before")
    result = invoke(
        "generate",
        "--model",
        MODEL,
        "--n",
        str(N),
        "--seed",
        str(SEED),
        "--rows-per-shard",
        "16384",
        "--out",
        str(tmp_path),
        "--overwrite",
    )
    assert result.exit_code == 0, result.output
    assert "generated 50,000 rows" in result.stderr and f"location: {copy}" in result.stdout
    assert not (copy / "stale.txt").exists()  # the old directory was replaced, not reused
    assert part_hashes(copy) == part_hashes(original)
    record = json.loads((copy / "_manifest.json").read_text())
    assert record["lineage"]["run_id"] != datasets.two_workers.manifest["lineage"]["run_id"]
    assert record["timings"]["shards_reused"] == 0


# ---------------------------------------------------------------- 3. independent readers, every dtype


READER_N = 5_000  # rows of the float16 and uint8 datasets every reader reads (float32: the 50,000-row one)
DTYPES = ["float32", "float16", "uint8"]


@dataclasses.dataclass(frozen=True)
class Generated:
    path: Path
    expected: Expected  # ids, seeds, z and x as float32
    x: np.ndarray  # x in the dataset's dtype: float16 = x.astype(float16), uint8 = round(255 x)


@pytest.fixture(scope="module")
def by_dtype(datasets, reference, local_ray_module, tmp_path_factory) -> dict[str, Generated]:
    """A generated dataset of each --dtype and the values contract 2 says it holds."""
    local_ray_module.ensure()
    root = tmp_path_factory.mktemp("dtypes")
    expected = reference(READER_N, SEED)
    generated = {"float32": Generated(Datasets.path(datasets.two_workers), reference(N, SEED), reference(N, SEED).x)}
    for dtype, x in (
        ("float16", expected.x.astype(np.float16)),
        ("uint8", np.rint(expected.x * np.float32(255.0)).astype(np.uint8)),
    ):
        result = run_generate(root / dtype, n=READER_N, rows_per_shard=2_000, dtype=dtype, num_workers=1)
        assert Path(result.location).name == dataset_id(READER_N, SEED, dtype=dtype)
        generated[dtype] = Generated(Path(result.location), expected, x)
    assert generated["uint8"].x.min() < generated["uint8"].x.max()  # not a constant image
    return generated


def assert_x(x: np.ndarray, data: Generated, dtype: str | None = None) -> None:
    """x has its shape, the dtype asked for (the dataset's unless a reader widens it), and every value."""
    assert x.shape == data.x.shape and x.dtype == np.dtype(dtype or data.x.dtype), (x.shape, x.dtype)
    assert np.array_equal(x, data.x)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_pyarrow_reads_the_directory_with_x_in_its_shape(by_dtype, dtype):
    data = by_dtype[dtype]
    table = pq.read_table(data.path)  # skips _manifest.json, _README.md and .huggingface.yaml
    value_type = pa.from_numpy_dtype(np.dtype(dtype))
    assert table.schema.field("x").type == pa.list_(
        pa.field("item", pa.list_(pa.field("item", value_type, False), 8), False), 8
    )
    np.testing.assert_array_equal(table["sample_id"].to_numpy(), data.expected.ids)
    np.testing.assert_array_equal(table["seed"].to_numpy(), data.expected.seeds)
    assert_x(table["x"].combine_chunks().flatten().flatten().to_numpy().reshape(-1, 8, 8), data)  # README's line


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_pandas_reads_the_directory_with_x_in_its_shape(by_dtype, dtype):
    import pandas as pd

    data = by_dtype[dtype]
    frame = pd.read_parquet(data.path)
    np.testing.assert_array_equal(frame["sample_id"].to_numpy(), data.expected.ids)
    assert frame["seed"].dtype == np.uint64
    np.testing.assert_array_equal(frame["seed"].to_numpy(), data.expected.seeds)
    np.testing.assert_array_equal(np.stack(frame["z"].to_numpy()), data.expected.z)
    cell = frame["x"].iloc[0]
    assert len(cell) == 8 and all(row.shape == (8,) and row.dtype == np.dtype(dtype) for row in cell)  # 8 rows of 8
    assert_x(np.stack(frame["x"].map(np.stack)), data)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_polars_reads_x_as_an_array_of_its_shape(by_dtype, dtype):
    import polars as pl

    data = by_dtype[dtype]
    # A glob: polars refuses a bare directory whose files have different extensions (_manifest.json).
    frame = pl.read_parquet(f"{data.path}/*.parquet").sort("sample_id")
    value_type = {"float32": pl.Float32, "float16": pl.Float16, "uint8": pl.UInt8}[dtype]
    assert frame.schema["x"] == pl.Array(value_type, shape=(8, 8))
    np.testing.assert_array_equal(frame["sample_id"].to_numpy(), data.expected.ids)
    np.testing.assert_array_equal(frame["seed"].to_numpy(), data.expected.seeds)
    np.testing.assert_array_equal(frame["z"].to_numpy(), data.expected.z)
    assert_x(frame["x"].to_numpy(), data)
    tensors = frame.drop("seed").to_torch("dict")  # polars refuses uint64 seeds >= 2**63 for torch
    assert_x(tensors["x"].numpy(), data)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_duckdb_reads_x_as_nested_lists_and_casts_it_to_an_array(by_dtype, dtype):
    import duckdb

    data = by_dtype[dtype]
    n = len(data.x)
    parts = f"{data.path}/*.parquet"
    count, distinct, low, high = duckdb.sql(
        f"select count(*), count(distinct sample_id), min(sample_id), max(sample_id) from read_parquet('{parts}')"
    ).fetchall()[0]
    assert (count, distinct, low, high) == (n, n, 0, n - 1)
    value_type = {"float32": "FLOAT", "float16": "FLOAT", "uint8": "UTINYINT"}[dtype]
    assert duckdb.sql(f"describe select x from read_parquet('{parts}')").fetchall()[0][1] == f"{value_type}[][]"
    columns = duckdb.sql(
        f"select seed, z[2] as z1, x[8][8] as x_last from read_parquet('{parts}') order by sample_id"
    ).fetchnumpy()
    np.testing.assert_array_equal(columns["seed"], data.expected.seeds)
    np.testing.assert_array_equal(columns["z1"], data.expected.z[:, 1])
    np.testing.assert_array_equal(columns["x_last"], data.x[:, 7, 7])
    relation = duckdb.sql(
        f"select x::{value_type}[8][8] as x from read_parquet('{parts}') order by sample_id"
    )  # the README's line
    assert str(relation.types[0]) == f"{value_type}[8][8]"
    x = relation.to_arrow_table()["x"].combine_chunks().flatten().flatten().to_numpy().reshape(-1, 8, 8)
    assert_x(x, data, "float32" if dtype == "float16" else None)  # DuckDB has no half float: it widens exactly


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_ray_data_reads_x_in_its_shape_with_the_shaped_x_helper(by_dtype, dtype, local_ray):
    import ray.data

    from jobs.reader import shaped_x

    ray.data.DataContext.get_current().enable_progress_bars = False
    data = by_dtype[dtype]
    dataset = (
        ray.data.read_parquet(str(data.path))  # skips the _ and . files
        .map_batches(shaped_x, batch_format="pyarrow")
        .materialize()  # run once: count, iter_batches and iter_torch_batches below read the same blocks
    )
    assert dataset.count() == len(data.x)
    batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    ids = np.concatenate([batch["sample_id"] for batch in batches])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], data.expected.ids)
    np.testing.assert_array_equal(np.concatenate([batch["seed"] for batch in batches])[order], data.expected.seeds)
    assert_x(np.concatenate([batch["x"] for batch in batches])[order], data)
    first = next(iter(dataset.iter_torch_batches(batch_size=100)))
    assert tuple(first["x"].shape) == (100, 8, 8)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_hugging_face_loads_the_directory_as_it_is_with_x_as_array2d(by_dtype, dtype, tmp_path):
    import datasets

    data = by_dtype[dtype]
    loaded = datasets.load_dataset(str(data.path), split="train", cache_dir=str(tmp_path))  # reads .huggingface.yaml
    assert loaded.features["x"] == datasets.Array2D(shape=(8, 8), dtype=dtype)
    assert loaded.num_rows == len(data.x) and loaded.column_names == ["sample_id", "seed", "z", "x"]
    arrow = loaded.with_format("arrow")[:]
    np.testing.assert_array_equal(arrow["sample_id"].to_numpy(), data.expected.ids)
    np.testing.assert_array_equal(arrow["seed"].to_numpy(), data.expected.seeds)  # uint64 kept in Arrow
    # Hugging Face's numpy format widens integers to int64 and floats to float32: the values stay exact
    assert_x(
        loaded.with_format("numpy")[:]["x"], data, {"float32": "float32", "float16": "float32", "uint8": "int64"}[dtype]
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_hugging_face_loads_the_part_files_with_x_in_its_shape(by_dtype, dtype, tmp_path):
    import datasets

    data = by_dtype[dtype]
    loaded = datasets.load_dataset(
        "parquet", data_files=f"{data.path}/part-*.parquet", split="train", cache_dir=str(tmp_path)
    )
    assert loaded.features["x"] == datasets.List(datasets.List(datasets.Value(dtype), length=8), length=8)
    np.testing.assert_array_equal(loaded.with_format("arrow")[:]["sample_id"].to_numpy(), data.expected.ids)
    widened = {"float32": "float32", "float16": "float32", "uint8": "int64"}[dtype]
    assert_x(loaded.with_format("numpy")[:]["x"], data, widened)
    assert_x(loaded.with_format("torch")[:]["x"].numpy(), data, widened)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_reads_through_the_reader_api(by_dtype, dtype):
    from torch.utils.data import DataLoader

    from jobs.reader import open_dataset

    data = by_dtype[dtype]
    loader = DataLoader(open_dataset(str(data.path)).torch(columns=["sample_id", "x"]), batch_size=1_000)
    batches = list(loader)
    assert all(tuple(batch["x"].shape[1:]) == (8, 8) for batch in batches)
    np.testing.assert_array_equal(torch.cat([batch["sample_id"] for batch in batches]).numpy(), data.expected.ids)
    assert_x(torch.cat([batch["x"] for batch in batches]).numpy(), data)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
def test_x_is_byte_stream_split_for_float32_and_uint8_and_plain_for_float16(by_dtype, dtype):
    """uint8 x is an INT32 column in Parquet, float32 a FLOAT one, stored BYTE_STREAM_SPLIT (parts.py); DuckDB
    refuses that on float16, which stays PLAIN. The readers above give back the values exactly."""
    metadata = pq.ParquetFile(by_dtype[dtype].path / part_name(0)).metadata
    x_column = next(
        metadata.row_group(0).column(i)
        for i in range(metadata.num_columns)
        if metadata.row_group(0).column(i).path_in_schema == "x.list.element.list.element"
    )
    assert ("BYTE_STREAM_SPLIT" in x_column.encodings) == (dtype != "float16"), x_column.encodings


# ---------------------------------------------------------------- 4. bad input through the CLI


BAD_ARGUMENTS = [
    pytest.param({"--n": "0"}, 2, "--n must be a positive integer, got 0", id="n-zero"),
    pytest.param({"--n": "-5"}, 2, "--n must be a positive integer, got -5", id="n-negative"),
    pytest.param(
        {"--rows-per-shard": "0"}, 2, "--rows-per-shard must be a positive integer, got 0", id="rows-per-shard-zero"
    ),
    pytest.param({"--model": "no-such-model/1"}, 2, "'no-such-model' is not registered", id="unknown-model"),
    pytest.param({"--model": "vae-decoder/9"}, 2, "has no version 9", id="unknown-version"),
    pytest.param({"--model": "vae-decoder@nope"}, 2, "has no alias 'nope'", id="unknown-alias"),
]


def generate_args(out: Path | str, **overrides: str) -> list[str]:
    options = {"--model": MODEL, "--n": "1000", "--seed": "1", "--out": str(out), **overrides}
    return ["generate", *[part for pair in options.items() for part in pair]]


@pytest.mark.parametrize(("overrides", "exit_code", "fragment"), BAD_ARGUMENTS)
def test_generate_rejects_bad_arguments(trained_version, tmp_path, overrides, exit_code, fragment):
    out = tmp_path / "out"
    assert_one_error_line(invoke(*generate_args(out, **overrides)), exit_code, fragment)
    assert dataset_leftovers(tmp_path) == []


def test_generate_rejects_a_non_integer_n(trained_version, tmp_path):
    result = invoke(*generate_args(tmp_path / "out", **{"--n": "abc"}))
    # click parses --n before vaegen sees it: its own usage message, exit code 2 as documented
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--n': 'abc' is not a valid integer" in result.stderr
    assert "Traceback" not in result.output and dataset_leftovers(tmp_path) == []


def test_generate_rejects_an_out_that_is_a_file(trained_version, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("not a directory")
    assert_one_error_line(invoke(*generate_args(out)), 2, f"output root {out} is a file")
    assert out.read_text() == "not a directory" and dataset_leftovers(tmp_path) == []


def test_generate_rejects_an_unwritable_out(trained_version, tmp_path):
    if os.geteuid() == 0:  # root writes through any mode bits: use a place nobody can create a folder in
        out = Path("/proc/vaegen-out")
    else:
        out = tmp_path / "read-only"
        out.mkdir()
        out.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
    try:
        assert_one_error_line(invoke(*generate_args(out)), 2, f"output root {out} is not writable")
    finally:
        if out.is_relative_to(tmp_path):
            out.chmod(0o700)
    assert dataset_leftovers(tmp_path) == [] and (out.is_relative_to(tmp_path) or not out.exists())


def test_generate_with_an_unreachable_tracking_server(mlflow_unreachable, tmp_path):
    out = tmp_path / "out"
    assert_one_error_line(
        invoke(*generate_args(out)), 1, "cannot reach the MLflow tracking server", mlflow_unreachable.uri
    )
    assert not out.exists()


def test_generate_with_a_nan_decoder_leaves_nothing(nan_version, tmp_path):
    out = tmp_path / "out"
    assert_one_error_line(invoke(*generate_args(out, **{"--model": nan_version})), 1, "to NaN or inf", "vae-nan/1")
    assert not (out / dataset_id(1000, 1, name="vae-nan")).exists()
    assert dataset_leftovers(tmp_path) == []


def unfinished_dataset(root: Path, **record_changes: Any) -> Path:
    """An unfinished dataset as a killed run leaves it: only its progress record (n = 1000, seed 1)."""
    from jobs.generate import manifest
    from jobs.generate.job import dataset_spec

    pinned = models.resolve(MODEL)
    spec = dataset_spec(GenerateConfig(n=1000, model=MODEL), pinned, models.version_config(pinned), seed=1)
    directory = root / spec.dataset_id
    directory.mkdir(parents=True)
    record = {**manifest.progress_record(spec, dataclasses.asdict(pinned)).to_json(), **record_changes}
    (directory / manifest.PROGRESS).write_text(json.dumps(record))
    return directory


@pytest.mark.parametrize("version", [1, 2])
def test_resume_of_a_dataset_started_by_an_older_format_is_refused(trained_version, tmp_path, version):
    directory = unfinished_dataset(tmp_path / "out", format=f"vaegen-dataset/{version}")
    result = invoke("generate", "--resume", str(directory))
    assert_one_error_line(
        result,
        2,
        f"started by another vaegen version (format vaegen-dataset/{version}, this one writes vaegen-dataset/3)",
    )
    assert [path.name for path in directory.iterdir()] == ["_progress.json"]
    assert [path.name for path in directory.parent.iterdir()] == [directory.name]


def test_resume_refuses_options_that_would_change_the_dataset(trained_version, tmp_path):
    directory = unfinished_dataset(tmp_path / "out")
    with pytest.raises(UsageError, match="that dataset has n = 1,000, not --n 2,000; drop --n to resume it as it is"):
        generate(GenerateConfig(n=2000, resume=str(directory)))
    result = invoke("generate", "--resume", str(directory), "--n", "1000", "--dtype", "uint8")
    assert_one_error_line(result, 2, "--resume continues a dataset with its own options; drop --n, --dtype")
    assert [path.name for path in directory.iterdir()] == ["_progress.json"]


@pytest.mark.slow
def test_resume_by_path_alone_completes_an_unfinished_dataset(trained_version, local_ray, tmp_path):
    from jobs.generate import manifest

    clean = Datasets.path(run_generate(tmp_path / "clean", n=20_000, rows_per_shard=5_000, num_workers=1))
    unfinished = tmp_path / "out" / clean.name
    shutil.copytree(clean, unfinished)
    record = json.loads((unfinished / manifest.MANIFEST).read_text())
    (unfinished / manifest.MANIFEST).unlink()  # as if the driver died before the commit
    (unfinished / part_name(2)).unlink()
    (unfinished / manifest.PROGRESS).write_text(
        json.dumps({key: record[key] for key in ("format", "dataset_id", "spec", "spec_fingerprint", "model")})
    )
    result = invoke("generate", "--resume", str(unfinished))
    assert result.exit_code == 0, result.output
    assert f"dataset_id: {clean.name}" in result.stdout and "20,000 rows" in result.stderr
    assert part_hashes(unfinished) == part_hashes(clean)
    assert sorted(path.name for path in unfinished.iterdir()) == sorted([*COMMITTED_FILES, *part_hashes(clean)])


def test_generate_without_n_is_a_usage_error(trained_version, tmp_path):
    result = invoke("generate", "--out", str(tmp_path / "out"))
    assert_one_error_line(result, 2, "--n is required: pass the number of samples")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 5. faults


@pytest.mark.slow
def test_worker_killed_mid_job(trained_version, local_ray, clean_fault_run, tmp_path):
    directory = tmp_path / clean_fault_run.name
    seen: dict[str, Any] = {}

    def kill_one_after_the_first_part(workers: list[Any]) -> None:
        pids = ray.get([worker.pid.remote() for worker in workers])

        def kill() -> None:
            wait_until(lambda: any(directory.glob("part-*.parquet")), 120, "the first part file")
            seen["parts_before_kill"] = len(list(directory.glob("part-*.parquet")))
            seen["committed_before_kill"] = (directory / "_manifest.json").exists()
            os.kill(pids[0], signal.SIGKILL)
            seen["killed"] = pids[0]

        seen["thread"] = threading.Thread(target=kill, daemon=True)
        seen["thread"].start()

    result = run_generate(
        tmp_path,
        n=FAULT_N,
        seed=FAULT_SEED,
        rows_per_shard=FAULT_R,
        num_workers=2,
        on_workers=kill_one_after_the_first_part,
    )
    seen["thread"].join(timeout=30)
    assert "killed" in seen and not seen["committed_before_kill"], seen
    assert seen["parts_before_kill"] < FAULT_N // FAULT_R  # the kill landed in the middle of the job
    with pytest.raises(ProcessLookupError):
        os.kill(seen["killed"], 0)
    # A kill between the worker's commit of its part and its task's return leaves that part complete: the
    # shard's retry reuses it (and the job reports "resumed"). Any other reuse would be a fault.
    assert (result.status, result.manifest["timings"]["shards_reused"]) in {("generated", 0), ("resumed", 1)}
    ids = pq.read_table(directory, columns=["sample_id"])["sample_id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(FAULT_N))  # every id exactly once
    assert part_hashes(directory) == part_hashes(clean_fault_run)
    assert [entry["checksum"] for entry in result.manifest["files"]] == list(part_hashes(clean_fault_run).values())
    assert not [
        path for path in directory.iterdir() if path.name.startswith((".", "_")) and path.name not in COMMITTED_FILES
    ]


@pytest.mark.slow
def test_driver_killed_mid_job_then_rerun_resumes(trained_version, clean_fault_run, subprocess_ray_env, tmp_path):
    import mlflow

    root = tmp_path / "out"
    directory = root / clean_fault_run.name
    command = [
        VAEGEN,
        "generate",
        "--model",
        MODEL,
        "--n",
        str(FAULT_N),
        "--seed",
        str(FAULT_SEED),
        "--rows-per-shard",
        str(FAULT_R),
        "--out",
        str(root),
    ]
    env = subprocess_ray_env.environ(MLFLOW_TRACKING_URI=trained_version.store.uri)
    log_path = tmp_path / "first.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_until(
                lambda: (
                    process.poll() is not None
                    or (any(directory.glob("part-*.parquet")) and not (directory / "_manifest.json").exists())
                ),
                SUBPROCESS_TIMEOUT_S,
                "the first part file",
            )
            assert process.poll() is None, log_path.read_text()[-3000:]
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert not stop_tagged(subprocess_ray_env.tag)  # the dead driver's local Ray
    assert not (directory / "_manifest.json").exists() and (directory / "_progress.json").exists()
    assert len(list(directory.glob("part-*.parquet"))) < FAULT_N // FAULT_R
    killed_run = json.loads((directory / "_progress.json").read_text())["run_id"]
    assert mlflow.MlflowClient().get_run(killed_run).info.status == "RUNNING"  # MLflow cannot know the driver died

    rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert mlflow.MlflowClient().get_run(killed_run).info.status == "KILLED"  # the resume ended it
    assert "resumed 200,000 rows" in rerun.stderr and f"dataset_id: {directory.name}" in rerun.stdout
    record = json.loads((directory / "_manifest.json").read_text())
    assert record["timings"]["shards_reused"] >= 1
    assert part_hashes(directory) == part_hashes(clean_fault_run)
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        [*COMMITTED_FILES, *part_hashes(clean_fault_run)]
    )


# ---------------------------------------------------------------- 6, 7. `ray start` clusters


@pytest.mark.slow
def test_ray_job_submit_to_a_started_cluster(cluster, reference, trained_version, tmp_path):
    out = tmp_path / "out"
    working_dir = tmp_path / "job"
    working_dir.mkdir()
    (working_dir / "README.txt").write_text("vaegen generate job\n")
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": trained_version.store.uri, "VAEGEN_OUTPUT": str(out)}}
    command = [
        str(Path(sys.executable).with_name("ray")),
        "job",
        "submit",
        "--address",
        cluster.dashboard_url,
        "--working-dir",
        str(working_dir),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "generate",
        "--model",
        MODEL,
        "--n",
        "20000",
        "--seed",
        "3",
        "--shared-fs",
    ]
    done = subprocess.run(
        command, env=cluster.env.environ(), capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path
    )
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    directory = out / dataset_id(20_000, 3)
    record = json.loads((directory / "_manifest.json").read_text())
    assert record["n"] == 20_000 and record["execution"]["nodes"] == 2
    assert_table_is(pq.read_table(directory), reference(20_000, 3))
    inspected = invoke("inspect", str(directory), "--deep")
    assert inspected.exit_code == 0 and "verified: 1 files" in inspected.stdout, inspected.output


@pytest.mark.slow
def test_two_nodes_share_the_work(cluster_driver, reference, tmp_path):
    node_ids: list[str] = []

    def record_nodes(workers: list[Any]) -> None:
        node_ids.extend(ray.get([worker.node_id.remote() for worker in workers]))

    with pytest.raises(UsageError, match="--shared-fs"):
        run_generate(tmp_path / "refused", n=30_000, seed=5, rows_per_shard=8_192)
    assert dataset_leftovers(tmp_path / "refused") == []
    assert not (tmp_path / "refused" / dataset_id(30_000, 5)).exists()

    result = run_generate(
        tmp_path / "shared", n=30_000, seed=5, rows_per_shard=8_192, shared_fs=True, on_workers=record_nodes
    )
    assert len(node_ids) == 2 and len(set(node_ids)) == 2, node_ids
    assert result.manifest["execution"]["nodes"] == 2
    assert_table_is(pq.read_table(result.location), reference(30_000, 5))
