"""Shared fixtures: real MLflow stores (SQLite in a temp folder, one real `mlflow server` on
SQLite, and one on a real PostgreSQL started from Debian's server binaries), a tiny trained
model, free ports. Nothing here mocks MLflow."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.abc
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_cluster import (
    TAG_VARIABLE,
    RayEnv,
    free_port,
    make_ray_env,
    stop_tagged,
)  # tests/ is on sys.path (rootdir conftest)

# One pool of native threads per core, not per process: each of the suite's xdist workers (and every process it
# starts) gets cores // workers threads. With torch's default, two workers' OpenMP pools (each sized to every core)
# oversubscribe the 2-core CI machine and spin-wait against each other: two trainings at once took 21-30 s each
# against 4.3 s with one thread each (benchmarks/threads.py; docs/decisions.md, "A suite that fits CI's budget").
# Set before torch or numpy load; a test that passes its own thread count (--threads, set_num_threads) keeps it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # in each worker only: `-n 0` runs keep every core
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)  # a value the caller exported wins


class _AbsentProbes(importlib.abc.MetaPathFinder):
    """Fail at once the imports MLflow's client tries on every REST request and run to detect Databricks
    (`dbruntime`, `pyspark`, `IPython`: none installed here). A failed import is not remembered, so each probe
    searched every import hook and sys.path entry again: under pytest's assertion-rewriting hook, with artifact
    downloads in 8 threads, 4,450 requests in test_promotion_refresh.py spent 19 s in MLflow's header
    resolution. The outcome is the one Python gives (ModuleNotFoundError); only names absent at start-up are
    listed, so an installed IPython or pyspark imports as always. Test processes only: `vaegen` is unchanged."""

    def __init__(self, *names: str):
        self.names = frozenset(name for name in names if importlib.util.find_spec(name) is None)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


sys.meta_path.insert(0, _AbsentProbes("dbruntime", "pyspark", "IPython"))

SERVER_START_TIMEOUT_S = 90  # `mlflow server` takes ~11 s to answer /health on 2 cores; leave room for a loaded CI box
SERVER_STOP_TIMEOUT_S = 5  # graceful shutdown waits on idle keep-alive connections; a test server can be killed
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian's `postgresql` package (.ci/run installs it where absent)
POSTGRES_START_TIMEOUT_S = 60  # initdb + start take ~3 s here
POSTGRES_STOP_TIMEOUT_S = 10  # fast shutdown (SIGINT) of an idle test cluster takes well under a second
POSTGRES_OS_USER = "postgres"  # postgres refuses to run as root; the package creates this user
MLFLOW_POSTGRES_WORKERS = 2  # as in production: the lock and the history must hold across server processes
STORE_TEXT_MAX_BYTES = 1 << 20  # copy_store rewrites paths in files up to this size (MLmodel, meta files)
TINY_EPOCHS = 2  # enough to train, register and plot; the loss still falls between the two epochs

# The suite runs on two pytest-xdist workers, one test module per worker at a time (pyproject's addopts:
# module fixtures are built once). Modules start in collection order: the longest go first, so that the run
# does not end on one worker still busy with a long module. The longest, as `--durations` measured them.
SLOWEST_MODULES_FIRST = (
    "test_races.py",
    "test_metrics.py",
    "test_promotion_refresh.py",
    "test_report_conditional.py",
    "test_governed.py",
    "test_deploy_refresh.py",
    "test_cluster_path.py",
    "test_generate.py",
    "test_promotion_copy.py",
    "test_conv.py",
    "test_gpu_check.py",
    "test_redaction.py",
    "test_refresh_recovery.py",
    "test_postgres.py",
    "test_webhook.py",
    "test_readme_publishing.py",
    "test_faults.py",
    "test_readme.py",
    "test_cli.py",
    "test_prune_races.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest modules first (SLOWEST_MODULES_FIRST), every other module after them in its usual order."""
    rank = {name: index for index, name in enumerate(SLOWEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a module


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


@dataclasses.dataclass
class MigratedTemplate:
    """One SQLite database migrated by MLflow's own code, copied (SQLite's backup API) into every fresh SQLite
    store that this process opens instead of running its ~40 alembic migrations again (seconds each time on a
    loaded 2-core box). The copy holds exactly what the migrations leave (tables, indexes, alembic_version), no
    rows: MLflow still creates the Default experiment itself, under the new store's own artifact root."""

    path: Path
    migrate: Callable[[Any], None]  # mlflow.store.db.utils._initialize_tables, the real one

    def initialize(self, engine) -> None:
        import sqlite3

        import sqlalchemy

        if engine.url.get_backend_name() != "sqlite" or engine.url.database in (None, "", ":memory:"):
            self.migrate(engine)
            return
        if not self.path.exists():
            scratch = self.path.with_suffix(".tmp")
            scratch.unlink(missing_ok=True)
            template_engine = sqlalchemy.create_engine(f"sqlite:///{scratch}")
            try:
                self.migrate(template_engine)
            finally:
                template_engine.dispose()
            scratch.rename(self.path)
        source = sqlite3.connect(self.path)
        target = engine.raw_connection()
        try:
            source.backup(target.driver_connection)
        finally:
            target.close()
            source.close()


@pytest.fixture(scope="session", autouse=True)
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplate]:
    """Fresh SQLite stores opened in this process start from one migrated template (MigratedTemplate); stores
    that `vaegen` subprocesses or `mlflow server` create migrate as usual."""
    import mlflow.store.db.utils as db_utils
    import mlflow.store.model_registry.sqlalchemy_store as registry_store

    template = MigratedTemplate(tmp_path_factory.mktemp("sqlite-template") / "migrated.db", db_utils._initialize_tables)
    with pytest.MonkeyPatch.context() as patch:
        # The registry store imported the function by name: both references go to the template.
        patch.setattr(db_utils, "_initialize_tables", template.initialize)
        patch.setattr(registry_store, "_initialize_tables", template.initialize)
        yield template


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """VAEGEN_CACHE for the whole session, never ~/.cache: quality reports train their reference classifier once
    per session and share it (a test about the cache itself points VAEGEN_CACHE at its own empty folder)."""
    root = tmp_path_factory.mktemp("vaegen-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAEGEN_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def cache_root(session_cache: Path) -> Path:
    """The session's VAEGEN_CACHE (session_cache), under the name modules already use."""
    return session_cache


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_behind() -> Iterator[None]:
    """A command run in-process (CliRunner) that starts a Ray keeps it, as a library call does; the console
    script stops it at exit. Stop it after the module, so that no later module meets a Ray on the default
    ports (Ray's default ports are per machine: a leftover made every later private Ray's actors fail)."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            from jobs.generate import ray_session

            ray_session.stop_local_ray()
            ray.shutdown()


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
            # /health answers before the store does: also one request that reads the backend store
            if requests.get(f"{uri}/health", timeout=2).status_code == 200 and (
                requests.get(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).status_code == 200
            ):
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


def untagged_environ() -> dict[str, str]:
    """os.environ without a test Ray's tag, for the session's servers (mlflow, PostgreSQL): a module's Ray env
    may be active when one first starts, and that Ray's teardown stops every process carrying its tag (CI lost
    its PostgreSQL that way: started while test_races' Ray env was active, stopped with that Ray)."""
    return {key: value for key, value in os.environ.items() if key != TAG_VARIABLE}


SERVER_LOGS: dict[str, Path] = {}  # each test server's URI -> its log, for a failing test's message


def server_log_tail(uri: str, chars: int = 3000) -> str:
    """The end of the log of the test `mlflow server` at `uri` (what a failing request's test prints)."""
    path = SERVER_LOGS.get(uri)
    return path.read_text(errors="replace")[-chars:] if path is not None and path.exists() else f"(no log for {uri})"


@contextlib.contextmanager
def run_mlflow_server(root: Path, backend_store_uri: str, workers: int = 1) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port (proxied local artifacts under root); yields its URI once
    /health answers, and ALWAYS stops it (its process group: the server and the workers it forked)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        backend_store_uri,
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    env = {key: value for key, value in untagged_environ().items() if not key.startswith("MLFLOW_")}
    # Webhooks to receivers on loopback (tests/test_webhook.py): MLflow sends only to public https by default,
    # and caches each event's webhook list for 60 s (a webhook registered mid-session would wait for it).
    env.update(
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_CACHE_TTL="1",
        # As deploy/ runs it: no GenAI job runner (three more processes per server, huey consumers polling
        # the backend store all session long; vaegen uses no MLflow server job, webhooks are sent by the
        # server's own threads), and a bounded connection pool per worker and store (PostgreSQL's 100
        # connections are shared by the session's servers and the race tests' bursts).
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_SQLALCHEMYSTORE_POOL_SIZE="5",
        MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW="5",
    )
    log_path = root / "server.log"
    SERVER_LOGS[f"http://127.0.0.1:{port}"] = log_path
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            uri = f"http://127.0.0.1:{port}"
            _wait_for_health(uri, process, log_path)
            yield uri
        finally:
            _stop_process_group(process)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` over HTTP on 127.0.0.1 (SQLite backend, proxied local artifacts); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with run_mlflow_server(root, sqlite_uri(root)) as uri:
        yield uri


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, AWS_* variables pointing pyarrow and boto3 at it, for one
    module; yields a fresh bucket's URI."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
                patch.delenv(key, raising=False)
            for key, value in {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
            }.items():
                patch.setenv(key, value)
            boto3.client("s3").create_bucket(Bucket="vaegen-test")
            yield "s3://vaegen-test"
    finally:
        server.stop()


# ---------------------------------------------------------------- PostgreSQL


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder, or None where the package is not installed."""
    found = [path.parent for path in Path("/").glob(POSTGRES_BIN_GLOB.lstrip("/") + "/postgres")]
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0, default=None)


@dataclasses.dataclass(frozen=True)
class Postgres:
    port: int
    database: str
    user: str = "postgres"  # the cluster's superuser (initdb --username); trust auth on 127.0.0.1

    @property
    def uri(self) -> str:
        # The driver named: SQLAlchemy 2.1 (what MLflow 3.17 installs) reads a bare postgresql:// as psycopg 3,
        # and `mlflow server` then dies with "No module named 'psycopg'" beside psycopg2.
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"


def _as_user(name: str) -> dict:
    """Popen arguments that run the child as `name` (dropping root's groups), or nothing if we are not root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _stop_postgres(process: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT: disconnect clients, checkpoint, exit), SIGKILL of the group if it hangs."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=POSTGRES_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=POSTGRES_STOP_TIMEOUT_S)


@contextlib.contextmanager
def run_postgres(database: str = "mlflow") -> Iterator[Postgres]:
    """initdb in a fresh temp folder, `postgres` on 127.0.0.1:<free port> (its Unix socket in that folder)
    as an unprivileged user, one database created; ALWAYS stopped and the folder removed afterwards."""
    binaries = postgres_bin()
    if binaries is None:
        pytest.skip(
            f"no PostgreSQL server under {POSTGRES_BIN_GLOB}: install Debian's `postgresql` package "
            "(`apt-get install postgresql`, as .ci/run does)"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            pytest.skip(
                f"running as root and there is no {POSTGRES_OS_USER!r} user to run postgres as "
                "(Debian's `postgresql` package creates it)"
            )
    as_user = _as_user(POSTGRES_OS_USER) if os.geteuid() == 0 else {}
    # Short and outside pytest's 0700 root-owned tmp tree: postgres must reach it, and the socket path
    # (<folder>/.s.PGSQL.<port>) must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="vg-pg-", dir="/tmp"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    data, log_path, port = root / "data", root / "postgres.log", free_port()
    process = None
    try:
        subprocess.run(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--no-locale",
            ],
            check=True,
            capture_output=True,
            timeout=POSTGRES_START_TIMEOUT_S,
            cwd=root,
            env=untagged_environ(),
            **as_user,
        )
        with open(log_path, "wb") as log:
            if as_user:
                os.chown(log_path, as_user["user"], as_user["group"])
            # fsync off: a test cluster is thrown away; durability would only cost time.
            process = subprocess.Popen(
                [
                    str(binaries / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(root),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                ],
                cwd=root,
                env=untagged_environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **as_user,
            )
        server = Postgres(port, database)
        _create_database(server, process, log_path)
        yield server
    finally:
        if process is not None:
            _stop_postgres(process)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(server: Postgres, process: subprocess.Popen, log_path: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + POSTGRES_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"postgres exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            connection = psycopg2.connect(
                host="127.0.0.1", port=server.port, user=server.user, dbname="postgres", connect_timeout=2
            )
            break
        except psycopg2.OperationalError as error:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres not ready after {POSTGRES_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
                ) from error
            time.sleep(0.2)
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{server.database}"')
    finally:
        connection.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for this test session (skips, naming the package, where it is not installed)."""
    with run_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_postgres_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` with its backend store on the session's PostgreSQL (MLFLOW_POSTGRES_WORKERS workers,
    proxied local artifacts); yields its URI. Torn down before PostgreSQL (pytest's fixture order)."""
    root = tmp_path_factory.mktemp("mlflow-postgres")
    with run_mlflow_server(root, postgres.uri, workers=MLFLOW_POSTGRES_WORKERS) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_postgres(mlflow_postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingStore]:
    """MLflow pointed at the PostgreSQL-backed server for one test module, with an empty folder as cwd."""
    with use_tracking_store(mlflow_postgres_server, tmp_path_factory.mktemp("mlflow-postgres-cwd")) as store:
        yield store


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


def copy_store(source: Path, target: Path) -> None:
    """Copy a SQLite store's folder (mlflow.db, mlruns/, report/) into target, every absolute path that names
    source (artifact locations in the database, `artifact_path` in MLmodel files) rewritten to name target."""
    import sqlite3

    shutil.copytree(source, target, dirs_exist_ok=True)
    old, new = f"{source}/", f"{target}/"
    for path in target.rglob("*"):
        if path.is_file() and path.name != "mlflow.db" and path.stat().st_size < STORE_TEXT_MAX_BYTES:
            content = path.read_bytes()
            if old.encode() in content:
                path.write_bytes(content.replace(old.encode(), new.encode()))
    with contextlib.closing(sqlite3.connect(target / "mlflow.db")) as database, database:
        tables = [row[0] for row in database.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in database.execute(f'PRAGMA table_info("{table}")')]:
                database.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (old, new, old),
                )


@pytest.fixture(scope="session")
def session_trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedVersion:
    """The tiny model of trained_version (with its quality report), trained once per session in its own store;
    trained_version copies that store into each module's."""
    from jobs.train import run

    root = tmp_path_factory.mktemp("trained-store")
    with use_tracking_store(sqlite_uri(root), root) as store:
        config = _tiny_train_config()
        return TrainedVersion(store, config, run(config))


@pytest.fixture(scope="module")
def trained_version(module_sqlite: TrackingStore, request: pytest.FixtureRequest) -> TrainedVersion:
    """One tiny model trained on digits and registered as version 1 (with its quality report) in this module's
    SQLite store: a copy of the session's (session_trained), or trained here if the store was used already."""
    from jobs.train import run

    if (module_sqlite.root / "mlflow.db").exists():
        config = _tiny_train_config()
        return TrainedVersion(module_sqlite, config, run(config))
    trained = request.getfixturevalue("session_trained")
    copy_store(trained.store.root, module_sqlite.root)
    pinned = trained.result.pinned
    source = pinned.source.replace(f"{trained.store.root}/", f"{module_sqlite.root}/")
    result = dataclasses.replace(
        trained.result, tracking_uri=module_sqlite.uri, pinned=dataclasses.replace(pinned, source=source)
    )
    return TrainedVersion(module_sqlite, trained.config, result)


def register_untrained_decoder(name: str = "vae-decoder", val_neg_elbo: float = 40.0, config=None, init=None):
    """A seeded, untrained decoder registered through the path training uses (weights-only, config, tags), in
    the active store: for tests that need a version to decode with and gates to pass, not a good model. Seconds,
    where training takes tens of seconds on a loaded 2-core box. `config`: a VAEConfig, default VAEConfig();
    `init(model)`, when given, sets the weights instead (a decoder built to behave some way)."""
    import torch

    from registry import models
    from vae_core.config import VAEConfig
    from vae_core.model import VAE
    from vae_core.training import TrainResult

    torch.manual_seed(0)
    model = VAE(config or VAEConfig())
    if init is not None:
        init(model)
    result = TrainResult(model=model, history=[], val_neg_elbo=val_neg_elbo, train_size=1, holdout_size=1, seconds=0.0)
    with models.training_run("vaegen-train", "untrained-decoder", {}) as run:
        return run.register(result, name, {})


@pytest.fixture(scope="module")
def untrained_version(module_sqlite: TrackingStore) -> TrackingStore:
    """vae-decoder/1, an untrained decoder (register_untrained_decoder), in this module's SQLite store."""
    register_untrained_decoder()
    return module_sqlite


@pytest.fixture(scope="module")
def module_http(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackingStore]:
    """Like mlflow_http, shared by one test module: expensive setup (training) once, on the shared server."""
    with use_tracking_store(mlflow_server, tmp_path_factory.mktemp("mlflow-http")) as store:
        yield store


class LocalRay:
    """A local Ray with 2 CPUs, private HOME / temp dir / auth mode; (re)started on demand."""

    def __init__(self, env: RayEnv):
        self.env = env

    def ensure(self) -> None:
        import logging

        import ray

        if ray.is_initialized() and os.environ.get("RAY_ADDRESS") is None:
            return
        from jobs.generate.ray_session import free_ports_only

        ray.shutdown()
        with free_ports_only():  # not Ray's default agent port: a `ray start` test beside it needs that one
            ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)


@pytest.fixture(scope="module")
def local_ray_module() -> Iterator[LocalRay]:
    """A LocalRay for the module (its env active, started by ensure()); killed and its processes stopped by tag."""
    import ray

    from jobs.generate import ray_session

    env = make_ray_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.variables().items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        local = LocalRay(env)
        try:
            yield local
        finally:
            ray_session.stop_local_ray()  # kill, not Ray's graceful shutdown: nothing on it is kept
            ray.shutdown()
            survivors = stop_tagged(env.tag)
            shutil.rmtree(env.root, ignore_errors=True)
    assert not survivors, f"local Ray processes survived ray.shutdown(): {survivors}"


@pytest.fixture
def local_ray(local_ray_module: LocalRay) -> LocalRay:
    """The module's local Ray, (re)started if a test left it stopped or joined another cluster."""
    local_ray_module.ensure()
    return local_ray_module


@contextlib.contextmanager
def private_local_ray(num_cpus: int = 2, num_gpus: int | None = None) -> Iterator[str]:
    """An in-process local Ray with a private HOME / temp dir / auth mode (tests/ray_cluster.py), for modules
    whose jobs run in this process and whose `vaegen` subprocesses join it (RAY_ADDRESS = the yielded GCS
    address); ALWAYS shut down and its processes stopped by tag."""
    import logging

    import ray

    from jobs.generate.ray_session import free_ports_only
    from ray_cluster import make_ray_env, stop_tagged

    env = make_ray_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.variables().items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.shutdown()
        with free_ports_only():  # not Ray's default agent port: a `ray start` test beside it needs that one
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            survivors = stop_tagged(env.tag)
            shutil.rmtree(env.root, ignore_errors=True)
    assert not survivors, f"local Ray processes survived ray.shutdown(): {survivors}"
