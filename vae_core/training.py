"""The training loop: Adam on the negative ELBO, deterministic on CPU for a seed, then (for models with
a prior flow) the flow's fit to the aggregate posterior. It logs nothing; an `on_epoch` callback
carries each epoch's metrics out to whoever records them."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.distributions import Normal
from torch.nn import functional as F

from vae_core.config import TrainConfig, VAEConfig
from vae_core.data import Dataset
from vae_core.errors import UsageError
from vae_core.model import VAE, negative_elbo

EVAL_BATCH_SIZE = 4096  # evaluation needs no gradients; big batches are just faster
PRIOR_FLOW_BATCH_SIZE = 256  # 31 steps per pass over 8,000 latents; the flow is small, so steps are cheap


@dataclasses.dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean -ELBO per sample over the epoch's batches, nats
    val_loss: float  # mean -ELBO per sample on the held-out split, nats
    seconds: float
    step: int = 0  # optimizer steps done so far, this epoch's included
    total_steps: int = 0  # the whole budget: steps, or epochs x steps per epoch
    total_epochs: int = 0


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model: VAE
    history: list[EpochMetrics]
    val_neg_elbo: float  # final held-out -ELBO per sample, nats, under the prior the decoder samples from
    train_size: int
    holdout_size: int
    seconds: float


def class_prior(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return tuple(float(value) for value in counts / counts.sum())


def model_config_for(
    data: Dataset,
    latent_dim: int,
    hidden_sizes: tuple[int, ...],
    conditional: bool,
    architecture: str = "mlp",
    conv_channels: tuple[int, ...] = (),
    prior_flow_layers: int = 0,
) -> VAEConfig:
    """The model config that fits a data source: its image shape and, for a CVAE, its classes."""
    sizes = {
        "input_shape": data.shape,
        "latent_dim": latent_dim,
        "hidden_sizes": hidden_sizes,
        "architecture": architecture,
        "conv_channels": conv_channels,
        "prior_flow_layers": prior_flow_layers,
    }
    if not conditional:
        return VAEConfig(**sizes)
    if data.labels is None:
        raise UsageError(f"--conditional needs labels, and data source {data.source} has none")
    return VAEConfig(**sizes, num_classes=data.num_classes, class_prior=class_prior(data.labels, data.num_classes))


@torch.no_grad()
def evaluate(model: VAE, data: Dataset, seed: int, with_prior_flow: bool = False) -> float:
    """Held-out -ELBO per sample (one reparameterised draw per image, fixed noise for a seed).

    The KL term is analytic against N(0, I); with_prior_flow, it is the one-draw estimate
    log q(z | x) - log p(z) against the decoder's prior flow, the prior the registered model samples from.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    flow = model.decoder.prior_flow if with_prior_flow else None
    total = 0.0
    for start in range(0, len(data.images), EVAL_BATCH_SIZE):
        x = torch.from_numpy(data.images[start : start + EVAL_BATCH_SIZE])
        labels = None if data.labels is None else torch.from_numpy(data.labels[start : start + EVAL_BATCH_SIZE])
        labels = labels if model.config.conditional else None
        mu, logvar = model.encode(x, labels)
        z = model.reparameterize(mu, logvar, generator)  # (B, latent_dim)
        logits = model.decoder.logits(z, labels)
        if flow is None:
            total += float(negative_elbo(x, logits, mu, logvar)) * len(x)
            continue
        reconstruction = F.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
        log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(1)
        total += float((reconstruction + log_q - flow.log_prob(z, labels)).sum())
    return total / len(data.images)


def augment(x: torch.Tensor, shift: int, rotate: float, generator: torch.Generator) -> torch.Tensor:
    """x (B, [C,] H, W) with each image moved by a random whole-pixel shift in [-shift, shift] on each axis and
    turned by a random angle in [-rotate, rotate] degrees (bilinear, zeros outside): the same draws for a seed."""
    if not shift and not rotate:
        return x
    n, (height, width) = len(x), x.shape[-2:]
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate)
    # affine_grid's coordinates span [-1, 1]: one pixel is 2 / side
    dx = torch.randint(-shift, shift + 1, (n,), generator=generator) * (2 / width)
    dy = torch.randint(-shift, shift + 1, (n,), generator=generator) * (2 / height)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, dx], 1), torch.stack([sin, cos, dy], 1)], 1)  # (B, 2, 3)
    images = x.reshape(n, -1, height, width)  # grid_sample wants the channels axis, (B, H, W) sources have none
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.reshape(x.shape)


def _lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps) if schedule == "cosine" else None


@torch.no_grad()
def _posterior(model: VAE, data: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """mu, logvar (N, latent_dim) of q(z | x[, y]) for every training image, and the labels a conditional flow sees."""
    model.eval()
    labels = torch.from_numpy(data.labels) if model.config.conditional else None
    parts = [
        model.encode(
            torch.from_numpy(data.images[start : start + EVAL_BATCH_SIZE]),
            None if labels is None else labels[start : start + EVAL_BATCH_SIZE],
        )
        for start in range(0, len(data.images), EVAL_BATCH_SIZE)
    ]
    return torch.cat([mu for mu, _ in parts]), torch.cat([logvar for _, logvar in parts]), labels


def fit_prior_flow(
    model: VAE, data: Dataset, train_config: TrainConfig, on_step: Callable[[int, int], None] | None = None
) -> float:
    """Fit the decoder's prior flow by maximum likelihood to the aggregate posterior of the training images
    (fresh draws z ~ q(z | x) on every pass), the encoder and decoder frozen, for prior_flow_steps steps;
    returns the mean -log p(z) of the last pass, nats."""
    flow = model.decoder.prior_flow
    mu, logvar, labels = _posterior(model, data)
    generator = torch.Generator().manual_seed(train_config.seed)
    optimizer = torch.optim.Adam(flow.parameters(), lr=train_config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, train_config.prior_flow_steps)
    flow.train()
    step, total = 0, 0.0
    while step < train_config.prior_flow_steps:
        total, seen = 0.0, 0
        for index in torch.randperm(len(mu), generator=generator).split(PRIOR_FLOW_BATCH_SIZE)[
            : train_config.prior_flow_steps - step
        ]:
            z = model.reparameterize(mu[index], logvar[index], generator)  # (B, latent_dim), a fresh posterior draw
            loss = -flow.log_prob(z, None if labels is None else labels[index]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total, seen, step = total + float(loss.detach()) * len(index), seen + len(index), step + 1
            if on_step is not None:
                on_step(step, train_config.prior_flow_steps)
    flow.eval()
    return total / seen


@dataclasses.dataclass(frozen=True)
class _Optimisation:
    """What every epoch of the VAE's training shares: Adam over the VAE's own parameters, its schedule, the
    seeded generator of batch orders, augmentations and reparameterisations, and the step budget."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    total_steps: int
    total_epochs: int


def _optimisation(model: VAE, train_config: TrainConfig, train_size: int) -> _Optimisation:
    """Adam and its schedule over the encoder and decoder only, and the budget in steps and in epochs."""
    # The prior flow is fitted after the VAE, to the posterior the VAE ended with.
    flow = model.decoder.prior_flow
    flow_parameters = set() if flow is None else set(flow.parameters())
    vae_parameters = [parameter for parameter in model.parameters() if parameter not in flow_parameters]
    optimizer = torch.optim.Adam(vae_parameters, lr=train_config.learning_rate)
    steps_per_epoch = -(-train_size // train_config.batch_size)
    total_steps = train_config.steps or train_config.epochs * steps_per_epoch
    return _Optimisation(
        optimizer=optimizer,
        scheduler=_lr_scheduler(optimizer, train_config.lr_schedule, total_steps),
        generator=torch.Generator().manual_seed(train_config.seed),
        total_steps=total_steps,
        total_epochs=-(-total_steps // steps_per_epoch),
    )


def _train_epoch(
    model: VAE,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    loop: _Optimisation,
    train_config: TrainConfig,
    step: int,
) -> tuple[float, int]:
    """One pass over the training images in a fresh order, stopping at the budget: (mean -ELBO per sample, nats;
    the optimizer steps done so far)."""
    model.train()
    order = torch.randperm(len(images), generator=loop.generator)
    total, seen = 0.0, 0
    for index in order.split(train_config.batch_size)[: loop.total_steps - step]:
        x = augment(images[index], train_config.augment_shift, train_config.augment_rotate, loop.generator)
        batch_labels = None if labels is None else labels[index]
        logits, mu, logvar = model(x, batch_labels, loop.generator)
        loss = negative_elbo(x, logits, mu, logvar)
        loop.optimizer.zero_grad()
        loss.backward()
        loop.optimizer.step()
        if loop.scheduler is not None:
            loop.scheduler.step()
        total, seen, step = total + float(loss.detach()) * len(index), seen + len(index), step + 1
    return total / seen, step


def train(
    data: Dataset,
    model_config: VAEConfig,
    train_config: TrainConfig,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_prior_flow_step: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """on_epoch gets each epoch's metrics (with the steps done and the budget); on_prior_flow_step (step, steps)
    each step of the prior flow's fit."""
    started = time.perf_counter()
    train_set, holdout_set = data.split(train_config.holdout_fraction)
    torch.manual_seed(train_config.seed)
    model = VAE(model_config)
    loop = _optimisation(model, train_config, len(train_set.images))
    images = torch.from_numpy(train_set.images)
    labels = None if train_set.labels is None or not model_config.conditional else torch.from_numpy(train_set.labels)
    history: list[EpochMetrics] = []
    step = 0
    for epoch in range(1, loop.total_epochs + 1):  # the last pass stops at total_steps
        epoch_started = time.perf_counter()
        train_loss, step = _train_epoch(model, images, labels, loop, train_config, step)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=evaluate(model, holdout_set, train_config.seed),
            seconds=time.perf_counter() - epoch_started,
            step=step,
            total_steps=loop.total_steps,
            total_epochs=loop.total_epochs,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    val_neg_elbo = history[-1].val_loss
    if model.decoder.prior_flow is not None:
        fit_prior_flow(model, train_set, train_config, on_prior_flow_step)
        val_neg_elbo = evaluate(model, holdout_set, train_config.seed, with_prior_flow=True)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        val_neg_elbo=val_neg_elbo,
        train_size=len(train_set.images),
        holdout_size=len(holdout_set.images),
        seconds=time.perf_counter() - started,
    )
