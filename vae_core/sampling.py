"""From seeds to samples: latents per contract 1, decoding on a fixed block grid, the latent manifold.

Decoding happens in blocks of `block_rows` aligned to absolute sample ids (block j holds ids
[j*B, (j+1)*B)), always decoded whole. Every row therefore meets the same matrix shapes
whatever the shard size, worker count or resume point, so its bits cannot depend on them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vae_core.seeds import balanced_labels, latents, prior_labels, row_seeds

if TYPE_CHECKING:  # torch is imported where a decode happens: planning and seeds stay light
    from vae_core.model import Decoder


def draw(dataset_seed: int, sample_ids: np.ndarray, latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(seeds uint64 (N,), z float32 (N, latent_dim)) for the given sample ids."""
    seeds = row_seeds(dataset_seed, sample_ids)
    return seeds, latents(seeds, latent_dim)


def labels_for(
    policy: str,
    sample_ids: np.ndarray,
    seeds: np.ndarray,
    latent_dim: int,
    classes: tuple[int, ...],
    class_prior: tuple[float, ...],
) -> np.ndarray:
    """Contract 1b: `balanced` cycles through `classes`; `prior` draws from the training frequencies."""
    if policy == "prior":
        return prior_labels(seeds, latent_dim, np.asarray(class_prior))
    return balanced_labels(sample_ids, np.asarray(classes))


def decode(decoder: Decoder, z: np.ndarray, labels: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """Decode a batch of latents to float32 images (N, *shape) in [0, 1]."""
    import torch

    with torch.no_grad():
        z_tensor = torch.from_numpy(np.ascontiguousarray(z)).to(device)
        label_tensor = None if labels is None else torch.from_numpy(labels.astype(np.int64)).to(device)
        return decoder(z_tensor, label_tensor).float().cpu().numpy()


def block_ranges(start: int, stop: int, block_rows: int) -> list[tuple[int, int]]:
    """The global decode blocks [j*B, (j+1)*B) that cover sample ids [start, stop)."""
    first, last = start // block_rows, (stop - 1) // block_rows
    return [(j * block_rows, (j + 1) * block_rows) for j in range(first, last + 1)]


def manifold_latents(points_per_side: int) -> np.ndarray:
    """A regular grid over the 2-D Gaussian's quantiles (Kingma and Welling 2014, fig. 4)."""
    from scipy.stats import norm  # scipy ships with scikit-learn; used only for this plot

    quantiles = norm.ppf(np.linspace(0.05, 0.95, points_per_side))
    grid_y, grid_x = np.meshgrid(quantiles[::-1], quantiles, indexing="ij")
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1).astype(np.float32)  # (P*P, 2)
