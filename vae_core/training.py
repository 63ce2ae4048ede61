"""The training loop: Adam on the negative ELBO, deterministic on CPU for a seed. It logs nothing;
an `on_epoch` callback carries each epoch's metrics out to whoever records them."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch

from vae_core.config import TrainConfig, VAEConfig
from vae_core.data import Dataset
from vae_core.errors import UsageError
from vae_core.model import VAE, negative_elbo

EVAL_BATCH_SIZE = 4096  # evaluation needs no gradients; big batches are just faster


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean -ELBO per sample over the epoch's batches, nats
    val_loss: float  # mean -ELBO per sample on the held-out split, nats
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model: VAE
    history: list[EpochMetrics]
    val_neg_elbo: float  # final held-out -ELBO per sample, nats
    train_size: int
    holdout_size: int
    seconds: float


def class_prior(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return tuple(float(value) for value in counts / counts.sum())


def model_config_for(
    data: Dataset, latent_dim: int, hidden_sizes: tuple[int, ...], conditional: bool,
    architecture: str = "mlp", conv_channels: tuple[int, ...] = (),
) -> VAEConfig:
    """The model config that fits a data source: its image shape and, for a CVAE, its classes."""
    sizes = {"input_shape": data.shape, "latent_dim": latent_dim, "hidden_sizes": hidden_sizes,
             "architecture": architecture, "conv_channels": conv_channels}
    if not conditional:
        return VAEConfig(**sizes)
    if data.labels is None:
        raise UsageError(f"--conditional needs labels, and data source {data.source} has none")
    return VAEConfig(**sizes, num_classes=data.num_classes, class_prior=class_prior(data.labels, data.num_classes))


@torch.no_grad()
def evaluate(model: VAE, data: Dataset, seed: int) -> float:
    """Held-out -ELBO per sample (one reparameterised draw per image, fixed noise for a seed)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, len(data.images), EVAL_BATCH_SIZE):
        x = torch.from_numpy(data.images[start : start + EVAL_BATCH_SIZE])
        labels = None if data.labels is None else torch.from_numpy(data.labels[start : start + EVAL_BATCH_SIZE])
        logits, mu, logvar = model(x, labels if model.config.conditional else None, generator)
        total += float(negative_elbo(x, logits, mu, logvar)) * len(x)
    return total / len(data.images)


def train(
    data: Dataset,
    model_config: VAEConfig,
    train_config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    started = time.perf_counter()
    train_set, holdout_set = data.split(train_config.holdout_fraction)
    torch.manual_seed(train_config.seed)
    model = VAE(model_config)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.learning_rate)
    generator = torch.Generator().manual_seed(train_config.seed)
    images = torch.from_numpy(train_set.images)
    labels = None if train_set.labels is None or not model_config.conditional else torch.from_numpy(train_set.labels)
    history: list[EpochMetrics] = []
    for epoch in range(1, train_config.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), train_config.batch_size):
            index = order[start : start + train_config.batch_size]
            x = images[index]
            batch_labels = None if labels is None else labels[index]
            logits, mu, logvar = model(x, batch_labels, generator)
            loss = negative_elbo(x, logits, mu, logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=total / len(images),
            val_loss=evaluate(model, holdout_set, train_config.seed),
            seconds=time.perf_counter() - epoch_started,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        val_neg_elbo=history[-1].val_loss,
        train_size=len(train_set.images),
        holdout_size=len(holdout_set.images),
        seconds=time.perf_counter() - started,
    )
