"""The privacy block's names, meanings, floors and promotion-gate defaults, and its rows for display: the one
place that the report (vae_core/privacy.py computes the figures), `vaegen report`, `vaegen promote`, the dataset
card and the version's description read. Pure Python: the CLI and the generate driver import it without torch.
"""

from __future__ import annotations

from typing import Any

# The privacy block of a report: each figure and its real floor, the same figure with real rows in the samples'
# place (privacy_metrics says which; DCR's ratio is to its floor already: unseen real data scores 1).
FLOORS = {
    "mia_auc": "mia_auc_floor",
    "dcr_ratio": None,
    "dcr_p5": "dcr_floor_p5",
    "dcr_median": "dcr_floor_median",
    "authenticity": "authenticity_floor",
    "detection_auc": "detection_auc_floor",
}
HEADLINE_KEYS = tuple(key for pair in FLOORS.items() for key in pair if key)
# What each figure means, with its source: the report, `vaegen report`, the card and the version's description
# quote these (docs/decisions.md, "Privacy measured and gated").
MEANINGS = {
    "mia_auc": "membership inference AUC of a DOMIAS density-ratio attack (van Breugel et al. 2023) telling training "
    "rows from unseen ones with the samples' help; 0.5 = the samples say nothing about who was trained on",
    "dcr_ratio": "5th-percentile distance of samples to their closest training record over that of unseen real rows "
    "(SDMetrics' DCRBaselineProtection); 1 = as far as unseen data, near 0 = copies",
    "dcr_p5": "5th percentile of the samples' distance to their closest training record (pixels)",
    "dcr_median": "median of the samples' distance to their closest training record (pixels)",
    "authenticity": "share of samples farther from their nearest training row than that row is from its own nearest "
    "training neighbour (Alaa et al. 2022); copies score 0",
    "detection_auc": "out-of-fold AUC of a logistic regression telling samples from training rows (a classifier "
    "two-sample test, Lopez-Paz and Oquab 2017; SDMetrics' LogisticDetection); "
    "0.5 = indistinguishable",
}
# The promotion gates' defaults (`vaegen promote --max-mia-auc --min-dcr-ratio --max-detection-auc`; README,
# "Privacy gates", says why each): name -> (sense, bound). A version's figure must satisfy `figure sense bound`.
GATES = {"mia_auc": ("<=", 0.60), "dcr_ratio": (">=", 0.90), "detection_auc": ("<=", 0.95)}


def block(figures: dict[str, Any], gates: dict[str, tuple[str, float | None]] = GATES) -> list[dict[str, Any]]:
    """The privacy block of a report, a card or a description: one row per figure of FLOORS with its value, its real
    floor (1 for dcr_ratio, a ratio to its floor already), the promotion gate's bound (or None) and its meaning.
    Figures a report does not hold (None, or a report older than the block) come back as None; `figures` holds
    floats (a report) or their strings (a version's quality.* tags without the prefix)."""

    def number(key: str | None) -> float | None:
        value = figures.get(key) if key else None
        if value is None or isinstance(value, bool):
            return None
        try:  # a report's floats, or a version's tags (strings)
            return float(value)
        except (TypeError, ValueError):
            return None

    return [
        {
            "figure": name,
            "value": number(name),
            "floor": 1.0 if name == "dcr_ratio" else number(floor),
            "gate": None if gates.get(name, (None, None))[1] is None else f"{gates[name][0]} {gates[name][1]:g}",
            "meaning": MEANINGS[name],
        }
        for name, floor in FLOORS.items()
    ]
