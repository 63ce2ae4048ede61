"""Datasets and refreshes as MLflow runs: what was generated from which model version, and how fast."""

from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any, Iterator

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

DATASETS_EXPERIMENT = "vaegen-datasets"
REFRESH_EXPERIMENT = "vaegen-refresh"


@contextlib.contextmanager
def job_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[str]:
    """An MLflow run around a job; it ends FAILED (and re-raises) if the job does."""
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params({key: json.dumps(value) if isinstance(value, (list, dict, tuple)) else value for key, value in params.items()})
        yield run.info.run_id


def log_metrics(metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics)


def log_dataset(manifest: dict[str, Any], location: str) -> None:
    """The manifest as an artifact, and the dataset as the run's MLflow dataset input."""
    mlflow.log_dict(manifest, "manifest.json")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        source = resolve_dataset_source(location)
    dataset = MetaDataset(source=source, name=manifest["dataset_id"], digest=manifest["spec_fingerprint"])
    mlflow.log_input(dataset, context="generated")
