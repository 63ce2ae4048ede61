"""The VAE of Kingma and Welling (2014): MLP encoder and decoder, Bernoulli likelihood, negative ELBO."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from vae_core.config import VAEConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).to(torch.float32)


class Encoder(nn.Module):
    """q(z | x[, y]): the decoder's hidden layers mirrored, then two heads for mu and logvar."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        sizes = [config.input_dim + config.num_classes, *reversed(config.hidden_sizes)]
        self.body = nn.Sequential(_mlp(sizes), nn.ReLU())
        self.mu = nn.Linear(sizes[-1], config.latent_dim)
        self.logvar = nn.Linear(sizes[-1], config.latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)  # (B, input_dim)
        if self.config.conditional:
            h = torch.cat([h, one_hot(labels, self.config.num_classes)], dim=1)
        h = self.body(h)
        return self.mu(h), self.logvar(h)  # (B, latent_dim) each


class Decoder(nn.Module):
    """p(x | z[, y]): an MLP whose outputs are Bernoulli logits, one per pixel."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.net = _mlp([config.latent_dim + config.num_classes, *config.hidden_sizes, config.input_dim])

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.config.conditional:
            if labels is None:
                raise ValueError("this decoder is class-conditional: pass labels with z")
            z = torch.cat([z, one_hot(labels, self.config.num_classes)], dim=1)
        return self.net(z)  # (B, input_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Bernoulli means in [0, 1], shaped like the input: (B, *input_shape)."""
        # In place: one (B, input_dim) buffer per call instead of two (decode is allocation-bound).
        return self.logits(z, labels).sigmoid_().view(-1, *self.config.input_shape)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x, labels)

    def reparameterize(
        self, mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma and Welling 2014, eq. 10)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, labels)

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, labels)
        z = self.reparameterize(mu, logvar, generator)
        return self.decoder.logits(z, labels), mu, logvar


def negative_elbo(
    x: torch.Tensor, x_logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of -ELBO per sample, in nats.

    Reconstruction: Bernoulli negative log-likelihood summed over pixels.
    KL(q(z|x) || N(0, I)) in closed form (Kingma and Welling 2014, appendix B):
    -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    reconstruction = F.binary_cross_entropy_with_logits(x_logits, x.flatten(1), reduction="none").sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (reconstruction + kl).mean()
