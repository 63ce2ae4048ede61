"""The training job: load data, train, log the run, register the decoder. A recipe, top to bottom."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jobs import plots
from jobs.progress import Progress
from jobs.sample import MANIFOLD_POINTS_PER_SIDE, draw_images, manifold_images
from registry import descriptions, models, tracking
from registry.models import flatten_params
from registry.pinned import PinnedModel
from vae_core import data as data_sources
from vae_core.config import RECIPES, TrainConfig
from vae_core.errors import UsageError
from vae_core.training import EpochMetrics, TrainResult, model_config_for, train

GRID_SAMPLES = 64  # an 8 x 8 grid of fresh samples, logged with every run
GRID_SEED = 0  # the grid uses the dataset seed 0 rows, so every version's grid shows the same z


@dataclasses.dataclass(frozen=True)
class TrainJobConfig:
    """Its defaults are the tutorial's MLP; `for_architecture` gives each architecture's measured recipe
    (`vaegen train` starts from the conv one; docs/decisions.md says why)."""

    data: str = "digits"  # bundled with scikit-learn: runs anywhere with nothing to download
    latent_dim: int = 2  # the classic example's 2-D latent space
    hidden_sizes: tuple[int, ...] = (128,)  # one hidden layer of 128 ReLU units
    conditional: bool = False  # True trains a CVAE on the source's labels
    architecture: str = "mlp"  # the tutorial's network; "conv" for the convolutional VAE
    conv_channels: tuple[int, ...] = ()  # conv only: channels of the stride-2 layers
    prior_flow_layers: int = 0  # 0: decode N(0, I) draws as they are; > 0: a RealNVP prior flow fitted after training
    train: TrainConfig = TrainConfig()
    register_as: str = models.DEFAULT_MODEL_NAME
    experiment: str = models.DEFAULT_EXPERIMENT
    run_name: str | None = None  # None: train-<data>-<arch>-z<latent>-<UTC time>, see default_run_name
    report: bool = True  # a quality report for the new version (gate 3 of promotion reads it)
    report_dir: str = "report"  # the root: each version's report goes to REPORT_DIR/<model>/v<version>/

    def params(self) -> dict[str, str]:
        """Flat MLflow params: every knob that changes the trained model."""
        return {
            "data": self.data,
            "latent_dim": str(self.latent_dim),
            "hidden_sizes": json.dumps(list(self.hidden_sizes)),
            "conditional": str(self.conditional).lower(),
            "architecture": self.architecture,
            "conv_channels": json.dumps(list(self.conv_channels)),
            "prior_flow_layers": str(self.prior_flow_layers),
            **flatten_params("train", self.train.to_dict()),
        }

    @classmethod
    def for_architecture(cls, architecture: str, train: dict[str, Any] | None = None, **fields: Any) -> TrainJobConfig:
        """An architecture's recipe (vae_core.config.RECIPES), any job or TrainConfig field overridden."""
        if architecture not in RECIPES:
            raise UsageError(f"--arch must be one of {', '.join(RECIPES)}, got {architecture!r}")
        recipe, train = dict(RECIPES[architecture]), dict(train or {})
        if "epochs" in train and "steps" not in train:
            train["steps"] = None  # epochs asked for: the recipe's step budget would override them
        trainer = {field.name for field in dataclasses.fields(TrainConfig)}
        train_fields = {**{key: recipe.pop(key) for key in list(recipe) if key in trainer}, **train}
        return cls(architecture=architecture, **{**recipe, **fields}, train=TrainConfig(**train_fields))


def default_run_name(config: TrainJobConfig, now: dt.datetime | None = None) -> str:
    """A name that says what was trained, e.g. train-digits-vae128-z2-20261130T101530Z or
    train-mnist-t10k-cvae512x256-z16-... (a file source adds its file or folder name)."""
    kind, _, path = config.data.partition(":")
    head, _, key = path.rpartition(":")
    if head and "/" not in key:  # npz:FILE:KEY, parquet:PATH:COLUMN
        path = head
    stem = Path(path.rstrip("/")).stem if path else ""
    data = re.sub(r"[^A-Za-z0-9]+", "-", kind if stem in ("", kind) else f"{kind}-{stem}").strip("-")[:40]
    layers = config.conv_channels if config.architecture == "conv" else config.hidden_sizes
    arch = (
        ("cvae" if config.conditional else "vae")
        + ("-conv" if config.architecture == "conv" else "")
        + "x".join(str(size) for size in layers)
    )
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    return f"train-{data}-{arch}-z{config.latent_dim}-{stamp}"


@dataclasses.dataclass(frozen=True)
class TrainJobResult:
    pinned: PinnedModel
    val_neg_elbo: float
    train_seconds: float
    tracking_uri: str
    quality: Any = None  # jobs.report.ReportResult when a report was made
    quality_skipped: str | None = None  # why not, e.g. an unlabelled data source


class TrainingProgress:
    """The training's progress (steps, with the epoch and its losses), then the prior flow's fit (steps)."""

    def __init__(self) -> None:
        self.training: Progress | None = None
        self.flow: Progress | None = None

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for progress in (self.training, self.flow):
            if progress is not None:
                progress.close()

    def epoch(self, metrics: EpochMetrics) -> None:
        if self.training is None:  # the budget is known once the first epoch reports it; its time counts too
            self.training = Progress(metrics.total_steps, "train", unit="steps")
            self.training.started -= metrics.seconds
        self.training.advance(
            metrics.step - self.training.count,
            f"epoch {metrics.epoch}/{metrics.total_epochs}, train {metrics.train_loss:.3f}, "
            f"held-out {metrics.val_loss:.3f} nats",
        )

    def prior_flow_step(self, step: int, steps: int) -> None:
        if self.flow is None:
            if self.training is not None:
                self.training.close()
            self.flow = Progress(steps, "prior flow fit", unit="steps")
        self.flow.advance(step - self.flow.count)


def run(config: TrainJobConfig, on_epoch: Callable[[EpochMetrics], None] | None = None) -> TrainJobResult:
    uri = tracking.ensure_reachable(create=True)  # the one command that may start a new local store
    dataset = data_sources.load(config.data)
    model_config = model_config_for(
        dataset,
        config.latent_dim,
        config.hidden_sizes,
        config.conditional,
        config.architecture,
        config.conv_channels,
        config.prior_flow_layers,
    )
    data_sha256 = dataset.content_sha256()
    # The thread count changes speed, not results; recorded so that train_seconds can be compared.
    params = {**config.params(), "torch_threads": str(torch.get_num_threads())}
    with models.training_run(config.experiment, config.run_name or default_run_name(config), params) as training_run:
        training_run.log_training_data(config.data, data_sha256)

        with TrainingProgress() as progress:

            def record(metrics: EpochMetrics) -> None:
                training_run.log_epoch(metrics)
                progress.epoch(metrics)
                if on_epoch is not None:
                    on_epoch(metrics)

            result = train(
                dataset, model_config, config.train, on_epoch=record, on_prior_flow_step=progress.prior_flow_step
            )
        _log_figures(training_run, result)
        training_run.log_dict([dataclasses.asdict(metrics) for metrics in result.history], "history.json")
        data_tags = {
            **descriptions.model_facts(model_config.to_dict(), config.params()),
            "data_source": config.data,
            "data_sha256": data_sha256,
            "holdout_fraction": str(config.train.holdout_fraction),
            "holdout_size": str(result.holdout_size),
        }
        pinned = training_run.register(result, config.register_as, data_tags)
    quality, skipped = _quality_report(config, pinned) if config.report else (None, None)
    return TrainJobResult(pinned, result.val_neg_elbo, result.seconds, uri, quality, skipped)


def _log_figures(training_run: models.TrainingRun, result: TrainResult) -> None:
    """The run's pictures: a grid of fresh samples (the same z for every version), the loss curves, and for a 2-D
    latent space (unconditional) the manifold it decodes."""
    decoder = result.model.decoder
    images, labels = draw_images(decoder, GRID_SAMPLES, GRID_SEED)
    figures = {
        "plots/samples.png": plots.image_grid(*plots.class_rows(images, labels), "samples, seed 0"),
        "plots/loss_curves.png": plots.loss_curves(result.history),
    }
    manifold = manifold_images(decoder)
    if manifold is not None:
        figures["plots/manifold.png"] = plots.image_grid(manifold, MANIFOLD_POINTS_PER_SIDE, "latent manifold")
    for path, figure in figures.items():
        training_run.log_figure(figure, path)
        plots.close(figure)  # pyplot keeps every figure alive until closed: a leak per run in a long process


def _quality_report(config: TrainJobConfig, pinned: PinnedModel) -> tuple[Any, str | None]:
    """(the new version's report, None), or (None, why not): a source the report cannot use (e.g. unlabelled)
    leaves the version registered all the same."""
    from jobs import report as reports

    reference = f"{pinned.name}/{pinned.version}"
    try:
        return reports.model_report(reference, reports.ReportConfig(root=config.report_dir)), None
    except UsageError as error:
        return None, str(error)
