"""Governed datasets (issue 21): the audit before publish, through the CLI, on a real SQLite registry with a
trained version and its quality report, a real local Ray, real Parquet; and the pure selection rules."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import private_local_ray, register_untrained_decoder
from helpers import invoke
from jobs import audit
from jobs.generate import holds
from jobs.generate.card import CARD
from jobs.generate.manifest import AUDIT, MANIFEST
from jobs.generate.storage import Storage
from jobs.prune import select_for_pruning
from jobs.reader import open_dataset
from jobs.refresh import LATEST
from jobs.status import parse_duration
from registry import promotion
from registry.holders import LockRecord
from vae_core.errors import UsageError

N, ROWS_PER_SHARD = 3_000, 1_000  # 3 parts, each one decode block: the audit re-decodes all of every part
COMMON = ("--n", str(N), "--rows-per-shard", str(ROWS_PER_SHARD), "--num-workers", "1")


def latest_id(root: Path) -> str | None:
    return json.loads((root / LATEST).read_text())["dataset_id"] if (root / LATEST).exists() else None


def line(stdout: str, prefix: str) -> str:
    return next(text for text in stdout.splitlines() if text.startswith(prefix))


@pytest.fixture(scope="module")
def local_ray(module_sqlite, moto_s3) -> Iterator[str]:
    """After moto's AWS_* variables are set: the Ray workers inherit them and write to the S3 root too."""
    with private_local_ray() as address:
        yield address


@pytest.fixture(scope="module")
def champion(cache_root, trained_version, local_ray) -> str:  # the cache first: the report and the audit share it
    """The module's trained version (with its quality report) promoted to champion."""
    name = trained_version.result.pinned.name
    promotion.promote(
        f"{name}/{trained_version.result.pinned.version}",
        promotion.PromotionConfig(reason="serve", by="tester", quality=None),
    )
    return name


@pytest.fixture(scope="module")
def plain_champion(local_ray) -> str:
    """An untrained decoder without a report promoted to vae-plain@champion: for tests that need no quality."""
    register_untrained_decoder("vae-plain")
    promotion.promote("vae-plain/1", promotion.PromotionConfig(reason="serve", by="tester", quality=None))
    return "vae-plain@champion"


@pytest.fixture(scope="module")
def collapsed(champion) -> str:
    """A version whose report claims the champion's quality but which decodes noise: an untrained decoder
    carrying the champion's data source and quality figures."""
    client = mlflow.MlflowClient()
    pinned = register_untrained_decoder("vae-collapsed")
    good = client.get_model_version(champion, "1").tags
    for key, value in good.items():
        if key.startswith("vaegen.quality.") or key in ("vaegen.data_source", "vaegen.holdout_fraction"):
            client.set_model_version_tag(pinned.name, str(pinned.version), key, value)
    return f"{pinned.name}/{pinned.version}"


def refresh(root: Path, *extra: str, model: str = "vae-decoder@champion"):
    return invoke("refresh", "--model", model, *COMMON, "--out", str(root), *extra)


@pytest.mark.slow  # a trained model and its report, a local Ray
def test_refresh_audits_before_publishing_and_records_the_verdict_everywhere(champion, tmp_path):
    root = tmp_path / "out"
    result = refresh(root)
    assert result.exit_code == 0, result.output
    dataset_id = line(result.stdout, "refresh: generated").split()[2]
    assert latest_id(root) == dataset_id
    record = json.loads((root / dataset_id / AUDIT).read_text())
    statuses = {check["name"]: check["status"] for check in record["checks"]}
    assert record["verdict"] == "pass" and record["format"] == "vaegen-audit/1", record
    assert statuses == {
        "integrity": "pass",
        "deep": "pass",
        "quality_vs_version": "pass",
        "quality_vs_latest": "skipped",
    }, record
    figures = next(check for check in record["checks"] if check["name"] == "quality_vs_version")["figures"]
    assert set(figures) >= {"precision", "density", "mean_confidence"}
    assert all(abs(entry["value"] - entry["reference"]) <= entry["tolerance"] for entry in figures.values())
    assert json.loads((root / LATEST).read_text())["audit"]["verdict"] == "pass"
    assert "## Audit before publish" in (root / dataset_id / CARD).read_text()
    run_id = json.loads((root / dataset_id / MANIFEST).read_text())["lineage"]["run_id"]
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["vaegen.audit"] == "pass" and tags["vaegen.audit.deep"] == "pass"

    inspected = invoke("inspect", str(root / dataset_id))  # the record beside the manifest is part of the dataset
    assert inspected.exit_code == 0, inspected.output
    assert "audit: PASS" in inspected.stdout

    # Consumers name it by reference; what was resolved is printed / returned.
    for reference in ("latest", "v1"):
        by_reference = invoke("inspect", f"{root}@{reference}")
        assert by_reference.exit_code == 0, by_reference.output
        assert f"dataset: {dataset_id} at {root / dataset_id}" in by_reference.stdout
    opened = open_dataset(f"{root}@latest")
    assert opened.dataset_id == dataset_id
    by_folder = open_dataset(str(root / dataset_id), verify=False, lease=False)
    np.testing.assert_array_equal(opened.to_numpy()["x"], by_folder.to_numpy()["x"])
    unknown = invoke("inspect", f"{root}@v9")
    assert unknown.exit_code == 2 and "no published dataset of model version 9" in unknown.stderr

    # A run that reads it gets it as an input, named and digested as the dataset's own run logs it.
    fingerprint = json.loads((root / dataset_id / MANIFEST).read_text())["spec_fingerprint"]
    with mlflow.start_run(run_name="consumer") as consumer:
        open_dataset(f"{root}@latest", verify=False).close()
        open_dataset(f"{root}@latest", verify=False, log_to_mlflow=False).close()
    inputs = mlflow.MlflowClient().get_run(consumer.info.run_id).inputs.dataset_inputs
    assert [(item.dataset.name, item.dataset.digest) for item in inputs] == [(dataset_id, fingerprint)]
    assert {(tag.key, tag.value) for tag in inputs[0].tags} == {("mlflow.data.context", "training")}


def alter_part_consistently(storage: Storage, dataset_id: str, name: str) -> None:
    """Rewrite one part with every x inverted, and its size and checksum in the manifest to match (any root)."""
    path = storage.path(dataset_id, name)
    table = pq.read_table(path, filesystem=storage.fs)
    x = table.column("x").combine_chunks()
    flat = x.flatten().flatten()
    inverted = pa.array(1.0 - flat.to_numpy(), type=flat.type)
    rows = pa.FixedSizeListArray.from_arrays(inverted, x.type.value_type.list_size)
    rebuilt = pa.FixedSizeListArray.from_arrays(rows, x.type.list_size)
    table = table.set_column(table.schema.get_field_index("x"), table.schema.field("x"), rebuilt.cast(x.type))
    pq.write_table(table, path, filesystem=storage.fs)
    manifest = storage.read_json(dataset_id, MANIFEST)
    entry = next(entry for entry in manifest["files"] if entry["name"] == name)
    entry["size_bytes"] = storage.size(dataset_id, name)
    entry["checksum"] = storage.checksum(dataset_id, name)
    storage.write_json(manifest, dataset_id, MANIFEST)


def alter_z_consistently(storage: Storage, dataset_id: str, name: str) -> None:
    """Rewrite one part with every z negated (x, seeds untouched), its size and checksum in the manifest to match."""
    path = storage.path(dataset_id, name)
    table = pq.read_table(path, filesystem=storage.fs)
    z = table.column("z").combine_chunks()
    negated = pa.FixedSizeListArray.from_arrays(pa.array(-z.flatten().to_numpy()), z.type.list_size).cast(z.type)
    pq.write_table(
        table.set_column(table.schema.get_field_index("z"), table.schema.field("z"), negated),
        path,
        filesystem=storage.fs,
    )
    manifest = storage.read_json(dataset_id, MANIFEST)
    entry = next(entry for entry in manifest["files"] if entry["name"] == name)
    entry["size_bytes"], entry["checksum"] = storage.size(dataset_id, name), storage.checksum(dataset_id, name)
    storage.write_json(manifest, dataset_id, MANIFEST)


@pytest.mark.slow
def test_the_audit_re_derives_and_re_decodes_one_sampled_block_per_part(champion, tmp_path):
    """inspect --deep re-derives every row; the audit only its sampled block's rows (checksums cover the rest),
    and still fails a part whose z was rewritten with a matching checksum."""
    from jobs.generate import verify

    made = invoke("generate", "--model", f"{champion}@champion", *COMMON, "--batch-size", "250", "--out", str(tmp_path))
    assert made.exit_code == 0, made.output
    dataset_id = line(made.stdout, "dataset_id:").split()[1]
    location = str(tmp_path / dataset_id)
    full = verify.inspect(location, deep=True)
    sampled = verify.inspect(location, deep=True, sample_seed=audit.AUDIT_SEED)
    assert full.ok and sampled.ok, (full.problems, sampled.problems)
    assert full.rows_checked_deep == N and full.rows_decoded_deep == 3 * 3 * 250  # first, middle, last block per part
    assert sampled.rows_checked_deep == sampled.rows_decoded_deep == 3 * 250  # one block of 250 rows per part

    alter_z_consistently(Storage(str(tmp_path)), dataset_id, "part-00002.parquet")
    assert verify.inspect(location).ok  # sizes and checksums match the manifest
    problems = verify.inspect(location, deep=True, sample_seed=audit.AUDIT_SEED).problems
    assert len(problems) == 1 and problems[0].startswith("part-00002.parquet: row "), problems
    assert "z differs from" in problems[0]


@pytest.mark.slow
def test_failed_audits_keep_latest_exit_1_naming_the_check_and_are_not_pruned(champion, collapsed, tmp_path):
    root = tmp_path / "out"
    assert refresh(root).exit_code == 0
    published = latest_id(root)

    # A part altered consistently with its checksum: inspect passes, the audit's re-decoding does not.
    made = invoke("generate", "--model", f"{champion}@champion", *COMMON, "--seed", "7", "--out", str(root))
    assert made.exit_code == 0, made.output
    altered = line(made.stdout, "dataset_id:").split()[1]
    alter_part_consistently(Storage(str(root)), altered, "part-00001.parquet")
    assert invoke("inspect", str(root / altered)).exit_code == 0
    result = invoke(
        "generate", "--model", f"{champion}@champion", *COMMON, "--seed", "7", "--out", str(root), "--publish"
    )
    assert result.exit_code == 1, result.output
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"vaegen: error: audit of {altered} failed, deep: part-00001.parquet"), error
    assert f"`latest` still names {published}" in error
    assert latest_id(root) == published
    assert json.loads((root / altered / AUDIT).read_text())["failed_check"] == "deep"

    # A version whose quality collapsed against its own report.
    result = invoke("generate", "--model", collapsed, *COMMON, "--seed", "0", "--out", str(root), "--publish")
    assert result.exit_code == 1, result.output
    assert "failed, quality_vs_version: against the report of vae-collapsed/1: " in result.stderr, result.stderr[-600:]
    assert latest_id(root) == published

    # Neither is pruned while nothing newer is published; both are said to be kept, and why.
    result = refresh(root, "--keep", "1")
    assert result.exit_code == 0, result.output
    assert f"kept: {altered} (unpublished, newer than `latest`)" in result.stdout
    assert f"kept: {published} (`latest` names it)" in result.stdout
    assert (root / altered / MANIFEST).exists() and latest_id(root) == published

    # --no-audit publishes anyway and says so in the record.
    result = invoke(
        "generate", "--model", collapsed, *COMMON, "--seed", "0", "--out", str(root), "--publish", "--no-audit"
    )
    assert result.exit_code == 0, result.output
    skipped = latest_id(root)
    assert skipped != published and "published: " in result.stdout
    assert json.loads((root / skipped / AUDIT).read_text())["reason"] == "--no-audit"
    assert "Skipped (--no-audit)" in (root / skipped / CARD).read_text()


def test_audit_options_are_checked_before_anything_runs(tmp_path):
    result = invoke("generate", "--n", "10", "--out", str(tmp_path), "--no-audit")
    assert result.exit_code == 2 and "--no-audit set(s) the audit before publishing: add --publish" in result.stderr
    with pytest.raises(UsageError, match="NAME must be one of precision"):
        audit.parse_tolerances(("fid=3",))
    with pytest.raises(UsageError, match="VALUE must be a number"):
        audit.parse_tolerances(("precision=high",))
    assert dict(audit.parse_tolerances(("precision=0.2",)))["precision"] == 0.2
    assert [parse_duration(text) for text in ("90", "90s", "15m", "6h", "1.5d")] == [90, 90, 900, 21_600, 129_600]
    result = invoke("status", str(tmp_path), "--max-lag", "soon")
    assert result.exit_code == 2 and "--max-lag must be a duration like 90s" in result.stderr
    assert invoke("datasets", str(tmp_path / "nowhere")).exit_code == 2


def test_prune_selection_keeps_the_newest_the_published_and_what_is_newer_than_it():
    datasets = ["a", "b", "c", "d", "e"]  # oldest first
    doomed, kept = select_for_pruning(datasets, keep=1, published="b")
    assert doomed == ["a"]
    assert kept == {
        "e": "one of the newest 1 (--keep)",
        "b": "`latest` names it",
        "c": "unpublished, newer than `latest`",
        "d": "unpublished, newer than `latest`",
    }
    assert select_for_pruning(datasets, keep=2, published="e")[0] == ["a", "b", "c"]
    assert select_for_pruning(datasets, keep=2, published=None)[0] == ["a", "b", "c"]


def test_figures_compare_within_tolerance_and_name_what_is_outside():
    config = audit.AuditConfig()
    passed = audit._compare_figures(
        "q", {"precision": 0.7, "density": 0.9}, {"precision": 0.75, "density": 1.0}, config, "the report"
    )
    assert passed.status == "pass" and passed.figures["precision"]["tolerance"] == 0.15
    failed = audit._compare_figures("q", {"precision": 0.1}, {"precision": 0.75}, config, "the report")
    assert failed.status == "fail" and "precision 0.100 vs 0.750 (tolerance 0.15)" in failed.detail
    assert audit._compare_figures("q", {"precision": 0.1}, None, config, "the report").status == "skipped"


@pytest.mark.slow
def test_an_alias_moved_outside_promote_is_refused_until_promoted_or_allowed(local_ray, tmp_path):
    client = mlflow.MlflowClient()
    for _ in range(2):
        register_untrained_decoder("vae-gov")
    promotion.promote("vae-gov/1", promotion.PromotionConfig(reason="serve", by="tester", quality=None))
    client.set_registered_model_alias("vae-gov", "champion", "2")  # as the MLflow UI or a script would
    root = tmp_path / "out"
    for command in ("generate", "refresh"):
        result = invoke(command, "--model", "vae-gov@champion", *COMMON, "--seed", "0", "--out", str(root))
        assert result.exit_code == 1, result.output
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(
            "vaegen: error: refused: vae-gov@champion names version 2, set outside `vaegen promote`"
        ), error
        assert "last record for the alias is a promote to v1 by tester" in error
        assert "`vaegen promote vae-gov/2 --alias champion --reason ...`, or pass --allow-ungated" in error
    assert not root.exists() or not any(root.iterdir())

    listed = invoke("models", "vae-gov")
    assert listed.exit_code == 0 and "champion(ungated)" in listed.stdout
    assert "UNGATED: vae-gov@champion" in listed.stdout

    allowed = invoke(
        "generate", "--model", "vae-gov@champion", *COMMON, "--seed", "0", "--out", str(root), "--allow-ungated"
    )
    assert allowed.exit_code == 0, allowed.output
    dataset = root / line(allowed.stdout, "dataset_id:").split()[1]
    manifest = json.loads((dataset / MANIFEST).read_text())
    assert manifest["model"]["alias_gate"] == "ungated (--allow-ungated)"
    assert "alias gate: `ungated (--allow-ungated)`" in (dataset / CARD).read_text()  # escaped as code (issue 20)
    assert client.get_run(manifest["lineage"]["run_id"]).data.tags["vaegen.alias_gate"] == "ungated (--allow-ungated)"

    promoted = invoke("promote", "vae-gov/2", "--reason", "gate it", "--force", "--no-quality-gate")
    assert "promoted: vae-gov@champion -> version 2 (was 1)" in promoted.stdout, promoted.output
    status = invoke("status", str(root), "--model", "vae-gov@champion", "--json")
    assert status.exit_code == 3 and json.loads(status.stdout)["alias"]["gated"], status.output  # nothing published
    refreshed = invoke("refresh", "--model", "vae-gov@champion", *COMMON, "--out", str(root), "--no-audit")
    assert refreshed.exit_code == 0, refreshed.output
    assert "champion(ungated)" not in invoke("models", "vae-gov").stdout

    # `vaegen status`: current after the refresh, stale once the alias moves, current again after the next one.
    assert invoke("status", str(root), "--model", "vae-gov@champion", "--max-lag", "0s").exit_code == 0
    moved = invoke("promote", "vae-gov/1", "--reason", "back", "--force", "--no-quality-gate")
    assert moved.exit_code == 0, moved.output
    stale = invoke("status", str(root), "--model", "vae-gov@champion", "--max-lag", "0s")
    assert stale.exit_code == 3, stale.output
    assert (
        "STALE: vae-gov@champion is version 1, `latest` was made from version 2: no refresh has published it"
        in stale.stdout
    ), stale.stdout
    assert invoke("status", str(root), "--model", "vae-gov@champion", "--max-lag", "1h").exit_code == 0
    assert invoke("refresh", "--model", "vae-gov@champion", *COMMON, "--out", str(root), "--no-audit").exit_code == 0
    current = invoke("status", str(root), "--model", "vae-gov@champion", "--max-lag", "0s")
    assert current.exit_code == 0 and current.stdout.strip().endswith("current"), current.output


READER = """
import sys, time
from jobs.reader import open_dataset
data = open_dataset(sys.argv[1], verify=False)
print("open", data.dataset_id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_tagged_and_leased_datasets_survive_keep_1_and_a_killed_readers_lease_does_not(plain_champion, tmp_path):
    root = tmp_path / "out"
    older = []
    for seed in ("1", "2"):  # committed, never published, older than what refresh publishes next
        made = invoke("generate", "--model", plain_champion, *COMMON, "--seed", seed, "--out", str(root))
        assert made.exit_code == 0, made.output
        older.append(line(made.stdout, "dataset_id:").split()[1])
    leased, tagged = older
    assert refresh(root, "--no-audit", model=plain_champion).exit_code == 0
    tag = invoke("tag", str(root / tagged), "paper")
    assert tag.exit_code == 0 and f"tagged: {root}@paper -> {tagged}" in tag.stdout, tag.output
    reader = subprocess.Popen([sys.executable, "-c", READER, str(root / leased)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().split() == ["open", leased]
        for seed in ("0", "5"):  # up to date, then a new dataset published: both prune with --keep 1
            result = refresh(root, "--keep", "1", "--seed", seed, "--no-audit", model=plain_champion)
            assert result.exit_code == 0, result.output
            assert f"kept: {tagged} (tagged paper)" in result.stdout
            assert f"kept: {leased} (leased by pid {reader.pid} on " in result.stdout
        assert "pruned: " in result.stdout  # the seed-0 dataset, neither newest nor held
        listed = invoke("datasets", str(root))
        assert "tagged paper" in line(listed.stdout, tagged) and "leased x1" in line(listed.stdout, leased)
        with open_dataset(f"{root}@paper") as by_tag:
            assert by_tag.dataset_id == tagged
            by_folder = open_dataset(str(root / tagged), lease=False).to_numpy()["z"]  # no lease held by this process
            np.testing.assert_array_equal(by_tag.to_numpy()["z"], by_folder)
    finally:
        reader.kill()  # kill -9: no atexit, the lease stays behind
        reader.wait()
    result = refresh(root, "--keep", "1", "--seed", "5", "--no-audit", model=plain_champion)
    assert f"pruned: {leased}" in result.stdout, result.output  # its reader is gone from this host: at once
    assert invoke("tag", str(root / tagged), "paper", "--delete").exit_code == 0
    assert f"pruned: {tagged}" in refresh(root, "--keep", "1", "--seed", "5", "--no-audit", model=plain_champion).stdout


def test_a_lease_from_another_host_protects_until_its_heartbeat_is_older_than_its_timeout():
    now = 1_000_000.0
    record = LockRecord(host="another-host", pid=1, heartbeat_at=now - 100, timeout_s=300)
    assert holds.lease_state(record, now) is None
    assert "no heartbeat from another-host for 400 s" in holds.lease_state(record, now + 300)


def test_tag_names_exclude_references_and_nonsense(tmp_path):
    for bad in ("latest", "v3", "-x", "a/b", ""):
        with pytest.raises(UsageError, match="tag name"):
            holds.check_tag_name(bad)
    result = invoke("tag", str(tmp_path / "no-such-dataset"), "paper")
    assert result.exit_code == 2 and "is not a committed dataset" in result.stderr


@pytest.mark.slow
def test_the_governed_flow_on_an_object_store(champion, collapsed, moto_s3, tmp_path):
    """The same commands on moto's S3 server: audit before publish; failed audits (a collapsed version, a part altered
    consistently with its checksum) keeping `latest`; a tag and a reader's lease (another process) surviving
    `refresh --keep 1` twice, the lease of the killed reader then not; references; an alias moved around the gates
    refused; `status --max-lag`."""
    root = f"{moto_s3}/governed"
    storage = Storage(root)
    model = f"{champion}@champion"

    def latest() -> str | None:
        record = storage.read_json(LATEST)
        return None if record is None else record["dataset_id"]

    result = invoke("refresh", "--model", model, *COMMON, "--out", root)
    assert result.exit_code == 0, result.output
    published = line(result.stdout, "refresh: generated").split()[2]
    assert latest() == published and storage.read_json(published, AUDIT)["verdict"] == "pass"
    inspected = invoke("inspect", f"{root}@latest")
    assert inspected.exit_code == 0 and f"dataset: {published} at {root}/{published}" in inspected.stdout
    assert "audit: PASS" in inspected.stdout, inspected.output

    failed = invoke("generate", "--model", collapsed, *COMMON, "--seed", "0", "--out", root, "--publish")
    assert failed.exit_code == 1 and "failed, quality_vs_version: " in failed.stderr, failed.output[-600:]
    assert latest() == published
    made = invoke("generate", "--model", model, *COMMON, "--seed", "7", "--out", root)
    assert made.exit_code == 0, made.output
    altered = line(made.stdout, "dataset_id:").split()[1]
    alter_part_consistently(storage, altered, "part-00001.parquet")
    assert invoke("inspect", f"{root}/{altered}").exit_code == 0  # sizes and checksums agree: only re-decoding sees it
    failed = invoke("generate", "--model", model, *COMMON, "--seed", "7", "--out", root, "--publish")
    assert failed.exit_code == 1, failed.output
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith(f"vaegen: error: audit of {altered} failed, deep: part-00001.parquet"), error
    assert latest() == published

    made = invoke("generate", "--model", model, *COMMON, "--seed", "3", "--out", root)
    assert made.exit_code == 0, made.output
    leased = line(made.stdout, "dataset_id:").split()[1]
    tag = invoke("tag", f"{root}/{published}", "paper")
    assert tag.exit_code == 0 and f"tagged: {root}@paper -> {published}" in tag.stdout, tag.output
    reader = subprocess.Popen([sys.executable, "-c", READER, f"{root}/{leased}"], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().split() == ["open", leased]
        for seed in ("5", "6"):  # two newer datasets published, each refresh pruning with --keep 1
            result = invoke(
                "refresh", "--model", model, *COMMON, "--out", root, "--keep", "1", "--seed", seed, "--no-audit"
            )
            assert result.exit_code == 0, result.output
            assert f"kept: {published} (tagged paper)" in result.stdout, result.stdout
            assert f"kept: {leased} (leased by pid {reader.pid} on " in result.stdout, result.stdout
        assert storage.exists(published, MANIFEST) and storage.exists(leased, MANIFEST)
        with open_dataset(f"{root}@paper") as by_tag, open_dataset(f"{root}@latest") as by_latest:
            assert by_tag.dataset_id == published and by_latest.dataset_id == latest() != published
            by_folder = open_dataset(f"{root}/{published}", lease=False)
            np.testing.assert_array_equal(by_tag.to_numpy()["x"], by_folder.to_numpy()["x"])
    finally:
        reader.kill()  # kill -9: no atexit, its lease stays behind on the bucket
        reader.wait()
    pruning = invoke("refresh", "--model", model, *COMMON, "--out", root, "--keep", "1", "--seed", "6", "--no-audit")
    assert f"pruned: {leased}" in pruning.stdout, pruning.output  # its reader is gone from this host: at once
    assert not storage.exists(leased, MANIFEST) and storage.exists(published, MANIFEST)

    # An alias moved around the gates is refused; `vaegen status`: current, stale once the alias moves through
    # `vaegen promote`, current after the next refresh.
    assert invoke("status", root, "--model", model, "--max-lag", "0s").exit_code == 0
    client = mlflow.MlflowClient()
    other = client.copy_model_version(f"models:/{champion}/1", champion)  # a new version, same weights
    try:
        client.set_registered_model_alias(champion, "champion", other.version)  # as the MLflow UI would
        refused = invoke("refresh", "--model", model, *COMMON, "--out", root, "--no-audit")
        assert refused.exit_code == 1, refused.output
        assert "set outside `vaegen promote`" in refused.stderr, refused.stderr[-600:]
        moved = invoke("promote", f"{champion}/{other.version}", "--reason", "s3", "--force", "--no-quality-gate")
        assert moved.exit_code == 0, moved.output
        stale = invoke("status", root, "--model", model, "--max-lag", "0s")
        assert stale.exit_code == 3 and "STALE: " in stale.stdout, stale.output
        refreshed = invoke("refresh", "--model", model, *COMMON, "--out", root, "--no-audit")
        assert refreshed.exit_code == 0, refreshed.output
        assert invoke("status", root, "--model", model, "--max-lag", "0s").exit_code == 0
    finally:  # the module's champion again, for whatever runs after this test
        invoke("promote", f"{champion}/1", "--reason", "restore", "--force", "--no-quality-gate")
