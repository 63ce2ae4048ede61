"""Quality of a generated image set against real data, measured in the feature space of a small reference classifier.

`quality_report` puts every figure side by side with the floor that real held-out data reaches: the figures
themselves are in `fidelity.py` (Frechet, precision/recall, density/coverage, labels, memorisation, DCR),
`reference_classifier.py` (the feature space, TSTR beside TRTR) and `privacy.py`; their knobs in
`quality_config.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from vae_core import privacy
from vae_core.data import Dataset
from vae_core.errors import UsageError
from vae_core.fidelity import (
    MIN_SAMPLES_FOR_COVARIANCE,
    closest_record_distances,
    density_coverage,
    distance_to_closest_record,
    frechet_distance,
    label_distribution_metrics,
    memorisation_and_radius,
    pixel_stats,
    precision_recall,
)
from vae_core.quality_config import QualityConfig, check_images, check_labels
from vae_core.quality_record import QualityReport
from vae_core.reference_classifier import (
    ReferenceClassifier,
    embed_and_classify,
    tstr_accuracy,
)

DEFAULT_PRIVACY = privacy.PrivacyConfig()  # quality_report's privacy block (None: none)
# What quality_report reports done, in order: its callers show them as progress.
REPORT_STAGES = ("features", "precision, recall, closest records", "TSTR", "per-class figures", "privacy")


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
    if min(len(feats_a), len(feats_b)) < MIN_SAMPLES_FOR_COVARIANCE:
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
) -> tuple[QualityReport, dict[str, np.ndarray]]:
    """Compare generated images with the real training set (`train`: images and labels, `heldout` likewise);
    returns (report, images). on_stage gets the name of
    each of REPORT_STAGES as it is done (TSTR's also for an unconditional report, where it costs nothing).

    report.to_json() is JSON-serialisable (floats, ints, lists; None where a class has too few samples). Each `*_floor`
    is the same metric for real held-out images against the training set: what a perfect generator reaches
    at the held-out set's size (k-NN metrics compare equal-sized subsamples, so theirs hold at any size).
    TSTR (generated_labels only) sits beside TRTR, the reference classifier's held-out accuracy. The generated set
    is compared with the training set, on which the classifier and the generator were trained. images holds
    (H, W) float64 arrays: generated_mean, generated_std, real_mean, real_std (real = training set), for plotting.
    With generated_labels (the classes a conditional model was asked for), the report also holds label_accuracy
    and per-class lists indexed by class. The privacy block (privacy.privacy_metrics: membership inference,
    authenticity, detection, each beside its floor) sits beside DCR, unless privacy_config is None.
    """
    train, heldout, generated = _embedded(classifier, train, heldout, generated_images, generated_labels, config)
    done = on_stage or (lambda stage: None)
    done(REPORT_STAGES[0])
    metrics = _fidelity_metrics(train, heldout, generated, classifier, config, done)
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
    generated_mean, generated_std = pixel_stats(generated.images)
    real_mean, real_std = pixel_stats(train.images)
    images = {
        "generated_mean": generated_mean,
        "generated_std": generated_std,
        "real_mean": real_mean,
        "real_std": real_std,
    }
    return QualityReport.from_json(metrics), images


def _fidelity_metrics(
    train: _Embedded,
    heldout: _Embedded,
    generated: _Embedded,
    classifier: ReferenceClassifier,
    config: QualityConfig,
    done: Callable[[str], None],
) -> dict[str, Any]:
    """Every figure of quality_report but the privacy block, reporting REPORT_STAGES[1:4] to `done`. One RNG,
    seeded here, serves the whole-set and the per-class figures in that order: the report is seeded."""
    rng = np.random.default_rng(config.seed)
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
    done(REPORT_STAGES[3])
    return metrics


def audit_figures(
    classifier: ReferenceClassifier,
    train: Dataset,
    generated_images: np.ndarray,
    config: QualityConfig = QualityConfig(),
    generated_labels: np.ndarray | None = None,
) -> dict[str, float | None]:
    """The figures of quality_report that are averages over generated rows (precision, density, mean confidence,
    and label accuracy with generated_labels): what the publish audit compares with a version's report. The same
    values quality_report gives for the same arguments (its seed, so the same k-NN subsamples), without what the
    audit does not compare (floors, Frechet, recall, coverage, TSTR, per-class, closest records): half the time."""
    num_classes = classifier.num_classes
    train_images = check_images("train.images", train.images, classifier.image_shape)
    train_labels = check_labels("train.labels", train.labels, len(train_images), num_classes)
    generated_images = check_images("generated_images", generated_images, classifier.image_shape)
    train_feats, _ = embed_and_classify(classifier, train_images, config.inference_batch_size)
    generated_feats, generated_probs = embed_and_classify(classifier, generated_images, config.inference_batch_size)
    precision, _, density, _, _ = _balanced_precision_recall(
        train_feats, generated_feats, config, np.random.default_rng(config.seed), with_density=True
    )
    train_distribution = np.bincount(train_labels, minlength=num_classes) / len(train_labels)
    labels = label_distribution_metrics(
        generated_probs, num_classes, train_distribution, config.class_coverage_fair_share_fraction
    )
    figures = {"precision": precision, "density": density, "mean_confidence": labels["mean_confidence"]}
    if generated_labels is not None:
        generated_labels = check_labels("generated_labels", generated_labels, len(generated_images), num_classes)
        figures["label_accuracy"] = float(np.mean(generated_probs.argmax(axis=1) == generated_labels))
    return figures


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
    train_images = check_images("train.images", train.images, shape)
    heldout_images = check_images("heldout.images", heldout.images, shape)
    generated_images = check_images("generated_images", generated_images, shape)
    train_labels = check_labels("train.labels", train.labels, len(train_images), num_classes)
    heldout_labels = check_labels("heldout.labels", heldout.labels, len(heldout_images), num_classes)
    if generated_labels is not None:
        generated_labels = check_labels("generated_labels", generated_labels, len(generated_images), num_classes)
    if min(len(train_images), len(heldout_images), len(generated_images)) < config.k_nearest + 1:
        raise UsageError(
            f"train, held-out and generated sets need at least k_nearest + 1 = {config.k_nearest + 1} "
            f"images each, got {len(train_images)}, {len(heldout_images)}, {len(generated_images)}"
        )
    sets = ((train_images, train_labels), (heldout_images, heldout_labels), (generated_images, generated_labels))
    embedded = []
    for images, labels in sets:
        feats, probs = embed_and_classify(classifier, images, config.inference_batch_size)
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
    memorisation, memorisation_threshold = memorisation_and_radius(
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
