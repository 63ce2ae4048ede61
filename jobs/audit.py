"""The audit a committed dataset passes before `latest` may name it (write-audit-publish).

Checks, in order (the first failure fails the audit; later checks still run where they can):
- `integrity`: `vaegen inspect` in full: every part's size, checksum, row count, id range, spec;
- `deep`: one decode block per part, drawn from AUDIT_SEED: its rows' seed, z (and label) re-derived
  and x re-decoded with the registered decoder (a part rewritten with a matching checksum fails
  here; `inspect --deep` re-derives every row);
- `quality_vs_version`: quality figures of the dataset's first `quality_rows` rows (i.i.d. draws fixed
  by the dataset seed) against the model version's own report, each within its tolerance;
- `quality_vs_latest`: the same figures against those of the dataset `latest` names now, when it
  was made from the same model version and its audit measured them.
A quality check that has nothing to compare with (no report, no training data) is `skipped`, not
failed, and says why. The verdict is the record `DATASET/_audit.json` (format `vaegen-audit/1`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

from jobs.generate import audit_record
from jobs.generate.audit_record import AuditCheck as Check
from jobs.generate.audit_record import AuditRecord
from jobs.generate.manifest import AUDIT, MANIFEST, utc_now
from jobs.generate.records import Manifest, ManifestSummary
from jobs.generate.storage import Storage
from vae_core.errors import UsageError, VaegenError

AUDIT_SEED = 20_261_202  # fixed: every audit of a dataset re-decodes the same blocks and reads the same rows
# Absolute tolerances of the figures compared. All four are averages over generated rows, so a 2,000-row
# sample estimates the same quantity as the version's 10,000-row report (Frechet and k-NN coverage are
# biased by sample size and are left out).
DEFAULT_TOLERANCES = (("precision", 0.15), ("density", 0.3), ("mean_confidence", 0.1), ("label_accuracy", 0.05))


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    enabled: bool = True  # False: --no-audit; the record says the audit was skipped, and by whom
    quality_rows: int = 2_000  # rows whose quality figures are measured: seconds on MNIST, ~5% of 1M rows' generation
    tolerances: tuple[tuple[str, float], ...] = DEFAULT_TOLERANCES  # (figure, allowed absolute difference)
    sample_seed: int = AUDIT_SEED

    def __post_init__(self) -> None:
        if self.quality_rows < 10:
            raise UsageError(f"--audit-rows must be an integer >= 10, got {self.quality_rows}")
        for name, tolerance in self.tolerances:
            if not tolerance >= 0:
                raise UsageError(f"--audit-tolerance {name}={tolerance}: a tolerance must be a number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return {"quality_rows": self.quality_rows, "tolerances": dict(self.tolerances), "sample_seed": self.sample_seed}


def parse_tolerances(items: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    """--audit-tolerance NAME=VALUE (repeatable) over the defaults; an unknown name or value is a usage error."""
    tolerances = dict(DEFAULT_TOLERANCES)
    for item in items:
        name, _, value = item.partition("=")
        if name not in tolerances:
            raise UsageError(
                f"--audit-tolerance {item!r}: NAME must be one of {', '.join(tolerances)}, e.g. precision=0.1"
            )
        try:
            tolerances[name] = float(value)
        except ValueError:
            raise UsageError(f"--audit-tolerance {item!r}: VALUE must be a number, e.g. {name}=0.1") from None
    return tuple(tolerances.items())


def manifest_sha256(storage: Storage, dataset_id: str) -> str:
    return hashlib.sha256(storage.read_bytes(dataset_id, MANIFEST)).hexdigest()


def read_record(storage: Storage, dataset_id: str) -> AuditRecord | None:
    """The dataset's audit record; None if absent, unreadable, or about another commit of the same id."""
    record = audit_record.read(storage, dataset_id)
    if record is None or record.manifest_sha256 != manifest_sha256(storage, dataset_id):
        return None
    return record


def skipped_record(storage: Storage, dataset_id: str, reason: str) -> AuditRecord:
    return AuditRecord("skipped", (), dataset_id, manifest_sha256(storage, dataset_id), utc_now(), reason=reason)


def audit(storage: Storage, dataset_id: str, config: AuditConfig, latest_id: str | None) -> AuditRecord:
    """Run every check on the committed dataset; returns its record (not written: see write_record)."""
    from jobs.generate.verify import inspect

    started = time.perf_counter()
    # Quality after inspect, not beside it in a thread: inspect --deep sets torch's process-wide thread count
    # (one thread, as CPU workers decode) while that thread would be running torch.
    report = inspect(storage.location(dataset_id), deep=True, sample_seed=config.sample_seed)
    manifest = report.manifest
    if report.problems:
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        failed = "deep" if report.rows_checked_deep else "integrity"
        checks = [Check(failed, "fail", f"{report.problems[0]}{more}")]
    else:
        deep = (
            f"{report.rows_checked_deep:,} rows re-derived, x of {report.rows_decoded_deep:,} re-decoded "
            f"(one block per part, seed {config.sample_seed})"
        )
        checks = [
            Check("integrity", "pass", f"{len(manifest.files)} parts: sizes, checksums, row counts, ids"),
            Check("deep", "pass", deep),
        ]
        checks += _quality_checks(storage, dataset_id, manifest, config, latest_id)
    failed_checks = [check for check in checks if check.status == "fail"]
    return AuditRecord(
        "fail" if failed_checks else "pass",
        tuple(checks),
        dataset_id,
        manifest_sha256(storage, dataset_id),
        utc_now(),
        failed_check=failed_checks[0].name if failed_checks else None,
        seconds=round(time.perf_counter() - started, 3),
        config=config.to_dict(),
    )


def _quality_checks(
    storage: Storage, dataset_id: str, manifest: Manifest, config: AuditConfig, latest_id: str | None
) -> list[Check]:
    from jobs import reader
    from jobs import report as reports
    from jobs.generate import card
    from registry import models

    model = manifest.model
    loaded = models.load_decoder(models.resolve(f"{model.name}/{model.version}"))
    version_quality = card.from_version_tags(loaded.tags)
    if version_quality is None:  # then `latest`, if of the same version, was not measured either
        reason = f"{model.name}/{model.version} has no quality report (`vaegen report --model` makes one)"
        return [Check("quality_vs_version", "skipped", reason), Check("quality_vs_latest", "skipped", reason)]
    dataset = reader.open_dataset(storage.location(dataset_id), verify=False, lease=False)
    generated, labels = reports.read_samples(dataset, config.quality_rows)
    try:
        metrics = reports.audit_figures(loaded, generated, labels, reports.ReportConfig(n=len(generated), privacy=None))
    except UsageError as error:  # no training data source to compare with, or it has no labels
        reason = f"cannot measure quality: {error}"
        return [Check("quality_vs_version", "skipped", reason), Check("quality_vs_latest", "skipped", reason)]
    figures = {
        name: float(metrics[name]) for name, _ in config.tolerances if isinstance(metrics.get(name), (int, float))
    }
    checks = [
        _compare_figures(
            "quality_vs_version",
            figures,
            version_quality.figures,
            config,
            f"the report of {model.name}/{model.version}",
        )
    ]
    checks.append(_against_latest(storage, latest_id, manifest, figures, config))
    return checks


def _against_latest(
    storage: Storage, latest_id: str | None, manifest: Manifest, figures: dict[str, float], config: AuditConfig
) -> Check:
    name = "quality_vs_latest"
    if latest_id is None or latest_id == manifest.dataset_id:
        return Check(name, "skipped", "no other dataset is published under this root")
    try:
        latest_version = ManifestSummary.from_json(storage.read_json(latest_id, MANIFEST)).model_version
    except (OSError, VaegenError, KeyError, TypeError):  # gone, unreadable, or not a committed manifest
        latest_version = None
    if latest_version != manifest.model.version:
        return Check(name, "skipped", f"latest ({latest_id}) was made from another model version")
    previous = read_record(storage, latest_id)
    measured = (
        next(
            (check for check in previous.checks if check.name == "quality_vs_version" and check.figures),
            None,
        )
        if previous is not None
        else None
    )
    if measured is None:
        return Check(name, "skipped", f"latest ({latest_id}) has no audited quality figures")
    return _compare_figures(
        name,
        figures,
        {key: value["value"] for key, value in measured.figures.items()},
        config,
        f"latest ({latest_id})",
    )


def _compare_figures(
    name: str, figures: dict[str, float], reference: dict[str, float] | None, config: AuditConfig, against: str
) -> Check:
    if not reference:
        return Check(name, "skipped", f"{against} has no quality figures (`vaegen report --model` makes them)")
    compared = {
        key: {"value": round(figures[key], 6), "reference": round(reference[key], 6), "tolerance": tolerance}
        for key, tolerance in config.tolerances
        if key in figures and key in reference
    }
    if not compared:
        return Check(
            name, "skipped", f"{against} shares none of the audited figures {', '.join(dict(config.tolerances))}"
        )
    outside = [
        f"{key} {entry['value']:.3f} vs {entry['reference']:.3f} (tolerance {entry['tolerance']:g})"
        for key, entry in compared.items()
        if abs(entry["value"] - entry["reference"]) > entry["tolerance"]
    ]
    if outside:
        return Check(name, "fail", f"against {against}: " + "; ".join(outside), compared)
    return Check(name, "pass", f"against {against}: {', '.join(compared)} within tolerance", compared)


def write_record(storage: Storage, record: AuditRecord) -> None:
    """Atomic (temp file, then move); beside the manifest, which it names by sha256."""
    storage.write_json(record.to_json(), record.dataset_id, AUDIT)
