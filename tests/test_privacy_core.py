"""Privacy metrics of vae_core/privacy.py (issue 25): tiny seeded unit tests of the pure functions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vae_core import privacy
from vae_core.errors import UsageError


def test_roc_auc_is_the_mann_whitney_statistic_with_ties_counted_half():
    truth = np.array([1, 1, 0, 0])
    assert privacy.roc_auc(truth, np.array([0.9, 0.8, 0.1, 0.2])) == 1.0
    assert privacy.roc_auc(truth, np.array([0.1, 0.2, 0.9, 0.8])) == 0.0
    assert privacy.roc_auc(truth, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert privacy.roc_auc(truth, np.array([0.9, 0.3, 0.5, 0.1])) == 0.75  # 3 of 4 pairs ordered
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 500), rng.normal(size=500).round(1)  # rounded: many ties
    assert privacy.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(UsageError, match="needs both classes"):
        privacy.roc_auc(np.ones(3), np.zeros(3))


def test_authenticity_matches_hand_computed_radii():
    train = np.array([[0.0], [1.0], [3.0]])  # nearest-neighbour radii: 1, 1, 2
    queries = np.array([[0.2], [2.5], [1.0], [5.5], [1.8]])
    # 0.2 -> row 0 at 0.2 <= 1: copied; 2.5 -> row 2 at 0.5 <= 2: copied; 1.0 -> row 1 at 0: copied;
    # 5.5 -> row 2 at 2.5 > 2: authentic; 1.8 -> row 1 at 0.8 <= 1: copied
    assert privacy.authenticity(train, queries) == pytest.approx(1 / 5)
    with pytest.raises(UsageError, match="at least 2 rows"):
        privacy.authenticity(train[:1], queries)


def test_detection_tells_shifted_data_apart_and_not_two_halves_of_one_set():
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
    assert 0.4 < privacy.detection_auc(same_a, same_b) < 0.6
    assert privacy.detection_auc(same_a, rng.normal(size=(600, 8)) + 1.5) > 0.9
    with pytest.raises(UsageError, match="differ in width"):
        privacy.detection_auc(same_a, same_b[:, :4])
