"""Decoders in the MLflow registry: log a training run, register a version, resolve a
reference to a pinned version, and load weights without pickle (DESIGN.md contract 3)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

import vae_core
from registry import artifacts, descriptions, evidence, filters, lineage
from registry.pinned import PinnedModel
from registry.redaction import redact_uri
from vae_core.config import VAEConfig
from vae_core.errors import UsageError
from vae_core.quality_names import is_quality_tag, quality_metrics, quality_tags

if TYPE_CHECKING:  # torch is imported where a network is built or logged, never to resolve or list versions
    from vae_core.model import Decoder
    from vae_core.training import EpochMetrics, TrainResult

DEFAULT_MODEL_NAME = "vae-decoder"
DEFAULT_EXPERIMENT = "vaegen-train"
MODEL_ARTIFACT = "decoder"  # the logged model's name inside its run
PYFUNC_CODE = Path(__file__).with_name("pyfunc_decoder.py")
TAG_PREFIX = "vaegen."
LOCK_MARK = ".vaegen-lock."  # promotion locks are registered models with this in their name
REF_HELP = "use NAME@ALIAS, NAME/VERSION, NAME/latest, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/decoder"


@dataclasses.dataclass(frozen=True)
class LoadedDecoder:
    """The weights as numpy arrays and the config that rebuilds the network: cheap to ship to workers."""

    pinned: PinnedModel
    config: VAEConfig
    state: dict[str, np.ndarray]
    tags: dict[str, str]
    artifacts_sha256: str = ""  # of config.json and weights.npz: what the evidence seal is bound to

    @property
    def evidence(self) -> dict[str, str]:
        """The gate evidence tags vaegen sealed for these very artifacts; copied or edited ones are left out."""
        return evidence.sealed_evidence(self.artifacts_sha256, self.tags)

    def build(self, device: str = "cpu") -> Decoder:
        import torch

        from vae_core.model import Decoder

        decoder = Decoder(self.config)
        decoder.load_state_dict({key: torch.from_numpy(value) for key, value in self.state.items()})
        return decoder.to(device).eval()


def client(tracking_uri: str | None = None) -> mlflow.MlflowClient:
    """This process's tracking server and registry, or the server at `tracking_uri` and its registry: another
    registry is named per call, never by repointing the process, whose other work stays where it was."""
    if tracking_uri is None:
        return mlflow.MlflowClient()
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def signature_for(config: VAEConfig) -> ModelSignature:
    x_spec = TensorSpec(np.dtype(np.float32), (-1, *config.input_shape))
    if config.conditional:
        inputs = Schema(
            [
                TensorSpec(np.dtype(np.float32), (-1, config.latent_dim), "z"),
                TensorSpec(np.dtype(np.int64), (-1,), "label"),
            ]
        )
    else:
        inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, config.latent_dim))])
    return ModelSignature(inputs=inputs, outputs=Schema([x_spec]))


def _input_example(config: VAEConfig) -> Any:
    z = np.zeros((2, config.latent_dim), dtype=np.float32)
    return {"z": z, "label": np.zeros(2, dtype=np.int64)} if config.conditional else z


def flatten_params(prefix: str, values: dict[str, Any]) -> dict[str, str]:
    return {
        f"{prefix}.{key}": json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        for key, value in values.items()
    }


class TrainingRun:
    """An open MLflow run for one training job; `log_epoch` is the training loop's callback."""

    def __init__(self, run: mlflow.ActiveRun):
        self.run = run
        self.data: lineage.DataRef | None = None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_training_data(self, spec: str, sha256: str) -> None:
        """The data as the run's input (context "training"); the final metrics will name it too."""
        self.data = lineage.log_training_data(self.run_id, spec, sha256)

    def log_epoch(self, metrics: EpochMetrics) -> None:
        mlflow.log_metrics(
            {"train_loss": metrics.train_loss, "val_loss": metrics.val_loss, "epoch_seconds": metrics.seconds},
            step=metrics.epoch,
        )

    def log_figure(self, figure: Any, path: str) -> None:
        mlflow.log_figure(figure, path)

    def log_dict(self, data: Any, path: str) -> None:
        mlflow.log_dict(data, path)

    @staticmethod
    def _log_pyfunc(config: VAEConfig, weights_path: Path, config_path: Path, model_name: str) -> Any:
        import torch

        # MLflow imports the model's code from its staging folder to check the input example; with bytecode
        # writing on (Python's default) that leaves __pycache__/*.pyc among the artifacts, which gate 0 refuses
        # (a .pyc is code nobody can review). Nothing is written while the version is logged.
        dont_write_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
        try:
            return mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(PYFUNC_CODE),
                artifacts={"weights": str(weights_path), "config": str(config_path)},
                code_paths=[str(Path(vae_core.__file__).parent)],
                signature=signature_for(config),
                input_example=_input_example(config),
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"numpy=={np.__version__}",
                    f"mlflow=={mlflow.__version__}",
                ],
                registered_model_name=model_name,
            )
        finally:
            sys.dont_write_bytecode = dont_write_bytecode

    def register(self, result: TrainResult, model_name: str, data_tags: dict[str, str]) -> PinnedModel:
        """Log the decoder (weights + config, pickle-free) and register it as a new version."""
        config = result.model.config
        with tempfile.TemporaryDirectory() as folder:
            weights_path, config_path = Path(folder, "weights.npz"), Path(folder, "config.json")
            state = {key: value.detach().cpu().numpy() for key, value in result.model.decoder.state_dict().items()}
            np.savez(weights_path, **state)
            config_path.write_text(config.to_json())
            artifacts_sha256 = evidence.artifacts_digest(config_path, weights_path)
            info = self._log_pyfunc(config, weights_path, config_path, model_name)
        # After the model exists, so the logged model's page shows them against the training data.
        lineage.log_linked_metrics(
            self.run_id,
            {
                "val_neg_elbo": result.val_neg_elbo,
                "train_seconds": result.seconds,
                "train_size": result.train_size,
                "holdout_size": result.holdout_size,
            },
            info.model_id,
            self.data,
        )
        version = int(info.registered_model_version)
        tags = {
            "config": config.to_json(),
            "val_neg_elbo": f"{result.val_neg_elbo:.6f}",
            "latent_dim": str(config.latent_dim),
            "conditional": str(config.conditional).lower(),
            "train_size": str(result.train_size),
            **data_tags,
        }
        tags[evidence.SEAL_TAG] = evidence.seal(artifacts_sha256, tags)
        pinned = PinnedModel(
            model_name,
            version,
            self.run_id,
            client().get_model_version(model_name, str(version)).source,
            resolved_from=f"{model_name}/{version}",
        )
        set_version_tags(pinned, tags)
        describe_version(model_name, version)
        return pinned


def describe_version(name: str, version: int, tracking_uri: str | None = None) -> None:
    """Render the version's description from its vaegen.* tags and training run: data, config,
    held-out loss, quality and promotions, readable on its page in the MLflow UI."""
    mlflow_client = client(tracking_uri)
    model_version = mlflow_client.get_model_version(name, str(version))
    tags = {
        key.removeprefix(TAG_PREFIX): value for key, value in model_version.tags.items() if key.startswith(TAG_PREFIX)
    }
    run = lineage.run_summary(mlflow_client, model_version.run_id) or {}
    body = descriptions.version_description(name, int(version), tags, run, lineage.logged_model_id(model_version))
    mlflow_client.update_model_version(
        name, str(version), descriptions.replace_generated(model_version.description, body)
    )


def record_quality(loaded: LoadedDecoder, figures: dict[str, float]) -> None:
    """A model report's headline figures: version tags (promotion gate 3 reads them), metrics of the
    training run that also name the logged model (sortable and comparable in the UI), the description.
    The seal is renewed over the new figures and whatever evidence was validly sealed before, nothing else."""
    pinned = loaded.pinned
    quality = quality_tags(figures)
    current = {
        key.removeprefix(TAG_PREFIX): value
        for key, value in client().get_model_version(pinned.name, str(pinned.version)).tags.items()
    }
    kept = {
        key: value
        for key, value in evidence.sealed_evidence(loaded.artifacts_sha256, current).items()
        if not is_quality_tag(key)
    }
    set_version_tags(
        pinned, {**quality, evidence.SEAL_TAG: evidence.seal(loaded.artifacts_sha256, {**kept, **quality})}
    )
    model_id = lineage.logged_model_id(client().get_model_version(pinned.name, str(pinned.version)))
    lineage.log_linked_metrics(pinned.run_id, quality_metrics(figures), model_id)
    describe_version(pinned.name, pinned.version)


@contextlib.contextmanager
def training_run(experiment: str, run_name: str | None, params: dict[str, str]) -> Iterator[TrainingRun]:
    lineage.mark_model_training(mlflow.set_experiment(experiment))
    with mlflow.start_run(run_name=run_name, tags={lineage.RUN_KIND_TAG: "training"}) as run:
        mlflow.log_params(params)
        yield TrainingRun(run)


_MODELS_URI = re.compile(r"^models:/(?P<rest>.+)$")
# Only what vaegen logs: a run id (MLflow's are 32 hex digits) and the decoder it logged. Anything else would
# reach the manifest, the dataset card and the MLflow UI as the reference the dataset was "resolved from".
_RUNS_URI = re.compile(rf"^runs:/(?P<run_id>[0-9a-zA-Z]{{1,64}})/{MODEL_ARTIFACT}/?\Z")


def _unknown_model_error(name: str, tracking_uri: str) -> UsageError:
    return UsageError(
        f"model {name!r} is not registered at {redact_uri(tracking_uri)}; run `vaegen models` to list models"
    )


def resolve(reference: str, tracking_uri: str | None = None) -> PinnedModel:
    """Turn any model reference into one pinned version; unknown names, versions or aliases are UsageErrors."""
    mlflow_client = client(tracking_uri)
    runs_match = _RUNS_URI.match(reference)
    if reference.startswith("runs:") and not runs_match:
        raise UsageError(
            f"model reference {reference!r}: a runs:/ reference names the model vaegen logs in a training "
            f"run, runs:/RUN_ID/{MODEL_ARTIFACT}; {REF_HELP}"
        )
    if runs_match:
        run_id = runs_match["run_id"]
        versions = filters.search_equal(
            mlflow_client.search_model_versions, "run_id", run_id, lambda found: found.run_id
        )
        if not versions:
            raise UsageError(f"run {run_id} has no registered model version; register it or pass NAME/VERSION")
        latest = max(versions, key=lambda version: int(version.version))
        return PinnedModel(latest.name, int(latest.version), latest.run_id, latest.source, reference)
    models_match = _MODELS_URI.match(reference)
    body = models_match["rest"] if models_match else reference
    if "@" in body:
        name, alias = body.split("@", 1)
        check_model_exists(mlflow_client, name)
        try:
            version = mlflow_client.get_model_version_by_alias(name, alias)
        except MlflowException:
            raise UsageError(
                f"model {name!r} has no alias {alias!r}; "
                f"promote a version first (`vaegen promote {name}/N --alias {alias}`)"
            ) from None
        return PinnedModel(name, int(version.version), version.run_id, version.source, reference, alias)
    if "/" in body:
        name, version_text = body.rsplit("/", 1)
        check_model_exists(mlflow_client, name)
        if version_text == "latest":
            versions = versions_of(mlflow_client, name)
            if not versions:
                raise UsageError(f"model {name!r} has no versions yet; run `vaegen train` first")
            version_text = str(max(int(version.version) for version in versions))
        if not version_text.isdigit():
            raise UsageError(f"model reference {reference!r}: version must be a number or 'latest'; {REF_HELP}")
        try:
            version = mlflow_client.get_model_version(name, version_text)
        except MlflowException:
            raise UsageError(
                f"model {name!r} has no version {version_text}; run `vaegen models` to list versions"
            ) from None
        return PinnedModel(name, int(version.version), version.run_id, version.source, reference)
    raise UsageError(f"model reference {reference!r} names no version or alias; {REF_HELP}")


def versions_of(mlflow_client: mlflow.MlflowClient, name: str) -> list[Any]:
    return filters.search_equal(mlflow_client.search_model_versions, "name", name, lambda found: found.name)


def check_model_exists(mlflow_client: mlflow.MlflowClient, name: str) -> None:
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        raise _unknown_model_error(name, mlflow_client.tracking_uri) from None


def version_config(pinned: PinnedModel) -> VAEConfig:
    """The config that plans a dataset, from its tag (no download); else from its artifacts. Bounded by
    VAEConfig's caps either way; the config that builds the decoder is always the artifact (load_decoder)."""
    tag = client().get_model_version(pinned.name, str(pinned.version)).tags.get(TAG_PREFIX + "config")
    if not tag:
        return load_decoder(pinned).config
    try:
        return VAEConfig.from_dict(json.loads(tag))
    except (ValueError, RecursionError, UsageError) as error:
        raise artifacts.RefusedVersion(
            f"{pinned.name}/{pinned.version} is refused: its {TAG_PREFIX}config tag: "
            f"{' '.join(str(error).split())[:200]}"
        ) from None


def _download(pinned: PinnedModel, folder: str, tracking_uri: str | None) -> Path:
    """The version's artifacts, downloaded into `folder` from its storage location. Not through its models:/ URI,
    which MLflow (3.17) looks up in the process's registry whatever tracking_uri it is given."""
    mlflow_client = client(tracking_uri)
    location = mlflow_client.get_model_version_download_uri(pinned.name, str(pinned.version))
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=folder, tracking_uri=mlflow_client.tracking_uri
        )
    )


def version_refusal(pinned: PinnedModel, tracking_uri: str | None = None) -> str | None:
    """Why vaegen refuses to load this version (foreign code, pickle), or None; downloads it."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = _download(pinned, folder, tracking_uri)
        except (MlflowException, OSError) as error:  # refused, not listed as fine: nothing unverified ever loads
            return f"its artifacts cannot be downloaded ({type(error).__name__}: {' '.join(str(error).split())[:120]})"
        return artifacts.unsafe_reason(local)


def load_decoder(pinned: PinnedModel, tracking_uri: str | None = None) -> LoadedDecoder:
    """Read config.json and weights.npz of a pinned version, after checking that its code is vaegen's own and
    that its weights are exactly what its config implies (registry.artifacts); never executes registry code."""
    with tempfile.TemporaryDirectory() as folder:
        local = _download(pinned, folder, tracking_uri)
        config_path, weights_path = (local / path for path in artifacts.WEIGHT_ARTIFACTS.values())
        try:
            reason = artifacts.unsafe_reason(local)
            if reason is not None:
                raise artifacts.RefusedVersion(f"{reason} (only vaegen's own pickle-free code is ever loaded)")
            config = artifacts.read_config(config_path)
            state = artifacts.read_weights(weights_path, config)
        except artifacts.RefusedVersion as error:
            raise artifacts.RefusedVersion(
                f"{pinned.name}/{pinned.version} is refused: {error}; register it with `vaegen train`"
            ) from None
        artifacts_sha256 = evidence.artifacts_digest(config_path, weights_path)
    tags = {
        key.removeprefix(TAG_PREFIX): value
        for key, value in client(tracking_uri).get_model_version(pinned.name, str(pinned.version)).tags.items()
        if key.startswith(TAG_PREFIX)
    }
    return LoadedDecoder(pinned, config, state, tags, artifacts_sha256)


def set_version_tags(pinned: PinnedModel, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client().set_model_version_tag(pinned.name, str(pinned.version), TAG_PREFIX + key, value)
