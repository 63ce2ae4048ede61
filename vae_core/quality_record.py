"""The quality report as a record: `QualityReport`, what `quality.quality_report` measures and `vaegen report` adds,
and its JSON (report.json, the logged artifact), byte for byte what the report always wrote. Pure Python.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# The privacy block's keys (vae_core/privacy.py privacy_metrics), in its order; mia_members only when MIA ran.
PRIVACY_KEYS = (
    "authenticity",
    "authenticity_floor",
    "detection_auc",
    "detection_auc_floor",
    "mia_auc",
    "mia_auc_floor",
    "mia_members",
)
_OMITTED = {"omitted_when_none": True}  # a field absent from the JSON while None (None is not its value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QualityReport:
    """Every figure of a quality report, each `*_floor` beside its figure: the same metric for real held-out data
    against the training set. None where a figure could not be measured (a set below k + 1, too few of a class).
    Fields are in the order the report's JSON lists them."""

    frechet_distance: float  # samples against the training set, in the reference classifier's features
    frechet_floor: float
    precision: float | None  # k-NN manifolds on equal-sized subsamples (Kynkaanniemi et al. 2019)
    recall: float | None
    precision_floor: float | None
    recall_floor: float | None
    density: float | None  # Naeem et al. 2020
    coverage: float | None
    density_floor: float | None
    coverage_floor: float | None
    class_coverage: float  # the classes the classifier sees in the samples (fidelity.label_distribution_metrics)
    label_kl: float
    mean_confidence: float
    class_histogram: list[float]
    classifier_heldout_accuracy: float
    tstr_accuracy: float | None  # None: unlabelled samples, nothing to train on
    trtr_accuracy: float
    memorisation_share: float
    memorisation_threshold: float
    dcr_p5: float  # distance to closest record, pixels
    dcr_median: float
    dcr_floor_p5: float
    dcr_floor_median: float
    dcr_ratio: float
    n_train: int
    n_heldout: int
    n_generated: int
    n_knn_generated: int
    n_knn_floor: int
    num_classes: int
    feature_dim: int
    # per class, indexed by class; grouped by the requested labels, or by the predicted class (per_class_grouping)
    per_class_label_accuracy: list[float | None] | None = dataclasses.field(default=None, metadata=_OMITTED)
    per_class_frechet_distance: list[float | None]
    per_class_frechet_floor: list[float | None]
    per_class_precision: list[float | None]
    per_class_recall: list[float | None]
    per_class_precision_floor: list[float | None]
    per_class_recall_floor: list[float | None]
    label_accuracy: float | None = dataclasses.field(default=None, metadata=_OMITTED)  # conditional models only
    requested_class_histogram: list[float] | None = dataclasses.field(default=None, metadata=_OMITTED)
    per_class_grouping: str  # "requested" | "predicted"
    privacy: dict[str, Any] | None = None  # PRIVACY_KEYS, flat in the JSON; None: no privacy block was run
    # what `vaegen report` adds: the classifier, the real data, and the subject
    classifier: dict[str, Any] | None = dataclasses.field(default=None, metadata=_OMITTED)
    data_source: str | None = None  # in the JSON whenever `classifier` is
    model: dict[str, Any] | None = dataclasses.field(default=None, metadata=_OMITTED)
    report_seed: int | None = dataclasses.field(default=None, metadata=_OMITTED)
    n: int | None = dataclasses.field(default=None, metadata=_OMITTED)
    subject: str | None = dataclasses.field(default=None, metadata=_OMITTED)  # "model" | "dataset"
    dataset_id: str | None = dataclasses.field(default=None, metadata=_OMITTED)

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object: the fields in order, the privacy block's keys flat in its place, a field
        that is absent while None left out."""
        record: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "privacy":
                record.update(value or {})
            elif field.name == "data_source":
                if self.classifier is not None:
                    record[field.name] = value
            elif value is not None or not field.metadata.get("omitted_when_none"):
                record[field.name] = value
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> QualityReport:
        """A report back from its JSON (report.json); TypeError names a figure it lacks."""
        names = [field.name for field in dataclasses.fields(cls) if field.name != "privacy"]
        privacy = {key: record[key] for key in PRIVACY_KEYS if key in record}
        return cls(**{name: record[name] for name in names if name in record}, privacy=privacy or None)

    def figure(self, name: str) -> Any:
        """A figure by its name in the JSON (a table's rows, HEADLINE): None if the report has none of that name."""
        return self.to_json().get(name)
