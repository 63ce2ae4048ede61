"""Promotion into another registry (`--to-model` + `--to-tracking-uri`), and `vaegen models`
showing a conditional version's classes: real SQLite stores, no mocks."""

from __future__ import annotations

import json
import os

import mlflow
import numpy as np

from helpers import invoke
from jobs.train import run
from registry import models
from vae_core import sampling


def test_promote_into_another_registry(mlflow_sqlite, tiny_train_config, no_pickle, tmp_path):
    source = run(tiny_train_config(epochs=50, register_as="dev-decoder"))  # 50 epochs passes the quality gate
    prod_uri = f"sqlite:///{tmp_path}/prod/mlflow.db"
    (tmp_path / "prod").mkdir()

    result = invoke(
        "promote", "dev-decoder/1", "--to-model", "prod-decoder", "--to-tracking-uri", prod_uri, "--reason", "release 1"
    )
    assert result.exit_code == 0, result.output
    assert "promoted: prod-decoder@champion -> version 1 (was None)" in result.stdout
    assert "gate quality        PASS" in result.stdout

    prod = mlflow.MlflowClient(tracking_uri=prod_uri, registry_uri=prod_uri)
    copy = prod.get_model_version_by_alias("prod-decoder", "champion")
    assert str(copy.version) == "1"
    assert copy.tags["vaegen.copied_from"] == "models:/dev-decoder/1"
    assert copy.tags["vaegen.copied_from_tracking_uri"] == mlflow_sqlite.uri
    assert copy.tags["vaegen.val_neg_elbo"] == f"{source.val_neg_elbo:.6f}"
    assert json.loads(copy.tags["vaegen.promotion.champion"])["reason"] == "release 1"
    # The source registry has no prod model and no alias: nothing moved there.
    dev = mlflow.MlflowClient(tracking_uri=mlflow_sqlite.uri)
    assert [model.name for model in dev.search_registered_models()] == ["dev-decoder"]
    assert dev.get_registered_model("dev-decoder").aliases == {}

    # The command named the target registry per call: this process still points at the source one.
    assert mlflow.get_tracking_uri() == mlflow_sqlite.uri
    assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_sqlite.uri

    # The copy decodes exactly like the original, through our loader and for generic pyfunc users.
    z = sampling.draw(0, np.arange(16), 2)[1]
    expected = sampling.decode(models.load_decoder(models.resolve("dev-decoder/1")).build(), z)
    mlflow.set_tracking_uri(prod_uri)
    copied = models.load_decoder(models.resolve("prod-decoder@champion"))
    np.testing.assert_array_equal(sampling.decode(copied.build(), z), expected)
    np.testing.assert_array_equal(mlflow.pyfunc.load_model("models:/prod-decoder/1").predict(z), expected)


def test_to_tracking_uri_needs_to_model(mlflow_sqlite, trained_version):
    result = invoke("promote", "vae-decoder/1", "--to-tracking-uri", "sqlite:///x.db", "--reason", "r")
    assert result.exit_code == 2
    assert "--to-tracking-uri needs --to-model" in result.stderr


def test_models_shows_conditional_classes(mlflow_sqlite, tiny_train_config):
    run(tiny_train_config(conditional=True, register_as="cvae", report=False))
    run(tiny_train_config(register_as="plain", report=False))
    result = invoke("models")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert "conditional (10 classes)" in rows["cvae"]
    assert "unconditional" in rows["plain"] and "conditional (" not in rows["plain"]
