"""Datasets and refreshes as MLflow runs: what was generated from which model version, and how fast.

These runs use MlflowClient directly rather than the fluent API's one global active run,
so a refresh run and the dataset run it causes can be open at the same time.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, RunStatus

DATASETS_EXPERIMENT = "vaegen-datasets"
REFRESH_EXPERIMENT = "vaegen-refresh"


class JobRun:
    def __init__(self, client: mlflow.MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, float(value))

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_dataset(self, manifest: dict[str, Any], location: str) -> None:
        """The manifest as an artifact, and the dataset as the run's MLflow dataset input."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "manifest.json")
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
            source = resolve_dataset_source(location)
        dataset = MetaDataset(source=source, name=manifest["dataset_id"], digest=manifest["spec_fingerprint"])
        self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", "generated")])])


def _experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent job
        return client.get_experiment_by_name(name).experiment_id


@contextlib.contextmanager
def job_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None) -> Iterator[JobRun]:
    """A run around a job; it ends FINISHED, or FAILED (re-raising) if the job raises."""
    client = mlflow.MlflowClient()
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name, tags=tags or {})
    job = JobRun(client, run.info.run_id)
    for key, value in params.items():
        client.log_param(job.run_id, key, json.dumps(value) if isinstance(value, (list, dict, tuple)) else value)
    try:
        yield job
    except BaseException:
        client.set_terminated(job.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(job.run_id, RunStatus.to_string(RunStatus.FINISHED))


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str) -> None:
    client = mlflow.MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)


def end_stale_run(run_id: str | None) -> None:
    """Mark the run of a killed job KILLED: MLflow has no heartbeat, so it would say RUNNING forever.

    Called only by a job that now holds the same dataset's writer guard, so that run is not live."""
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
    except mlflow.exceptions.MlflowException:  # deleted, or logged to another tracking server: nothing to end here
        pass
