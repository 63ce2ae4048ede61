"""Where the tracking server is, and a fast, clear failure when it cannot be reached or does not exist.

With no MLFLOW_TRACKING_URI, MLflow's own default applies (SQLite `mlflow.db` and `mlruns/`
in the current folder), so `mlflow ui` started there shows everything vaegen logged. Only
`vaegen train` creates a local store; every other command refuses one that does not exist,
rather than letting MLflow create an empty one and then report the model as unknown.

Importing this module is cheap (no mlflow): the command line sets its defaults before anything heavy.
"""

from __future__ import annotations

import os
from pathlib import Path

from registry.redaction import redact_uri
from vae_core.errors import UsageError, VaegenError

HEALTH_TIMEOUT_S = 10  # a healthy server answers /health in milliseconds; 10 s covers a loaded one
# MLflow retries HTTP calls with backoff for minutes by default; a batch job should fail fast instead.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
QUIET_DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # keeps stderr for vaegen's own progress
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout carries results only
}


def configure_environment() -> None:
    """Defaults for a command-line process; anything the user set in the environment wins."""
    for key, value in {**HTTP_DEFAULTS, **QUIET_DEFAULTS}.items():
        os.environ.setdefault(key, value)


# Set by Ray's job supervisor in the environment of a driver started by `ray job submit`.
RAY_JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"
RAY_JOB_FIX = (
    "set it on the cluster (export MLFLOW_TRACKING_URI=... before `ray start`, or in the KubeRay pod spec) or "
    'per job: ray job submit --runtime-env-json \'{"env_vars": {"MLFLOW_TRACKING_URI": "..."}}\' ...'
)


def tracking_uri() -> str:
    """The URI to connect to, credentials included: never print or store it; see shown_uri()."""
    import mlflow

    return mlflow.get_tracking_uri()


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI (this process's, or `uri`) as it may be printed, logged or stored."""
    return redact_uri(uri or tracking_uri())


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local store (`sqlite:///...`, `file:...` or a plain path).

    None for servers and databases.
    """
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        return Path(path) if path and path != ":memory:" else None
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://") if uri.startswith("file://") else uri.removeprefix("file:"))
    if "://" not in uri:
        return Path(uri)
    return None


def check_store(uri: str, create: bool = False) -> None:
    """Inside a Ray job the store must be one the cluster reaches; anywhere, a local store must exist unless created."""
    if RAY_JOB_MARKER in os.environ:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise UsageError(
                "MLFLOW_TRACKING_URI is not set inside this Ray job, so MLflow would use an empty "
                f"./mlflow.db in Ray's copy of the working directory; {RAY_JOB_FIX}"
            )
        path = local_store_path(os.environ["MLFLOW_TRACKING_URI"])
        if path is not None and not path.is_absolute():
            raise UsageError(
                f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']} is a relative path, which inside a "
                f"Ray job means Ray's copy of the working directory; give an absolute path; {RAY_JOB_FIX}"
            )
    path = local_store_path(uri)
    if path is not None and not create and not path.exists():
        where = "on this node of the Ray cluster" if RAY_JOB_MARKER in os.environ else "here"
        raise UsageError(
            f"no MLflow store at {uri} {where}: run `vaegen train` first, or point MLFLOW_TRACKING_URI "
            "at your tracking server or store"
        )


def enter_store_folder_in_ray_job() -> None:
    """Inside a Ray job, work from the folder of a local store, as `vaegen` run beside its mlflow.db does.

    A job starts in Ray's temporary copy of the submitter's folder: MLflow would resolve a SQLite store's
    default artifact root (`./mlruns`) there, so a new experiment's artifacts would vanish with it, and on
    a multi-node cluster sharing one host Ray even replaces that folder while the driver runs. Absolute
    paths are all vaegen uses inside a job (check_store and the output root insist), so nothing else moves.
    """
    if RAY_JOB_MARKER not in os.environ:
        return
    path = local_store_path(os.environ.get("MLFLOW_TRACKING_URI", ""))
    if path is not None and path.is_absolute() and path.parent.is_dir():
        os.chdir(path.parent)


def ensure_reachable(uri: str | None = None, create: bool = False) -> str:
    """The tracking URI as it may be shown (credentials redacted), checked: a local store exists (or `create`),
    an HTTP server answers /health within HEALTH_TIMEOUT_S; otherwise a one-line error."""
    uri = uri or tracking_uri()
    check_store(uri, create)
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S)
            response.raise_for_status()
        except requests.RequestException as error:
            raise VaegenError(
                f"cannot reach the MLflow tracking server at {redact_uri(uri)} ({type(error).__name__}); "
                "start it or set MLFLOW_TRACKING_URI to a reachable server"
            ) from None
    return redact_uri(uri)


def active_run_id() -> str | None:
    """The active MLflow run of this process, without importing mlflow (no import: no run can be active)."""
    import sys

    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None
