"""The typed records of a dataset root (manifest, progress, audit verdict, `latest`, tags): what is read is written
back byte for byte, a broken manifest is refused with the messages `vaegen inspect` has always shown, a progress
record is never refused while parsing, and hostile fields of the small records read as None. Pure: no Ray, no
MLflow, no files."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fuzz_records import SPEC, valid_manifest
from jobs.generate import audit_record, manifest, verify
from jobs.generate.audit_record import AuditCheck, AuditRecord
from jobs.generate.holds import TagRecord
from jobs.generate.published import LatestPointer
from jobs.generate.records import FileEntry, Labels, Manifest, ManifestSummary, ProgressRecord
from jobs.generate.storage import CorruptRecord, json_bytes


def valid_record() -> dict:
    """fuzz_records' valid manifest with labels, lineage, execution and redacted provenance: every nested record."""
    record = json.loads(json.dumps(valid_manifest()))  # the spec as JSON holds it (lists, not tuples)
    return record | {
        "labels": {"policy": "balanced", "classes": [0, 1], "counts": {"0": 5, "1": 5}},
        "model": {**record["model"], "source": None, "resolved_from": "vae-decoder/1"},
        "timings": {"finished_at": "2026-12-07T00:00:00+00:00"},
        "execution": {"device": "cpu", "num_workers": 1},
        "lineage": {"tracking_uri": None, "run_id": "r2", "experiment": "e"},
        "provenance": "redacted",
    }


def test_a_manifest_reads_as_typed_fields_and_writes_back_the_same_bytes():
    record = valid_record()
    written = json_bytes(record)
    read = Manifest.from_json(json.loads(written))
    assert (read.n, read.sample_shape, read.model.name, read.model.version, read.model.run_id) == (
        10,
        (8, 8),
        "vae-decoder",
        1,
        "r1",
    )
    assert read.files[2] == FileEntry("part-00002.parquet", 8, 2, 100, "0" * 32)
    assert read.labels == Labels("balanced", [0, 1], {"0": 5, "1": 5})
    assert (read.lineage.run_id, read.lineage.tracking_uri, read.has_provenance) == ("r2", None, False)
    assert (read.execution["device"], read.timings["finished_at"]) == ("cpu", "2026-12-07T00:00:00+00:00")
    assert json_bytes(read.to_json()) == written
    assert manifest.manifest_digest(read) == manifest.manifest_digest(Manifest.from_json(record))
    assert read["n"] == 10 and read["model"]["run_id"] == "r1"  # the JSON form, read-only, for notebooks
    with pytest.raises(TypeError):
        list(read)  # not a mapping: fields are attributes
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.n = 11  # type: ignore[misc]


def test_fields_of_older_and_recipe_formats_round_trip_untouched():
    older = {**valid_record(), "format": "vaegen-dataset/2", "shape_note": [1, 2], "labels": None}
    older["model"] = {**older["model"], "registry_hint": "x"}
    read = Manifest.from_json(older)
    assert read.to_json() == older and read.model.to_json() == older["model"] and read.labels is None
    recipe = {**valid_record(), "format": "vaegen-recipe/1", "recipe_only": True, "files": [], "total_bytes": 0}
    assert Manifest.from_json(recipe).recipe_only and Manifest.from_json(recipe).to_json() == recipe
    copied = read.to_json()
    copied["model"]["name"] = "changed"
    assert read.model.name == "vae-decoder" and read.to_json()["model"]["name"] == "vae-decoder"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": 3}, "field 'format' is missing or not a JSON string"),
        ({"model": {"name": "vae-decoder", "version": "1", "run_id": "r1"}}, "field 'model.version' is missing"),
        ({"n": 0}, "n = 0 and rows_per_shard = 4 must be positive"),
        ({"labels": [1]}, "field 'labels' is missing or not an object or null"),
        ({"files": [{"name": "part-00000.parquet"}]}, "files[0] lacks one of name, first_sample_id, rows"),
        ({"dataset_id": "x" * 5000}, "a string of 5,000 characters"),
    ],
)
def test_a_broken_manifest_is_refused_with_the_inspect_messages(change, message):
    record = {**valid_record(), **change}
    with pytest.raises(CorruptRecord, match="corrupt manifest at /d/_manifest.json: ") as refused:
        Manifest.from_json(record, "/d/_manifest.json")
    assert message in str(refused.value)
    assert verify.manifest_problems(record)[0].startswith(f"manifest: {message}")


def test_manifest_problems_takes_the_typed_record_or_its_json_form_alike():
    record = {**valid_record(), "n": 11}
    assert verify.manifest_problems(record) == verify.manifest_problems(Manifest.from_json(record))
    assert "manifest: n = 11 but its spec says 10" in verify.manifest_problems(record)


def test_a_progress_record_keeps_what_it_holds_and_names_a_run_only_if_valid():
    built = manifest.progress_record(SPEC, {"name": "vae-decoder", "version": 1}, "run1", "cuda")
    assert (built.spec_fingerprint, built.device, built.valid_run_id) == (SPEC.fingerprint(), "cuda", "run1")
    assert ProgressRecord.from_json(built.to_json()) == built and built.to_json()["spec"] == SPEC.to_dict()
    odd = ProgressRecord.from_json({"run_id": "../x", "device": 5, "extra": True})
    assert (odd.valid_run_id, odd.device, odd.spec_fingerprint, odd.to_json()["extra"]) == (None, 5, None, True)


def test_a_listing_reads_any_manifest_that_says_when_it_was_finished():
    summary = ManifestSummary.from_json({"timings": {"finished_at": "t"}, "model": {"version": 2}})
    assert (summary.finished_at, summary.model_version, summary.n) == ("t", 2, None)
    for unlisted, error in (({"timings": {}}, KeyError), (None, TypeError), ({"timings": []}, TypeError)):
        with pytest.raises(error):
            ManifestSummary.from_json(unlisted)


def test_an_audit_record_writes_back_both_layouts_byte_for_byte_and_refuses_what_says_no_verdict():
    checks = [{"name": "deep", "status": "fail", "detail": "x differs", "figures": {"precision": {"value": 0.5}}}]
    run = {
        "format": "vaegen-audit/1",
        "dataset_id": "d",
        "manifest_sha256": "0" * 64,
        "verdict": "fail",
        "failed_check": "deep",
        "audited_at": "2026-12-07T00:00:00+00:00",
        "seconds": 1.5,
        "config": {"enabled": True, "quality_rows": 2000},
        "checks": checks,
    }
    skipped = {key: run[key] for key in ("format", "dataset_id", "manifest_sha256", "audited_at")} | {
        "verdict": "skipped",
        "reason": "--no-audit",
        "checks": [],
    }
    for record in (run, skipped):
        assert json_bytes(AuditRecord.from_json(json.loads(json_bytes(record))).to_json()) == json_bytes(record)
    read = AuditRecord.from_json(run)
    assert read.checks == (AuditCheck("deep", "fail", "x differs", {"precision": {"value": 0.5}}),)
    assert read.failure_line == "deep: x differs"
    assert audit_record.summary(read) == "FAIL at 2026-12-07T00:00:00+00:00 (deep fail)"
    assert audit_record.summary(AuditRecord.from_json(skipped)) == "skipped (--no-audit) at 2026-12-07T00:00:00+00:00"
    assert audit_record.summary(None) == "not audited"
    assert AuditRecord.from_json({"verdict": "fail"}).failure_line == "no check says why"  # hand-edited: no crash
    for broken in ([], {"verdict": "maybe"}, {"verdict": "pass", "checks": [{"name": 1}]}):
        with pytest.raises(CorruptRecord):
            AuditRecord.from_json(broken)


def test_the_latest_pointer_and_a_tag_write_back_what_they_read_and_read_hostile_fields_as_none():
    pointer = {
        "audit": {"verdict": "pass", "audited_at": "2026-12-07T00:00:00+00:00"},
        "dataset_id": "d",
        "location": "/out/d",
        "model": {"name": "vae-decoder", "version": 3},
        "manifest_sha256": "0" * 64,
        "updated_at": "2026-12-07T00:00:01+00:00",
    }
    read = LatestPointer.from_json(json.loads(json_bytes(pointer)))
    assert (read.dataset_id, read.model_version, read.audit_verdict) == ("d", 3, "pass")
    assert json_bytes(read.to_json()) == json_bytes(pointer)
    assert LatestPointer.from_json({**pointer, "audit": None}).to_json()["audit"] is None  # published unaudited
    hostile = LatestPointer.from_json({"dataset_id": ["d"], "model": 5, "audit": "x", "updated_at": 7})
    assert hostile == LatestPointer(None)
    assert LatestPointer.from_json([1, 2]) == LatestPointer(None)
    tag = {
        "format": "vaegen-tag/1",
        "tag": "paper",
        "dataset_id": "d",
        "by": "alice",
        "at": "t",
        "manifest_sha256": "0",
    }
    assert json_bytes(TagRecord.from_json(tag).to_json()) == json_bytes(tag)
    assert TagRecord.from_json({**tag, "by": {"x": 1}}).by is None
    for not_a_tag in ({**tag, "format": "vaegen-lease/1"}, {**tag, "dataset_id": None}, "paper"):
        assert TagRecord.from_json(not_a_tag) is None
