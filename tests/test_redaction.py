"""Credentials in URIs are never persisted or printed (issue 16's probes): a real `mlflow server`
reached through `http://alice:PASSWORD@127.0.0.1:PORT` (the server has no auth and ignores
them, as a proxy in front of it would not), a real local Ray for `generate`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import mlflow
import pytest

from conftest import TrackingStore, use_tracking_store
from helpers import invoke
from jobs.generate.spec import FORMAT_VERSION
from ray_cluster import free_port  # tests/ is on sys.path (rootdir conftest)
from registry.models import TAG_PREFIX

SOURCE_PASSWORD, TARGET_PASSWORD = "S3cretPW", "TargetPW"


def with_credentials(uri: str, user: str, password: str) -> str:
    return uri.replace("http://", f"http://{user}:{password}@", 1)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SOURCE_PASSWORD not in text and TARGET_PASSWORD not in text, text


@pytest.fixture(scope="module")
def alice(mlflow_server, tiny_train_config, tmp_path_factory) -> Iterator[tuple[TrackingStore, str]]:
    """This process on the shared server as alice (credentials in the URI); a model of its own trained there."""
    from jobs.train import run

    with use_tracking_store(
        with_credentials(mlflow_server, "alice", SOURCE_PASSWORD), tmp_path_factory.mktemp("alice")
    ) as store:
        name = f"redact-{uuid.uuid4().hex[:8]}"
        run(tiny_train_config(register_as=name, report=False))
        yield store, name


def test_cannot_reach_names_the_server_without_its_password(tmp_path):
    uri = f"http://alice:{SOURCE_PASSWORD}@127.0.0.1:{free_port()}"
    with use_tracking_store(uri, tmp_path):
        result = invoke("models")
    assert result.exit_code == 1, result.output
    assert f"cannot reach the MLflow tracking server at http://***@127.0.0.1:{uri.rsplit(':', 1)[1]}" in result.stderr
    assert_no_secret(result.output)


@pytest.mark.slow
def test_generate_records_and_prints_no_credentials(alice, local_ray, mlflow_server, tmp_path):
    store, name = alice
    result = invoke("generate", "--model", f"{name}/1", "--n", "2000", "--seed", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)
    dataset_id = f"{name}-v1-n2000-seed1-float32-f{FORMAT_VERSION}"
    text = (tmp_path / dataset_id / "_manifest.json").read_text()
    assert_no_secret(text)
    record = json.loads(text)
    assert record["lineage"]["tracking_uri"] == mlflow_server.replace("http://", "http://***@")
    run = mlflow.MlflowClient().get_run(record["lineage"]["run_id"])
    artifact = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/manifest.json")
    assert artifact["lineage"]["tracking_uri"] == record["lineage"]["tracking_uri"]
    assert_no_secret(
        json.dumps(artifact),
        json.dumps(run.data.params),
        json.dumps(run.data.tags),
        *(item.dataset.source for item in run.inputs.dataset_inputs),
    )


@pytest.mark.slow
def test_an_unknown_model_error_shows_no_password(alice, local_ray, tmp_path):
    result = invoke("generate", "--model", "no-such-model/1", "--n", "10", "--out", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert "is not registered at http://***@127.0.0.1" in result.stderr
    assert_no_secret(result.output)


@pytest.mark.slow
def test_promote_to_another_tracking_uri_stores_and_prints_no_credentials(alice, mlflow_server):
    store, name = alice
    target_uri = with_credentials(mlflow_server, "bob", TARGET_PASSWORD)
    target_model = f"{name}-prod"
    result = invoke(
        "promote",
        f"{name}/1",
        "--to-model",
        target_model,
        "--to-tracking-uri",
        target_uri,
        "--reason",
        "to prod",
        "--no-quality-gate",
    )
    assert result.exit_code == 0, result.output
    assert f"at {mlflow_server.replace('http://', 'http://***@')}" in result.stderr
    assert_no_secret(result.output)
    plain = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    tags = plain.get_model_version(target_model, "1").tags
    assert tags[f"{TAG_PREFIX}copied_from_tracking_uri"] == mlflow_server.replace("http://", "http://***@")
    assert_no_secret(json.dumps(tags), json.dumps(plain.get_registered_model(target_model).tags))
