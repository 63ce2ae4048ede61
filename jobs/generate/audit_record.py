"""`DATASET/_audit.json`, the publish audit's verdict on one commit of a dataset, as a typed value (jobs/audit.py
runs the audit; refresh, the card, `vaegen datasets` and `inspect` read the verdict through this record)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jobs.generate.manifest import AUDIT
from jobs.generate.storage import CorruptRecord, Storage
from vae_core.errors import VaegenError

AUDIT_FORMAT = "vaegen-audit/1"
VERDICTS = ("pass", "fail", "skipped")


@dataclasses.dataclass(frozen=True)
class AuditCheck:
    name: str
    status: str  # "pass" | "fail" | "skipped"
    detail: str  # one line: what was compared, or why it failed or was skipped
    figures: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # {figure: {value, reference, tolerance}}


@dataclasses.dataclass(frozen=True)
class AuditRecord:
    """`DATASET/_audit.json`: the publish audit's verdict on one commit of a dataset (jobs/audit.py runs it).
    Skipped (`--no-audit`) records carry a `reason`; run ones `failed_check`, `seconds` and the `config` they ran
    with. Read leniently: only `verdict` is required; a record that is not an object or says no known verdict
    is refused (CorruptRecord), and its readers treat it as absent."""

    verdict: str
    checks: tuple[AuditCheck, ...] = ()
    dataset_id: str | None = None
    manifest_sha256: str | None = None  # the commit it judged: an audit of an earlier commit of the id is stale
    audited_at: str | None = None
    reason: str | None = None
    failed_check: str | None = None
    seconds: float | None = None
    config: Mapping[str, Any] | None = None
    format: str = AUDIT_FORMAT

    @classmethod
    def from_json(cls, record: Any) -> AuditRecord:
        if not isinstance(record, dict) or record.get("verdict") not in VERDICTS:
            raise CorruptRecord(f"an audit record must be an object whose verdict is one of {', '.join(VERDICTS)}")
        checks = record.get("checks") or []
        if not isinstance(checks, list) or not all(_is_check(check) for check in checks):
            raise CorruptRecord("an audit record's checks must be objects with a name, status and detail")
        fields = {field.name for field in dataclasses.fields(cls)} - {"verdict", "checks"}
        return cls(
            record["verdict"],
            tuple(
                AuditCheck(
                    **{key: check[key] for key in ("name", "status", "detail")}, figures=check.get("figures") or {}
                )
                for check in checks
            ),
            **{key: record[key] for key in fields if key in record},
        )

    def to_json(self) -> dict[str, Any]:
        """The layout jobs/audit.py has always written: a skipped record's, or a run one's."""
        record: dict[str, Any] = {
            "format": self.format,
            "dataset_id": self.dataset_id,
            "manifest_sha256": self.manifest_sha256,
            "verdict": self.verdict,
            "audited_at": self.audited_at,
            "checks": [dataclasses.asdict(check) for check in self.checks],
        }
        if self.verdict == "skipped":
            return record | {"reason": self.reason}
        return record | {"failed_check": self.failed_check, "seconds": self.seconds, "config": self.config}

    @property
    def failure_line(self) -> str:
        """The failed check and why, one line."""
        check = next((check for check in self.checks if check.status == "fail"), None)
        return "no check says why" if check is None else f"{check.name}: {check.detail}"


def _is_check(check: Any) -> bool:
    return isinstance(check, dict) and all(isinstance(check.get(key), str) for key in ("name", "status", "detail"))


def read(storage: Storage, dataset_id: str) -> AuditRecord | None:
    """The dataset's audit record as it is on disk; None if absent or unreadable."""
    try:
        record = storage.read_json(dataset_id, AUDIT)
    except (OSError, VaegenError):
        return None
    try:
        return None if record is None else AuditRecord.from_json(record)
    except CorruptRecord:
        return None


def summary(record: AuditRecord | None) -> str:
    """One line for `inspect`, `datasets`, refresh's log and the card."""
    if record is None:
        return "not audited"
    if record.verdict == "skipped":
        return f"skipped ({record.reason}) at {record.audited_at}"
    checks = ", ".join(f"{check.name} {check.status}" for check in record.checks)
    return f"{record.verdict.upper()} at {record.audited_at} ({checks})"
