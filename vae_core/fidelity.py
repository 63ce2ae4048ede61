"""Fidelity and closeness figures on feature sets: the Frechet distance (Heusel et al. 2017), improved precision
and recall (Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), label-distribution metrics,
the memorisation check and distance to closest record (DCR), pixel statistics."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import torch

from vae_core.errors import UsageError
from vae_core.quality_config import QualityConfig, check_features, check_images

# Rows of a probability matrix must sum to 1; softmax in float32 is off by about 1e-7, so this admits it.
PROBABILITY_SUM_TOLERANCE = 1e-4
MIN_SAMPLES_FOR_COVARIANCE = 2


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = QualityConfig.frechet_eps) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)) of Gaussians fitted to two feature sets (Heusel et al. 2017).

    As pytorch-fid: unbiased covariances, eps on the diagonals only when sqrtm fails or warns on a near-singular
    product (fewer samples than features, constant features), and the real part of the square root (the imaginary
    part is round-off). Biased upwards for small N and noisy: compare sets of similar size.
    """
    feats_a = check_features("feats_a", feats_a, MIN_SAMPLES_FOR_COVARIANCE)
    feats_b = check_features("feats_b", feats_b, MIN_SAMPLES_FOR_COVARIANCE)
    if feats_a.shape[1] != feats_b.shape[1]:
        raise UsageError(f"feature sets differ in width: {feats_a.shape[1]} vs {feats_b.shape[1]}")
    mu_a, mu_b = feats_a.mean(axis=0), feats_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(feats_a, rowvar=False))  # (F, F)
    sigma_b = np.atleast_2d(np.cov(feats_b, rowvar=False))
    covariance_mean = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
        with contextlib.suppress(scipy.linalg.LinAlgWarning):  # singular product: retried below with the offset
            covariance_mean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if covariance_mean is None or not np.isfinite(covariance_mean).all():
        offset = np.eye(len(sigma_a)) * eps
        covariance_mean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    difference = mu_a - mu_b
    trace = np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(np.real(covariance_mean))
    return float(difference @ difference + trace)


def _kth_neighbour_distance(points: torch.Tensor, k: int, chunk_rows: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point, (N,)."""
    radii = []
    for chunk in points.split(chunk_rows):
        distances = torch.cdist(chunk, points)  # (C, N); each row holds the point itself at distance ~0
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def _share_inside_balls(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk_rows: int) -> float:
    inside = 0
    for chunk in queries.split(chunk_rows):
        distances = torch.cdist(chunk, centres)  # (C, M)
        inside += int((distances <= radii).any(dim=1).sum())
    return inside / len(queries)


def precision_recall(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = QualityConfig.k_nearest,
    chunk_rows: int = QualityConfig.knn_chunk_rows,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): (precision, recall).

    Each set's manifold is the union of balls around its points, of radius the distance to the k-th nearest
    neighbour in the same set. Precision = share of fake points inside the real manifold, recall = share of real
    points inside the fake manifold. Both shrink radii as N grows, so compare sets of equal size.
    """
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    real = torch.from_numpy(check_features("real_feats", real_feats, k + 1))
    fake = torch.from_numpy(check_features("fake_feats", fake_feats, k + 1))
    if real.shape[1] != fake.shape[1]:
        raise UsageError(f"feature sets differ in width: {real.shape[1]} vs {fake.shape[1]}")
    real_radii = _kth_neighbour_distance(real, k, chunk_rows)
    fake_radii = _kth_neighbour_distance(fake, k, chunk_rows)
    precision = _share_inside_balls(fake, real, real_radii, chunk_rows)
    recall = _share_inside_balls(real, fake, fake_radii, chunk_rows)
    return precision, recall


def density_coverage(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = QualityConfig.density_coverage_k,
    chunk_rows: int = QualityConfig.knn_chunk_rows,
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eqs. 3-4): (density, coverage).

    Balls only around REAL points (radius: distance to the k-th nearest other real point), so outliers among the
    fakes cannot inflate them. density = sum over fakes of the number of real balls holding it, / (k M): about 1
    when fakes are distributed like reals, above 1 where they crowd into dense regions. coverage = share of real
    points whose ball holds at least one fake: about 1 - 2^-k for identical distributions and N = M.
    """
    if not isinstance(k, int) or k < 1:
        raise UsageError(f"k must be a positive integer, got {k!r}")
    real = torch.from_numpy(check_features("real_feats", real_feats, k + 1))
    fake = torch.from_numpy(check_features("fake_feats", fake_feats, 1))
    if real.shape[1] != fake.shape[1]:
        raise UsageError(f"feature sets differ in width: {real.shape[1]} vs {fake.shape[1]}")
    radii = _kth_neighbour_distance(real, k, chunk_rows)  # (N,)
    balls_per_fake = 0
    covered = torch.zeros(len(real), dtype=torch.bool)
    for chunk in fake.split(chunk_rows):
        inside = torch.cdist(chunk, real) <= radii  # (C, N)
        balls_per_fake += int(inside.sum())
        covered |= inside.any(dim=0)
    return balls_per_fake / (k * len(fake)), float(covered.double().mean())


def label_distribution_metrics(
    probs: np.ndarray,
    num_classes: int,
    reference_distribution: np.ndarray | None = None,
    class_coverage_fair_share_fraction: float = QualityConfig.class_coverage_fair_share_fraction,
) -> dict[str, Any]:
    """What the classifier says about a generated set's classes.

    - class_histogram: share of samples whose argmax is each class;
    - class_coverage: share of classes whose histogram entry is >= class_coverage_fair_share_fraction / K
      (not the k-NN coverage of `density_coverage`);
    - mean_confidence: mean of the max probability;
    - label_kl: KL(reference || generated) in nats, the generated distribution being the mean predicted
      probability (the marginal p(y) of the Inception Score), which is soft and so finite unless a class the
      reference has gets exactly zero probability everywhere (then inf). None without a reference.
    """
    if not isinstance(probs, np.ndarray) or probs.ndim != 2 or probs.shape[0] < 1 or probs.shape[1] != num_classes:
        raise UsageError(f"probs must have shape (N >= 1, {num_classes}), got {getattr(probs, 'shape', type(probs))}")
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise UsageError("probs must be finite and non-negative")
    worst_row_error = float(np.abs(probs.sum(axis=1) - 1).max())
    if worst_row_error > PROBABILITY_SUM_TOLERANCE:
        raise UsageError(f"probs rows must sum to 1, one is off by {worst_row_error}; pass softmax outputs")
    class_histogram = np.bincount(probs.argmax(axis=1), minlength=num_classes) / len(probs)
    label_kl = None
    if reference_distribution is not None:
        reference = np.asarray(reference_distribution, dtype=np.float64)
        if reference.shape != (num_classes,) or reference.min() < 0 or abs(reference.sum() - 1) > 1e-6:
            raise UsageError(
                f"reference_distribution must be {num_classes} non-negative shares summing to 1, "
                f"got {reference.tolist()}"
            )
        label_kl = float(scipy.special.rel_entr(reference, probs.mean(axis=0)).sum())
    return {
        "class_coverage": float(np.mean(class_histogram >= class_coverage_fair_share_fraction / num_classes)),
        "label_kl": label_kl,
        "mean_confidence": float(probs.max(axis=1).mean()),
        "class_histogram": class_histogram.tolist(),
    }


def _nearest_distance(queries: torch.Tensor, references: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    return torch.cat([torch.cdist(chunk, references).min(dim=1).values for chunk in queries.split(chunk_rows)])


def closest_record_distances(
    train: np.ndarray, heldout: np.ndarray, generated: np.ndarray, chunk_rows: int = QualityConfig.knn_chunk_rows
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each held-out and each generated sample to its closest training record:
    (heldout (N_h,), generated (N_g,)) float64, in whatever space the arrays are in (quality_report: pixels)."""
    flat = []
    for name, points in (("train", train), ("heldout", heldout), ("generated", generated)):
        if not isinstance(points, np.ndarray) or points.ndim < 2 or len(points) < 1:
            raise UsageError(f"{name} must be a numpy array (N >= 1, ...), got {getattr(points, 'shape', points)}")
        flat.append(points.reshape(len(points), -1))
    if len({points.shape[1] for points in flat}) != 1:
        raise UsageError(f"train, heldout and generated differ in size per sample: {[p.shape[1] for p in flat]}")
    dtype = np.result_type(*flat, np.float32)  # pixels stay float32, features stay float64
    train_t, heldout_t, generated_t = (torch.from_numpy(np.ascontiguousarray(p, dtype=dtype)) for p in flat)
    return (
        _nearest_distance(heldout_t, train_t, chunk_rows).double().numpy(),
        _nearest_distance(generated_t, train_t, chunk_rows).double().numpy(),
    )


def memorisation_and_radius(
    heldout_distance: np.ndarray, generated_distance: np.ndarray, percentile: float
) -> tuple[float, float]:
    """The share of generated rows within the memorisation radius (the `percentile` of held-out distances), and it."""
    if not 0 < percentile <= 100:
        raise UsageError(f"percentile must lie in (0, 100], got {percentile}")
    threshold = float(np.percentile(heldout_distance, percentile))
    return float(np.mean(generated_distance <= threshold)), threshold


def memorisation_share(
    train: np.ndarray,
    heldout: np.ndarray,
    generated: np.ndarray,
    percentile: float = QualityConfig.memorisation_percentile,
    chunk_rows: int = QualityConfig.knn_chunk_rows,
) -> float:
    """Share of generated samples at least as close to the training set as the closest `percentile` % of held-out ones.

    Distances are Euclidean nearest-neighbour distances to the training set in whatever space the arrays are in
    (quality_report passes pixels: a memorised sample is a near copy of a training image, and pixel space
    says so without trusting a classifier). Unseen real data scores about percentile / 100; copies score 1.
    """
    return memorisation_and_radius(*closest_record_distances(train, heldout, generated, chunk_rows), percentile)[0]


def distance_to_closest_record(
    heldout_distance: np.ndarray, generated_distance: np.ndarray, percentile: float = QualityConfig.dcr_percentile
) -> dict[str, float]:
    """DCR: the 5th percentile and the median of generated-to-train distances, beside the same figures for held-out
    real data (the floor), and dcr_ratio = generated / held-out at the percentile. Unseen real data has ratio ~1;
    a generator that copies training records has ratio ~0 (its low tail sits on them)."""
    low, floor_low = (
        float(np.percentile(generated_distance, percentile)),
        float(np.percentile(heldout_distance, percentile)),
    )
    return {
        "dcr_p5": low,
        "dcr_median": float(np.median(generated_distance)),
        "dcr_floor_p5": floor_low,
        "dcr_floor_median": float(np.median(heldout_distance)),
        "dcr_ratio": low / floor_low if floor_low > 0 else float("nan"),
    }


def pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation (population), each (H, W) float64."""
    images = check_images("images", images).astype(np.float64)
    return images.mean(axis=0), images.std(axis=0)
