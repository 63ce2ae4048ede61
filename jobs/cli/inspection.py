"""The commands that read what was published: `inspect`, `status`, `datasets`, `tag`, `report`."""

from __future__ import annotations

import getpass
import json
import sys

import click

from jobs.cli.plumbing import EXIT_STALE, handle_errors, log
from vae_core import privacy_block, quality_names
from vae_core.errors import UsageError, VaegenError


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@click.command(name="inspect")
@click.argument("dataset")
@click.option(
    "--deep",
    is_flag=True,
    help="Also re-derive every row's seed, z (and label), and re-decode x for "
    "whole blocks of every part with the registered decoder.",
)
@handle_errors
def inspect_command(dataset, deep) -> None:
    """Print a dataset's manifest summary and verify every file's checksum and row count.

    \b
    Examples:
      vaegen inspect ./datasets/vae-decoder-v7-n1000000-seed42-float32-f3
      vaegen inspect s3://bucket/synthetic/vae-decoder-v7-n1000000-seed42-float32-f3 --deep
    """
    from jobs.generate.verify import inspect
    from registry.redaction import redact_uri

    report = inspect(dataset, deep=deep)
    record = report.manifest
    model, labels, lineage = record.model, record.labels, record.lineage
    field = lambda value: str(value)[:200]  # noqa: E731 - a hand-edited manifest may hold anything there
    click.echo(f"dataset: {record.dataset_id} at {report.location}")
    click.echo(f"model: {model.name}/{model.version} (resolved from {field(model.resolved_from)}), run {model.run_id}")
    click.echo(
        f"rows: {record.n:,} in {len(record.files)} files, {record.total_bytes / 1e6:,.1f} MB, "
        f"dtype {record.dtype}, layout {record.layout}, seed {record.dataset_seed} ({field(record.seed_scheme)})"
    )
    if labels:
        click.echo(f"labels: {field(labels.policy)} over {field(labels.classes)}, counts {field(labels.counts)}")
    click.echo(
        f"lineage: MLflow run {field(lineage.run_id)} at "
        f"{redact_uri(str(lineage.tracking_uri or 'a redacted tracking URI'))}"
    )
    from jobs import audit
    from jobs.generate import audit_record
    from jobs.generate.storage import Storage

    parent, _, dataset_id = report.location.rstrip("/").rpartition("/")
    verdict = audit.read_record(Storage(parent or "."), dataset_id)  # None before publishing: "not audited"
    click.echo(f"audit: {audit_record.summary(verdict)}")
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if not report.ok:
        raise VaegenError(f"{len(report.problems)} problem(s) in {report.location}")
    for note in report.notes:
        log(f"note: {note}")
    if record.recipe_only:
        click.echo("verified: recipe-only (a manifest without parts; rows are decoded on read)")
        return
    click.echo(
        f"verified: {len(record.files)} files"
        + (
            f", {report.rows_checked_deep:,} rows re-derived, x of {report.rows_decoded_deep:,} re-decoded"
            if deep
            else ""
        )
    )


@click.command(name="status")
@click.argument("root")
@click.option(
    "--model", "model_ref", default=None, help="NAME@ALIAS that refresh follows: is `latest` made from its holder?"
)
@click.option(
    "--max-lag",
    default=None,
    help="How long a moved alias (or, without --model, `latest`) may wait unpublished: 90s, 15m, 6h, 1d "
    "[default: 0 with --model, no limit without].",
)
@click.option("--json", "as_json", is_flag=True, help="The state as one JSON object on stdout, for machines.")
@handle_errors
def status_command(root, model_ref, max_lag, as_json) -> None:
    """Is the published data current? Exit 0 current, 3 stale (or the alias moved and nothing published it), 1 error.

    \b
    Examples:
      vaegen status ./datasets --model vae-decoder@champion --max-lag 1h
      vaegen status s3://bucket/synthetic --max-lag 2d --json
    """
    from jobs import status

    if model_ref is not None:
        from registry import tracking

        tracking.ensure_reachable()
    state = status.status(root, model_ref, None if max_lag is None else status.parse_duration(max_lag))
    if as_json:
        click.echo(json.dumps(state, indent=2, default=str))
    else:
        for text in status.lines(state):
            click.echo(text)
    if state["stale"]:
        sys.exit(EXIT_STALE)


@click.command()
@click.argument("root")
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout, for machines.")
@handle_errors
def datasets(root, as_json) -> None:
    """List the datasets under an output root: id, model version, rows, size, state, audit verdict.

    \b
    Examples:
      vaegen datasets ./datasets
      vaegen datasets s3://bucket/synthetic --json
    """
    from jobs.generate.published import listing
    from jobs.generate.storage import Storage

    storage = Storage(root)
    if not storage.exists():
        raise UsageError(f"output root {storage.location()} does not exist; pass the --out of a generate or refresh")
    rows = listing(storage)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'dataset':<52} {'version':>7} {'rows':>11} {'MB':>9}  {'audit':<8} state")
    for row in rows:
        size = "-" if row["bytes"] is None else f"{row['bytes'] / 1e6:,.1f}"
        count = "-" if row["n"] is None else f"{row['n']:,}"
        click.echo(
            f"{row['dataset_id']:<52} {row['model_version'] if row['model_version'] is not None else '-':>7} "
            f"{count:>11} {size:>9}  {row['audit']:<8} {', '.join(row['states']) or '-'}"
        )


@click.command()
@click.argument("dataset", metavar="ROOT/DATASET_ID")
@click.argument("name")
@click.option("--delete", is_flag=True, help="Remove tag NAME (DATASET must be the one it names).")
@click.option("--by", default=None, help="Who tags [default: the OS user].")
@handle_errors
def tag(dataset, name, delete, by) -> None:
    """Tag a committed dataset: prune never deletes it, and ROOT@NAME opens it. Retagging moves NAME atomically.

    \b
    Examples:
      vaegen tag ./datasets/vae-decoder-v7-n1000000-seed42-float32-f3 paper-2026
      vaegen tag s3://bucket/synthetic/vae-decoder-v7-n1000000-seed42-float32-f3 paper-2026 --delete
    """
    from jobs.generate import holds
    from jobs.generate.storage import Storage

    root, _, dataset_id = dataset.rstrip("/").rpartition("/")
    if not root or not dataset_id:
        raise UsageError(
            f"{dataset!r}: give the dataset as ROOT/DATASET_ID, e.g. ./datasets/vae-decoder-v1-n1000-seed0-float32-f3"
        )
    storage = Storage(root)
    if delete:
        holds.delete_tag(storage, name, dataset_id)
        click.echo(f"deleted tag {name} (was {dataset_id})")
        return
    previous = holds.set_tag(storage, dataset_id, name, by or getpass.getuser())
    moved = f" (moved from {previous.dataset_id})" if previous and previous.dataset_id != dataset_id else ""
    click.echo(f"tagged: {storage.location()}@{name} -> {dataset_id}{moved}")


@click.command()
@click.option(
    "--model", "model_ref", default=None, help="Report on a model version: fresh samples from the report seed."
)
@click.option("--dataset", default=None, help="Report on a committed dataset (its path or URI).")
@click.option("--n", type=int, default=10_000, show_default=True, help="Generated samples compared with the real data.")
@click.option("--data", default=None, help="Real data to compare with [default: the version's training source].")
@click.option(
    "--out",
    "out_dir",
    default=None,
    help="Folder for report.json and report.png [default: report/<model>/v<version>/ for --model, "
    "report/datasets/<dataset id>/ for --dataset]; a folder holding another subject's report is refused.",
)
@handle_errors
def report(model_ref, dataset, n, data, out_dir) -> None:
    """Measure generated data against real data; write report.json + report.png and log them to MLflow.

    \b
    Examples:
      vaegen report --model vae-decoder@champion
      vaegen report --dataset ./datasets/vae-decoder-v7-n1000000-seed42-float32-f3
    """
    from jobs import report as reports
    from registry import tracking

    if (model_ref is None) == (dataset is None):
        raise UsageError("pass exactly one of --model REF or --dataset DIR")
    tracking.ensure_reachable()
    config = reports.ReportConfig(n=n, out_dir=out_dir, data=data)
    result = reports.model_report(model_ref, config) if model_ref else reports.dataset_report(dataset, config)
    block = privacy_block.block(result.metrics.to_json())
    shown = set(privacy_block.HEADLINE_KEYS)
    for key in quality_names.HEADLINE:
        if key not in shown and isinstance(result.metrics.figure(key), (int, float)):
            click.echo(f"{key:<20} {result.metrics.figure(key):.4g}")
    click.echo("privacy (figure, real floor, promote's default gate; docs/decisions.md defines each):")
    for row in block:
        value, floor = (_figure(row[key]) for key in ("value", "floor"))
        click.echo(f"  {row['figure']:<18} {value:>8}  floor {floor:<8} gate {row['gate'] or '-'}")
    click.echo(f"report: {result.json_path} {result.png_path} (logged to MLflow run {result.run_id})")
