"""Issue 16's integrity probes, each reproduced as the issue describes it: local paths that are
not URIs, ids that cannot leave their root, `inspect` of a whole folder against a whole manifest
(and --deep re-decoding x), damaged and truncated datasets, two writers at once, bounded plans,
stale MLflow runs, provenance. Real files, a real SQLite MLflow registry (conftest.py), a real
local Ray where a job runs, a real moto S3 for the object-store lock."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from helpers import assert_one_error_line, invoke, part_hashes
from jobs.generate import manifest
from jobs.generate.deep_check import _flat_values
from jobs.generate.engine import EngineOptions
from jobs.generate.job import GenerateConfig, GenerateResult, generate
from jobs.generate.parts import _nested
from jobs.generate.spec import FORMAT_VERSION, DatasetSpec, spec_from_record
from jobs.generate.storage import DatasetBusy, Storage
from jobs.generate.verify import inspect
from jobs.refresh import RefreshConfig, refresh
from ray_cluster import free_port  # tests/ is on sys.path (rootdir conftest)
from registry import models
from registry.redaction import has_credentials, redact_text, redact_uri
from vae_core.errors import UsageError

MODEL = "vae-decoder/1"
N, R, SEED = 20_000, 5_000, 3  # 4 parts; on the default 4,096-row decode grid --deep re-decodes every row's x
PYTHON = sys.executable
UNFINISHED_ID = f"vae-decoder-v1-n1000-seed1-float32-f{FORMAT_VERSION}"  # progress_of()'s dataset


# ---------------------------------------------------------------- helpers


def config(root: Path | str, n: int = N, seed: int = SEED, **options: Any) -> GenerateConfig:
    engine = EngineOptions(num_workers=options.pop("num_workers", None))
    return GenerateConfig(
        n=n,
        model=options.pop("model", MODEL),
        out=str(root),
        seed=seed,
        rows_per_shard=options.pop("rows_per_shard", R),
        engine=engine,
        **options,
    )


def generate_args(root: Path | str, *extra: str, n: int = N, seed: int = SEED) -> list[str]:
    return [
        "generate",
        "--model",
        MODEL,
        "--n",
        str(n),
        "--seed",
        str(seed),
        "--rows-per-shard",
        str(R),
        "--out",
        str(root),
        *extra,
    ]


def edit_manifest(directory: Path, change) -> dict:
    path = directory / manifest.MANIFEST
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return record


def everything_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def committed(trained_version, local_ray_module, tmp_path_factory) -> GenerateResult:
    """One committed dataset of 4 parts; tests work on copies of it."""
    local_ray_module.ensure()
    result = generate(config(tmp_path_factory.mktemp("committed")))
    assert result.status == "generated"
    return result


@pytest.fixture
def copy(committed, tmp_path) -> Path:
    """A fresh copy of the committed dataset under tmp_path/root, same id."""
    source = Path(committed.location)
    target = tmp_path / "root" / source.name
    shutil.copytree(source, target)
    return target


# ---------------------------------------------------------------- local paths are paths, never URIs


@pytest.mark.parametrize("name", ["victim#x", "pct%41b", "with space", "naïve-ü", "q?a=1"])
def test_a_local_root_is_that_exact_directory(tmp_path, name):
    root = tmp_path / name
    storage = Storage(str(root))
    storage.write_json({"ok": True}, "dataset", "record.json")
    assert json.loads((root / "dataset" / "record.json").read_text()) == {"ok": True}
    assert storage.location("dataset") == str(root / "dataset")
    assert storage.read_json("dataset", "record.json") == {"ok": True}
    assert storage.list("dataset") == ["record.json"]
    assert everything_under(tmp_path) == [
        name,
        f"{name}/dataset",
        f"{name}/dataset/record.json",
    ]  # no `victim`, no `pctAb`


@pytest.mark.parametrize("name", ["..", "../escaped", "a/b", "", ".", "x\x00y", "\\..\\x"])
def test_no_name_leaves_its_root(tmp_path, name):
    root, sibling = tmp_path / "root", tmp_path / "sibling"
    sibling.mkdir()
    (sibling / "keep.txt").write_text("mine")
    storage = Storage(str(root))
    for operation in (storage.delete_dir, storage.path, storage.location, storage.exists, storage.read_json):
        with pytest.raises(UsageError, match="is not a plain file or folder name"):
            operation(name)
    with pytest.raises(UsageError):
        storage.delete_dir("..", "sibling")
    assert (sibling / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "root",
    [
        "s3://AKIAEXAMPLE:S3cretKey/with+slash@bucket/prefix",
        "s3://KEY:S3cretKey@bucket/prefix",
        "s3://bucket/prefix?access_key=AKIAEXAMPLE&secret_key=S3cretKey",
    ],
)
def test_an_object_store_root_with_credentials_is_refused_without_showing_them(tmp_path, root):
    with pytest.raises(UsageError) as refused:
        Storage(root)
    message = str(refused.value)
    assert "S3cretKey" not in message and "***" in message and "AWS_ACCESS_KEY_ID" in message
    result = invoke("generate", "--model", MODEL, "--n", "10", "--out", root)
    assert_one_error_line(result, 2, "carries credentials")
    assert "S3cretKey" not in result.output


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://alice:S3cretPW@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
        ("https://token@mlflow.example.com/path?x=1", "https://***@mlflow.example.com/path?x=1"),
        ("postgresql://mlflow:S3cretPW@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("s3://KEY:S3/cret@bucket/prefix", "s3://***@bucket/prefix"),
        ("s3://bucket/p?region=eu-west-1&secret_key=S3cret", "s3://bucket/p?region=eu-west-1&secret_key=***"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AK&X-Amz-Signature=abc#f",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***#f",
        ),
        ("sqlite:////data/mlflow#1/mlflow.db", "sqlite:////data/mlflow#1/mlflow.db"),
        ("/data/victim#x/user:pw@host", "/data/victim#x/user:pw@host"),  # a path is not a URI
        ("s3://bucket/v@1", "s3://bucket/v@1"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown
    assert has_credentials(uri) == (uri != shown)
    assert redact_text(f"cannot reach {uri} (ConnectionError)") == f"cannot reach {shown} (ConnectionError)"


# ---------------------------------------------------------------- specs: names and bounded plans


def tiny_spec(**overrides: Any) -> DatasetSpec:
    fields = dict(model_name="vae-decoder", model_version=1, n=1_000, seed=1, latent_dim=2, sample_shape=(28, 28))
    return DatasetSpec(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"model_name": "../../escaped"}, "cannot name a dataset folder"),
        ({"model_name": ".hidden"}, "cannot name a dataset folder"),
        ({"model_name": "a/b"}, "cannot name a dataset folder"),
        ({"n": 10_000_000_000_000}, "makes 152,587,891 part files, more than 100,000"),
        ({"n": 2**64}, "--n must be at most 2**63 - 1"),
        ({"n": 1_000, "block_rows": 5_000_000}, "--batch-size 5,000,000 is larger than a shard"),
        ({"rows_per_shard": 400_000, "block_rows": 400_000}, "--batch-size 400,000 decodes 1.2 GiB per block"),
        ({"rows_per_shard": 2_000_000}, "--rows-per-shard 2,000,000 makes parts of about 5.9 GiB"),
        ({"n": "5"}, "n must be an integer"),
    ],
)
def test_a_spec_refuses_unsafe_names_and_unbounded_plans(overrides, fragment):
    with pytest.raises(UsageError) as refused:
        tiny_spec(**overrides)
    assert fragment in str(refused.value)


def test_small_shards_keep_the_default_decode_block():
    assert tiny_spec(n=5_000, rows_per_shard=400, block_rows=4_096).num_shards == 13


# ---------------------------------------------------------------- --resume of a doctored record


def progress_of(trained_version, root: Path, folder: str, **spec_changes: Any) -> Path:
    """`_progress.json` of a real unfinished dataset (n = 1000, seed 1), copied into ROOT/folder as the probe does."""
    from jobs.generate.job import dataset_spec

    pinned = models.resolve(MODEL)
    spec = dataset_spec(GenerateConfig(n=1000, model=MODEL), pinned, models.version_config(pinned), seed=1)
    record = manifest.progress_record(spec, dataclasses.asdict(pinned)).to_json()
    record["spec"].update(spec_changes)
    directory = root / folder
    directory.mkdir(parents=True)
    (directory / manifest.PROGRESS).write_text(json.dumps(record))
    return directory


def test_resume_of_a_record_whose_model_name_escapes_the_root_is_refused(trained_version, local_ray, tmp_path):
    root = tmp_path / "ROOT"
    progress_of(trained_version, root, "fake", model_name="../../escaped")
    before = everything_under(tmp_path)
    result = invoke("generate", "--resume", "fake", "--out", str(root))
    assert_one_error_line(result, 2, "the record in 'fake' is refused", "cannot name a dataset folder")
    assert everything_under(tmp_path) == before  # nothing written anywhere, inside the root or out of it
    assert not list(tmp_path.parent.glob("**/escaped*"))


def test_resume_of_a_record_copied_into_another_folder_is_refused(trained_version, local_ray, tmp_path):
    root = tmp_path / "ROOT"
    progress_of(trained_version, root, "fake")
    result = invoke("generate", "--resume", str(root / "fake"))
    assert_one_error_line(result, 2, f"describes dataset '{UNFINISHED_ID}', not 'fake'")
    assert everything_under(root) == ["fake", "fake/_progress.json"]
    for resume in ("..", str(root / "..")):
        assert_one_error_line(
            invoke("generate", "--resume", resume, "--out", str(root)), 2, "is not a plain file or folder name"
        )


def test_resume_on_the_other_device_is_refused_naming_its_device(trained_version, local_ray, tmp_path):
    directory = progress_of(trained_version, tmp_path, UNFINISHED_ID)  # as a killed CUDA run leaves it
    record = {**json.loads((directory / manifest.PROGRESS).read_text()), "device": "cuda"}
    (directory / manifest.PROGRESS).write_text(json.dumps(record))
    result = invoke("generate", "--resume", UNFINISHED_ID, "--out", str(tmp_path), "--device", "cpu")
    assert_one_error_line(result, 2, "was started on cuda workers and this run would decode on cpu", "--device cuda")
    assert everything_under(tmp_path) == [UNFINISHED_ID, f"{UNFINISHED_ID}/_progress.json"]
    assert json.loads((directory / manifest.PROGRESS).read_text()) == record


def test_spec_from_record_checks_every_field(trained_version, tmp_path):
    directory = progress_of(trained_version, tmp_path, UNFINISHED_ID)
    record = json.loads((directory / manifest.PROGRESS).read_text())
    assert spec_from_record(record, directory.name).n == 1000
    with pytest.raises(UsageError, match="inconsistent"):
        spec_from_record({**record, "spec_fingerprint": "0" * 16}, directory.name)
    with pytest.raises(UsageError, match="inconsistent"):
        spec_from_record({**record, "model": {**record["model"], "name": "other"}}, directory.name)
    with pytest.raises(UsageError, match="not a vaegen dataset record"):
        spec_from_record({"spec": {"n": 5}}, directory.name)


# ---------------------------------------------------------------- inspect: the whole folder, the whole manifest


def inspect_cli(directory: Path, *extra: str):
    return invoke("inspect", str(directory), *extra)


@pytest.mark.slow
def test_inspect_verifies_a_committed_dataset_and_allows_its_card(copy):
    assert sorted(path.name for path in copy.iterdir()) == [
        ".huggingface.yaml",
        "_README.md",
        "_croissant.json",
        "_manifest.json",
        *(f"part-{shard:05d}.parquet" for shard in range(4)),
    ]
    result = inspect_cli(copy)
    assert result.exit_code == 0, result.output
    assert "verified: 4 files" in result.stdout


@pytest.mark.slow
def test_inspect_refuses_an_edited_n(copy):
    edit_manifest(copy, lambda record: record.update(n=30_000))
    result = inspect_cli(copy)
    assert "PROBLEM manifest: n = 30000 but its spec says 20000" in result.stdout, result.stdout
    assert "PROBLEM manifest: n = 30,000 but its files hold 20,000 rows" in result.stdout
    assert_one_error_line(result, 1, "problem(s)")


@pytest.mark.slow
def test_inspect_refuses_a_dropped_files_entry(copy):
    edit_manifest(copy, lambda record: record["files"].pop(2))
    result = inspect_cli(copy)
    assert "PROBLEM manifest: n = 20,000 but its files hold 15,000 rows" in result.stdout, result.stdout
    assert "missing part-00002.parquet" in result.stdout
    assert_one_error_line(result, 1, "problem(s)")


@pytest.mark.slow
def test_inspect_refuses_a_dropped_files_entry_even_when_the_whole_manifest_agrees(copy):
    def forge(record: dict) -> None:  # n, spec, id and fingerprint edited to agree with files[] minus its last part
        spec = dataclasses.replace(spec_from_record(record, record["dataset_id"]), n=15_000)
        record["files"].pop()
        record.update(n=15_000, spec=spec.to_dict(), spec_fingerprint=spec.fingerprint(), dataset_id=spec.dataset_id)

    edit_manifest(copy, forge)
    report = inspect(str(copy))
    assert (
        "part-00003.parquet: unexpected file, not in the manifest: readers would take it for part of the dataset"
        in report.problems
    ), report.problems


@pytest.mark.slow
def test_inspect_refuses_a_stray_copy_of_a_part(copy):
    shutil.copy(copy / "part-00000.parquet", copy / "part-00099.parquet")
    assert pq.read_table(copy).num_rows == N + R  # what a reader would get: duplicate ids
    result = inspect_cli(copy)
    assert (
        "PROBLEM part-00099.parquet: unexpected file, not in the manifest: readers would take it for part of "
        "the dataset"
    ) in result.stdout, result.stdout
    assert_one_error_line(result, 1, "1 problem(s)")


@pytest.mark.slow
def test_inspect_refuses_anything_a_committed_dataset_does_not_hold(copy):
    (copy / "_parts").mkdir()
    (copy / "_parts" / "part-00000.parquet.json").write_text("{}")
    (copy / ".part-00001.parquet.abc.tmp").write_bytes(b"x")
    (copy / "notes.txt").write_text("hello")
    report = inspect(str(copy))
    assert sorted(report.problems) == sorted(
        [
            ".part-00001.parquet.abc.tmp: unexpected file, not in the manifest",
            "_parts: unexpected folder, not in the manifest",
            "notes.txt: unexpected file, not in the manifest: readers would take it for part of the dataset",
        ]
    )


@pytest.mark.slow
def test_inspect_of_a_truncated_manifest_is_one_line(copy):
    path = copy / manifest.MANIFEST
    path.write_bytes(path.read_bytes()[:100])
    result = inspect_cli(copy)
    assert_one_error_line(result, 1, f"corrupt manifest at {path}: not valid JSON")
    assert "JSONDecodeError" not in result.output
    path.write_text("[1, 2]")
    assert_one_error_line(inspect_cli(copy), 1, f"corrupt manifest at {path}: a JSON list, not an object")
    path.write_text('{"n": 20000}')
    assert_one_error_line(
        inspect_cli(copy), 1, f"corrupt manifest at {path}: field 'format' is missing or not a JSON string"
    )


@pytest.mark.slow
def test_inspect_imports_neither_torch_nor_mlflow(copy):
    script = (
        "import sys; from jobs.cli import main\n"
        "try:\n    main([sys.argv[1], sys.argv[2]])\nexcept SystemExit as exit:\n    code = exit.code\n"
        "print('heavy:', sorted(name for name in ('torch', 'mlflow', 'ray') if name in sys.modules))\n"
        "sys.exit(code)"
    )
    done = subprocess.run([PYTHON, "-c", script, "inspect", str(copy)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "verified: 4 files" in done.stdout and "heavy: []" in done.stdout, done.stdout


def rewrite_part_with_changed_x(directory: Path, shard: int, row: int) -> None:
    """Rewrite part `shard` with x of one row changed, and its manifest entry updated to match: a consistent forgery."""
    name = f"part-{shard:05d}.parquet"
    path = directory / name
    parquet = pq.ParquetFile(path)
    table = parquet.read()
    x = table.column("x").combine_chunks()
    values = _flat_values(x, "float32").copy().reshape(len(x), -1)
    values[row] = 1.0 - values[row]
    extension = isinstance(x.type, pa.BaseExtensionType)  # format 2's tensor; format 3 nests fixed-size lists
    forged = _nested(pa.array(values.reshape(-1)), x.type.storage_type if extension else x.type)
    forged = pa.ExtensionArray.from_storage(x.type, forged) if extension else forged
    table = table.set_column(table.schema.get_field_index("x"), table.schema.field("x"), forged)
    pq.write_table(table, path, row_group_size=parquet.metadata.row_group(0).num_rows)
    data = path.read_bytes()

    def update(record: dict) -> None:
        entry = record["files"][shard]
        entry["size_bytes"], entry["checksum"] = len(data), xxhash.xxh3_128(data).hexdigest()
        record["total_bytes"] = sum(item["size_bytes"] for item in record["files"])

    edit_manifest(directory, update)


@pytest.mark.slow
def test_inspect_deep_re_decodes_x_and_catches_a_consistent_forgery(copy):
    clean = inspect_cli(copy, "--deep")
    assert clean.exit_code == 0, clean.output
    assert "verified: 4 files, 20,000 rows re-derived, x of 20,000 re-decoded" in clean.stdout

    rewrite_part_with_changed_x(copy, shard=1, row=1_234)
    plain = inspect_cli(copy)
    assert plain.exit_code == 0, plain.output  # checksums, sizes, rows and ids all agree with the edited manifest
    deep = inspect_cli(copy, "--deep")
    assert (
        "PROBLEM part-00001.parquet: row 1234 (sample id 6234): x differs from what vae-decoder/1 decodes"
        in deep.stdout
    ), deep.stdout
    assert_one_error_line(deep, 1, "1 problem(s)")


@pytest.mark.slow
def test_inspect_deep_with_an_unreachable_tracking_server_is_one_line(copy, monkeypatch):
    import mlflow

    uri = f"http://carol:S3cretPW@127.0.0.1:{free_port()}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        result = inspect_cli(copy, "--deep")
    finally:
        mlflow.set_tracking_uri(previous)
    assert_one_error_line(
        result,
        1,
        "inspect --deep re-decodes x with vae-decoder/1 from the registry: cannot reach the MLflow "
        "tracking server at http://***@127.0.0.1",
    )
    assert "S3cretPW" not in result.output


# ---------------------------------------------------------------- generate into damaged or busy datasets


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_generate_into_a_damaged_dataset_is_refused_and_overwrite_repairs_it(committed, copy, damage):
    original = part_hashes(Path(committed.location))
    part = copy / "part-00001.parquet"
    if damage == "missing":
        part.unlink()
    else:
        part.write_bytes(part.read_bytes()[:1000])
    result = invoke(*generate_args(copy.parent))
    detail = "part-00001.parquet: missing" if damage == "missing" else "part-00001.parquet: 1000 bytes, manifest says"
    assert_one_error_line(
        result, 1, f"dataset {copy} is committed but damaged: {detail}", "regenerate it with --overwrite"
    )
    assert "already committed" not in result.output
    repaired = invoke(*generate_args(copy.parent, "--overwrite"))
    assert repaired.exit_code == 0, repaired.output
    assert part_hashes(copy) == original and inspect(str(copy)).ok


@pytest.mark.slow
def test_a_truncated_manifest_is_one_line_and_overwrite_repairs_it(committed, copy):
    path = copy / manifest.MANIFEST
    path.write_bytes(path.read_bytes()[:200])
    assert_one_error_line(invoke(*generate_args(copy.parent)), 1, f"corrupt manifest at {path}")
    repaired = invoke(*generate_args(copy.parent, "--overwrite"))
    assert repaired.exit_code == 0, repaired.output
    assert part_hashes(copy) == part_hashes(Path(committed.location)) and inspect(str(copy)).ok


@pytest.mark.slow
def test_two_generate_runs_of_one_dataset_at_once(trained_version, local_ray, tmp_path):
    root = tmp_path / "root"
    holding, proceed, outcome = threading.Event(), threading.Event(), {}

    def hold(workers: list[Any]) -> None:  # the first run, inside its guard, waits for the second to try
        holding.set()
        proceed.wait(120)

    def first() -> None:
        try:
            outcome["result"] = generate(config(root, n=40_000), on_workers=hold)
        except BaseException as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert holding.wait(120), outcome
        with pytest.raises(DatasetBusy) as busy:
            generate(config(root, n=40_000))
        cli = invoke(*generate_args(root, n=40_000))
    finally:
        proceed.set()
        thread.join(180)
    assert f"being written by another vaegen run (pid {os.getpid()} on {socket.gethostname()}" in str(busy.value)
    assert_one_error_line(cli, 1, "is being written by another vaegen run", f"pid {os.getpid()}")
    assert "error" not in outcome, outcome
    directory = Path(outcome["result"].location)
    assert outcome["result"].status == "generated" and inspect(str(directory)).ok
    assert sorted(path.name for path in root.iterdir()) == [directory.name]  # no lock, no temp files left
    again = generate(config(root, n=40_000))  # the guard was released
    assert again.status == "up-to-date"


HOLD_GUARD = """
import sys, time
from jobs.generate.storage import Storage
guard = Storage(sys.argv[1]).writer_guard(sys.argv[2])
guard.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_a_writer_guard_of_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [PYTHON, "-c", HOLD_GUARD, str(tmp_path), "some-dataset"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(DatasetBusy, match=f"pid {holder.pid} on {socket.gethostname()}"),
            Storage(str(tmp_path)).writer_guard("some-dataset"),
        ):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        with Storage(str(tmp_path)).writer_guard("some-dataset"):
            assert (tmp_path / ".some-dataset.lock").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.kill()
        holder.wait(30)
    assert not (tmp_path / ".some-dataset.lock").exists()


def test_the_writer_guard_on_an_object_store(moto_s3):
    storage = Storage(f"{moto_s3}/root")
    with (
        storage.writer_guard("ds"),
        pytest.raises(
            DatasetBusy,
            match=f"pid {os.getpid()} on {socket.gethostname()}.*if that run is dead, delete {moto_s3}/root/.ds.lock",
        ),
        storage.writer_guard("ds"),
    ):
        pass
    assert not storage.exists(".ds.lock")
    dead = subprocess.run(
        [PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    storage.write_json({"pid": int(dead), "host": socket.gethostname(), "user": "x", "since": "then"}, ".ds.lock")
    with storage.writer_guard("ds"):  # a record of a process gone from this host is taken over
        assert storage.read_json(".ds.lock")["pid"] == os.getpid()
    storage.write_json({"pid": 1, "host": "another-host", "user": "x", "since": "then"}, ".ds.lock")
    with pytest.raises(DatasetBusy, match="pid 1 on another-host"), storage.writer_guard("ds"):
        pass


# ---------------------------------------------------------------- bounded plans


@pytest.mark.parametrize(
    ("n", "extra", "fragment"),
    [
        (10_000_000_000_000, (), "makes 152,587,891 part files, more than 100,000"),
        (2**64, (), "--n must be at most 2**63 - 1"),
        (1_000, ("--batch-size", "5000000"), "--batch-size 5,000,000 is larger than a shard"),
    ],
)
def test_unbounded_plans_are_one_line_usage_errors_and_leave_no_folder(trained_version, tmp_path, n, extra, fragment):
    out = tmp_path / "out"
    result = invoke("generate", "--model", MODEL, "--n", str(n), "--out", str(out), *extra)
    assert_one_error_line(result, 2, fragment)
    assert "MemoryError" not in result.output and not out.exists()


@pytest.mark.slow
def test_more_workers_than_the_cluster_has_cpus_are_capped(trained_version, local_ray, tmp_path):
    seen, lines = {}, []
    result = generate(
        config(tmp_path, num_workers=1000), log=lines.append, on_workers=lambda workers: seen.update(count=len(workers))
    )
    assert seen["count"] == 2 and result.manifest["execution"]["num_workers"] == 2
    assert "--num-workers 1000 capped at 2: the Ray cluster has 2 CPU(s) now" in lines


@pytest.mark.slow
def test_a_dataset_larger_than_the_free_space_is_refused_before_any_work(trained_version, local_ray, tmp_path):
    free = shutil.disk_usage(tmp_path).free
    row_bytes = 8 * 8 * 4 + 2 * 4 + 16  # the tiny model's 8x8 float32 x, z, seed and id
    n = 2 * free // row_bytes
    rows_per_shard = math.ceil(n / 50_000)
    with pytest.raises(UsageError, match=r"needs about [\d,.]+ GB more but its filesystem has [\d,.]+ GB free"):
        generate(config(tmp_path, n=n, rows_per_shard=rows_per_shard))
    assert everything_under(tmp_path) == []


# ---------------------------------------------------------------- stale runs, provenance


@pytest.mark.slow
def test_resuming_a_killed_job_marks_its_run_killed(committed, tmp_path):
    import mlflow

    # The state a kill -9 leaves: parts, no manifest, a progress record naming a run still RUNNING.
    directory = tmp_path / "root" / Path(committed.location).name
    shutil.copytree(committed.location, directory)
    record = json.loads((directory / manifest.MANIFEST).read_text())
    (directory / manifest.MANIFEST).unlink()
    (directory / "part-00003.parquet").unlink()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(record["lineage"]["experiment"]).experiment_id
    killed = client.create_run(experiment, run_name=directory.name).info.run_id
    spec = spec_from_record(record, directory.name)
    (directory / manifest.PROGRESS).write_text(
        json.dumps(manifest.progress_record(spec, record["model"], killed).to_json())
    )
    assert client.get_run(killed).info.status == "RUNNING"
    result = generate(config(directory.parent))
    assert (
        result.manifest["files"] == record["files"]
    )  # the same dataset, completed (its parts rewritten: no sidecars here)
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(result.manifest["lineage"]["run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_provenance_is_recorded_and_can_be_left_out(committed, local_ray, tmp_path):
    import getpass

    recorded = committed.manifest
    assert recorded["created_by"] == {"user": getpass.getuser(), "host": socket.gethostname()}
    assert recorded["lineage"]["tracking_uri"].startswith("sqlite:///") and recorded["provenance"] == "recorded"

    published = invoke(*generate_args(tmp_path / "published", "--redact-provenance"))
    assert published.exit_code == 0, published.output
    directory = tmp_path / "published" / Path(committed.location).name
    text = (directory / manifest.MANIFEST).read_text()
    record = json.loads(text)
    assert (
        record["created_by"] is None and record["lineage"]["tracking_uri"] is None and record["model"]["source"] is None
    )
    assert record["provenance"] == "redacted" and str(tmp_path.parent) not in text  # no out path, no SQLite path
    assert (
        str(tmp_path.parent) not in (directory / "_README.md").read_text()
    )  # nor in the card that is published with it
    assert record["model"]["run_id"] == recorded["model"]["run_id"]

    # The same rows in the same parts; the bytes differ only by the parts' key-value metadata, which names the
    # registry where provenance is recorded (issue 23) and not where it is redacted.
    def layout(files):
        return [{key: entry[key] for key in ("shard", "name", "first_sample_id", "rows")} for entry in files]

    assert layout(record["files"]) == layout(recorded["files"])
    assert pq.read_table(directory).equals(pq.read_table(committed.location))
    assert inspect(str(directory)).ok

    copy_root = tmp_path / "again"
    shutil.copytree(committed.location, copy_root / directory.name)
    refused = invoke(*generate_args(copy_root, "--redact-provenance"))
    assert_one_error_line(refused, 2, "is committed with provenance", "add --overwrite")


# ---------------------------------------------------------------- refresh with a `#` in --out


@pytest.mark.slow
def test_refresh_into_a_root_with_a_hash_prunes_nothing_beside_it(trained_version, local_ray, tmp_path):
    from registry import promotion

    client = models.client()
    if "champion" not in client.get_registered_model("vae-decoder").aliases:
        promotion.promote(MODEL, promotion.PromotionConfig(reason="test", by="tester"))
    victim = tmp_path / "victim"
    for name, finished in (("old-a", "2020-01-01T00:00:00+00:00"), ("old-b", "2020-01-02T00:00:00+00:00")):
        (victim / name).mkdir(parents=True)
        (victim / name / manifest.MANIFEST).write_text(json.dumps({"timings": {"finished_at": finished}}))
    (
        tmp_path / "victim#x"
    ).mkdir()  # refresh's lock needs its root to exist (main's check_writable no longer leaves it)
    before = everything_under(victim)
    result = refresh(
        RefreshConfig(
            generate=config(str(tmp_path / "victim#x"), n=2_000, rows_per_shard=1_000, model="vae-decoder@champion"),
            keep=1,
        )
    )
    assert result.action == "generated" and result.pruned == []
    assert everything_under(victim) == before
    assert (tmp_path / "victim#x" / result.dataset_id / manifest.MANIFEST).exists()


class _DeletesOnOpen:
    """The object store's own filesystem, except that an object opened for reading is deleted before the read:
    a prune landing between a reader's open and its read, every time."""

    def __init__(self, fs: Any):
        self.fs = fs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def open_input_stream(self, path: str) -> Any:
        stream = self.fs.open_input_stream(path)
        self.fs.delete_file(path)
        return stream


def test_a_record_deleted_between_open_and_read_on_an_object_store_is_absent(moto_s3):
    storage = Storage(f"{moto_s3}/deleted")
    storage.write_json({"n": 1}, "ds", "_manifest.json")
    storage.write_json({"n": 2}, "ds", "_other.json")
    real = storage.fs
    storage.fs = _DeletesOnOpen(real)
    # The store words the failed read its own way (NO_SUCH_KEY, RESOURCE_NOT_FOUND, a broken stream): absent.
    assert storage.read_json("ds", "_manifest.json") is None
    with pytest.raises(FileNotFoundError, match=f"{moto_s3}/deleted/ds/_other.json"):
        storage.read_bytes("ds", "_other.json")
    storage.fs = real
    storage.write_json({"n": 3}, "ds", "_manifest.json")
    assert storage.read_json("ds", "_manifest.json") == {"n": 3}  # a record that is there still reads
