"""The registry against real MLflow: a SQLite store in a temp folder, and once a real `mlflow server` over HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from jobs.cli import main
from jobs.train import run
from registry import listing, models, tracking
from vae_core import data as data_sources
from vae_core.errors import UsageError, VaegenError
from vae_core.training import model_config_for, train

NAME = models.DEFAULT_MODEL_NAME
UNREACHABLE_LIMIT_S = 30  # a batch job must fail fast, not retry with backoff for minutes


def fixed_z(latent_dim: int = 2) -> np.ndarray:
    return np.random.default_rng(123).standard_normal((5, latent_dim)).astype(np.float32)


def retrained_decoder(config):
    """The same training, in memory: CPU training is deterministic for a seed, so these are the logged weights."""
    dataset = data_sources.load(config.data)
    model_config = model_config_for(dataset, config.latent_dim, config.hidden_sizes, config.conditional)
    return train(dataset, model_config, config.train).model.decoder.eval()


@pytest.fixture(scope="module")
def two_versions(module_sqlite, tiny_train_config):
    """Versions 1 (seed 0) and 2 (seed 1) of vae-decoder, trained and registered by the real job."""
    first_config, second_config = tiny_train_config(seed=0), tiny_train_config(seed=1)
    first, second = run(first_config), run(second_config)
    return {"store": module_sqlite, "configs": (first_config, second_config), "results": (first, second)}


def test_train_registers_version_1_then_2(two_versions):
    first, second = two_versions["results"]
    assert (first.pinned.name, first.pinned.version) == (NAME, 1)
    assert (second.pinned.name, second.pinned.version) == (NAME, 2)
    assert first.pinned.run_id != second.pinned.run_id
    assert first.tracking_uri == two_versions["store"].uri
    versions = MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert sorted(int(version.version) for version in versions) == [1, 2]
    # the default local store writes into the tmp folder, nowhere else
    assert (two_versions["store"].root / "mlflow.db").is_file() and (two_versions["store"].root / "mlruns").is_dir()


def test_version_tags(two_versions):
    first, _ = two_versions["results"]
    tags = MlflowClient().get_model_version(NAME, "1").tags
    config = json.loads(tags["vaegen.config"])
    assert config["latent_dim"] == 2 and config["hidden_sizes"] == [128] and config["input_shape"] == [8, 8]
    assert config["num_classes"] == 0 and config["pixel_semantics"] == "bernoulli-mean-in-[0,1]"
    assert float(tags["vaegen.val_neg_elbo"]) == pytest.approx(first.val_neg_elbo, abs=1e-6)
    assert tags["vaegen.data_source"] == "digits"
    assert tags["vaegen.data_sha256"] == data_sources.load("digits").content_sha256()
    assert tags["vaegen.conditional"] == "false" and tags["vaegen.holdout_size"] == "359"


def test_run_metrics_params_and_artifacts(two_versions):
    first, _ = two_versions["results"]
    mlflow_client = MlflowClient()
    run_id = first.pinned.run_id
    for metric in ("train_loss", "val_loss"):
        history = mlflow_client.get_metric_history(run_id, metric)
        assert sorted(point.step for point in history) == [1, 2]
        assert all(np.isfinite(point.value) and point.value > 0 for point in history)
    logged_run = mlflow_client.get_run(run_id)
    assert logged_run.data.metrics["val_neg_elbo"] == pytest.approx(first.val_neg_elbo)
    assert logged_run.data.metrics["val_loss"] == pytest.approx(first.val_neg_elbo)  # the last epoch's value
    assert logged_run.data.params["train.epochs"] == "2" and logged_run.data.params["data"] == "digits"
    plots = {Path(item.path).name for item in mlflow_client.list_artifacts(run_id, "plots")}
    assert {"samples.png", "loss_curves.png", "manifold.png"} <= plots
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="plots"))
    assert (folder / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "reference, version",
    [
        (f"{NAME}/1", 1),
        (f"{NAME}/2", 2),
        (f"{NAME}/latest", 2),
        (f"models:/{NAME}/1", 1),
        (f"models:/{NAME}/latest", 2),
    ],
)
def test_resolve_versions(two_versions, reference, version):
    pinned = models.resolve(reference)
    assert (pinned.name, pinned.version, pinned.resolved_from) == (NAME, version, reference)
    assert pinned.run_id == two_versions["results"][version - 1].pinned.run_id
    assert pinned.uri == f"models:/{NAME}/{version}" and pinned.alias is None


def test_resolve_alias(two_versions):
    MlflowClient().set_registered_model_alias(NAME, "champion", "1")
    for reference in (f"{NAME}@champion", f"models:/{NAME}@champion"):
        pinned = models.resolve(reference)
        assert (pinned.version, pinned.alias, pinned.resolved_from) == (1, "champion", reference)
    MlflowClient().set_registered_model_alias(NAME, "champion", "2")
    assert models.resolve(f"{NAME}@champion").version == 2  # resolution reads the alias each time it is asked


def test_resolve_run_uri(two_versions):
    _, second = two_versions["results"]
    pinned = models.resolve(f"runs:/{second.pinned.run_id}/decoder")
    assert (pinned.name, pinned.version, pinned.run_id) == (NAME, 2, second.pinned.run_id)


@pytest.mark.parametrize(
    "reference, fragment",
    [
        ("no-such-model/1", "not registered"),
        ("no-such-model@champion", "not registered"),
        (f"{NAME}/99", "no version 99"),
        (f"{NAME}@nope", "no alias 'nope'"),
        (f"{NAME}/abc", "version must be a number"),
        ("garbage", "names no version or alias"),
        (f"runs:/{'0' * 32}/decoder", "no registered model version"),
    ],
)
def test_resolve_errors(two_versions, reference, fragment):
    with pytest.raises(UsageError, match=fragment) as caught:
        models.resolve(reference)
    assert "\n" not in str(caught.value)


def test_load_decoder_matches_the_trained_decoder(two_versions, no_pickle):
    first_config, _ = two_versions["configs"]
    loaded = models.load_decoder(models.resolve(f"{NAME}/1"))
    assert loaded.pinned.version == 1 and loaded.config.latent_dim == 2
    assert loaded.tags["data_source"] == "digits"
    assert all(isinstance(value, np.ndarray) for value in loaded.state.values())
    z = torch.from_numpy(fixed_z())
    retrained = retrained_decoder(first_config)
    with torch.no_grad():
        expected = retrained(z)
        got = loaded.build()(z)
        other = models.load_decoder(models.resolve(f"{NAME}/2")).build()(z)
    assert got.shape == (5, 8, 8)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, other)  # version 2 (seed 1) is a different model


def test_pyfunc_loads_without_pickle(two_versions, no_pickle):
    loaded = models.load_decoder(models.resolve(f"{NAME}/1"))
    z = fixed_z()
    with torch.no_grad():
        expected = loaded.build()(torch.from_numpy(z)).numpy()
    predicted = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict(z)
    assert predicted.shape == (5, 8, 8) and predicted.dtype == np.float32
    np.testing.assert_array_equal(predicted, expected)


def test_logged_model_has_no_pickle(two_versions, tmp_path):
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path)))
    files = {path.name for path in folder.rglob("*") if path.is_file()}
    assert {"MLmodel", "weights.npz", "config.json"} <= files
    assert not [name for name in files if name.endswith((".pkl", ".pickle"))], files
    with np.load(folder / "artifacts" / "weights.npz", allow_pickle=False) as weights:
        assert all(weights[key].dtype == np.float32 for key in weights.files)
    mlmodel = (folder / "MLmodel").read_text()
    # "models from code": MLflow runs the logged pyfunc_decoder.py, never unpickles a python_model.pkl
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model.pkl" not in mlmodel


def test_list_versions(two_versions):
    summaries = listing.list_versions(NAME)
    assert [(summary.name, summary.version) for summary in summaries] == [(NAME, 1), (NAME, 2)]
    assert summaries[0].tags["data_source"] == "digits"
    assert [summary for summary in listing.list_versions() if summary.name == NAME] == summaries
    with pytest.raises(UsageError, match="not registered"):
        listing.list_versions("no-such-model")


def test_conditional_model_round_trip(module_sqlite, tiny_train_config, no_pickle):
    config = tiny_train_config(conditional=True, epochs=1, register_as="vae-cvae")
    open_figures = plt.get_fignums()
    result = run(config)
    assert plt.get_fignums() == open_figures  # the job closes the figures it logged
    loaded = models.load_decoder(models.resolve("vae-cvae/latest"))
    assert result.pinned.version == 1 and loaded.config.num_classes == 10
    assert sum(loaded.config.class_prior) == pytest.approx(1.0)
    assert loaded.tags["conditional"] == "true"
    z, labels = fixed_z(), np.array([0, 1, 2, 3, 4], dtype=np.int64)
    with torch.no_grad():
        expected = loaded.build()(torch.from_numpy(z), torch.from_numpy(labels)).numpy()
    predicted = mlflow.pyfunc.load_model("models:/vae-cvae/1").predict({"z": z, "label": labels})
    np.testing.assert_array_equal(predicted, expected)


@pytest.mark.slow
class TestHttpServer:
    """The same flow against a real `mlflow server` over HTTP, artifacts proxied by the server."""

    def test_train_register_resolve_load(self, mlflow_http, tiny_train_config, no_pickle):
        config = tiny_train_config(register_as="vae-http")
        assert tracking.ensure_reachable() == mlflow_http.uri
        result = run(config)
        assert result.tracking_uri == mlflow_http.uri
        assert (result.pinned.name, result.pinned.version) == ("vae-http", 1)
        pinned = models.resolve("models:/vae-http/latest")
        assert pinned.run_id == result.pinned.run_id
        MlflowClient().set_registered_model_alias("vae-http", "champion", "1")
        assert models.resolve("vae-http@champion").version == 1
        loaded = models.load_decoder(pinned)
        z = fixed_z()
        retrained = retrained_decoder(config)
        with torch.no_grad():
            ours = loaded.build()(torch.from_numpy(z)).numpy()
            expected = retrained(torch.from_numpy(z)).numpy()
        np.testing.assert_array_equal(ours, expected)
        predicted = mlflow.pyfunc.load_model("models:/vae-http/1").predict(z)
        np.testing.assert_array_equal(predicted, ours)
        plots = {Path(item.path).name for item in MlflowClient().list_artifacts(result.pinned.run_id, "plots")}
        assert {"samples.png", "loss_curves.png", "manifold.png"} <= plots
        # everything went to the server: nothing written in the client's folder
        assert not (mlflow_http.root / "mlruns").exists() and not (mlflow_http.root / "mlflow.db").exists()

    def test_cli_models_lists_the_version(self, mlflow_http):
        result = CliRunner().invoke(main, ["models", "vae-http"])
        assert result.exit_code == 0, result.output
        assert "vae-http" in result.stdout and "digits" in result.stdout


def test_unreachable_server_fails_fast(mlflow_unreachable):
    started = time.monotonic()
    with pytest.raises(VaegenError) as caught:
        tracking.ensure_reachable()
    elapsed_s = time.monotonic() - started
    assert elapsed_s < UNREACHABLE_LIMIT_S
    assert not isinstance(caught.value, UsageError) and caught.value.exit_code == 1
    assert mlflow_unreachable.uri in str(caught.value) and "MLFLOW_TRACKING_URI" in str(caught.value)


def test_unreachable_server_cli_exits_1_with_one_line(mlflow_unreachable):
    started = time.monotonic()
    result = CliRunner().invoke(main, ["models"])
    elapsed_s = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed_s < UNREACHABLE_LIMIT_S
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaegen: error: cannot reach the MLflow tracking server")
    assert mlflow_unreachable.uri in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""


def test_train_job_against_unreachable_server_fails_before_training(mlflow_unreachable, tiny_train_config):
    started = time.monotonic()
    with pytest.raises(VaegenError, match="cannot reach"):
        run(tiny_train_config())
    assert time.monotonic() - started < UNREACHABLE_LIMIT_S
