"""Where the tracking server is, and a fast, clear failure when it cannot be reached.

With no MLFLOW_TRACKING_URI, MLflow's own default applies (SQLite `mlflow.db` and `mlruns/`
in the current folder), so `mlflow ui` started there shows everything vaegen logged.
mlflow and requests are imported inside the functions that need them: the CLI imports this
module for every command, `vaegen inspect` included, which must not pay for MLflow.
"""

from __future__ import annotations

import os

from registry.redaction import redact_uri
from vae_core.errors import VaegenError

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


def tracking_uri() -> str:
    """The URI to connect to, credentials included: never print or store it; see shown_uri()."""
    import mlflow

    return mlflow.get_tracking_uri()


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI (this process's, or `uri`) as it may be printed, logged or stored."""
    return redact_uri(uri or tracking_uri())


def ensure_reachable(uri: str | None = None) -> str:
    """Raise a one-line VaegenError within HEALTH_TIMEOUT_S if an HTTP tracking server is down.

    Returns the URI as it may be shown (credentials redacted)."""
    uri = uri or tracking_uri()
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


def use(uri: str) -> None:
    """Point this process (and any child it starts) at another tracking server; its registry follows."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
