"""The promotion gates (safety, load, schema, ELBO, quality) and their verdict, GateResult; the privacy gates are in
privacy_gate.py. Each gate is a function of the candidate (and the current holder) to a GateResult."""

from __future__ import annotations

import dataclasses
from typing import Any

from registry.models import (
    LoadedDecoder,
    PinnedModel,
    version_refusal,
)
from vae_core.quality_names import figures_from_tags, is_quality_tag


@dataclasses.dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str
    # "nothing to compare with" is, and a failing privacy gate (whether a leak matters depends on the data);
    # a safety, load or quality failure never is
    forceable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gate_artifacts(pinned: PinnedModel, tracking_uri: str | None = None) -> GateResult:
    """Gate 0, safety: the version is vaegen's models-from-code pyfunc and nothing else, its code byte-identical to
    vaegen's own (registry.artifacts), so that neither vaegen nor a generic `mlflow.pyfunc.load_model` of the alias
    can be made to unpickle or run anything else. Never forceable."""
    reason = version_refusal(pinned, tracking_uri)
    if reason is not None:
        return GateResult(
            "safe_artifacts", False, f"refused: {reason} (loading it could run code that is not vaegen's)"
        )
    return GateResult("safe_artifacts", True, "vaegen's own code, byte for byte; weights.npz + config.json; no pickle")


def gate_loads(candidate: LoadedDecoder, probe_rows: int) -> GateResult:
    """Gate 1: loads without pickle (it just did) and decodes probe z to finite values in range, right shape."""
    import numpy as np

    from vae_core import sampling

    ids = np.arange(probe_rows, dtype=np.int64)
    _, z = sampling.draw(0, ids, candidate.config.latent_dim)
    labels = (ids % candidate.config.num_classes).astype(np.int64) if candidate.config.conditional else None
    x = sampling.decode(candidate.build(), z, labels)
    expected = (probe_rows, *candidate.config.input_shape)
    if x.shape != expected:
        return GateResult("loads", False, f"decoded shape {x.shape}, declared {expected}")
    if not np.isfinite(x).all():
        return GateResult(
            "loads", False, f"{int((~np.isfinite(x)).sum())} non-finite values in {probe_rows} probe samples"
        )
    if x.min() < 0 or x.max() > 1:
        return GateResult("loads", False, f"values in [{x.min():.3g}, {x.max():.3g}], outside [0, 1]")
    return GateResult(
        "loads", True, f"weights-only load; {probe_rows} probe samples finite, in [0, 1], shape {expected[1:]}"
    )


def _data_kind(loaded: LoadedDecoder) -> str:
    shape = "x".join(map(str, loaded.config.input_shape))
    classes = loaded.config.num_classes
    return f"{shape} samples " + (f"with a label column (classes 0..{classes - 1})" if classes else "without labels")


def gate_schema(candidate: LoadedDecoder, holder: LoadedDecoder | None, alias: str, allowed: bool) -> GateResult:
    """Gate: the alias keeps the data it serves; a version with another sample shape or conditioning needs
    --allow-schema-change, and the detail says what `generate` and `refresh` from the alias would write instead."""
    if holder is None:
        return GateResult("schema", True, f"no current holder; {_data_kind(candidate)}")
    before, after = _data_kind(holder), _data_kind(candidate)
    if before == after:
        return GateResult("schema", True, f"same as v{holder.pinned.version}: {after}")
    change = (
        f"`generate`/`refresh` from {candidate.pinned.name}@{alias} would write {after} "
        f"instead of v{holder.pinned.version}'s {before}"
    )
    if allowed:
        return GateResult("schema", True, f"{change} (allowed by --allow-schema-change)")
    return GateResult(
        "schema",
        False,
        f"{change}; pass --allow-schema-change if readers of that data expect it, "
        "or register the version under another name",
    )


def gate_elbo(candidate: LoadedDecoder, holder: LoadedDecoder | None, tolerance_nats: float) -> GateResult:
    """Gate 2: held-out -ELBO not worse than the holder's by more than the tolerance, on the same data and split."""
    if holder is None:
        return GateResult("held_out_elbo", True, "no current holder to compare with")
    unsealed = [f"v{loaded.pinned.version}" for loaded in (candidate, holder) if "val_neg_elbo" not in loaded.evidence]
    if unsealed:
        return GateResult(
            "held_out_elbo",
            False,
            f"cannot compare with {holder.pinned.name}/{holder.pinned.version}: no held-out -ELBO sealed by "
            f"vaegen for {' and '.join(unsealed)}'s artifacts (copied, edited or hand-registered tags are "
            "not evidence; use --force to promote anyway)",
            forceable=True,
        )
    ours_tags, theirs_tags = candidate.evidence, holder.evidence
    keys = ("data_sha256", "holdout_fraction")
    mismatched = [key for key in keys if ours_tags.get(key) != theirs_tags.get(key)]
    if mismatched:
        return GateResult(
            "held_out_elbo",
            False,
            f"cannot compare with {holder.pinned.name}/{holder.pinned.version}: different "
            f"{', '.join(mismatched)} (use --force to promote anyway)",
            forceable=True,
        )
    try:
        ours, theirs = float(ours_tags["val_neg_elbo"]), float(theirs_tags["val_neg_elbo"])
    except ValueError:
        return GateResult("held_out_elbo", False, "a held-out -ELBO tag is not a number")
    passed = ours <= theirs + tolerance_nats
    return GateResult(
        "held_out_elbo",
        passed,
        f"{ours:.3f} vs {theirs:.3f} nats (v{holder.pinned.version}), tolerance {tolerance_nats:g}",
    )


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    """Gate 3 over `vaegen report`'s metrics; None turns a check off. Defaults sit between what was measured
    (README, docs/decisions.md): trained models reach precision >= 0.65, class coverage 0.9-1.0, Frechet at most
    17.4x its real floor (the tutorial MLP on digits) and TSTR >= 0.95 of TRTR; a 1-epoch model has precision
    ~0 and class coverage ~0.3; uniform noise sits at 45x (digits) and 205x (MNIST) the floor, a constant mean
    image at 58-86x; real held-out data has memorisation ~0.01 by construction."""

    min_precision: float | None = 0.3
    min_class_coverage: float | None = 0.8  # share of classes the generated set gives a fair share
    max_memorisation_share: float | None = 0.05
    min_label_accuracy: float | None = 0.8  # conditional models only: the classifier agrees with the asked label
    max_frechet_ratio: float | None = 25.0  # Frechet distance / its real-vs-real floor
    min_tstr_ratio: float | None = 0.8  # conditional models only: TSTR accuracy / TRTR accuracy


def gate_quality(candidate: LoadedDecoder, thresholds: QualityThresholds) -> GateResult:
    """Gate 3: the quality report's metrics, as stored on the version by `vaegen report` / `vaegen train`."""
    rerun = f"`vaegen report --model {candidate.pinned.name}/{candidate.pinned.version}`"
    try:
        metrics = {name: float(value) for name, value in figures_from_tags(candidate.evidence).items()}
    except ValueError:
        return GateResult(
            "quality", False, f"a quality tag of v{candidate.pinned.version} is not a number; run {rerun}"
        )
    if not metrics:
        unsealed = any(is_quality_tag(key) for key in candidate.tags)
        why = "its quality tags are not sealed by vaegen for its artifacts" if unsealed else "no quality report"
        return GateResult(
            "quality", False, f"cannot compare: {why} on v{candidate.pinned.version}; run {rerun}", forceable=True
        )
    if "class_coverage" not in metrics:
        # Reports before class_coverage stored the class share as quality.coverage, the name k-NN coverage has now:
        # reading either as the other would gate on the wrong number, so the report is refused, not guessed at.
        return GateResult(
            "quality",
            False,
            f"cannot compare: v{candidate.pinned.version}'s quality report predates "
            f"class_coverage (its quality.coverage is the old class share); run {rerun}",
            forceable=True,
        )

    def ratio(top: str, bottom: str) -> float | None:
        return None if top not in metrics or not metrics.get(bottom) else metrics[top] / metrics[bottom]

    checks = [
        ("precision", metrics.get("precision"), thresholds.min_precision, ">="),
        ("class_coverage", metrics.get("class_coverage"), thresholds.min_class_coverage, ">="),
        ("memorisation_share", metrics.get("memorisation_share"), thresholds.max_memorisation_share, "<="),
        ("frechet_ratio", ratio("frechet_distance", "frechet_floor"), thresholds.max_frechet_ratio, "<="),
    ]
    if candidate.config.conditional:
        checks += [
            ("label_accuracy", metrics.get("label_accuracy"), thresholds.min_label_accuracy, ">="),
            ("tstr_ratio", ratio("tstr_accuracy", "trtr_accuracy"), thresholds.min_tstr_ratio, ">="),
        ]
    failures, parts = [], []
    for name, value, bound, sense in checks:
        if bound is None:
            continue
        ok = value is not None and (value >= bound if sense == ">=" else value <= bound)
        parts.append(f"{name} {value if value is None else round(value, 3)} {sense} {bound}")
        if not ok:
            failures.append(name)
    return GateResult("quality", not failures, "; ".join(parts))
