"""Figures for people: sample grids, loss curves, the 2-D latent manifold (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers, CI and Ray workers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_core.quality_record import QualityReport  # noqa: E402
from vae_core.training import EpochMetrics  # noqa: E402

PREVIEW_COLUMNS = 8  # a report's sample preview: 8 x 8 unlabelled samples, or 8 of each class, one row per class


def tile(images: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """(N, H, W) -> one mosaic with `gap`-pixel grey separators; empty cells stay black."""
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    mosaic = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap), 0.5, dtype=np.float32)
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        top, left = row * (height + gap), column * (width + gap)
        mosaic[top : top + height, left : left + width] = images[index] if index < count else 0.0
    return mosaic


def class_rows(images: np.ndarray, labels: np.ndarray | None, columns: int | None = None) -> tuple[np.ndarray, int]:
    """(images to tile, columns): for labelled samples one row per class present, its first `columns` samples
    [default: as many as the largest class has], blank cells after a short class's last; unlabelled samples as
    they come, `columns` per row [default: a square]."""
    if labels is None:
        columns = columns or math.ceil(math.sqrt(len(images)))
        return images, columns
    per_class = [images[labels == label] for label in np.unique(labels)]
    columns = columns or max(len(chosen) for chosen in per_class)
    blank = np.zeros((columns, *images.shape[1:]), dtype=images.dtype)
    rows = [np.concatenate([chosen[:columns], blank[: max(columns - len(chosen), 0)]]) for chosen in per_class]
    return np.concatenate(rows), columns


def image_grid(images: np.ndarray, columns: int | None = None, title: str | None = None) -> plt.Figure:
    columns = columns or math.ceil(math.sqrt(len(images)))
    mosaic = tile(images, columns)
    figure, axes = plt.subplots(figsize=(6, 6 * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    axes.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.axis("off")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


def loss_curves(history: list[EpochMetrics]) -> plt.Figure:
    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = [metrics.epoch for metrics in history]
    axes.plot(epochs, [metrics.train_loss for metrics in history], label="train")
    axes.plot(epochs, [metrics.val_loss for metrics in history], label="held-out")
    axes.set_xlabel("epoch")
    axes.set_ylabel("negative ELBO per sample (nats)")
    axes.legend()
    figure.tight_layout()
    return figure


def save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    close(figure)
    return path


def close(figure: plt.Figure) -> None:
    plt.close(figure)


def quality_figure(
    samples: np.ndarray,
    images: dict[str, np.ndarray],
    metrics: QualityReport,
    real_histogram: list[float],
    title: str,
    columns: int = PREVIEW_COLUMNS,
) -> plt.Figure:
    """One page: samples, mean/std images real vs generated, class histograms, the metric table."""
    figure = plt.figure(figsize=(12, 7))
    grid = figure.add_gridspec(2, 4)
    axes = figure.add_subplot(grid[:, 0])
    axes.imshow(tile(samples, columns), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.set_title("generated samples")
    axes.axis("off")
    for column, (key, label) in enumerate([("mean", "mean"), ("std", "std")], start=1):
        for row, source in enumerate(("real", "generated")):
            axes = figure.add_subplot(grid[row, column])
            axes.imshow(images[f"{source}_{key}"], cmap="gray", interpolation="nearest")
            axes.set_title(f"{source} {label}")
            axes.axis("off")
    axes = figure.add_subplot(grid[0, 3])
    classes = np.arange(len(real_histogram))
    generated = np.asarray(metrics.class_histogram, dtype=float)
    axes.bar(classes - 0.2, real_histogram, width=0.4, label="real (train)")
    axes.bar(classes + 0.2, generated / max(generated.sum(), 1e-12), width=0.4, label="generated")
    axes.set_xticks(classes)
    axes.set_title("classes (reference classifier)")
    axes.legend(fontsize=7)
    axes = figure.add_subplot(grid[1, 3])
    axes.axis("off")
    rows = [
        (key, metrics.figure(key))
        for key in (
            "frechet_distance",
            "frechet_floor",
            "precision",
            "precision_floor",
            "recall",
            "recall_floor",
            "density",
            "coverage",
            "class_coverage",
            "label_kl",
            "mean_confidence",
            "memorisation_share",
            "dcr_ratio",
            "label_accuracy",
            "tstr_accuracy",
            "trtr_accuracy",
        )
    ]
    text = "\n".join(f"{key:<20} {value:.4g}" for key, value in rows if isinstance(value, (int, float)))
    axes.text(0, 1, text, family="monospace", fontsize=8, va="top")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
