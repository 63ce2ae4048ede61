"""Contract 1 of DESIGN.md, seed scheme `splitmix64-boxmuller-v1`, vectorised with numpy uint64.

Every row's latent (and label, contract 1b) is a pure function of the dataset seed and the
row's sample_id, whatever the sharding. All arithmetic wraps modulo 2**64, which numpy's
uint64 array arithmetic does natively.
"""

from __future__ import annotations

import numpy as np

SEED_SCHEME = "splitmix64-boxmuller-v1"
GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_MINUS_53 = 2.0**-53
MAX_SEED = 2**64 - 1


def mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def splitmix64(state: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """The k-th output (k >= 1) of a splitmix64 stream started at `state`."""
    return mix64(np.asarray(state, dtype=np.uint64) + np.asarray(k, dtype=np.uint64) * GAMMA)


def row_seeds(dataset_seed: int, sample_ids: np.ndarray) -> np.ndarray:
    """seed_i = splitmix64(dataset_seed, sample_id + 1), as uint64 of shape (N,)."""
    if not 0 <= dataset_seed <= MAX_SEED:
        raise ValueError(f"dataset seed must lie in [0, 2**64), got {dataset_seed}")
    ids = np.asarray(sample_ids, dtype=np.uint64)
    return splitmix64(np.full(ids.shape, dataset_seed, dtype=np.uint64), ids + np.uint64(1))


def _unit_open_closed(bits: np.ndarray) -> np.ndarray:
    return ((bits >> np.uint64(11)).astype(np.float64) + 1.0) * _TWO_POW_MINUS_53  # (0, 1]


def _unit_closed_open(bits: np.ndarray) -> np.ndarray:
    return (bits >> np.uint64(11)).astype(np.float64) * _TWO_POW_MINUS_53  # [0, 1)


def latents(seeds: np.ndarray, latent_dim: int) -> np.ndarray:
    """Box-Muller N(0, I) draws from each row seed: float64 math, float32 result (N, latent_dim)."""
    seeds = np.asarray(seeds, dtype=np.uint64)[:, None]  # (N, 1)
    pairs = (latent_dim + 1) // 2
    k = np.arange(1, 2 * pairs + 1, dtype=np.uint64)[None, :]  # outputs 1 .. 2*pairs
    draws = splitmix64(seeds, k)  # (N, 2*pairs)
    radius = np.sqrt(-2.0 * np.log(_unit_open_closed(draws[:, 0::2])))
    angle = 2.0 * np.pi * _unit_closed_open(draws[:, 1::2])
    z = np.empty((seeds.shape[0], 2 * pairs), dtype=np.float64)
    z[:, 0::2] = radius * np.cos(angle)
    z[:, 1::2] = radius * np.sin(angle)
    return z[:, :latent_dim].astype(np.float32)


def balanced_labels(sample_ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Contract 1b, `balanced`: classes[sample_id mod len(classes)]."""
    classes = np.asarray(classes, dtype=np.int64)
    return classes[np.asarray(sample_ids, dtype=np.int64) % len(classes)].astype(np.int16)


def prior_labels(seeds: np.ndarray, latent_dim: int, class_prior: np.ndarray) -> np.ndarray:
    """Contract 1b, `prior`: the first class whose cumulative frequency exceeds u = output m+1."""
    m = 2 * ((latent_dim + 1) // 2)
    u = _unit_closed_open(splitmix64(np.asarray(seeds, dtype=np.uint64), m + 1))
    cumulative = np.cumsum(np.asarray(class_prior, dtype=np.float64))
    labels = np.searchsorted(cumulative, u, side="right")
    return np.minimum(labels, len(cumulative) - 1).astype(np.int16)  # guards u >= a rounded sum < 1
