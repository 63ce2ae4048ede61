"""The privacy gates of `vaegen promote`: membership inference, DCR ratio and detection, one gate each, over
the privacy block that `vaegen report` seals on the version as quality.* figures (vae_core/privacy.py)."""

from __future__ import annotations

import dataclasses

from registry.gates import GateResult
from registry.models import LoadedDecoder
from vae_core import privacy_block as privacy
from vae_core.quality_names import figures_from_tags, is_quality_tag


@dataclasses.dataclass(frozen=True)
class PrivacyThresholds:
    """The privacy gates over `vaegen report`'s privacy block, one gate each; None turns one off. Defaults
    (vae_core/privacy.py GATES, README "Privacy gates"): held-out real data, standing in for the samples, scores
    MIA AUC ~0.5, DCR ratio ~1 and detection AUC at its floor; a decoder that copies training rows scores MIA AUC
    near 1 and DCR ratio near 0."""

    max_mia_auc: float | None = privacy.GATES["mia_auc"][1]
    min_dcr_ratio: float | None = privacy.GATES["dcr_ratio"][1]
    max_detection_auc: float | None = privacy.GATES["detection_auc"][1]


_PRIVACY_RISKS = {
    "mia_auc": "the samples tell who was in the training set",
    "dcr_ratio": "samples sit closer to training rows than unseen real rows do",
    "detection_auc": "a linear classifier tells the samples from real rows",
}


def gate_privacy(candidate: LoadedDecoder, thresholds: PrivacyThresholds) -> list[GateResult]:
    """The privacy gates, one per figure, over the sealed quality.* figures of `vaegen report`."""
    figures = figures_from_tags(candidate.evidence)
    unsealed = not figures and any(is_quality_tag(key) for key in candidate.tags)
    return privacy_verdicts(
        figures,
        thresholds,
        f"v{candidate.pinned.version}",
        f"`vaegen report --model {candidate.pinned.name}/{candidate.pinned.version}`",
        unsealed,
    )


def privacy_verdicts(
    figures: dict[str, str | float], thresholds: PrivacyThresholds, version: str, rerun: str, unsealed: bool = False
) -> list[GateResult]:
    """One verdict per privacy gate that is on. A failure is forceable (--force, with the --reason recorded):
    whether a near copy matters depends on the data, public digits or private records. A figure the version
    lacks (reported before the privacy block, or its tags unsealed) "cannot compare", as gate 3 does."""
    checks = (
        ("mia_auc", thresholds.max_mia_auc, "<="),
        ("dcr_ratio", thresholds.min_dcr_ratio, ">="),
        ("detection_auc", thresholds.max_detection_auc, "<="),
    )
    gates = []
    for name, bound, sense in checks:
        if bound is None:
            continue
        try:
            value = float(figures[name])
        except (KeyError, TypeError, ValueError):
            why = (
                "its quality tags are not sealed by vaegen for its artifacts"
                if unsealed
                else f"no {name} figure (no report, or one older than the privacy block)"
            )
            gates.append(GateResult(name, False, f"cannot compare: {why} on {version}; run {rerun}", forceable=True))
            continue
        floor_key = privacy.FLOORS[name]
        floor = 1.0 if floor_key is None else figures.get(floor_key, "?")
        passed = value <= bound if sense == "<=" else value >= bound
        detail = f"{value:.3f} {sense} {bound:g} (real floor {_short(floor)})"
        gates.append(
            GateResult(
                name,
                passed,
                detail
                if passed
                else f"{detail}: {_PRIVACY_RISKS[name]}; retrain, or --force if the training data may be disclosed",
                forceable=True,
            )
        )
    return gates


def _short(value: str | float) -> str:
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return str(value)
