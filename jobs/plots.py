"""Figures for people: sample grids, loss curves, the 2-D latent manifold (matplotlib, no display)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: servers, CI and Ray workers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vae_core.training import EpochMetrics  # noqa: E402


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W) -> one (rows*H, columns*W) mosaic; empty cells stay black."""
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    mosaic = np.zeros((rows * height, columns * width), dtype=np.float32)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        mosaic[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return mosaic


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
