"""Quality of a generated image set against real data, measured in the feature space of a small reference classifier.

Owns the reference classifier, the Frechet distance (Heusel et al. 2017), improved precision and recall
(Kynkaanniemi et al. 2019), density and coverage (Naeem et al. 2020), label-distribution metrics (class
coverage), train-on-synthetic / test-on-real accuracy (TSTR, Esteban et al. 2017) beside train-on-real (TRTR),
the memorisation check and distance to closest record (DCR), and `quality_report`, which puts them side by
side with the floors that real held-out data reaches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special
import torch
from torch import nn

from vae_core import privacy
from vae_core.data import Dataset
from vae_core.errors import UsageError

DEFAULT_PRIVACY = privacy.PrivacyConfig()  # quality_report's privacy block (None: none)
# Rows of a probability matrix must sum to 1; softmax in float32 is off by about 1e-7, so this admits it.
_PROBABILITY_SUM_TOLERANCE = 1e-4
_MIN_SAMPLES_FOR_COVARIANCE = 2
# What quality_report reports done, in order: its callers show them as progress.
REPORT_STAGES = ("features", "precision, recall, closest records", "TSTR", "per-class figures", "privacy")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    hidden_dim: int = 256  # first hidden layer: above 97% on digits and MNIST, trains in seconds on 2 CPU cores
    feature_dim: int = 64  # penultimate width = feature space; a 64x64 covariance is well estimated from ~1k samples
    epochs: int = 30  # digits' validation accuracy has plateaued by then (test_quality checks it)
    batch_size: int = 64  # ~20 steps per epoch on the 1.3k digits images; MNIST simply takes more steps
    learning_rate: float = 1e-3  # Adam's default, stable for a two-layer MLP
    validation_fraction: float = 0.1  # a tenth shows over-fitting without starving training
    seed: int = 0  # fixes initialisation, the validation split, batch order and kNN subsampling
    k_nearest: int = 3  # k of the kNN manifolds; Kynkaanniemi et al. 2019 recommend k = 3
    density_coverage_k: int = 5  # Naeem et al. 2020's k: identical distributions then score coverage ~ 1 - 2^-5 = 0.97
    memorisation_percentile: float = 1.0  # flag samples closer to the training set than 99% of unseen real images
    dcr_percentile: float = 5.0  # DCR's low tail: the 5th percentile is the customary figure (median beside it)
    max_knn_samples: int = 10_000  # kNN cost is quadratic; 10k x 10k in float64 takes ~1 s on 2 cores
    knn_chunk_rows: int = 1024  # rows of one distance block: 1024 x 10k float64 = 80 MB
    class_coverage_fair_share_fraction: float = (
        0.1  # a class is covered if it gets >= 0.1/K of the argmaxes (1% for K=10)
    )
    frechet_eps: float = 1e-6  # pytorch-fid's diagonal offset for near-singular covariances
    inference_batch_size: int = 4096  # bounds activation memory (4096 x 256 float32 = 4 MB) with few Python steps

    def __post_init__(self) -> None:
        positive_ints = (
            "hidden_dim",
            "feature_dim",
            "epochs",
            "batch_size",
            "k_nearest",
            "density_coverage_k",
            "max_knn_samples",
            "knn_chunk_rows",
            "inference_batch_size",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"QualityConfig.{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise UsageError(f"QualityConfig.learning_rate must be positive, got {self.learning_rate}")
        if not 0 < self.validation_fraction < 1:
            raise UsageError(f"QualityConfig.validation_fraction must lie in (0, 1), got {self.validation_fraction}")
        if not 0 < self.dcr_percentile <= 100:
            raise UsageError(f"QualityConfig.dcr_percentile must lie in (0, 100], got {self.dcr_percentile}")
        if not 0 < self.memorisation_percentile <= 100:
            raise UsageError(
                f"QualityConfig.memorisation_percentile must lie in (0, 100], got {self.memorisation_percentile}"
            )
        if not 0 < self.class_coverage_fair_share_fraction <= 1:
            raise UsageError(
                "QualityConfig.class_coverage_fair_share_fraction must lie in (0, 1], "
                f"got {self.class_coverage_fair_share_fraction}"
            )
        if not self.frechet_eps > 0:
            raise UsageError(f"QualityConfig.frechet_eps must be positive, got {self.frechet_eps}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ReferenceClassifier(nn.Module):
    """flatten -> hidden -> ReLU -> features -> ReLU -> K logits.

    The metric space is the penultimate layer before its ReLU: post-ReLU, units that never fire give zero-variance
    dimensions (a fifth of them on digits), which make covariances singular and carry no information.
    """

    def __init__(self, image_shape: tuple[int, int], num_classes: int, hidden_dim: int, feature_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(self.image_shape), hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, feature_dim),
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, num_classes))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)  # (B, feature_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))  # (B, num_classes)


def _check_images(name: str, images: Any, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if not isinstance(images, np.ndarray):
        raise UsageError(f"{name} must be a numpy array of shape (N, H, W), got {type(images).__name__}")
    if images.ndim != 3 or images.shape[0] < 1:
        raise UsageError(f"{name} must have shape (N, H, W) with N >= 1, got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise UsageError(f"{name} must be floating point in [0, 1], got dtype {images.dtype}; divide uint8 by 255")
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise UsageError(f"{name} has images of shape {images.shape[1:]}, the classifier expects {tuple(image_shape)}")
    if not np.isfinite(images).all():
        raise UsageError(f"{name} contains NaN or infinite pixels")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 1:
        raise UsageError(f"{name} pixels must lie in [0, 1], got values in [{low}, {high}]")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_labels(name: str, labels: Any, count: int, num_classes: int | None = None) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(
            f"{name} must be a 1-D numpy array of integers, got {type(labels).__name__} "
            f"{getattr(labels, 'shape', '')} {getattr(labels, 'dtype', '')}"
        )
    if len(labels) != count:
        raise UsageError(f"{name} has {len(labels)} labels for {count} images")
    if labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes):
        bound = "" if num_classes is None else f" (classifier has {num_classes} classes)"
        raise UsageError(f"{name} must lie in 0..K-1{bound}, got values in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def _check_features(name: str, feats: Any, min_rows: int) -> np.ndarray:
    if not isinstance(feats, np.ndarray) or feats.ndim != 2:
        raise UsageError(f"{name} must be a 2-D numpy array (N, F), got {getattr(feats, 'shape', type(feats))}")
    if feats.shape[0] < min_rows:
        raise UsageError(f"{name} needs at least {min_rows} rows, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    return feats.astype(np.float64, copy=False)


def train_reference_classifier(
    images: np.ndarray, labels: np.ndarray, config: QualityConfig = QualityConfig()
) -> tuple[ReferenceClassifier, dict[str, Any]]:
    """Train the feature extractor on real training images; bit-identical on CPU for a given seed."""
    images = _check_images("images", images)
    labels = _check_labels("labels", labels, len(images))
    num_classes = int(labels.max()) + 1
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise UsageError(f"labels must cover every class 0..{num_classes - 1}; classes {missing} have no image")
    validation_count = round(config.validation_fraction * len(images))
    train_count = len(images) - validation_count
    if validation_count < 1 or train_count < 1:
        raise UsageError(
            f"{len(images)} images are too few to split with validation_fraction={config.validation_fraction}"
        )

    generator = torch.Generator().manual_seed(config.seed)
    # fork_rng keeps the caller's global RNG untouched while the layers draw their initial weights from it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = ReferenceClassifier(images.shape[1:], num_classes, config.hidden_dim, config.feature_dim)
    order = torch.randperm(len(images), generator=generator)
    inputs, targets = torch.from_numpy(images), torch.from_numpy(labels)
    train_x, train_y = inputs[order[:train_count]], targets[order[:train_count]]
    validation_x, validation_y = inputs[order[train_count:]], targets[order[train_count:]]

    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss = torch.zeros(())
    for _ in range(config.epochs):
        for batch in torch.randperm(train_count, generator=generator).split(config.batch_size):
            loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    with torch.inference_mode():
        train_accuracy = (model(train_x).argmax(dim=1) == train_y).double().mean().item()
        validation_accuracy = (model(validation_x).argmax(dim=1) == validation_y).double().mean().item()
    info = {
        "train_accuracy": train_accuracy,
        "validation_accuracy": validation_accuracy,
        "final_batch_loss": loss.item(),
        "n_train": train_count,
        "n_validation": validation_count,
        "num_classes": num_classes,
    }
    return model, info


def _embed_and_classify(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    images = _check_images("images", images, model.image_shape)
    feature_batches, probability_batches = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.tensor(images[start : start + batch_size])  # a copy: callers may pass read-only arrays
            feats = model.embed(batch)  # (B, feature_dim)
            feature_batches.append(feats.double())
            probability_batches.append(torch.softmax(model.head(feats).double(), dim=1))  # (B, K)
    return torch.cat(feature_batches).numpy(), torch.cat(probability_batches).numpy()


def features(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int = QualityConfig.inference_batch_size
) -> np.ndarray:
    """Penultimate-layer pre-activations, (N, feature_dim) float64: the space every metric here works in."""
    return _embed_and_classify(model, images, batch_size)[0]


def predict_proba(
    model: ReferenceClassifier, images: np.ndarray, batch_size: int = QualityConfig.inference_batch_size
) -> np.ndarray:
    """Class probabilities, (N, K) float64."""
    return _embed_and_classify(model, images, batch_size)[1]


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = QualityConfig.frechet_eps) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b)) of Gaussians fitted to two feature sets (Heusel et al. 2017).

    As pytorch-fid: unbiased covariances, eps on the diagonals only when sqrtm fails or warns on a near-singular
    product (fewer samples than features, constant features), and the real part of the square root (the imaginary
    part is round-off). Biased upwards for small N and noisy: compare sets of similar size.
    """
    feats_a = _check_features("feats_a", feats_a, _MIN_SAMPLES_FOR_COVARIANCE)
    feats_b = _check_features("feats_b", feats_b, _MIN_SAMPLES_FOR_COVARIANCE)
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
    real = torch.from_numpy(_check_features("real_feats", real_feats, k + 1))
    fake = torch.from_numpy(_check_features("fake_feats", fake_feats, k + 1))
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
    real = torch.from_numpy(_check_features("real_feats", real_feats, k + 1))
    fake = torch.from_numpy(_check_features("fake_feats", fake_feats, 1))
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
    if worst_row_error > _PROBABILITY_SUM_TOLERANCE:
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


def _memorisation(
    heldout_distance: np.ndarray, generated_distance: np.ndarray, percentile: float
) -> tuple[float, float]:
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
    return _memorisation(*closest_record_distances(train, heldout, generated, chunk_rows), percentile)[0]


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


def tstr_accuracy(
    generated_images: np.ndarray,
    generated_labels: np.ndarray,
    heldout_images: np.ndarray,
    heldout_labels: np.ndarray,
    num_classes: int,
    config: QualityConfig = QualityConfig(),
) -> float | None:
    """Train on synthetic, test on real (Esteban et al. 2017): accuracy on the real held-out split of a
    classifier trained only on generated labelled rows, with the reference classifier's architecture and
    recipe. Its TRTR counterpart is the reference classifier itself (same recipe, trained on the real training
    split). None when the generated labels miss a class: such a classifier could not name every real class."""
    generated_images = _check_images("generated_images", generated_images)
    generated_labels = _check_labels("generated_labels", generated_labels, len(generated_images), num_classes)
    if len(np.unique(generated_labels)) < num_classes:
        return None
    model, _ = train_reference_classifier(generated_images, generated_labels, config)
    probs = predict_proba(model, heldout_images, config.inference_batch_size)
    return float(np.mean(probs.argmax(axis=1) == heldout_labels))


def pixel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation (population), each (H, W) float64."""
    images = _check_images("images", images).astype(np.float64)
    return images.mean(axis=0), images.std(axis=0)


def _subsample(feats: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if count >= len(feats):
        return feats
    return feats[np.sort(rng.choice(len(feats), size=count, replace=False))]


def _balanced_precision_recall(
    real: np.ndarray, fake: np.ndarray, config: QualityConfig, rng: np.random.Generator, with_density: bool = False
) -> tuple[float | None, ...]:
    """(precision, recall[, density, coverage], count) on equal-sized subsamples (every k-NN radius depends on N),
    or None values when a set is below k + 1."""
    count = min(config.max_knn_samples, len(real), len(fake))
    if count < max(config.k_nearest, config.density_coverage_k if with_density else 0) + 1:
        return (None, None, None, None, count) if with_density else (None, None, count)
    real, fake = _subsample(real, count, rng), _subsample(fake, count, rng)
    precision, recall = precision_recall(real, fake, config.k_nearest, config.knn_chunk_rows)
    if not with_density:
        return precision, recall, count
    density, coverage = density_coverage(real, fake, config.density_coverage_k, config.knn_chunk_rows)
    return precision, recall, density, coverage, count


def _frechet_or_none(feats_a: np.ndarray, feats_b: np.ndarray, eps: float) -> float | None:
    if min(len(feats_a), len(feats_b)) < _MIN_SAMPLES_FOR_COVARIANCE:
        return None
    return frechet_distance(feats_a, feats_b, eps)


@dataclasses.dataclass(frozen=True)
class _Features:
    """A real set as the classifier sees it: its features and their classes."""

    feats: np.ndarray  # (N, F)
    labels: np.ndarray  # (N,) int64


def _per_class_metrics(
    train: _Features,
    heldout: _Features,
    generated_feats: np.ndarray,
    generated_probs: np.ndarray,
    generated_labels: np.ndarray,
    config: QualityConfig,
    rng: np.random.Generator,
) -> dict[str, Any]:
    predicted = generated_probs.argmax(axis=1)
    report: dict[str, list] = {
        key: []
        for key in (
            "per_class_label_accuracy",
            "per_class_frechet_distance",
            "per_class_frechet_floor",
            "per_class_precision",
            "per_class_recall",
            "per_class_precision_floor",
            "per_class_recall_floor",
        )
    }
    for label in range(generated_probs.shape[1]):
        train_c = train.feats[train.labels == label]
        heldout_c = heldout.feats[heldout.labels == label]
        generated_mask = generated_labels == label
        generated_c = generated_feats[generated_mask]
        report["per_class_label_accuracy"].append(
            float(np.mean(predicted[generated_mask] == label)) if generated_mask.any() else None
        )
        report["per_class_frechet_distance"].append(_frechet_or_none(generated_c, train_c, config.frechet_eps))
        report["per_class_frechet_floor"].append(_frechet_or_none(heldout_c, train_c, config.frechet_eps))
        precision, recall, _ = _balanced_precision_recall(train_c, generated_c, config, rng)
        precision_floor, recall_floor, _ = _balanced_precision_recall(train_c, heldout_c, config, rng)
        report["per_class_precision"].append(precision)
        report["per_class_recall"].append(recall)
        report["per_class_precision_floor"].append(precision_floor)
        report["per_class_recall_floor"].append(recall_floor)
    report["label_accuracy"] = float(np.mean(predicted == generated_labels))
    report["requested_class_histogram"] = (
        np.bincount(generated_labels, minlength=generated_probs.shape[1]) / len(generated_labels)
    ).tolist()
    return report


def quality_report(
    classifier: ReferenceClassifier,
    train: Dataset,
    heldout: Dataset,
    generated_images: np.ndarray,
    config: QualityConfig = QualityConfig(),
    generated_labels: np.ndarray | None = None,
    on_stage: Callable[[str], None] | None = None,
    privacy_config: privacy.PrivacyConfig | None = DEFAULT_PRIVACY,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Compare generated images with the real training set (`train`: images and labels, `heldout` likewise);
    returns (metrics, images). on_stage gets the name of
    each of REPORT_STAGES as it is done (TSTR's also for an unconditional report, where it costs nothing).

    metrics is JSON-serialisable (floats, ints, lists; None where a class has too few samples). Each `*_floor`
    is the same metric for real held-out images against the training set: what a perfect generator reaches
    at the held-out set's size (k-NN metrics compare equal-sized subsamples, so theirs hold at any size).
    TSTR (generated_labels only) sits beside TRTR, the reference classifier's held-out accuracy. The generated set
    is compared with the training set, on which the classifier and the generator were trained. images holds
    (H, W) float64 arrays: generated_mean, generated_std, real_mean, real_std (real = training set), for plotting.
    With generated_labels (the classes a conditional model was asked for), metrics also hold label_accuracy
    and per-class lists indexed by class. The privacy block (privacy.privacy_metrics: membership inference,
    authenticity, detection, each beside its floor) sits beside DCR, unless privacy_config is None.
    """
    train, heldout, generated = _embedded(classifier, train, heldout, generated_images, generated_labels, config)
    rng = np.random.default_rng(config.seed)
    done = on_stage or (lambda stage: None)
    done(REPORT_STAGES[0])
    fidelity, distances, knn_counts = _fidelity(train, heldout, generated, classifier.num_classes, config, rng)
    done(REPORT_STAGES[1])
    trtr = float(np.mean(heldout.probs.argmax(axis=1) == heldout.labels))
    tstr = None if generated.labels is None else _tstr(train, heldout, generated, classifier.num_classes, config)
    done(REPORT_STAGES[2])
    metrics: dict[str, Any] = {
        **fidelity,
        "classifier_heldout_accuracy": trtr,
        # TSTR needs labelled generated rows (a conditional model's); TRTR is the reference classifier's accuracy.
        "tstr_accuracy": tstr,
        "trtr_accuracy": trtr,
        **distances,
        "n_train": len(train.images),
        "n_heldout": len(heldout.images),
        "n_generated": len(generated.images),
        **knn_counts,
        "num_classes": classifier.num_classes,
        "feature_dim": classifier.feature_dim,
    }
    metrics.update(_per_class(train, heldout, generated, config, rng))
    generated_mean, generated_std = pixel_stats(generated.images)
    real_mean, real_std = pixel_stats(train.images)
    done(REPORT_STAGES[3])
    if privacy_config is not None:
        metrics.update(
            privacy.privacy_metrics(
                train.images,
                heldout.images,
                generated.images,
                train.feats,
                heldout.feats,
                generated.feats,
                privacy_config,
            )
        )
    done(REPORT_STAGES[4])
    images = {
        "generated_mean": generated_mean,
        "generated_std": generated_std,
        "real_mean": real_mean,
        "real_std": real_std,
    }
    return metrics, images


@dataclasses.dataclass(frozen=True)
class _Embedded:
    """One image set of a report, checked, with its classifier features and class probabilities."""

    images: np.ndarray
    labels: np.ndarray | None
    feats: np.ndarray
    probs: np.ndarray


def _embedded(
    classifier: ReferenceClassifier,
    train: Dataset,
    heldout: Dataset,
    generated_images: np.ndarray,
    generated_labels: np.ndarray | None,
    config: QualityConfig,
) -> tuple[_Embedded, _Embedded, _Embedded]:
    """The three sets checked (shapes, labels, sizes) and embedded by the reference classifier."""
    num_classes, shape = classifier.num_classes, classifier.image_shape
    train_images = _check_images("train.images", train.images, shape)
    heldout_images = _check_images("heldout.images", heldout.images, shape)
    generated_images = _check_images("generated_images", generated_images, shape)
    train_labels = _check_labels("train.labels", train.labels, len(train_images), num_classes)
    heldout_labels = _check_labels("heldout.labels", heldout.labels, len(heldout_images), num_classes)
    if generated_labels is not None:
        generated_labels = _check_labels("generated_labels", generated_labels, len(generated_images), num_classes)
    if min(len(train_images), len(heldout_images), len(generated_images)) < config.k_nearest + 1:
        raise UsageError(
            f"train, held-out and generated sets need at least k_nearest + 1 = {config.k_nearest + 1} "
            f"images each, got {len(train_images)}, {len(heldout_images)}, {len(generated_images)}"
        )
    sets = ((train_images, train_labels), (heldout_images, heldout_labels), (generated_images, generated_labels))
    embedded = []
    for images, labels in sets:
        feats, probs = _embed_and_classify(classifier, images, config.inference_batch_size)
        embedded.append(_Embedded(images, labels, feats, probs))
    return embedded[0], embedded[1], embedded[2]


def _fidelity(
    train: _Embedded,
    heldout: _Embedded,
    generated: _Embedded,
    num_classes: int,
    config: QualityConfig,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, int]]:
    """(Fréchet, precision/recall/density/coverage and the label distribution, each beside its floor; the
    memorisation and DCR figures; the k-NN subsample sizes). The draws from `rng` come in a fixed order: the
    report is seeded."""
    precision, recall, density, coverage, knn_generated_count = _balanced_precision_recall(
        train.feats, generated.feats, config, rng, with_density=True
    )
    precision_floor, recall_floor, density_floor, coverage_floor, knn_floor_count = _balanced_precision_recall(
        train.feats, heldout.feats, config, rng, with_density=True
    )
    train_distribution = np.bincount(train.labels, minlength=num_classes) / len(train.labels)
    labels = label_distribution_metrics(
        generated.probs, num_classes, train_distribution, config.class_coverage_fair_share_fraction
    )
    heldout_distance, generated_distance = closest_record_distances(
        train.images,
        _subsample(heldout.images, config.max_knn_samples, rng),
        _subsample(generated.images, config.max_knn_samples, rng),
        config.knn_chunk_rows,
    )
    memorisation, memorisation_threshold = _memorisation(
        heldout_distance, generated_distance, config.memorisation_percentile
    )
    fidelity = {
        "frechet_distance": frechet_distance(generated.feats, train.feats, config.frechet_eps),
        "frechet_floor": frechet_distance(heldout.feats, train.feats, config.frechet_eps),
        "precision": precision,
        "recall": recall,
        "precision_floor": precision_floor,
        "recall_floor": recall_floor,
        "density": density,
        "coverage": coverage,
        "density_floor": density_floor,
        "coverage_floor": coverage_floor,
        **labels,
    }
    distances = {
        "memorisation_share": memorisation,
        "memorisation_threshold": memorisation_threshold,
        **distance_to_closest_record(heldout_distance, generated_distance, config.dcr_percentile),
    }
    counts = {"n_knn_generated": knn_generated_count, "n_knn_floor": knn_floor_count}
    return fidelity, distances, counts


def _tstr(train: _Embedded, heldout: _Embedded, generated: _Embedded, num_classes: int, config: QualityConfig) -> float:
    """Train on synthetic, test on real. TSTR trains on as many generated rows as TRTR had real ones, so the two
    differ only in where the rows come from; drawn at random (an RNG of its own leaves the other metrics' draws
    alone): rows sorted by label, or cycling through the classes, would lose whole classes to a prefix or a
    stride."""
    rows = np.sort(
        np.random.default_rng(config.seed).choice(
            len(generated.images), size=min(len(train.images), len(generated.images)), replace=False
        )
    )
    return tstr_accuracy(
        generated.images[rows], generated.labels[rows], heldout.images, heldout.labels, num_classes, config
    )


def _per_class(
    train: _Embedded, heldout: _Embedded, generated: _Embedded, config: QualityConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Per-class fidelity, grouped by the requested labels, or (an unconditional model, which was asked for
    none) by the class the classifier sees, so that it compares with conditional models; label accuracy is
    meaningless then and dropped."""
    grouping = generated.labels if generated.labels is not None else generated.probs.argmax(axis=1)
    per_class = _per_class_metrics(
        _Features(train.feats, train.labels),
        _Features(heldout.feats, heldout.labels),
        generated.feats,
        generated.probs,
        grouping,
        config,
        rng,
    )
    if generated.labels is None:
        for key in ("label_accuracy", "per_class_label_accuracy", "requested_class_histogram"):
            per_class.pop(key)
    per_class["per_class_grouping"] = "requested" if generated.labels is not None else "predicted"
    return per_class
