"""Tiny, seeded tests of vae_core.quality; each asserts a value that a wrong metric would miss."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from vae_core.data import Dataset
from vae_core.errors import UsageError
from vae_core.fidelity import (
    closest_record_distances,
    density_coverage,
    distance_to_closest_record,
    frechet_distance,
    label_distribution_metrics,
    memorisation_share,
    pixel_stats,
    precision_recall,
)
from vae_core.quality import audit_figures, quality_report
from vae_core.quality_config import QualityConfig
from vae_core.quality_record import PRIVACY_KEYS, QualityReport
from vae_core.reference_classifier import features, predict_proba, train_reference_classifier, tstr_accuracy


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    order = np.random.default_rng(0).permutation(len(images))
    train, heldout, unseen = order[:1100], order[1100:1450], order[1450:]
    return {
        "train": (images[train], data.target[train]),
        "heldout": (images[heldout], data.target[heldout]),
        "unseen": (images[unseen], data.target[unseen]),
    }


def labelled(digits, split: str) -> Dataset:
    """One split of the digits fixture as quality_report takes it."""
    return Dataset("digits", *digits[split])


@pytest.fixture(scope="module")
def classifier(digits):
    model, info = train_reference_classifier(*digits["train"], QualityConfig())
    return model, info


def gaussian_with_exact_moments(mean, covariance, count, rng):
    """Samples whose empirical mean and (unbiased) covariance equal the given ones exactly."""
    z = rng.normal(size=(count, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(covariance).T + mean


def analytic_frechet(mean_a, cov_a, mean_b, cov_b):
    """Tr sqrt(A B) as sum sqrt(eig(A^1/2 B A^1/2)), a route independent of scipy.linalg.sqrtm."""
    eigenvalues, eigenvectors = np.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ np.diag(np.sqrt(eigenvalues)) @ eigenvectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a), 0, None)).sum()
    difference = np.asarray(mean_a) - np.asarray(mean_b)
    return difference @ difference + np.trace(cov_a) + np.trace(cov_b) - 2 * cross


def test_importing_quality_pulls_in_no_edge_package():
    edge = "{'mlflow', 'ray', 'click', 'matplotlib', 'sklearn'}"
    code = f"import sys, vae_core.quality; print(sorted({{m.split('.')[0] for m in sys.modules}} & {edge}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_frechet_distance_of_identical_sets_is_zero():
    feats = np.random.default_rng(0).normal(size=(500, 16))
    assert abs(frechet_distance(feats, feats.copy())) < 1e-8


def test_frechet_distance_matches_hand_computed_gaussians():
    rng = np.random.default_rng(1)
    a = gaussian_with_exact_moments(np.zeros(2), np.diag([1.0, 4.0]), 400, rng)
    b = gaussian_with_exact_moments(np.array([3.0, 4.0]), np.diag([4.0, 1.0]), 300, rng)
    # |(3, 4)|^2 = 25; Tr = 5 + 5 - 2 (sqrt(4) + sqrt(4)) = 2
    assert frechet_distance(a, b) == pytest.approx(27.0, abs=1e-8)


def test_frechet_distance_matches_analytic_value_for_correlated_gaussians():
    rng = np.random.default_rng(2)
    dim = 6
    factor_a, factor_b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    cov_a, cov_b = factor_a @ factor_a.T + 0.1 * np.eye(dim), factor_b @ factor_b.T + 0.1 * np.eye(dim)
    mean_a, mean_b = rng.normal(size=dim), rng.normal(size=dim) + 2.0
    a = gaussian_with_exact_moments(mean_a, cov_a, 200, rng)
    b = gaussian_with_exact_moments(mean_b, cov_b, 250, rng)
    assert frechet_distance(a, b) == pytest.approx(analytic_frechet(mean_a, cov_a, mean_b, cov_b), rel=1e-8)


def test_frechet_distance_stays_finite_with_a_dead_feature():
    rng = np.random.default_rng(3)
    a = gaussian_with_exact_moments(np.zeros(3), np.eye(3), 100, rng)
    b = gaussian_with_exact_moments(np.ones(3), 4 * np.eye(3), 100, rng)
    dead = np.zeros((100, 1))  # a ReLU unit that never fires: zero variance in both sets
    value = frechet_distance(np.hstack([a, dead]), np.hstack([b, dead]))
    assert value == pytest.approx(3.0 + 3 + 12 - 2 * 6, abs=1e-4)


def brute_force_precision_recall(real, fake, k):
    def radii(points):
        distances = np.linalg.norm(points[:, None] - points[None], axis=2)
        return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself

    def share_inside(queries, centres, centre_radii):
        distances = np.linalg.norm(queries[:, None] - centres[None], axis=2)
        return np.mean((distances <= centre_radii[None]).any(axis=1))

    return share_inside(fake, real, radii(real)), share_inside(real, fake, radii(fake))


def test_precision_recall_matches_brute_force_in_any_chunking():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(60, 3)), rng.normal(loc=0.7, size=(45, 3))
    expected = brute_force_precision_recall(real, fake, k=3)
    assert 0.2 < expected[0] < 0.95 and 0.2 < expected[1] < 0.95  # a case that separates the two
    assert precision_recall(real, fake, k=3, chunk_rows=7) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=1e-12)
    assert precision_recall(real, fake, k=5) == pytest.approx(brute_force_precision_recall(real, fake, k=5))


def test_precision_recall_of_identical_and_disjoint_sets():
    feats = np.random.default_rng(5).normal(size=(500, 8))
    assert precision_recall(feats, feats.copy()) == (1.0, 1.0)
    assert precision_recall(feats, feats + 100.0) == (0.0, 0.0)


def test_mode_collapse_keeps_precision_and_loses_recall():
    rng = np.random.default_rng(6)
    real = rng.normal(size=(1000, 2))
    collapsed = rng.normal(scale=0.05, size=(1000, 2))  # every fake sample sits near the real mode
    precision, recall = precision_recall(real, collapsed)
    assert precision > 0.95
    assert recall < 0.1


def test_label_kl_is_zero_for_matching_distributions_and_matches_hand_value():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    matching = label_distribution_metrics(probs, 3, reference_distribution=probs.mean(axis=0))
    assert abs(matching["label_kl"]) < 1e-12
    skewed = label_distribution_metrics(np.array([[1.0, 0.0], [0.5, 0.5]]), 2, np.array([0.5, 0.5]))
    # generated marginal (0.75, 0.25): 0.5 ln(0.5 / 0.75) + 0.5 ln(0.5 / 0.25) = 0.5 ln(4/3)
    assert skewed["label_kl"] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)


def test_class_coverage_histogram_and_confidence():
    probs = np.zeros((100, 4))
    probs[:60, 0] = 1.0
    probs[60:99, 1] = 0.5
    probs[60:99, 3] = 0.5 - 1e-3
    probs[60:99, 2] = 1e-3
    probs[99, 2] = 1.0  # 1% of samples, below a tenth of the 25% fair share
    metrics = label_distribution_metrics(probs, 4, reference_distribution=np.full(4, 0.25))
    assert metrics["class_histogram"] == pytest.approx([0.60, 0.39, 0.01, 0.0])
    assert metrics["class_coverage"] == 0.5 and "coverage" not in metrics  # k-NN coverage is another metric
    assert metrics["mean_confidence"] == pytest.approx((60 + 39 * 0.5 + 1) / 100)
    one_hot = label_distribution_metrics(np.eye(4)[[0, 1, 2]], 4, reference_distribution=np.full(4, 0.25))
    assert one_hot["label_kl"] == math.inf  # class 3 gets no probability at all


def test_memorisation_flags_copies_and_not_unseen_images(digits):
    train, heldout, unseen = digits["train"][0], digits["heldout"][0], digits["unseen"][0]
    assert memorisation_share(train, heldout, train[:300].copy()) == 1.0
    assert memorisation_share(train, heldout, unseen, percentile=1.0) < 0.06
    assert 0.04 < memorisation_share(train, heldout, unseen, percentile=10.0) < 0.25
    # the held-out set itself sits on its own percentile, up to one sample of rounding
    assert memorisation_share(train, heldout, heldout, percentile=10.0) == pytest.approx(0.10, abs=1.5 / len(heldout))


def test_reference_classifier_learns_digits(digits, classifier):
    model, info = classifier
    assert info["validation_accuracy"] > 0.93
    heldout_images, heldout_labels = digits["heldout"]
    probs = predict_proba(model, heldout_images)
    assert probs.shape == (len(heldout_images), 10)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.mean(probs.argmax(axis=1) == heldout_labels) > 0.93
    feats = features(model, heldout_images)
    assert feats.shape == (len(heldout_images), QualityConfig().feature_dim) and feats.dtype == np.float64
    # the features are the penultimate layer: ReLU and the last linear layer alone turn them into the probabilities
    linear = model.head[1]
    logits = np.maximum(feats, 0) @ linear.weight.detach().double().numpy().T + linear.bias.detach().double().numpy()
    assert np.allclose(probs, torch.softmax(torch.from_numpy(logits), dim=1).numpy(), atol=1e-6)
    assert feats.min() < 0  # before the ReLU, so no dead, zero-variance dimensions


def test_training_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone(digits):
    quick = QualityConfig(epochs=2)
    rng_state = torch.random.get_rng_state()
    first, _ = train_reference_classifier(*digits["train"], quick)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    second, _ = train_reference_classifier(*digits["train"], quick)
    other_seed, _ = train_reference_classifier(*digits["train"], QualityConfig(epochs=2, seed=1))
    for name, weight in first.state_dict().items():
        assert torch.equal(weight, second.state_dict()[name]), name
    assert not torch.equal(first.head[1].weight, other_seed.head[1].weight)


def test_report_of_real_unseen_images_matches_its_floors(digits, classifier):
    model, _ = classifier
    unseen_images, unseen_labels = digits["unseen"]
    metrics, images = quality_report(
        model,
        labelled(digits, "train"),
        labelled(digits, "heldout"),
        unseen_images,
        QualityConfig(),
        generated_labels=unseen_labels,
    )
    json.dumps(metrics.to_json(), allow_nan=False)
    assert metrics.label_accuracy > 0.9
    assert metrics.frechet_distance < 4 * metrics.frechet_floor  # FID at N=350 varies ~2x between real subsets
    assert metrics.precision > 0.8 * metrics.precision_floor
    assert metrics.recall > 0.8 * metrics.recall_floor
    assert metrics.class_coverage == 1.0
    assert metrics.label_kl < 0.05
    assert metrics.memorisation_share < 0.05
    assert len(metrics.per_class_frechet_distance) == 10
    assert all(value is not None for value in metrics.per_class_precision_floor)
    assert min(metrics.per_class_label_accuracy) > 0.7
    assert np.allclose(images["generated_mean"], unseen_images.mean(axis=0), atol=1e-6)
    assert images["real_std"].shape == (8, 8)


def test_report_of_the_heldout_set_equals_its_frechet_floor(digits, classifier):
    model, _ = classifier
    metrics, _ = quality_report(model, labelled(digits, "train"), labelled(digits, "heldout"), digits["heldout"][0])
    assert metrics.frechet_distance == pytest.approx(metrics.frechet_floor, rel=1e-12)
    assert "label_accuracy" not in metrics.to_json()


def test_shuffled_requested_labels_drop_label_accuracy(digits, classifier):
    model, _ = classifier
    unseen_images, unseen_labels = digits["unseen"]
    shuffled = np.random.default_rng(7).permutation(unseen_labels)
    metrics, _ = quality_report(
        model, labelled(digits, "train"), labelled(digits, "heldout"), unseen_images, generated_labels=shuffled
    )
    assert metrics.label_accuracy < 0.3


def test_audit_figures_are_the_reports_own(digits, classifier):
    """The publish audit's figures-only pass gives exactly what the full report gives for those figures."""
    model, _ = classifier
    images, labels = digits["unseen"]
    for requested in (None, np.random.default_rng(3).permutation(labels)):
        metrics, _ = quality_report(
            model, labelled(digits, "train"), labelled(digits, "heldout"), images, generated_labels=requested
        )
        figures = audit_figures(model, labelled(digits, "train"), images, generated_labels=requested)
        names = {"precision", "density", "mean_confidence"} | ({"label_accuracy"} if requested is not None else set())
        assert set(figures) == names
        assert figures == {name: getattr(metrics, name) for name in names}


def test_report_flags_noise_and_copies(digits, classifier):
    model, _ = classifier
    noise = np.random.default_rng(8).uniform(size=(400, 8, 8)).astype(np.float32)
    noisy, _ = quality_report(model, labelled(digits, "train"), labelled(digits, "heldout"), noise)
    assert noisy.frechet_distance > 10 * noisy.frechet_floor
    assert noisy.precision < 0.5 * noisy.precision_floor
    assert noisy.memorisation_share == 0.0
    copies, _ = quality_report(
        model, labelled(digits, "train"), labelled(digits, "heldout"), digits["train"][0][:400].copy()
    )
    assert copies.memorisation_share == 1.0


def test_pixel_stats_are_per_pixel_mean_and_population_std():
    images = np.stack([np.zeros((2, 3)), np.ones((2, 3))]).astype(np.float32)
    mean, std = pixel_stats(images)
    assert np.allclose(mean, 0.5) and np.allclose(std, 0.5) and mean.shape == (2, 3)


def test_bad_inputs_fail_with_the_value_and_the_fix(digits, classifier):
    model, _ = classifier
    train_images, train_labels = digits["train"]
    with pytest.raises(UsageError, match="divide uint8 by 255"):
        train_reference_classifier((train_images * 255).astype(np.uint8), train_labels)
    with pytest.raises(UsageError, match=r"must lie in \[0, 1\], got values in \[0.0, 2.0\]"):
        pixel_stats(train_images * 2)
    with pytest.raises(UsageError, match="classifier expects"):
        features(model, np.zeros((3, 28, 28), dtype=np.float32))
    with pytest.raises(UsageError, match="generated_labels must lie in 0..K-1"):
        quality_report(
            model,
            Dataset("digits", train_images, train_labels),
            labelled(digits, "heldout"),
            train_images[:10],
            generated_labels=np.full(10, 10),
        )
    with pytest.raises(UsageError, match="k_nearest must be a positive integer, got 0"):
        QualityConfig(k_nearest=0)
    with pytest.raises(UsageError, match="at least 4 rows"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_unconditional_per_class_groups_by_predicted_class(digits, classifier):
    """Without requested labels, per-class fidelity is still reported, grouped by the classifier's
    prediction; real held-out images scored that way sit near their own floor."""
    model, _ = classifier
    metrics, _ = quality_report(model, labelled(digits, "train"), labelled(digits, "heldout"), digits["heldout"][0])
    assert metrics.per_class_grouping == "predicted"
    assert "label_accuracy" not in metrics.to_json() and "per_class_label_accuracy" not in metrics.to_json()
    assert len(metrics.per_class_frechet_distance) == 10
    measured = [value for value in metrics.per_class_frechet_distance if value is not None]
    floors = [value for value in metrics.per_class_frechet_floor if value is not None]
    assert len(measured) >= 8
    assert np.mean(measured) < 2 * np.mean(floors)  # held-out vs itself-grouped: within 2x of the floor


def test_density_and_coverage_match_hand_computed_balls():
    real = np.arange(5, dtype=np.float64).reshape(-1, 1)  # 0, 1, 2, 3, 4 on a line
    fake = np.array([[0.5], [10.0]])
    # k = 1: every real ball has radius 1; 0.5 lies in the balls of 0 and 1, 10 in none.
    assert density_coverage(real, fake, k=1) == pytest.approx((2 / (1 * 2), 2 / 5))
    # k = 2: radii 2, 1, 1, 1, 2; 0.5 lies in the balls of 0 (radius 2) and 1 only.
    assert density_coverage(real, fake, k=2) == pytest.approx((2 / (2 * 2), 2 / 5))
    # Any chunking gives the same counts.
    assert density_coverage(real, fake, k=2, chunk_rows=1) == density_coverage(real, fake, k=2)


def test_density_and_coverage_of_identical_distributions_and_of_a_collapsed_mode():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    density, coverage = density_coverage(real, fake, k=5)
    # Naeem et al. 2020: E[density] = 1 and E[coverage] = 1 - 2^-k for N = M, identical distributions.
    assert density == pytest.approx(1.0, abs=0.1)
    assert coverage == pytest.approx(1 - 2**-5, abs=0.02)
    collapsed = real[:1].repeat(2000, axis=0) + 1e-6 * rng.normal(size=(2000, 8))
    density, coverage = density_coverage(real, collapsed, k=5)
    assert coverage < 0.01  # one real ball (and the few that reach it) holds every fake
    with pytest.raises(UsageError, match="k must be a positive integer, got 0"):
        density_coverage(real, fake, k=0)


def test_distance_to_closest_record_flags_copies_and_not_unseen_images(digits):
    train, heldout, unseen = digits["train"][0], digits["heldout"][0], digits["unseen"][0]
    heldout_distance, copy_distance = closest_record_distances(train, heldout, train[:300].copy())
    copies = distance_to_closest_record(heldout_distance, copy_distance)
    assert copies["dcr_p5"] == 0.0 and copies["dcr_median"] == 0.0 and copies["dcr_ratio"] == 0.0
    assert copies["dcr_floor_p5"] == pytest.approx(np.percentile(heldout_distance, 5))
    _, unseen_distance = closest_record_distances(train, heldout, unseen)
    fresh = distance_to_closest_record(heldout_distance, unseen_distance)
    assert 0.7 < fresh["dcr_ratio"] < 1.4  # unseen real images sit as far from the records as held-out ones
    assert fresh["dcr_median"] == pytest.approx(np.median(unseen_distance))
    # the distances are plain Euclidean nearest-neighbour distances in pixel space
    brute = np.sqrt(((unseen[:5, None].reshape(5, 1, -1) - train.reshape(1, len(train), -1)) ** 2).sum(-1)).min(1)
    assert np.allclose(unseen_distance[:5], brute, atol=1e-5)


def test_tstr_trains_on_generated_rows_and_scores_on_real_ones(digits):
    unseen_images, unseen_labels = digits["unseen"]
    heldout_images, heldout_labels = digits["heldout"]
    config = QualityConfig(epochs=15)
    # Real digits standing in for a perfect generator: far above chance (0.1), near what real training gives.
    assert tstr_accuracy(unseen_images, unseen_labels, heldout_images, heldout_labels, 10, config) > 0.85
    # Labels that say nothing about the images teach nothing.
    shuffled = np.random.default_rng(1).permutation(unseen_labels)
    assert tstr_accuracy(unseen_images, shuffled, heldout_images, heldout_labels, 10, config) < 0.3
    # A class the generated rows never show cannot be learnt: no TSTR rather than a misleading one.
    present = unseen_labels != 9
    assert (
        tstr_accuracy(unseen_images[present], unseen_labels[present], heldout_images, heldout_labels, 10, config)
        is None
    )


def test_report_holds_density_coverage_tstr_and_dcr_beside_their_floors(digits, classifier):
    model, _ = classifier
    unseen_images, unseen_labels = digits["unseen"]
    metrics, _ = quality_report(
        model, labelled(digits, "train"), labelled(digits, "heldout"), unseen_images, generated_labels=unseen_labels
    )
    assert metrics.density == pytest.approx(metrics.density_floor, rel=0.3)
    assert metrics.coverage == pytest.approx(metrics.coverage_floor, abs=0.1)
    assert metrics.trtr_accuracy == metrics.classifier_heldout_accuracy > 0.9
    assert metrics.tstr_accuracy > 0.85
    assert 0.7 < metrics.dcr_ratio < 1.4
    unlabelled, _ = quality_report(model, labelled(digits, "train"), labelled(digits, "heldout"), unseen_images)
    assert unlabelled.tstr_accuracy is None and unlabelled.trtr_accuracy > 0.9


def test_tstr_in_the_report_uses_as_many_rows_as_trtr_and_every_class_even_when_rows_are_sorted(digits, classifier):
    model, _ = classifier
    images = np.concatenate([digits["train"][0], digits["unseen"][0]])  # 1,447 rows for 1,100 real training rows
    labels = np.concatenate([digits["train"][1], digits["unseen"][1]])
    order = np.argsort(labels, kind="stable")  # sorted by label, as `vaegen sample`'s grid orders them
    metrics, _ = quality_report(
        model, labelled(digits, "train"), labelled(digits, "heldout"), images[order], generated_labels=labels[order]
    )
    assert metrics.tstr_accuracy > 0.85  # the first 1,100 sorted rows would hold no 8 or 9, and TSTR would be None


def test_tstr_in_the_report_sees_every_class_of_labels_that_cycle(digits, classifier):
    """Balanced labels cycle 0, 1, ..., 9: a stride of 1.25 rows (8,000 of 10,000) would never meet two classes."""
    model, _ = classifier
    images, labels = digits["train"]
    order = np.stack([np.flatnonzero(labels == k)[:90] for k in range(10)]).T.ravel()  # 0, 1, ..., 9, 0, 1, ...
    assert len(order) == 900
    generated, generated_labels = (
        np.concatenate([images[order]] * 2)[:1_375],
        np.concatenate([labels[order]] * 2)[:1_375],
    )
    assert (generated_labels[:20] == np.tile(np.arange(10), 2)).all()
    metrics, _ = quality_report(
        model, labelled(digits, "train"), labelled(digits, "heldout"), generated, generated_labels=generated_labels
    )
    assert metrics.tstr_accuracy > 0.85


REPORT_KEYS = [  # a report's JSON, in the order quality_report has always listed it
    "frechet_distance",
    "frechet_floor",
    "precision",
    "recall",
    "precision_floor",
    "recall_floor",
    "density",
    "coverage",
    "density_floor",
    "coverage_floor",
    "class_coverage",
    "label_kl",
    "mean_confidence",
    "class_histogram",
    "classifier_heldout_accuracy",
    "tstr_accuracy",
    "trtr_accuracy",
    "memorisation_share",
    "memorisation_threshold",
    "dcr_p5",
    "dcr_median",
    "dcr_floor_p5",
    "dcr_floor_median",
    "dcr_ratio",
    "n_train",
    "n_heldout",
    "n_generated",
    "n_knn_generated",
    "n_knn_floor",
    "num_classes",
    "feature_dim",
    "per_class_label_accuracy",
    "per_class_frechet_distance",
    "per_class_frechet_floor",
    "per_class_precision",
    "per_class_recall",
    "per_class_precision_floor",
    "per_class_recall_floor",
    "label_accuracy",
    "requested_class_histogram",
    "per_class_grouping",
    "authenticity",
    "authenticity_floor",
    "detection_auc",
    "detection_auc_floor",
    "mia_auc",
    "mia_auc_floor",
    "mia_members",
]
CONDITIONAL_ONLY = {"per_class_label_accuracy", "label_accuracy", "requested_class_histogram"}


def test_the_report_record_round_trips_its_json_in_the_reports_key_order(digits, classifier):
    model, _ = classifier
    unseen_images, unseen_labels = digits["unseen"]
    train, heldout = labelled(digits, "train"), labelled(digits, "heldout")
    report, _ = quality_report(model, train, heldout, unseen_images, generated_labels=unseen_labels)
    record = report.to_json()
    assert list(record) == REPORT_KEYS
    assert QualityReport.from_json(json.loads(json.dumps(record))) == report
    bare, _ = quality_report(model, train, heldout, unseen_images, privacy_config=None)
    expected = [key for key in REPORT_KEYS if key not in CONDITIONAL_ONLY and key not in PRIVACY_KEYS]
    assert list(bare.to_json()) == expected and bare.privacy is None and bare.label_accuracy is None
    assert QualityReport.from_json(bare.to_json()) == bare
    reported = dataclasses.replace(bare, classifier={"num_classes": 10}, data_source=None, n=5, subject="model")
    assert list(reported.to_json())[len(expected) :] == ["classifier", "data_source", "n", "subject"]
    assert reported.figure("subject") == "model" and reported.figure("no_such_figure") is None
