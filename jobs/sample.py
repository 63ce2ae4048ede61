"""The classic example as a library function: decode N(0, I) draws (seed scheme v1) into images."""

from __future__ import annotations

import numpy as np

from vae_core import sampling
from vae_core.errors import UsageError, VaegenError
from vae_core.model import Decoder

MANIFOLD_POINTS_PER_SIDE = 20  # 20 x 20 = 400 decoded points, the classic figure's density


def draw_images(decoder: Decoder, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n rows of the dataset with this seed: (images (n, *shape), labels or None).

    A conditional model draws `balanced` labels (contract 1b); rows come back sorted by label,
    so a grid with one row per class comes out when n = classes x columns.
    """
    if n < 1:
        raise UsageError(f"--n must be a positive integer, got {n}")
    config = decoder.config
    ids = np.arange(n, dtype=np.int64)
    seeds, z = sampling.draw(seed, ids, config.latent_dim)
    labels = None
    if config.conditional:
        labels = sampling.labels_for("balanced", ids, seeds, config.latent_dim, tuple(range(config.num_classes)), ())
        order = np.argsort(labels, kind="stable")
        z, labels = z[order], labels[order]
    images = sampling.decode(decoder, z, labels)
    if not np.isfinite(images).all():
        raise VaegenError("the decoder produced non-finite values (NaN or inf); this version cannot be sampled")
    return images, labels


def manifold_images(decoder: Decoder) -> np.ndarray | None:
    """The decoded latent grid for 2-D unconditional models, else None."""
    if decoder.config.latent_dim != 2 or decoder.config.conditional:
        return None
    return sampling.decode(decoder, sampling.manifold_latents(MANIFOLD_POINTS_PER_SIDE))
