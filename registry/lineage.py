"""Datasets and refreshes as MLflow runs, and the links the MLflow UI shows between data, runs and
models: the training data as an input of the training run, and each generated dataset's run
linked both ways to the model version it came from.

These runs use MlflowClient directly rather than the fluent API's one global active run,
so a refresh run and the dataset run it causes can be open at the same time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric, Param, RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from registry import descriptions, filters
from registry.pinned import PinnedModel
from vae_core.quality_names import quality_metrics

DATASETS_EXPERIMENT = "vaegen-datasets"  # dataset runs of versions without a logged model here
REFRESH_EXPERIMENT = "vaegen-refresh"
DIGEST_CHARS = 32  # MLflow caps a dataset digest at 36 characters; 128 bits of a sha256 still name the data
CONTEXT_TAG = "mlflow.data.context"  # the UI shows it beside the dataset ("Training", "Generated")


class DataSpecSource(DatasetSource):
    """A vaegen data spec (`digits`, `mnist:DIR`, `npz:FILE`, ...) as an MLflow dataset source:
    the string `vaegen train --data` took, which loads the same data again."""

    def __init__(self, spec: str):
        self.spec = spec

    @staticmethod
    def _get_source_type() -> str:
        return "vaegen-data"

    def load(self) -> Any:
        from vae_core import data

        return data.load(self.spec)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never claims a source someone else logged

    @classmethod
    def _resolve(cls, raw_source: Any) -> DataSpecSource:
        raise NotImplementedError("construct DataSpecSource(spec) directly")

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DataSpecSource:
        return cls(source_dict["spec"])


@dataclasses.dataclass(frozen=True)
class DataRef:
    """A dataset as MLflow names it in run inputs and in metrics: name and digest."""

    name: str
    digest: str


def _dataset_input(dataset: MetaDataset, context: str) -> DatasetInput:
    return DatasetInput(dataset._to_mlflow_entity(), [InputTag(CONTEXT_TAG, context)])


def log_training_data(run_id: str, spec: str, sha256: str) -> DataRef:
    """The training data as the run's input (context "training"): the UI lists it under Datasets."""
    ref = DataRef(spec, sha256[:DIGEST_CHARS])
    dataset = MetaDataset(source=DataSpecSource(spec), name=ref.name, digest=ref.digest)
    mlflow.MlflowClient().log_inputs(run_id, datasets=[_dataset_input(dataset, "training")])
    return ref


def log_linked_metrics(
    run_id: str, metrics: dict[str, float], model_id: str | None = None, data: DataRef | None = None
) -> None:
    """Run metrics that also name the logged model and the dataset they describe: the logged
    model's page then lists them, with the dataset under "Datasets used" and the run under "Runs"."""
    now_ms = int(time.time() * 1000)
    entities = [
        Metric(
            key,
            float(value),
            now_ms,
            0,
            model_id=model_id,
            dataset_name=data.name if data else None,
            dataset_digest=data.digest if data else None,
        )
        for key, value in metrics.items()
    ]
    if entities:
        mlflow.MlflowClient().log_batch(run_id, metrics=entities)


def logged_model_id(version: ModelVersion) -> str | None:
    """The logged model behind a registered version. `log_model(registered_model_name=...)` leaves
    the version's model_id empty in MLflow 3.17 and names it in the source, `models:/<model id>`
    (which is also how the UI finds it); a version registered from a plain path has none."""
    if version.model_id:
        return version.model_id
    match = re.fullmatch(r"models:/([^/@]+)", version.source or "")  # the UI's own test
    return match[1] if match else None


def run_summary(client: mlflow.MlflowClient, run_id: str | None) -> dict[str, Any] | None:
    """Name, ids and params of a run, as the descriptions use them; None if it is not in this store."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return {
        "name": run.info.run_name,
        "run_id": run_id,
        "experiment_id": run.info.experiment_id,
        "params": dict(run.data.params),
    }


class JobRun:
    def __init__(self, client: mlflow.MlflowClient, run_id: str, experiment: str):
        self.client = client
        self.run_id = run_id
        self.experiment = experiment  # its name
        self.model_id: str | None = None  # set by dataset_run: metrics then name the model...
        self.data: DataRef | None = None  # ...and the dataset they describe
        self.describe: Callable[[dict[str, Any], str], str] | None = None  # dataset_run's description, once committed

    def log_metrics(self, metrics: dict[str, float]) -> None:
        log_linked_metrics(self.run_id, metrics, self.model_id, self.data)

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_dataset(self, manifest: dict[str, Any], location: str) -> None:
        """The manifest as an artifact, and the dataset as the run's MLflow dataset input."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder, "manifest.json")
            path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path))
        self.client.log_inputs(self.run_id, [_dataset_input(_manifest_dataset(manifest, location), "generated")])
        if self.describe is not None:
            self.client.set_tag(self.run_id, MLFLOW_RUN_NOTE, self.describe(manifest, location))


# MLflow 3.17's UI opens an experiment in its GenAI view unless the experiment says it holds model training.
EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
RUN_KIND_TAG = "vaegen.kind"  # "training" or "dataset": the two kinds of run share the model's experiment


def _manifest_dataset(manifest: dict[str, Any], location: str) -> MetaDataset:
    """A committed dataset as MLflow names it, the same for its dataset run and for every run that consumes it:
    name = dataset id, digest = the manifest's spec fingerprint."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        source = resolve_dataset_source(location)
    return MetaDataset(source=source, name=manifest["dataset_id"], digest=manifest["spec_fingerprint"])


def log_consumed_dataset(manifest: dict[str, Any], location: str) -> str:
    """The dataset as an input (context "training") of the active run, or of a new one if none is active;
    the run's id. The UI then shows dataset -> consuming run beside model -> dataset run."""
    dataset = _manifest_dataset(manifest, location)
    run = mlflow.active_run() or mlflow.start_run(run_name=f"consume-{manifest['dataset_id']}")
    mlflow.MlflowClient().log_inputs(run.info.run_id, [_dataset_input(dataset, "training")])
    return run.info.run_id


def _experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        experiment_id = client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent job
        return client.get_experiment_by_name(name).experiment_id
    return experiment_id


def mark_model_training(experiment: mlflow.entities.Experiment) -> None:
    """Tag an experiment vaegen writes to as model training (its UI view), unless someone set its kind already."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)


@contextlib.contextmanager
def job_run(
    experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None
) -> Iterator[JobRun]:
    """A run around a job; it ends FINISHED, KILLED if interrupted (Ctrl-C, SIGTERM), or FAILED if the job raises."""
    client = mlflow.MlflowClient()
    run = client.create_run(_experiment_id(client, experiment), run_name=run_name, tags=tags or {})
    job = JobRun(client, run.info.run_id, experiment)
    client.log_batch(
        job.run_id,
        params=[  # one round trip to a tracking server, not one per parameter
            Param(key, json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value))
            for key, value in params.items()
        ],
    )
    try:
        yield job
    except BaseException as error:
        status = RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED
        client.set_terminated(job.run_id, RunStatus.to_string(status))
        raise
    client.set_terminated(job.run_id, RunStatus.to_string(RunStatus.FINISHED))


def _model_experiment(client: mlflow.MlflowClient, model_id: str | None) -> str:
    """The experiment of the logged model: the UI shows a run's linked models ("Logged models",
    "Registered models") only when they are in the run's own experiment. DATASETS_EXPERIMENT
    when the version has no logged model here or its experiment is deleted."""
    if model_id:
        with contextlib.suppress(MlflowException):
            experiment = client.get_experiment(client.get_logged_model(model_id).experiment_id)
            if experiment.lifecycle_stage == "active":
                return experiment.name
    return DATASETS_EXPERIMENT


@contextlib.contextmanager
def dataset_run(dataset_id: str, fingerprint: str, model: PinnedModel, params: dict[str, Any]) -> Iterator[JobRun]:
    """job_run for one generated dataset, linked both ways to the version it came from: the run
    sits in the experiment of the version's logged model and has that model as an input (its page
    shows the model and the registered version); its metrics name the model and the dataset (the
    logged model's page lists the dataset); its description links the version and the training run."""
    client = mlflow.MlflowClient()
    version = client.get_model_version(model.name, str(model.version))
    model_id, model_run = logged_model_id(version), run_summary(client, version.run_id)

    def describe(manifest: dict[str, Any] | None = None, location: str | None = None) -> str:
        return descriptions.dataset_run_description(
            dataset_id, model.to_dict(), model_run, model_id, manifest, location
        )

    tags = {
        RUN_KIND_TAG: "dataset",
        "vaegen.dataset_id": dataset_id,
        "vaegen.model_name": model.name,
        "vaegen.model_version": str(model.version),
        MLFLOW_RUN_NOTE: describe(),
    }
    if getattr(model, "alias_gate", None):  # an alias's holder: gated by `vaegen promote`, or used with --allow-ungated
        tags["vaegen.alias_gate"] = model.alias_gate
    with job_run(_model_experiment(client, model_id), dataset_id, params, tags) as run:
        run.model_id, run.data, run.describe = model_id, DataRef(dataset_id, fingerprint), describe
        if model_id:
            client.log_inputs(run.run_id, models=[LoggedModelInput(model_id)])
        yield run


def log_dataset_quality(manifest: dict[str, Any], figures: dict[str, float]) -> str:
    """A dataset report's figures as metrics of the dataset's run, naming the model and the dataset; its run id."""
    run_id = manifest["lineage"]["run_id"]
    model = manifest["model"]
    model_id = logged_model_id(mlflow.MlflowClient().get_model_version(model["name"], str(model["version"])))
    log_linked_metrics(
        run_id,
        quality_metrics(figures),
        model_id,
        DataRef(manifest["dataset_id"], manifest["spec_fingerprint"]),
    )
    return run_id


def log_dataset_audit(manifest: dict[str, Any], audit: dict[str, Any]) -> str | None:
    """The publish audit's verdict on the dataset's run: tags (verdict, each check), the compared figures as
    metrics, the record as `audit/_audit.json`; the run id, None when the dataset names no run."""
    run_id = (manifest.get("lineage") or {}).get("run_id")
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    tags = {"vaegen.audit": audit["verdict"], "vaegen.audit.at": audit["audited_at"]}
    tags.update({f"vaegen.audit.{check['name']}": check["status"] for check in audit["checks"]})
    if audit.get("reason"):
        tags["vaegen.audit.reason"] = audit["reason"]
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    metrics = {
        f"audit.{check['name']}.{figure}": entry["value"]
        for check in audit["checks"]
        for figure, entry in check.get("figures", {}).items()
    }
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    client.log_text(run_id, json.dumps(audit, indent=2, sort_keys=True), "audit/_audit.json")
    return run_id


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


def end_stale_runs_tagged(experiment: str, key: str, value: str) -> None:
    """end_stale_run for every RUNNING run of `experiment` tagged key=value.

    Such a run is a dead refresh's run, found by its lock.
    """
    client = mlflow.MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return
    search = lambda **options: client.search_runs([found.experiment_id], **options)  # noqa: E731
    running = filters.search_equal(
        search, f"tags.`{key}`", value, lambda run: run.data.tags.get(key), extra="attributes.status = 'RUNNING'"
    )
    for run in running:
        end_stale_run(run.info.run_id)
