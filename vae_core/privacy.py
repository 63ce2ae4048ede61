"""Privacy and detectability of a generated set, each figure beside its real floor (held-out real data in the
generated set's place: what a generator that never saw the training rows scores).

Owns the classifier two-sample test (detection AUC; Lopez-Paz and Oquab 2017, as SDMetrics' LogisticDetection),
the DOMIAS membership-inference attack (van Breugel et al. 2023), authenticity (Alaa et al. 2022) and
`privacy_metrics`, which runs them for `quality.quality_report`. The distance to closest record (DCR) is
quality.py's; the report's privacy block quotes it beside these.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import scipy.stats
import torch

from vae_core.errors import UsageError
from vae_core.privacy_block import FLOORS, HEADLINE_KEYS  # noqa: F401 (re-exported: the block's keys)

_MIN_LOG_DISTANCE = 1e-12  # an exact copy sits at distance 0; log(0) would make every copy tie at -inf


@dataclasses.dataclass(frozen=True)
class PrivacyConfig:
    mia_k: int = 1  # k of the attack's k-NN densities: 1, so that one near copy of a row gives it away
    detection_folds: int = 5  # out-of-fold AUC: every row is scored by a classifier that never saw it
    # Newton steps on standardised 64-d features converge in 3-5 iterations; lbfgs took 100-230 (1-2 s per fit on
    # digits on 2 loaded cores, 15 s for a digits report): the same L2-penalised optimum, found in a tenth of the time.
    detection_max_iter: int = 100
    max_rows: int = 10_000  # per set, as QualityConfig.max_knn_samples: the cost stays bounded at any n
    chunk_rows: int = 1024  # rows of one distance block: 1024 x 10k float32 = 40 MB
    seed: int = 0  # the attack's split of the training rows, the subsamples and the detection folds

    def __post_init__(self) -> None:
        for name in ("mia_k", "detection_max_iter", "max_rows", "chunk_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"PrivacyConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.detection_folds, int) or self.detection_folds < 2:
            raise UsageError(f"PrivacyConfig.detection_folds must be an integer >= 2, got {self.detection_folds!r}")


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, the Mann-Whitney U statistic over n1 n0 (ties count half): the chance that a
    random positive scores above a random negative."""
    positive = truth.astype(bool)
    count_positive, count_negative = int(positive.sum()), int((~positive).sum())
    if count_positive == 0 or count_negative == 0:
        raise UsageError(f"an AUC needs both classes, got {count_positive} positives and {count_negative} negatives")
    ranks = scipy.stats.rankdata(scores)  # average ranks for ties
    u_statistic = ranks[positive].sum() - count_positive * (count_positive + 1) / 2
    return float(u_statistic / (count_positive * count_negative))


def _flat(name: str, points: Any) -> torch.Tensor:
    if not isinstance(points, np.ndarray) or points.ndim < 2 or len(points) < 1:
        raise UsageError(f"{name} must be a numpy array (N >= 1, ...), got {getattr(points, 'shape', type(points))}")
    if not np.isfinite(points).all():
        raise UsageError(f"{name} contains NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(points.reshape(len(points), -1), dtype=np.float32))


def _same_width(**sets: torch.Tensor) -> None:
    widths = {name: points.shape[1] for name, points in sets.items()}
    if len(set(widths.values())) != 1:
        raise UsageError(f"the sets differ in size per sample: {widths}")


def _nearest(queries: torch.Tensor, references: torch.Tensor, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of each query's nearest reference row: ((Q,) float64, (Q,) int64)."""
    distances, indices = [], []
    for chunk in queries.split(chunk_rows):
        nearest = torch.cdist(chunk, references).min(dim=1)  # over (C, R)
        distances.append(nearest.values)
        indices.append(nearest.indices)
    return torch.cat(distances).double().numpy(), torch.cat(indices).numpy()


def _kth_distance(queries: torch.Tensor, references: torch.Tensor, k: int, chunk_rows: int) -> np.ndarray:
    """Distance from each query to its k-th nearest reference row, (Q,) float64."""
    if len(references) < k:
        raise UsageError(f"k = {k} needs at least {k} reference rows, got {len(references)}")
    return (
        torch.cat(
            [
                torch.cdist(chunk, references).topk(k, dim=1, largest=False).values[:, k - 1]
                for chunk in queries.split(chunk_rows)
            ]
        )
        .double()
        .numpy()
    )


def domias_scores(
    candidates: np.ndarray,
    generated: np.ndarray,
    reference: np.ndarray,
    k: int = PrivacyConfig.mia_k,
    chunk_rows: int = PrivacyConfig.chunk_rows,
) -> np.ndarray:
    """DOMIAS (van Breugel et al. 2023, eq. 2): the attacker's score of each candidate, log p_G(x) / p_R(x), the
    density of the generated set over that of reference real data. A generator that overfits puts density on its
    training rows beyond what the real data has there.

    Both densities are k-NN estimates (Loftsgaarden and Quesenberry 1965: p(x) ~ k / (N r_k(x)^D)), so the log
    ratio is D (log r_k,R(x) - log r_k,G(x)) plus log(N_G / N_R) / D. D, the data's local dimension, varies over
    the space, so that term is only constant for sets of one size: p_G is estimated on disjoint blocks of the
    generated set as large as the reference set and its log radii averaged (all the samples count, none is given
    more weight than a reference row). AUCs only rank scores, so this returns log r_k,R - mean log r_k,G_j,
    (N,) float64, higher = more likely a training member."""
    queries, fake, real = _flat("candidates", candidates), _flat("generated", generated), _flat("reference", reference)
    _same_width(candidates=queries, generated=fake, reference=real)
    if len(fake) < len(real):
        raise UsageError(f"generated needs at least as many rows as reference, got {len(fake)} < {len(real)}")
    blocks = fake[: len(fake) // len(real) * len(real)].split(len(real))
    log_radius_generated = np.mean(
        [np.log(np.maximum(_kth_distance(queries, block, k, chunk_rows), _MIN_LOG_DISTANCE)) for block in blocks],
        axis=0,
    )
    return np.log(np.maximum(_kth_distance(queries, real, k, chunk_rows), _MIN_LOG_DISTANCE)) - log_radius_generated


def membership_inference_auc(
    members: np.ndarray,
    non_members: np.ndarray,
    generated: np.ndarray,
    reference: np.ndarray,
    k: int = PrivacyConfig.mia_k,
    chunk_rows: int = PrivacyConfig.chunk_rows,
) -> float:
    """AUC of the DOMIAS attack telling training rows (members) from unseen real rows (non-members), given the
    generated set and a reference set of real rows that holds neither: 0.5 = the generated set says nothing about
    who was in the training set, 1 = it names every member."""
    scores = domias_scores(np.concatenate([members, non_members]), generated, reference, k, chunk_rows)
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    return roc_auc(truth, scores)


def authenticity(train: np.ndarray, queries: np.ndarray, chunk_rows: int = PrivacyConfig.chunk_rows) -> float:
    """Authenticity (Alaa et al. 2022, sec. 3.3): the share of queries NOT closer to their nearest training row
    than that row is to its own nearest other training row. A sample inside that radius is one the training row
    could have been copied into (an unauthentic sample); 1 - authenticity is that share. Real held-out data
    scores the floor (about 0.5-0.6 in pixel space: neighbours among real digits are as close as held-out ones)."""
    train_t, queries_t = _flat("train", train), _flat("queries", queries)
    _same_width(train=train_t, queries=queries_t)
    if len(train_t) < 2:
        raise UsageError(f"train needs at least 2 rows for a nearest other training row, got {len(train_t)}")
    distance, nearest = _nearest(queries_t, train_t, chunk_rows)
    rows = np.unique(nearest)  # only the training rows some query lands on need their own radius
    radius = np.empty(len(train_t))
    radius[rows] = _kth_distance(train_t[torch.from_numpy(rows)], train_t, 2, chunk_rows)  # the 1st is the row itself
    return float(np.mean(distance > radius[nearest]))


def detection_auc(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    folds: int = PrivacyConfig.detection_folds,
    seed: int = PrivacyConfig.seed,
    max_iter: int = PrivacyConfig.detection_max_iter,
) -> float:
    """Classifier two-sample test (Lopez-Paz and Oquab 2017; SDMetrics' LogisticDetection): out-of-fold ROC AUC
    of a logistic regression on standardised features telling real rows from generated ones, on equal counts.
    0.5 = indistinguishable, 1 = told apart every time. SDMetrics reports 1 - (2 max(AUC, 0.5) - 1)."""
    # scikit-learn loads in about a second: imported here, so that reading FLOORS (registry, cards) stays cheap
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    real, fake = _flat("real_feats", real_feats).double().numpy(), _flat("fake_feats", fake_feats).double().numpy()
    if real.shape[1] != fake.shape[1]:
        raise UsageError(f"feature sets differ in width: {real.shape[1]} vs {fake.shape[1]}")
    count = min(len(real), len(fake))
    if count < folds:
        raise UsageError(f"detection needs at least {folds} rows per set (one per fold), got {count}")
    rng = np.random.default_rng(seed)
    rows = np.concatenate(
        [real[rng.choice(len(real), count, replace=False)], fake[rng.choice(len(fake), count, replace=False)]]
    )
    truth = np.concatenate([np.zeros(count), np.ones(count)])
    model = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=max_iter))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # One BLAS thread: the fits' 64 x 64 products are too small to share, and OpenBLAS's threads spin against other
    # work on a loaded machine (3.1 s against 0.24 s for a digits-sized test on 2 busy cores).
    with threadpool_limits(1):
        scores = cross_val_predict(model, rows, truth, cv=split, method="predict_proba")[:, 1]
    return roc_auc(truth, scores)


def _rows(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return points if count >= len(points) else points[np.sort(rng.choice(len(points), count, replace=False))]


def _detection_or_none(real_feats: np.ndarray, fake_feats: np.ndarray, config: PrivacyConfig) -> float | None:
    if min(len(real_feats), len(fake_feats)) < config.detection_folds:
        return None  # fewer rows than folds: no out-of-fold score for every row
    return detection_auc(real_feats, fake_feats, config.detection_folds, config.seed, config.detection_max_iter)


def privacy_metrics(
    train_images: np.ndarray,
    heldout_images: np.ndarray,
    generated_images: np.ndarray,
    train_feats: np.ndarray,
    heldout_feats: np.ndarray,
    generated_feats: np.ndarray,
    config: PrivacyConfig = PrivacyConfig(),
) -> dict[str, Any]:
    """Membership inference, authenticity (pixel space, like DCR: a leak is a near copy, whatever a classifier
    sees) and detection (the reference classifier's features, like Frechet), each with its real floor.

    Membership: members are m training rows, non-members m held-out rows, and the attack's reference density
    comes from other training rows (m = held-out size, at most a third of the training set). The reference comes
    from the training population, not the held-out one, so that a shift between the two splits (a source split
    by position: MNIST's test file puts one group of writers first) is not read as membership; the floor runs the
    attack with m further training rows, which the attack never sees, in the generated set's place: a generator
    that learned the population without keeping its rows. None when the training set is too small to split so."""
    rng = np.random.default_rng(config.seed)
    kept = min(config.max_rows, len(generated_images))
    generated_rows = np.sort(rng.choice(len(generated_images), kept, replace=False))
    generated = generated_images[generated_rows]
    metrics: dict[str, Any] = {
        "authenticity": authenticity(train_images, generated, config.chunk_rows),
        "authenticity_floor": authenticity(
            train_images, _rows(heldout_images, config.max_rows, rng), config.chunk_rows
        ),
        "detection_auc": _detection_or_none(
            _rows(train_feats, config.max_rows, rng), generated_feats[generated_rows], config
        ),
        "detection_auc_floor": _detection_or_none(train_feats, heldout_feats, config),
        "mia_auc": None,
        "mia_auc_floor": None,
    }
    count = min(len(heldout_images), len(train_images) // 3, config.max_rows)
    size = min((len(train_images) - count) // 2, len(generated), config.max_rows)
    if count < 1 or size < config.mia_k:
        return metrics
    order = rng.permutation(len(train_images))
    members = train_images[np.sort(order[:count])]
    reference = train_images[np.sort(order[count : count + size])]
    stand_in = train_images[np.sort(order[count + size : count + 2 * size])]
    non_members = _rows(heldout_images, count, rng)
    shuffled = generated[rng.permutation(len(generated))]  # its blocks must not follow an order of the rows
    metrics["mia_auc"] = membership_inference_auc(
        members, non_members, shuffled, reference, config.mia_k, config.chunk_rows
    )
    metrics["mia_auc_floor"] = membership_inference_auc(
        members, non_members, stand_in, reference, config.mia_k, config.chunk_rows
    )
    metrics["mia_members"] = count
    return metrics
