"""What a quality report is computed with (QualityConfig: every knob with its reason) and the input checks every
quality function shares: images, labels and features, each refused in one line naming the input."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vae_core.errors import UsageError


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


def check_images(name: str, images: Any, image_shape: tuple[int, ...] | None = None) -> np.ndarray:
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


def check_labels(name: str, labels: Any, count: int, num_classes: int | None = None) -> np.ndarray:
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


def check_features(name: str, feats: Any, min_rows: int) -> np.ndarray:
    if not isinstance(feats, np.ndarray) or feats.ndim != 2:
        raise UsageError(f"{name} must be a 2-D numpy array (N, F), got {getattr(feats, 'shape', type(feats))}")
    if feats.shape[0] < min_rows:
        raise UsageError(f"{name} needs at least {min_rows} rows, got {feats.shape[0]}")
    if not np.isfinite(feats).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    return feats.astype(np.float64, copy=False)
