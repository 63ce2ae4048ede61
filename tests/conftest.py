"""Shared fixtures: real MLflow stores (SQLite in a temp folder, and one real `mlflow server`),
a tiny trained model, free ports. Nothing here mocks MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from ray_cluster import TAG_VARIABLE, free_port  # tests/ is on sys.path (rootdir conftest)

SERVER_START_TIMEOUT_S = 90  # `mlflow server` takes ~11 s to answer /health on 2 cores; leave room for a loaded CI box
SERVER_STOP_TIMEOUT_S = 5  # graceful shutdown waits on idle keep-alive connections; a test server can be killed
TINY_EPOCHS = 2  # enough to train, register and plot; the loss still falls between the two epochs


@dataclasses.dataclass(frozen=True)
class TrackingStore:
    uri: str  # what MLFLOW_TRACKING_URI holds while the store is active
    root: Path  # the folder the test runs in (cwd); a SQLite store keeps mlflow.db and mlruns/ here


@contextlib.contextmanager
def use_tracking_store(uri: str, root: Path) -> Iterator[TrackingStore]:
    """Point MLflow (env var and global) at `uri` and chdir to `root`; restore both afterwards."""
    import mlflow

    root.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.chdir(root)
        mlflow.set_tracking_uri(uri)
        try:
            yield TrackingStore(uri, root)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            # Clears MLflow's global (and the env var it mirrors) so the restored env var rules again.
            mlflow.set_tracking_uri(None)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture
def mlflow_unreachable(tmp_path: Path) -> Iterator[TrackingStore]:
    """MLFLOW_TRACKING_URI pointing at an HTTP port on 127.0.0.1 where nothing listens."""
    with use_tracking_store(f"http://127.0.0.1:{free_port()}", tmp_path) as store:
        yield store


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading tests run with MLflow's pickle deserialisation refused, as a cautious deployment would."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")


def sqlite_uri(root: Path) -> str:
    return f"sqlite:///{root}/mlflow.db"


@pytest.fixture
def mlflow_sqlite(tmp_path: Path) -> Iterator[TrackingStore]:
    """A fresh SQLite tracking store + local artifacts in tmp_path, which is also the cwd."""
    with use_tracking_store(sqlite_uri(tmp_path), tmp_path) as store:
        yield store


@pytest.fixture(scope="module")
def module_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingStore]:
    """Like mlflow_sqlite, shared by one test module (for expensive setup such as training)."""
    root = tmp_path_factory.mktemp("mlflow-sqlite")
    with use_tracking_store(sqlite_uri(root), root) as store:
        yield store


def _wait_for_health(uri: str, process: subprocess.Popen, log_path: Path) -> None:
    import requests

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


def _stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=SERVER_STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` over HTTP on 127.0.0.1 (SQLite backend, proxied local artifacts); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", sqlite_uri(root),
        "--artifacts-destination", str(root / "artifacts"),
    ]
    # Not the tag of a test Ray either (when a module's Ray env is active as the server first starts):
    # that Ray's teardown stops every process carrying its tag, which would take this shared server down.
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_") and key != TAG_VARIABLE}
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        # Its own session (process group), so teardown stops the server and any workers it forked.
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            uri = f"http://127.0.0.1:{port}"
            _wait_for_health(uri, process, log_path)
            yield uri
        finally:
            _stop_process_group(process)


@pytest.fixture
def mlflow_http(mlflow_server: str, tmp_path: Path) -> Iterator[TrackingStore]:
    """Point MLflow at the shared HTTP server for one test, with an empty tmp_path as cwd."""
    with use_tracking_store(mlflow_server, tmp_path) as store:
        yield store


def _tiny_train_config(**overrides):
    """A TrainJobConfig for a tiny, fast model on the bundled digits; keyword overrides for TrainConfig fields
    (epochs, seed, ...) and TrainJobConfig fields (data, latent_dim, register_as, ...)."""
    from jobs.train import TrainJobConfig
    from vae_core.config import TrainConfig

    train_fields = {field.name for field in dataclasses.fields(TrainConfig)}
    train_overrides = {key: overrides.pop(key) for key in list(overrides) if key in train_fields}
    return TrainJobConfig(train=TrainConfig(**{"epochs": TINY_EPOCHS, **train_overrides}), **overrides)


@pytest.fixture(scope="session")
def tiny_train_config():
    """Factory: tiny_train_config(seed=1, register_as="x", ...) -> a fast TrainJobConfig on digits."""
    return _tiny_train_config


@dataclasses.dataclass(frozen=True)
class TrainedVersion:
    store: TrackingStore
    config: object  # jobs.train.TrainJobConfig
    result: object  # jobs.train.TrainJobResult; result.pinned is the registered version


@pytest.fixture(scope="module")
def trained_version(module_sqlite: TrackingStore) -> TrainedVersion:
    """One tiny model trained on digits and registered as version 1 in this module's SQLite store."""
    from jobs.train import run

    config = _tiny_train_config()
    return TrainedVersion(module_sqlite, config, run(config))


@pytest.fixture(scope="module")
def module_http(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingStore]:
    """Like mlflow_http, shared by one test module: expensive setup (training) once, on the shared server."""
    with use_tracking_store(mlflow_server, tmp_path_factory.mktemp("mlflow-http")) as store:
        yield store
