"""Copying a registered version into another model name or another registry (`vaegen copy`)."""

from __future__ import annotations

import contextlib
import tempfile

import mlflow
from mlflow.exceptions import MlflowException

from registry.models import (
    MODEL_ARTIFACT,
    TAG_PREFIX,
    PinnedModel,
    client,
    describe_version,
    resolve,
)
from registry.redaction import redact_uri

COPY_EXPERIMENT = "vaegen-copies"  # the runs holding versions copied in from another registry


def copy_version(reference: str, to_model: str, to_tracking_uri: str | None = None) -> str:
    """Copy a version into another registered model, in this registry or in another one (a dev
    registry promoting into a prod one); returns the copy's reference in the target registry."""
    pinned = resolve(reference)
    source_tags = client().get_model_version(pinned.name, str(pinned.version)).tags
    # The source's alias records (promotion, rollback) describe the source model's aliases, not the copy's.
    alias_records = (f"{TAG_PREFIX}promotion.", f"{TAG_PREFIX}rolled_back.")
    tags = {
        key: value
        for key, value in source_tags.items()
        if key.startswith(TAG_PREFIX) and not key.startswith(alias_records)
    }
    tags[f"{TAG_PREFIX}copied_from"] = pinned.uri
    if to_tracking_uri is not None:
        tags[f"{TAG_PREFIX}copied_from_tracking_uri"] = redact_uri(mlflow.get_tracking_uri())
    target = client(to_tracking_uri)
    if to_tracking_uri is None:
        copied = target.copy_model_version(pinned.uri, to_model)
        for key in source_tags:  # MLflow copies every tag; drop the alias records
            if key.startswith(alias_records):
                target.delete_model_version_tag(to_model, copied.version, key)
        version = copied.version
    else:
        version = _copy_across_registries(pinned, target, to_model)
    for key, value in tags.items():
        target.set_model_version_tag(to_model, str(version), key, value)
    if to_tracking_uri is None:  # MLflow copied the source's description, promotions included: render the copy's own
        describe_version(to_model, int(version))
    return f"{to_model}/{version}"


def _copy_across_registries(pinned: PinnedModel, target: mlflow.MlflowClient, to_model: str) -> str:
    """Another tracking server cannot read this one's artifacts: move the bytes, then register them there."""
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=pinned.uri, dst_path=folder)
        experiment = target.get_experiment_by_name(COPY_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else target.create_experiment(COPY_EXPERIMENT)
        run = target.create_run(experiment_id, run_name=f"copy-{pinned.name}-v{pinned.version}")
        target.log_artifacts(run.info.run_id, local, MODEL_ARTIFACT)
        target.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):
        target.create_registered_model(to_model)
    created = target.create_model_version(to_model, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run.info.run_id)
    return created.version
