"""The quality report's headline figures by name, and the `quality.` prefix under which a model version's tags and a
run's metrics carry them: the one place both are spelt. Pure Python, so the CLI, the registry and the dataset card
read it without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vae_core.privacy_block import HEADLINE_KEYS as PRIVACY_HEADLINE

# `vaegen.quality.<name>` on a model version (the promotion gates read them), `quality.<name>` as a run's metric
QUALITY_TAG_PREFIX = "quality."
# Stored on the version as quality.* tags (the promotion gate reads them) and printed by `vaegen report`.
HEADLINE = (
    "frechet_distance",
    "frechet_floor",
    "precision",
    "precision_floor",
    "recall",
    "recall_floor",
    "density",
    "density_floor",
    "coverage",
    "coverage_floor",
    "class_coverage",
    "memorisation_share",
    "dcr_ratio",
    "mean_confidence",
    "label_accuracy",
    "tstr_accuracy",
    "trtr_accuracy",
    # the privacy block: each figure beside its real floor (vae_core/privacy_block.py)
    *(key for key in PRIVACY_HEADLINE if key != "dcr_ratio"),
)


def is_quality_tag(key: str) -> bool:
    """Whether a tag or metric name carries a quality figure."""
    return key.startswith(QUALITY_TAG_PREFIX)


def quality_metrics(figures: Mapping[str, float]) -> dict[str, float]:
    """A report's figures as a run's metrics: each name under the prefix, its value as it is."""
    return {f"{QUALITY_TAG_PREFIX}{name}": value for name, value in figures.items()}


def quality_tags(figures: Mapping[str, float]) -> dict[str, str]:
    """A report's figures as a version's tags: each name under the prefix, its value to 6 significant digits."""
    return {f"{QUALITY_TAG_PREFIX}{name}": f"{value:.6g}" for name, value in figures.items()}


def figures_from_tags(tags: Mapping[str, Any]) -> dict[str, Any]:
    """The quality figures among a version's tags (or sealed evidence), by name without the prefix; values as
    stored (strings, for tags)."""
    return {key.removeprefix(QUALITY_TAG_PREFIX): value for key, value in tags.items() if is_quality_tag(key)}
