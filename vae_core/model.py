"""The VAE of Kingma and Welling (2014), Bernoulli likelihood, negative ELBO; two architectures.

`mlp`: fully connected layers on the flattened image (the tutorial's network).
`conv`: strided convolutions down (kernel 4, stride 2, padding 1: each halves the sides, rounding
down), optional fully connected layers, then the mirror image up with transposed convolutions
whose output padding restores odd sides exactly (28 -> 14 -> 7 -> 3 -> 7 -> 14 -> 28).
`Decoder(config)` and `Encoder(config)` pick the architecture from the config, so anything that
rebuilds a decoder from a registered config (registry, workers, the pyfunc) needs no change.

Optionally the decoder starts with a prior flow (RealNVP affine couplings, Dinh et al. 2017) fitted
after training to the encoder's aggregate posterior, the two-stage idea of Dai and Wipf (2019): a
draw u ~ N(0, I) is mapped to a latent where the decoder was trained, not into the prior's holes.
The dataset's z stays that N(0, I) draw (contract 1); the registered decoder maps it to x.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from vae_core.config import CONV_KERNEL, CONV_PADDING, CONV_STRIDE, VAEConfig


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for index, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(size_in, size_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).to(torch.float32)


def _conv_down(config: VAEConfig) -> nn.Sequential:
    """(B, C, H, W) -> (B, c_last, h_last, w_last): one strided convolution + ReLU per entry of conv_channels."""
    layers: list[nn.Module] = []
    channels = [config.image_channels, *config.conv_channels]
    for size_in, size_out in itertools.pairwise(channels):
        layers += [nn.Conv2d(size_in, size_out, CONV_KERNEL, CONV_STRIDE, CONV_PADDING), nn.ReLU()]
    return nn.Sequential(*layers)


class _ConvDecoderNet(nn.Module):
    """(B, latent_dim [+ K]) -> (B, input_dim) logits: fully connected up to the smallest feature map,
    then transposed convolutions that retrace the encoder's sides, the last one to the image's channels."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        sides = config.conv_sides  # [(H, W), (H1, W1), ..., (h_last, w_last)]
        self.start_shape = (config.conv_channels[-1], *sides[-1])
        start_size = self.start_shape[0] * sides[-1][0] * sides[-1][1]
        self.fc = nn.Sequential(
            _mlp([config.latent_dim + config.num_classes, *config.hidden_sizes, start_size]), nn.ReLU()
        )
        layers: list[nn.Module] = []
        channels = [config.image_channels, *config.conv_channels]
        for index in range(len(config.conv_channels), 0, -1):
            (height, width), (small_height, small_width) = sides[index - 1], sides[index]
            # A transposed conv maps side s to 2s exactly; output padding adds the row/column an odd side lost.
            padding = (height - CONV_STRIDE * small_height, width - CONV_STRIDE * small_width)
            layers.append(
                nn.ConvTranspose2d(
                    channels[index], channels[index - 1], CONV_KERNEL, CONV_STRIDE, CONV_PADDING, output_padding=padding
                )
            )
            if index > 1:
                layers.append(nn.ReLU())
        self.up = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.fc(h).view(-1, *self.start_shape)  # (B, c_last, h_last, w_last)
        return self.up(h).flatten(1)  # (B, C * H * W)


def _coupling_mask(latent_dim: int, layer: int) -> torch.Tensor:
    """Which coordinates a coupling layer passes through unchanged: even, odd, first half, second half, in turn,
    so that after four layers every coordinate has been transformed given every other one. Fixed, not drawn:
    nothing random has to travel with the weights."""
    index = torch.arange(latent_dim)
    pattern = layer % 4
    if pattern < 2:
        kept = index % 2 == pattern
    else:
        kept = (index < latent_dim // 2) if pattern == 2 else (index >= latent_dim // 2)
    return kept.to(torch.float32)


class _Coupling(nn.Module):
    """u -> kept + (1 - mask) * (u * exp(s) + t), with (s, t) computed from the kept coordinates [and the label]."""

    def __init__(self, config: VAEConfig, layer: int):
        super().__init__()
        self.register_buffer("mask", _coupling_mask(config.latent_dim, layer), persistent=False)
        hidden = config.prior_flow_hidden
        self.net = _mlp([config.latent_dim + config.num_classes, hidden, hidden, 2 * config.latent_dim])
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity map
        nn.init.zeros_(self.net[-1].bias)

    def scale_shift(self, kept: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = kept if condition is None else torch.cat([kept, condition], dim=1)
        log_scale, shift = self.net(h).chunk(2, dim=1)  # (B, latent_dim) each
        # tanh bounds each layer's scale to [e^-2, e^2]: unbounded scales make early training diverge.
        return (1 - self.mask) * torch.tanh(log_scale) * 2.0, (1 - self.mask) * shift

    def forward(self, u: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        log_scale, shift = self.scale_shift(u * self.mask, condition)
        return u * torch.exp(log_scale) + shift

    def inverse(self, z: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.scale_shift(z * self.mask, condition)
        return (z - shift) * torch.exp(-log_scale), -log_scale.sum(dim=1)  # u, log |det du/dz|


class PriorFlow(nn.Module):
    """u ~ N(0, I) [and a label] -> a latent z distributed like the aggregate posterior the flow was fitted to."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.couplings = nn.ModuleList([_Coupling(config, layer) for layer in range(config.prior_flow_layers)])
        self.shift = nn.Parameter(torch.zeros(config.latent_dim))  # a final per-coordinate affine map
        self.log_scale = nn.Parameter(torch.zeros(config.latent_dim))

    def _condition(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return one_hot(labels, self.config.num_classes) if self.config.conditional else None

    def forward(self, u: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        condition = self._condition(labels)
        for coupling in self.couplings:
            u = coupling(u, condition)
        return u * torch.exp(self.log_scale) + self.shift  # (B, latent_dim)

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(z) in nats, (B,): the N(0, I) density of the inverse image times the Jacobian."""
        condition = self._condition(labels)
        u = (z - self.shift) * torch.exp(-self.log_scale)
        log_det = -self.log_scale.sum().expand(len(z))
        for coupling in reversed(self.couplings):
            u, coupling_log_det = coupling.inverse(u, condition)
            log_det = log_det + coupling_log_det
        return -0.5 * (u.pow(2).sum(dim=1) + u.shape[1] * math.log(2 * math.pi)) + log_det


class Encoder(nn.Module):
    """q(z | x[, y]): the decoder mirrored (MLP layers, or strided convolutions then MLP layers), then two
    heads for mu and logvar. A conditional encoder sees the one-hot label beside the flattened features."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.architecture == "conv":
            self.features = _conv_down(config)
            feature_size = config.conv_channels[-1] * config.conv_sides[-1][0] * config.conv_sides[-1][1]
        else:
            self.features = nn.Identity()
            feature_size = config.input_dim
        sizes = [feature_size + config.num_classes, *reversed(config.hidden_sizes)]
        self.body = nn.Sequential(_mlp(sizes), nn.ReLU()) if len(sizes) > 1 else nn.Identity()
        self.mu = nn.Linear(sizes[-1], config.latent_dim)
        self.logvar = nn.Linear(sizes[-1], config.latent_dim)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.architecture == "conv":
            x = x.reshape(-1, *self.config.image_shape)  # (B, C, H, W); (B, H, W) images get their one channel
        h = self.features(x).flatten(1)  # (B, features)
        if self.config.conditional:
            h = torch.cat([h, one_hot(labels, self.config.num_classes)], dim=1)
        h = self.body(h)
        return self.mu(h), self.logvar(h)  # (B, latent_dim) each


class Decoder(nn.Module):
    """p(x | z[, y]): Bernoulli logits, one per pixel, from an MLP or from transposed convolutions."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        if config.architecture == "conv":
            self.net: nn.Module = _ConvDecoderNet(config)
        else:
            self.net = _mlp([config.latent_dim + config.num_classes, *config.hidden_sizes, config.input_dim])
        self.prior_flow = PriorFlow(config) if config.prior_flow_layers else None

    def logits(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from a latent of the encoder's space (training), not from a prior draw."""
        if self.config.conditional:
            if labels is None:
                raise ValueError("this decoder is class-conditional: pass labels with z")
            z = torch.cat([z, one_hot(labels, self.config.num_classes)], dim=1)
        return self.net(z)  # (B, input_dim)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A prior draw z ~ N(0, I) -> Bernoulli means in [0, 1], shaped like the input: (B, *input_shape)."""
        if self.config.conditional and labels is None:
            raise ValueError("this decoder is class-conditional: pass labels with z")
        if self.prior_flow is not None:
            z = self.prior_flow(z, labels)
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


def negative_elbo(x: torch.Tensor, x_logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -ELBO per sample, in nats.

    Reconstruction: Bernoulli negative log-likelihood summed over pixels.
    KL(q(z|x) || N(0, I)) in closed form (Kingma and Welling 2014, appendix B):
    -1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2).
    """
    reconstruction = F.binary_cross_entropy_with_logits(x_logits, x.flatten(1), reduction="none").sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (reconstruction + kl).mean()
