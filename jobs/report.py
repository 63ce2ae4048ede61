"""Quality reports: a model version (fresh samples from a fixed report seed) or a committed
dataset, compared with the real data the model was trained on, in the feature space of a
reference classifier trained once per data source (cached by the data's content hash).

Writes `report.json` and `report.png` into one folder per subject (`report/<model>/v<version>/`,
`report/datasets/<dataset id>/`), logs both (and the classifier) to MLflow on the model's
training run or the dataset's run, logs the HEADLINE figures (vae_core/quality_names.py) as metrics of that run, and
stores them on the model version as `vaegen.quality.*` tags, where the promotion gate reads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jobs import plots, reader
from jobs.generate import card, manifest
from jobs.progress import Progress
from jobs.sample import draw_images
from registry import lineage, models
from registry.models import LoadedDecoder
from vae_core import data as data_sources
from vae_core import privacy, quality, reference_classifier
from vae_core.errors import UsageError
from vae_core.quality_config import QualityConfig
from vae_core.quality_names import HEADLINE
from vae_core.quality_record import QualityReport

REPORT_SEED = 20_260_101  # fixed: every version's report decodes the same z, so reports compare
DEFAULT_ROOT = "report"  # reports go to report/<model>/v<version>/ and report/datasets/<dataset id>/


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    n: int = 10_000  # generated samples compared; Frechet and kNN estimates settle by ~10k
    seed: int = REPORT_SEED
    out_dir: str | None = None  # None: ROOT/<model>/v<version>/ or ROOT/datasets/<dataset id>/, one per subject
    root: str = DEFAULT_ROOT
    data: str | None = None  # the real data; None = the source the version was trained on
    quality: QualityConfig = QualityConfig()
    # None skips the privacy block (the publish audit compares fidelity only); not in the classifier's cache key
    privacy: privacy.PrivacyConfig | None = privacy.PrivacyConfig()
    cache_dir: str = dataclasses.field(  # classifiers are cached here by data hash [env: VAEGEN_CACHE]
        default_factory=lambda: os.environ.get("VAEGEN_CACHE", str(Path.home() / ".cache" / "vaegen"))
    )

    def __post_init__(self) -> None:
        if self.n < 2:
            raise UsageError(f"--n must be an integer >= 2, got {self.n}")


@dataclasses.dataclass(frozen=True)
class ReportResult:
    metrics: QualityReport
    json_path: Path
    png_path: Path
    run_id: str


def reference_split(loaded: LoadedDecoder, data: str | None) -> tuple[data_sources.Dataset, data_sources.Dataset]:
    source = data or loaded.tags.get("data_source")
    if not source:
        raise UsageError(f"{loaded.pinned.uri} records no training data source; pass --data SOURCE")
    dataset = data_sources.load(source)
    if dataset.labels is None:
        raise UsageError(
            f"data source {source} has no labels; the quality report's classifier needs labelled real data"
        )
    if dataset.shape != tuple(loaded.config.input_shape):
        raise UsageError(
            f"data source {source} has shape {dataset.shape}, the model decodes {tuple(loaded.config.input_shape)}"
        )
    return dataset.split(float(loaded.tags.get("holdout_fraction", "0.2")))


def classifier_for(
    train: data_sources.Dataset, config: ReportConfig
) -> tuple[reference_classifier.ReferenceClassifier, dict, Path]:
    """Train the reference classifier once per (data, classifier config); later calls load the cached weights."""
    key = hashlib.sha256(
        (train.content_sha256() + json.dumps(config.quality.to_dict(), sort_keys=True)).encode()
    ).hexdigest()[:20]
    folder = Path(config.cache_dir) / "classifiers"
    weights_path, info_path = folder / f"{key}.npz", folder / f"{key}.json"
    if weights_path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        model = reference_classifier.ReferenceClassifier(
            train.shape, info["num_classes"], config.quality.hidden_dim, config.quality.feature_dim
        )
        with np.load(weights_path, allow_pickle=False) as weights:
            model.load_state_dict({name: torch.from_numpy(weights[name]) for name in weights.files})
        return model.eval(), info, weights_path
    model, info = reference_classifier.train_reference_classifier(train.images, train.labels, config.quality)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(weights_path, **{name: value.detach().numpy() for name, value in model.state_dict().items()})
    info_path.write_text(json.dumps(info))
    return model.eval(), info, weights_path


def headline(metrics: QualityReport | dict[str, Any]) -> dict[str, float]:
    """The HEADLINE figures a report (or its JSON, report.json read back) has, some for conditional models only, as
    floats."""
    values = metrics.to_json() if isinstance(metrics, QualityReport) else metrics
    figures = {key: values.get(key) for key in HEADLINE}
    return {
        key: float(value)
        for key, value in figures.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def _subject(metrics: dict[str, Any]) -> str:
    if metrics.get("subject") == "dataset":
        return f"dataset {metrics.get('dataset_id')}"
    model = metrics.get("model") or {}
    return f"model {model.get('name')}/{model.get('version')}"


def report_folder(config: ReportConfig, default: Path, subject: str) -> Path:
    """--out, or the subject's own folder under the root; refuses a folder that holds another
    subject's report, so a report never silently replaces another model's or dataset's."""
    folder = Path(config.out_dir) if config.out_dir else Path(config.root) / default
    existing = folder / "report.json"
    if existing.is_file():
        try:
            other = _subject(json.loads(existing.read_text()))
        except (json.JSONDecodeError, AttributeError):
            other = "something that is not a vaegen report"
        if other != subject:
            raise UsageError(
                f"{folder} holds the report of {other}, not {subject}; pass another --out or remove {existing}"
            )
    return folder


def _path_segment(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _write(
    metrics: QualityReport,
    images: dict[str, np.ndarray],
    samples: tuple[np.ndarray, np.ndarray | None],
    title: str,
    out: Path,
    real_histogram: list[float],
) -> tuple[Path, Path]:
    """samples: the generated (images, labels or None); the page previews one row per class of labelled ones."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(metrics.to_json(), indent=2, sort_keys=True, default=float))
    generated, labels = samples
    if labels is None:
        generated = generated[: plots.PREVIEW_COLUMNS**2]
    preview, columns = plots.class_rows(generated, labels, plots.PREVIEW_COLUMNS)
    figure = plots.quality_figure(preview, images, metrics, real_histogram, title, columns)
    png_path = plots.save(figure, out / "report.png")
    return json_path, png_path


def _progress() -> Progress:
    """The report's stages: samples, the reference classifier, then quality_report's own."""
    return Progress(2 + len(quality.REPORT_STAGES), "quality report", unit="stages", log_interval_s=0)


def compare(
    loaded: LoadedDecoder,
    generated: np.ndarray,
    generated_labels: np.ndarray | None,
    config: ReportConfig,
    progress: Progress | None = None,
) -> tuple[QualityReport, dict[str, np.ndarray], list[float], Path]:
    """Quality figures of `generated` against the version's real data (report, and the publish audit's sample)."""
    progress = progress or _progress()
    train, holdout = reference_split(loaded, config.data)
    classifier, info, weights_path = classifier_for(train, config)
    progress.advance(1, "reference classifier ready")
    metrics, images = quality.quality_report(
        classifier,
        train,
        holdout,
        generated.astype(np.float32),
        config.quality,
        generated_labels,
        on_stage=lambda stage: progress.advance(1, f"{stage} done"),
        privacy_config=config.privacy,
    )
    metrics = dataclasses.replace(metrics, classifier=info, data_source=config.data or loaded.tags.get("data_source"))
    real_histogram = np.bincount(train.labels, minlength=info["num_classes"]) / len(train.labels)
    return metrics, images, real_histogram.tolist(), weights_path


def audit_figures(
    loaded: LoadedDecoder, generated: np.ndarray, generated_labels: np.ndarray | None, config: ReportConfig
) -> dict[str, float | None]:
    """quality.audit_figures of `generated` against the version's real data, in the report's feature space."""
    train, _ = reference_split(loaded, config.data)
    classifier, _, _ = classifier_for(train, config)
    return quality.audit_figures(classifier, train, generated.astype(np.float32), config.quality, generated_labels)


def model_report(reference: str, config: ReportConfig) -> ReportResult:
    loaded = models.load_decoder(models.resolve(reference))
    name, version = loaded.pinned.name, loaded.pinned.version
    out = report_folder(config, Path(_path_segment(name), f"v{version}"), f"model {name}/{version}")
    with _progress() as progress:
        generated, labels = draw_images(loaded.build(), config.n, config.seed)
        progress.advance(1, f"{config.n:,} samples decoded")
        metrics, images, real_histogram, weights_path = compare(loaded, generated, labels, config, progress)
    metrics = dataclasses.replace(
        metrics, model=loaded.pinned.to_dict(), report_seed=config.seed, n=config.n, subject="model"
    )
    title = f"{loaded.pinned.name}/{loaded.pinned.version}: {config.n:,} samples, report seed {config.seed}"
    json_path, png_path = _write(metrics, images, (generated, labels), title, out, real_histogram)
    run_id = loaded.pinned.run_id
    lineage.log_artifacts(run_id, [json_path, png_path, weights_path], "quality")
    models.record_quality(loaded, headline(metrics))
    return ReportResult(metrics, json_path, png_path, run_id)


def read_samples(dataset: reader.Dataset, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n rows of a committed dataset as float32 images in [0, 1] (rows are i.i.d. draws)."""
    images, labels, count = [], [], 0
    for block in dataset.iter_numpy(columns=["x", "label"] if dataset.has_labels else ["x"]):
        if count >= n:
            break
        images.append(block["x"])
        labels.append(block.get("label"))
        count += len(block["x"])
    x = np.concatenate(images)[:n].astype(np.float32) / (255.0 if dataset.dtype == "uint8" else 1.0)
    return x, np.concatenate(labels)[:n].astype(np.int64) if dataset.has_labels else None


def dataset_report(location: str, config: ReportConfig) -> ReportResult:
    dataset = reader.open_dataset(location, verify=False, lease=False)  # reads a few thousand rows, then done
    record = dataset.manifest
    dataset_id = record.dataset_id
    out = report_folder(config, Path("datasets", dataset_id), f"dataset {dataset_id}")
    model = record.model
    loaded = models.load_decoder(models.resolve(f"{model.name}/{model.version}"))
    with _progress() as progress:
        generated, labels = read_samples(dataset, config.n)
        progress.advance(1, f"{len(generated):,} rows read")
        metrics, images, real_histogram, weights_path = compare(loaded, generated, labels, config, progress)
    metrics = dataclasses.replace(
        metrics, dataset_id=dataset_id, n=len(generated), subject="dataset", model=model.to_json()
    )
    title = f"dataset {dataset_id}: first {len(generated):,} rows"
    json_path, png_path = _write(metrics, images, (generated, labels), title, out, real_histogram)
    figures = headline(metrics)
    run_id = lineage.log_dataset_quality(record.to_json(), figures)  # registry reads the JSON form
    lineage.log_artifacts(run_id, [json_path, png_path, weights_path], "quality")
    if card.has_card(record):  # the card now quotes the dataset's own figures
        source = (
            f"`vaegen report --dataset` on the first {len(generated):,} rows of this dataset ({manifest.utc_now()})"
        )
        card.write(dataset.storage, dataset.dataset_id, record, card.Quality(figures, source))
    return ReportResult(metrics, json_path, png_path, run_id)
