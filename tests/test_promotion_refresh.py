"""Promotion (gates, rollback, the alias race, --to-model) against a real `mlflow server` over HTTP;
the scheduled refresh (no-op, new promotion, rollback, pruning, concurrent runs, crashed locks) on a
real local Ray; and generate / refresh into an S3 bucket served by moto on 127.0.0.1.

Every test works on registered models of its own name (versions copied from the module's trained
ones), so the tests stay independent on the one shared server."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch
import xxhash

import helpers
from conftest import private_local_ray
from jobs.generate.engine import EngineOptions
from jobs.generate.job import GenerateConfig
from jobs.refresh import LATEST, LOCK, RefreshConfig, RefreshResult, refresh
from ray_cluster import free_port  # tests/ is on sys.path (rootdir conftest)
from registry import models, promotion
from registry.alias_lock import alias_lock
from registry.lineage import REFRESH_EXPERIMENT
from registry.models import LOCK_MARK, TAG_PREFIX
from vae_core import data as data_sources
from vae_core import seeds
from vae_core.config import VAEConfig
from vae_core.errors import VaegenError
from vae_core.model import VAE
from vae_core.training import TrainResult

pytestmark = pytest.mark.slow  # real mlflow server, real Ray, real (moto) S3 throughout

N, ROWS_PER_SHARD = 5_000, 2_000  # 3 parts per dataset
SPIKY_SEED, SPIKY_BATCH = (
    27,
    1_000,
)  # seed 27: z0 > 3.41 only at rows 2270 and 4289 (shards 1, 2), none in the probe block
OVERFLOW_WEIGHT = 1e38  # 1e38 * z0 overflows float32 exactly when z0 > 3.4028
SUBPROCESS_TIMEOUT_S = 240
VAEGEN = str(Path(sys.executable).with_name("vaegen"))
PROMOTION_TAG = f"{TAG_PREFIX}promotion.champion"


# ---------------------------------------------------------------- helpers


def invoke(*args: str):
    """helpers.invoke; `promote` runs without gate 3 (quality, tests/test_quality.py): tiny test models are not
    meant to pass it."""
    if args[0] == "promote":
        args = (*args, "--no-quality-gate")
    return helpers.invoke(*args)


def refresh_line(stdout: str) -> str:
    """The `refresh: ACTION ...` result line (MLflow prints run links on stdout too; see the report)."""
    return next(line for line in stdout.splitlines() if line.startswith("refresh: "))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def alias_version(name: str, alias: str = "champion") -> int | None:
    aliases = mlflow.MlflowClient().get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None


def version_tags(name: str, version: int) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(name, str(version)).tags


def lock_models(name: str) -> list[str]:
    found = mlflow.MlflowClient().search_registered_models(filter_string=f"name LIKE '{name}%'")
    return [model.name for model in found if LOCK_MARK in model.name]


def promote(reference: str, reason: str = "test", **options: Any) -> promotion.PromotionResult:
    return promotion.promote(reference, promotion.PromotionConfig(reason=reason, by="tester", **options))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mtimes(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in sorted(directory.rglob("*"))}


def dataset_dirs(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.is_dir() and not path.name.startswith((".", "_")))


def refresh_config(model: str, out: str, keep: int = 3, **options: Any) -> RefreshConfig:
    generate = GenerateConfig(
        n=N, model=model, out=out, rows_per_shard=ROWS_PER_SHARD, engine=EngineOptions(num_workers=2)
    )
    return RefreshConfig(generate=generate, keep=keep, **options)


def refresh_args(model: str, out: str, *extra: str) -> list[str]:
    return ["refresh", "--model", model, "--n", str(N), "--rows-per-shard", str(ROWS_PER_SHARD), "--out", out, *extra]


def refresh_runs(model: str) -> list[Any]:
    experiment = mlflow.MlflowClient().get_experiment_by_name(REFRESH_EXPERIMENT)
    if experiment is None:  # no refresh has run on this server yet
        return []
    return mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], filter_string=f"params.model = '{model}'", order_by=["attributes.start_time ASC"]
    )


def register_decoder(model: VAE, name: str, run_name: str) -> int:
    """Register a hand-made decoder through the same path as training (weights-only, with config)."""
    result = TrainResult(model=model, history=[], val_neg_elbo=float("nan"), train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("vaegen-train", run_name, {}) as run:
        return run.register(result, name, {}).version


# ---------------------------------------------------------------- fixtures


@dataclasses.dataclass(frozen=True)
class Trained:
    """Versions of one base registered model; tests copy them into models of their own."""

    base: str
    good: int  # 4 epochs on digits
    worse: int  # 1 epoch on digits: held-out -ELBO ~9 nats worse
    nan: int  # one NaN decoder weight: every sample NaN
    spiky: int  # finite except where z0 > 3.4028 (float32 overflow), i.e. mid-dataset rows
    other_data: int  # 4 epochs on a subset of digits: another data_sha256

    def model_with(self, *versions: int, prefix: str = "pr") -> str:
        """A new registered model whose versions 1, 2, ... are copies of these base versions, tags included."""
        name = unique(prefix)
        client = mlflow.MlflowClient()
        for version in versions:
            client.copy_model_version(f"models:/{self.base}/{version}", name)
        return name


@pytest.fixture(scope="module")
def trained(module_http, tiny_train_config, tmp_path_factory) -> Trained:
    from jobs.train import run

    base = unique("prbase")
    good = run(tiny_train_config(epochs=4, register_as=base, report=False)).pinned.version
    worse = run(tiny_train_config(epochs=1, register_as=base, report=False)).pinned.version

    torch.manual_seed(0)
    broken = VAE(VAEConfig())
    with torch.no_grad():
        broken.decoder.net[0].weight[0, 0] = float("nan")
    nan = register_decoder(broken, base, "nan-decoder")

    torch.manual_seed(0)
    spiky_model = VAE(VAEConfig())
    with torch.no_grad():
        first, second = spiky_model.decoder.net[0], spiky_model.decoder.net[2]
        first.weight[0] = torch.tensor([OVERFLOW_WEIGHT, 0.0])
        first.bias[0] = 0.0
        second.weight[:, 0] = 0.0  # 0 * finite = 0; 0 * inf = NaN
    spiky = register_decoder(spiky_model, base, "spiky-decoder")

    subset = tmp_path_factory.mktemp("other-data") / "digits-subset.npz"
    np.savez(subset, x=data_sources.load("digits").images[:1_200])
    other_data = run(tiny_train_config(epochs=4, register_as=base, data=f"npz:{subset}", report=False)).pinned.version
    return Trained(base, good, worse, nan, spiky, other_data)


@dataclasses.dataclass(frozen=True)
class S3:
    endpoint: str
    port: int

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def bucket(self) -> str:
        name = unique("vaegen-test")
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "", markers: bool = False) -> list[str]:
        """Object keys; without the empty `folder/` marker objects that pyarrow's create_dir writes, unless asked."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = sorted(item["Key"] for page in pages for item in page.get("Contents", []))
        return keys if markers else [key for key in keys if not key.endswith("/")]

    def get(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def filesystem(self) -> pafs.S3FileSystem:
        """An independent reader's filesystem: explicit endpoint, nothing from vaegen."""
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
        )


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """moto's S3 on 127.0.0.1 and a free port; AWS_* variables point every client (pyarrow, boto3) at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                patch.delenv(key, raising=False)
            patch.setenv("AWS_ACCESS_KEY_ID", "testing")
            patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
            patch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
            yield S3(endpoint, port)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_ray(module_http, s3) -> Iterator[str]:
    """A private local Ray (conftest.private_local_ray), started after the AWS_* variables are set so that its
    workers reach the moto S3; yields its GCS address for other drivers."""
    with private_local_ray() as address:
        yield address


# ---------------------------------------------------------------- promotion


def test_promote_with_passing_gates_records_who_when_why_and_models_shows_it(trained):
    name = trained.model_with(trained.good, trained.good)

    first = invoke("promote", f"{name}/1", "--reason", "first champion", "--by", "alice")
    assert first.exit_code == 0, first.output
    assert f"promoted: {name}@champion -> version 1 (was None)" in first.stdout
    second = invoke("promote", f"{name}/2", "--reason", "retrained", "--by", "bob")
    assert second.exit_code == 0, second.output
    assert "gate loads          PASS" in second.stdout and "gate held_out_elbo  PASS" in second.stdout, second.stdout
    assert f"promoted: {name}@champion -> version 2 (was 1)" in second.stdout

    assert alias_version(name) == 2
    assert models.resolve(f"{name}@champion").version == 2
    record = json.loads(version_tags(name, 2)[PROMOTION_TAG])
    assert record["by"] == "bob" and record["reason"] == "retrained"
    assert record["previous_version"] == 1 and record["version"] == 2 and record["forced"] == []
    assert abs(dt.datetime.fromisoformat(record["at"]) - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
    gates = [("safe_artifacts", True), ("loads", True), ("schema", True), ("held_out_elbo", True)]
    assert [(gate["name"], gate["passed"]) for gate in record["gates"]] == gates
    assert json.loads(version_tags(name, 1)[PROMOTION_TAG])["previous_version"] is None

    listing = invoke("models", name)
    assert listing.exit_code == 0, listing.output
    rows = {line.split()[1]: line for line in listing.stdout.splitlines() if line.startswith(name)}
    assert "champion" in rows["2"] and "champion" not in rows["1"], listing.stdout
    history = listing.stdout.split(f"history of {name}@champion:")[1].strip().splitlines()
    assert "promote  - -> v1  by alice: first champion" in history[0], history
    assert "promote  v1 -> v2  by bob: retrained" in history[1], history
    assert not lock_models(name)


def test_worse_version_is_refused_unless_within_tolerance(trained):
    name = trained.model_with(trained.good, trained.worse)
    promote(f"{name}/1")

    refused = invoke("promote", f"{name}/2", "--reason", "cheaper training")
    assert refused.exit_code == 1, refused.output
    assert "gate loads          PASS" in refused.stdout
    assert "gate held_out_elbo  FAIL" in refused.stdout, refused.stdout
    assert f"not promoted: {name}@champion stays at version 1" in refused.stderr
    assert alias_version(name) == 1
    assert PROMOTION_TAG not in version_tags(name, 2)
    assert [event["version"] for event in promotion.history(name, "champion")] == [1]

    good, worse = (float(version_tags(name, version)[f"{TAG_PREFIX}val_neg_elbo"]) for version in (1, 2))
    assert worse > good + 0.5  # the gate refused a real regression, not noise
    tolerant = invoke("promote", f"{name}/2", "--reason", "accept", "--elbo-tolerance", str(worse - good + 1))
    assert tolerant.exit_code == 0, tolerant.output
    assert alias_version(name) == 2


def test_nan_decoder_fails_the_loads_gate_even_with_force(trained):
    name = trained.model_with(trained.nan)
    for extra in ([], ["--force"]):
        result = invoke("promote", f"{name}/1", "--reason", "broken", *extra)
        assert result.exit_code == 1, result.output
        gate = next(line for line in result.stdout.splitlines() if line.startswith("gate loads"))
        assert "FAIL" in gate and "non-finite" in gate, result.stdout
        assert alias_version(name) is None
    assert promotion.history(name, "champion") == []


def test_other_training_data_cannot_compare_unless_forced(trained):
    name = trained.model_with(trained.good, trained.other_data)
    promote(f"{name}/1")
    assert version_tags(name, 1)[f"{TAG_PREFIX}data_sha256"] != version_tags(name, 2)[f"{TAG_PREFIX}data_sha256"]

    refused = invoke("promote", f"{name}/2", "--reason", "new data")
    assert refused.exit_code == 1, refused.output
    gate = next(line for line in refused.stdout.splitlines() if line.startswith("gate held_out_elbo"))
    assert "FAIL" in gate and "cannot compare" in gate and "data_sha256" in gate, gate
    assert alias_version(name) == 1

    forced = invoke("promote", f"{name}/2", "--reason", "new data", "--force")
    assert forced.exit_code == 0, forced.output
    assert alias_version(name) == 2
    record = json.loads(version_tags(name, 2)[PROMOTION_TAG])
    assert record["forced"] == ["held_out_elbo"] and record["previous_version"] == 1
    listing = invoke("models", name)  # the history says it was forced, and past which gate
    assert re.search(r"promote\(forced: held_out_elbo\) +v1 -> v2", listing.stdout), listing.stdout


def test_rollback_restores_the_previous_holder_and_is_recorded(trained):
    name = trained.model_with(trained.good, trained.good)
    promote(f"{name}/1", reason="first")
    promote(f"{name}/2", reason="second")

    rolled = invoke("rollback", name, "--reason", "bad outputs", "--by", "carol")
    assert rolled.exit_code == 0, rolled.output
    assert f"rolled back: {name}@champion -> version 1 (was 2)" in rolled.stdout
    assert alias_version(name) == 1
    events = promotion.history(name, "champion")
    assert [(event["action"], event["previous_version"], event["version"]) for event in events] == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("rollback", 2, 1),
    ]
    assert events[-1]["by"] == "carol" and events[-1]["reason"] == "bad outputs"
    assert json.loads(version_tags(name, 2)[f"{TAG_PREFIX}rolled_back.champion"])["version"] == 1

    again = invoke("rollback", name)  # v1 was the first holder: nothing before it
    assert again.exit_code == 2, again.output
    assert "no recorded previous holder" in again.stderr
    assert alias_version(name) == 1

    never = trained.model_with(trained.good)
    missing = invoke("rollback", never)
    assert missing.exit_code == 2 and "does not exist" in missing.stderr, missing.output


def test_concurrent_promotions_form_one_consistent_chain(trained):
    name = trained.model_with(trained.good, trained.good, trained.good)
    promote(f"{name}/1", reason="start")
    barrier = threading.Barrier(2)
    results: dict[int, Any] = {}

    def promote_at_once(version: int) -> None:
        barrier.wait()
        try:
            results[version] = promote(f"{name}/{version}", reason=f"race {version}")
        except BaseException as error:  # surfaced by the assertion below
            results[version] = error

    threads = [threading.Thread(target=promote_at_once, args=(version,)) for version in (2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(result, promotion.PromotionResult) and result.promoted for result in results.values()), (
        results
    )

    events = promotion.history(name, "champion")
    assert [event["version"] for event in events][0] == 1 and sorted(event["version"] for event in events[1:]) == [2, 3]
    first, second = events[1], events[2]
    assert first["previous_version"] == 1 and second["previous_version"] == first["version"], events
    assert alias_version(name) == second["version"]
    assert results[second["version"]].previous_version == first["version"]
    assert json.loads(version_tags(name, second["version"])[PROMOTION_TAG])["previous_version"] == first["version"]
    assert not lock_models(name)


def test_stale_promotion_lock_is_taken_over_and_a_fresh_one_is_not(trained):
    name = trained.model_with(trained.good)
    lock = f"{name}{LOCK_MARK}champion"
    client = mlflow.MlflowClient()
    client.create_registered_model(
        lock, tags={"vaegen.lock_owner": "crashed", "vaegen.lock_since": str(time.time() - 3_600)}
    )
    assert promote(f"{name}/1").promoted
    assert alias_version(name) == 1
    assert not lock_models(name)

    client.create_registered_model(lock, tags={"vaegen.lock_owner": "alive", "vaegen.lock_since": str(time.time())})
    try:
        with (
            pytest.raises(VaegenError, match="held by another promotion: promotion by alive"),
            alias_lock(name, "champion", wait_s=1.0),
        ):
            pass
        assert client.get_registered_model(lock).tags["vaegen.lock_owner"] == "alive"  # a waiter never deletes it
    finally:
        client.delete_registered_model(lock)


def test_to_model_copies_into_another_model_and_promotes_the_copy(trained):
    source = trained.model_with(trained.good)
    promote(f"{source}/1", alias="staging", reason="staged")
    target = unique("prprod")

    result = invoke("promote", f"{source}/1", "--to-model", target, "--reason", "ship it")
    assert result.exit_code == 0, result.output
    assert f"copied to {target}/1" in result.stderr
    assert f"promoted: {target}@champion -> version 1 (was None)" in result.stdout
    assert alias_version(target) == 1
    assert alias_version(source) is None  # the source model is untouched
    tags = version_tags(target, 1)
    assert tags[f"{TAG_PREFIX}copied_from"] == f"models:/{source}/1"
    assert tags[f"{TAG_PREFIX}val_neg_elbo"] == version_tags(source, 1)[f"{TAG_PREFIX}val_neg_elbo"]
    assert json.loads(tags[PROMOTION_TAG])["reason"] == "ship it"
    assert f"{TAG_PREFIX}promotion.staging" not in tags  # the source's promotion records stay with the source
    assert models.load_decoder(models.resolve(f"{target}@champion")).config.latent_dim == 2


# ---------------------------------------------------------------- refresh (local output root)


def test_refresh_twice_with_the_same_champion_is_a_no_op_and_logs_runs(trained, local_ray, tmp_path):
    name = trained.model_with(trained.good)
    promote(f"{name}/1")
    root = tmp_path / "out"

    first = refresh(refresh_config(f"{name}@champion", str(root)))
    assert first.action == "generated" and first.model_version == 1
    dataset = root / first.dataset_id
    assert sorted(path.name for path in dataset.iterdir()) == [
        ".huggingface.yaml",
        "_README.md",
        "_audit.json",
        "_croissant.json",
        "_manifest.json",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert pq.read_table(dataset).num_rows == N
    before, latest_before = mtimes(dataset), (root / LATEST).read_bytes()

    second = invoke(*refresh_args(f"{name}@champion", str(root)))
    assert second.exit_code == 0, second.output
    assert f"refresh: up-to-date {first.dataset_id} (model version 1)" in second.stdout
    assert mtimes(dataset) == before
    assert (root / LATEST).read_bytes() == latest_before
    assert dataset_dirs(root) == [first.dataset_id]
    assert not (root / LOCK).exists()

    runs = refresh_runs(f"{name}@champion")
    assert [run.data.tags["vaegen.action"] for run in runs] == ["generated", "up-to-date"]
    assert all(run.data.params["resolved_version"] == "1" for run in runs)
    assert all(run.data.tags["vaegen.dataset_id"] == first.dataset_id and run.info.status == "FINISHED" for run in runs)


def test_refresh_follows_promotions_and_rollbacks_and_prunes(trained, local_ray, tmp_path):
    name = trained.model_with(trained.good, trained.good)
    promote(f"{name}/1", reason="v1")
    root = tmp_path / "out"
    model = f"{name}@champion"

    def latest() -> dict:
        return json.loads((root / LATEST).read_text())

    def assert_latest_is(result: RefreshResult, version: int) -> None:
        pointer = latest()
        assert pointer["dataset_id"] == result.dataset_id and pointer["model"] == {"name": name, "version": version}
        assert pointer["manifest_sha256"] == sha256_bytes((root / result.dataset_id / "_manifest.json").read_bytes())

    old = refresh(refresh_config(model, str(root), keep=2))
    assert old.action == "generated"
    assert_latest_is(old, 1)
    unfinished = root / "unfinished-dataset"  # a crashed generate: parts but no manifest
    unfinished.mkdir()
    (unfinished / "part-00000.parquet").write_bytes(b"partial")
    old_mtimes = mtimes(root / old.dataset_id)

    promote(f"{name}/2", reason="v2")
    new = refresh(refresh_config(model, str(root), keep=2))
    assert new.action == "generated" and new.model_version == 2 and new.dataset_id != old.dataset_id
    assert_latest_is(new, 2)
    assert new.pruned == [] and (root / old.dataset_id / "_manifest.json").exists()

    promotion.rollback(name)
    back = refresh(refresh_config(model, str(root), keep=2))
    assert (back.action, back.dataset_id, back.model_version) == ("pointer-moved", old.dataset_id, 1)
    assert_latest_is(old, 1)
    republished = ("_audit.json", "_README.md")  # publishing audits again and records the verdict in the card
    assert {key: value for key, value in mtimes(root / old.dataset_id).items() if key not in republished} == {
        key: value for key, value in old_mtimes.items() if key not in republished
    }  # moved back, not regenerated

    promote(f"{name}/2", reason="v2 again")
    pruning = invoke(*refresh_args(model, str(root), "--keep", "1"))
    assert pruning.exit_code == 0, pruning.output
    assert f"refresh: pointer-moved {new.dataset_id} (model version 2)" in pruning.stdout
    assert f"pruned: {old.dataset_id}" in pruning.stdout
    assert_latest_is(new, 2)
    assert not (root / old.dataset_id).exists()
    assert dataset_dirs(root) == sorted([new.dataset_id, unfinished.name])  # unfinished is never pruned
    assert (unfinished / "part-00000.parquet").read_bytes() == b"partial"


def test_two_concurrent_refresh_processes_generate_once(trained, local_ray, tmp_path):
    name = trained.model_with(trained.good)
    promote(f"{name}/1")
    root = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": local_ray, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    command = [VAEGEN, *refresh_args(f"{name}@champion", str(root))]
    processes = [
        subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=SUBPROCESS_TIMEOUT_S) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    actions = sorted(refresh_line(stdout).split()[1] for stdout, _ in outputs)
    assert actions.count("generated") == 1 and set(actions) <= {"generated", "busy", "up-to-date"}, outputs
    assert len(dataset_dirs(root)) == 1
    assert json.loads((root / LATEST).read_text())["dataset_id"] == dataset_dirs(root)[0]
    assert not (root / LOCK).exists()


def test_crashed_refresh_lock_is_taken_over_and_a_live_one_means_busy(trained, local_ray, tmp_path):
    name = trained.model_with(trained.good)
    promote(f"{name}/1")
    root = tmp_path / "out"
    root.mkdir()
    live = {"owner": "someone-else", "host": "elsewhere", "pid": 1, "acquired_at": time.time()}
    (root / LOCK).write_text(json.dumps(live))

    busy = invoke(*refresh_args(f"{name}@champion", str(root)))
    assert busy.exit_code == 0, busy.output
    assert refresh_line(busy.stdout) == "refresh: busy"
    assert json.loads((root / LOCK).read_text()) == live  # not ours: left alone
    assert dataset_dirs(root) == [] and not (root / LATEST).exists()
    assert refresh_runs(f"{name}@champion") == []

    crashed = {**live, "acquired_at": time.time() - 3_600}
    (root / LOCK).write_text(json.dumps(crashed))
    os.utime(root / LOCK, (time.time() - 3_600,) * 2)  # its heartbeat (the file's mtime) stopped an hour ago
    taken = invoke(*refresh_args(f"{name}@champion", str(root), "--lock-timeout", "1"))
    assert taken.exit_code == 0, taken.output
    assert refresh_line(taken.stdout).startswith("refresh: generated"), taken.stdout
    assert len(dataset_dirs(root)) == 1 and (root / LATEST).exists()
    assert not (root / LOCK).exists()


# ---------------------------------------------------------------- object store (moto S3)


def test_storage_honours_aws_endpoint_url_too(s3, monkeypatch):
    from jobs.generate.storage import Storage

    bucket = s3.bucket()
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    storage = Storage(f"s3://{bucket}/root")
    storage.check_writable()
    storage.write_json({"ok": True}, "probe.json")
    assert json.loads(s3.get(bucket, "root/probe.json")) == {"ok": True}
    assert s3.keys(bucket) == ["root/probe.json"]  # no temporary or probe objects left


def test_generate_to_s3_commits_reads_back_and_a_failure_leaves_no_manifest(trained, local_ray, s3):
    bucket = s3.bucket()
    out = f"s3://{bucket}/data"
    result = invoke(
        "generate",
        "--model",
        f"{trained.base}/{trained.good}",
        "--n",
        str(N),
        "--seed",
        "5",
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    dataset_id = result.stdout.split("dataset_id: ")[1].split()[0]
    assert f"location: {out}/{dataset_id}" in result.stdout
    assert s3.keys(bucket) == [
        f"data/{dataset_id}/{name}"
        for name in (
            ".huggingface.yaml",
            "_README.md",
            "_croissant.json",
            "_manifest.json",
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet",
        )
    ]
    manifest = json.loads(s3.get(bucket, f"data/{dataset_id}/_manifest.json"))
    assert [entry["rows"] for entry in manifest["files"]] == [2_000, 2_000, 1_000]
    assert (
        manifest["files"][0]["checksum"]
        == xxhash.xxh3_128(s3.get(bucket, f"data/{dataset_id}/part-00000.parquet")).hexdigest()
    )

    checked = invoke("inspect", f"{out}/{dataset_id}", "--deep")
    assert checked.exit_code == 0, checked.output
    assert (
        "verified: 3 files, 5,000 rows re-derived, x of 5,000 re-decoded" in checked.stdout
    )  # x re-decoded from S3 parts

    table = pq.read_table(f"{bucket}/data/{dataset_id}", filesystem=s3.filesystem())
    assert table.num_rows == N
    from jobs.reader import open_dataset  # the reader API by URI: verified against the manifest, then streamed

    dataset = open_dataset(f"{out}/{dataset_id}")
    streamed = [row["sample_id"] for row in dataset.torch(columns=["sample_id", "x"], shuffle=True, seed=1)]
    assert sorted(int(sample_id) for sample_id in streamed) == list(range(N)) and dataset.to_numpy()["x"].shape == (
        N,
        8,
        8,
    )
    np.testing.assert_array_equal(np.sort(table["sample_id"].to_numpy()), np.arange(N))
    np.testing.assert_array_equal(table.sort_by("sample_id")["seed"].to_numpy(), seeds.row_seeds(5, np.arange(N)))

    failed = invoke(
        "generate",
        "--model",
        f"{trained.base}/{trained.spiky}",
        "--n",
        str(N),
        "--seed",
        str(SPIKY_SEED),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--batch-size",
        str(SPIKY_BATCH),
        "--out",
        out,
    )
    assert failed.exit_code == 1, failed.output
    assert "to NaN or inf" in failed.stderr and "sample ids 0.." not in failed.stderr, (
        failed.stderr
    )  # a later shard, after the probe
    assert [key for key in s3.keys(bucket) if key.endswith("_manifest.json")] == [f"data/{dataset_id}/_manifest.json"]
    assert not [
        key for key in s3.keys(bucket, markers=True) if f"-v{trained.spiky}-" in key
    ]  # nothing of the broken dataset
    assert not [key for key in s3.keys(bucket) if key.endswith(".tmp")]


def test_a_broken_version_is_deleted_only_after_its_workers_are_gone(trained, local_ray, tmp_path, monkeypatch):
    """The failed generate's cleanup waits for the pool: a worker still writing a part when the dataset was deleted
    landed it afterwards (seen on S3 under CI load: part-00000.parquet of a broken dataset, no manifest)."""
    import ray
    from ray.exceptions import RayActorError

    from jobs.generate.job import generate
    from jobs.generate.storage import Storage

    workers: list[Any] = []
    at_delete: list[tuple[list[str], list[str]]] = []  # (workers that still answer, temporary files) per delete
    delete_dir = Storage.delete_dir

    def answers(worker: Any) -> str:
        try:
            return str(ray.get(worker.pid.remote(), timeout=30))
        except RayActorError:
            return ""

    def spied_delete_dir(storage: Storage, *parts: str) -> None:
        at_delete.append(
            ([pid for pid in map(answers, workers) if pid], [path.name for path in tmp_path.rglob("*.tmp")])
        )
        delete_dir(storage, *parts)

    monkeypatch.setattr(Storage, "delete_dir", spied_delete_dir)
    config = GenerateConfig(
        n=N,
        model=f"{trained.base}/{trained.spiky}",
        out=str(tmp_path),
        seed=SPIKY_SEED,
        rows_per_shard=ROWS_PER_SHARD,
        batch_size=SPIKY_BATCH,
    )
    with pytest.raises(VaegenError, match="to NaN or inf"):
        generate(config, on_workers=workers.extend)
    assert len(workers) >= 2 and at_delete == [([], [])]  # one delete, after every worker of the pool was stopped
    assert list(tmp_path.iterdir()) == []


def test_refresh_to_s3_writes_latest_is_idempotent_and_prunes(trained, local_ray, s3):
    name = trained.model_with(trained.good, trained.good)
    promote(f"{name}/1")
    bucket = s3.bucket()
    out = f"s3://{bucket}/root"
    model = f"{name}@champion"

    first = refresh(refresh_config(model, out, keep=1))
    assert first.action == "generated"
    pointer = json.loads(s3.get(bucket, "root/latest"))
    manifest_key = f"root/{first.dataset_id}/_manifest.json"
    assert pointer["dataset_id"] == first.dataset_id and pointer["location"] == f"{out}/{first.dataset_id}"
    assert pointer["manifest_sha256"] == sha256_bytes(s3.get(bucket, manifest_key))
    etags = {key: s3.client().head_object(Bucket=bucket, Key=key)["ETag"] for key in s3.keys(bucket)}
    modified = s3.client().head_object(Bucket=bucket, Key=manifest_key)["LastModified"]

    second = refresh(refresh_config(model, out, keep=1))
    assert (second.action, second.dataset_id) == ("up-to-date", first.dataset_id)
    assert s3.client().head_object(Bucket=bucket, Key=manifest_key)["LastModified"] == modified
    assert {key: s3.client().head_object(Bucket=bucket, Key=key)["ETag"] for key in s3.keys(bucket)} == etags

    promote(f"{name}/2")
    third = refresh(refresh_config(model, out, keep=1))
    assert third.action == "generated" and third.pruned == [first.dataset_id]
    assert json.loads(s3.get(bucket, "root/latest"))["dataset_id"] == third.dataset_id
    assert not s3.keys(bucket, f"root/{first.dataset_id}/", markers=True)
    assert s3.keys(bucket) == sorted(
        [
            "root/latest",
            *[
                f"root/{third.dataset_id}/{name}"
                for name in (
                    ".huggingface.yaml",
                    "_README.md",
                    "_audit.json",
                    "_croissant.json",
                    "_manifest.json",
                    "part-00000.parquet",
                    "part-00001.parquet",
                    "part-00002.parquet",
                )
            ],
        ]
    )  # no lock, no .tmp
