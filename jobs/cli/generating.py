"""`vaegen generate` (also the `generate` console script) and `vaegen refresh`, with the options and
configs they share: what to generate, where it runs, the publish audit."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from jobs.cli.plumbing import handle_errors, log, stdout_for_results
from vae_core.errors import UsageError


def generate_options(n_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options shared by `generate` and `refresh`: what to generate and where it runs."""
    return functools.partial(_add_generate_options, n_help=n_help)


def _add_generate_options(command: Callable[..., Any], n_help: str) -> Callable[..., Any]:
    return _add_options(command, [*_dataset_options(n_help), *_run_options()])


def _add_options(command: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Apply click options so that --help lists them in the order given."""
    for option in reversed(options):
        command = option(command)
    return command


def _dataset_options(n_help: str) -> list[Callable[..., Any]]:
    """What to generate and where it goes (with --resume, most come from the dataset: DATASET_OPTIONS)."""
    return [
        click.option(
            "--model",
            "model_ref",
            default="vae-decoder@champion",
            show_default=True,
            help="NAME@ALIAS, NAME/VERSION, NAME/latest, models:/..., runs:/... (resolved once, then pinned).",
        ),
        click.option("--n", type=int, default=None, help=n_help),
        click.option(
            "--out", default=None, help="Output root: a directory or s3://bucket/prefix [env: VAEGEN_OUTPUT]."
        ),
        click.option(
            "--dtype", type=click.Choice(["float32", "float16", "uint8"]), default="float32", show_default=True
        ),
        click.option(
            "--layout",
            type=click.Choice(["tensor", "binary"]),
            default="tensor",
            show_default=True,
            help="x with its shape (nested fixed-size lists), or raw fixed-size binary rows (faster; see README).",
        ),
        click.option(
            "--compression",
            type=click.Choice(["zstd", "lz4", "snappy", "gzip", "none"]),
            default="zstd",
            show_default=True,
        ),
        click.option(
            "--rows-per-shard", type=int, default=65_536, show_default=True, help="Rows per Parquet part file."
        ),
        click.option("--batch-size", type=int, default=4_096, show_default=True, help="Rows per decode block."),
    ]


def _run_options() -> list[Callable[..., Any]]:
    """How the job runs (the engine's options), which labels it draws, and what it lets through."""
    return [
        click.option(
            "--num-workers",
            default=None,
            metavar="N|MIN:MAX|auto",
            help="Decoder replicas: N; MIN:MAX or auto grow the pool as nodes join [default: one per GPU, else per "
            "CPU the cluster has at start].",
        ),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option(
            "--labels", default="balanced", show_default=True, help="Conditional models: balanced | prior | 3,5,..."
        ),
        click.option("--shared-fs", is_flag=True, help="A local --out is a filesystem shared by every Ray node."),
        click.option(
            "--allow-ungated",
            is_flag=True,
            help="Use an alias holder that `vaegen promote` did not put there (recorded in the manifest, card, run).",
        ),
        click.option(
            "--redact-provenance",
            is_flag=True,
            help="Leave users, hosts and absolute locations out of the manifest (for datasets you publish).",
        ),
        click.option(
            "--stall-timeout",
            type=float,
            default=600.0,
            show_default=True,
            help="Fail (resumably) when no shard finishes for this many seconds: a lost node, a hung worker.",
        ),
    ]


def audit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The publish audit's options, shared by `refresh` and `generate --publish`."""
    return _add_options(
        command,
        [
            click.option(
                "--no-audit",
                is_flag=True,
                help="Publish without the audit (recorded as skipped beside the manifest, in the card and in the "
                "dataset's run).",
            ),
            click.option(
                "--audit-rows",
                type=int,
                default=2_000,
                show_default=True,
                help="Rows whose quality figures the audit compares with the model version's report.",
            ),
            click.option(
                "--audit-tolerance",
                multiple=True,
                metavar="FIGURE=VALUE",
                help="Allowed absolute difference of a quality figure [defaults: precision=0.15, density=0.3, "
                "mean_confidence=0.1, label_accuracy=0.05]; repeatable.",
            ),
        ],
    )


def make_audit_config(no_audit: bool, audit_rows: int, audit_tolerance: tuple[str, ...]):
    from jobs.audit import AuditConfig, parse_tolerances  # light: no torch, no MLflow

    return AuditConfig(enabled=not no_audit, quality_rows=audit_rows, tolerances=parse_tolerances(audit_tolerance))


def make_generate_config(**options: Any):
    """The GenerateConfig of generate's options, passed by name as click passes them (refresh and --resume too):
    --model is the config's model, the engine's four options its EngineOptions, every other one a field."""
    from jobs.generate.config import (  # light: checks input before anything heavy
        EngineOptions,
        GenerateConfig,
        parse_num_workers,
    )

    num_workers, max_workers = parse_num_workers(options.pop("num_workers"))
    engine = EngineOptions(
        num_workers=num_workers,
        max_workers=max_workers,
        device=options.pop("device"),
        shared_fs=options.pop("shared_fs"),
        stall_timeout_s=options.pop("stall_timeout"),
    )
    config = GenerateConfig(model=options.pop("model_ref"), engine=engine, **options)
    config.check_output()
    return config


# What defines a dataset's content and files: with --resume these come from the dataset itself.
DATASET_OPTIONS = {
    "model_ref": "--model",
    "n": "--n",
    "seed": "--seed",
    "dtype": "--dtype",
    "layout": "--layout",
    "compression": "--compression",
    "rows_per_shard": "--rows-per-shard",
    "batch_size": "--batch-size",
    "labels": "--labels",
}


def _refuse_dataset_options_with_resume(ctx: click.Context) -> None:
    explicit = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    given = [flag for name, flag in DATASET_OPTIONS.items() if ctx.get_parameter_source(name) in explicit]
    if given:
        raise UsageError(f"--resume continues a dataset with its own options; drop {', '.join(given)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@generate_options("Number of samples (required, except with --resume).")
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    default=None,
    help="Dataset seed [default: random, printed and recorded].",
)
@click.option("--overwrite", is_flag=True, help="Replace a committed dataset with the same id.")
@click.option(
    "--resume",
    default=None,
    metavar="DATASET",
    help="Continue an unfinished dataset (its id under --out, or its path).",
)
@click.option(
    "--recipe-only",
    is_flag=True,
    help="Write the manifest alone (kilobytes, any --n, no Ray): readers decode the rows "
    "(open_dataset(DIR).torch(source='decode')).",
)
@click.option(
    "--publish", is_flag=True, help="Audit the committed dataset, then point OUT/latest at it (as refresh does)."
)
@audit_options
@click.option("--debug", is_flag=True, hidden=True)
@handle_errors
def generate(  # noqa: PLR0913 (a click command takes one parameter per option)
    seed, overwrite, resume, recipe_only, publish, no_audit, audit_rows, audit_tolerance, debug, **options
) -> None:
    """Generate a synthetic dataset from a registered decoder on Ray (Parquet + manifest).

    Without RAY_ADDRESS it starts a private Ray on 127.0.0.1; RAY_ADDRESS=auto (or an address)
    joins a running cluster; under `ray job submit` it runs on the job's cluster.

    \b
    Examples:
      vaegen generate --n 1000000 --seed 42 --out ./datasets
      ray job submit --address http://127.0.0.1:8265 -- generate --n 1000000 --out s3://bucket/synthetic
      vaegen generate --resume vae-decoder-v7-n1000000-seed42-float32-f3 --out ./datasets
    """
    if resume is not None:
        _refuse_dataset_options_with_resume(click.get_current_context())
    context = click.get_current_context()
    audit_flags = [
        flag
        for name, flag in (
            ("no_audit", "--no-audit"),
            ("audit_rows", "--audit-rows"),
            ("audit_tolerance", "--audit-tolerance"),
        )
        if context.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
    ]
    if audit_flags and not publish:
        raise UsageError(f"{', '.join(audit_flags)} set(s) the audit before publishing: add --publish, or drop them")
    audit_config = make_audit_config(no_audit, audit_rows, audit_tolerance)
    if publish and recipe_only:
        raise UsageError("--publish audits stored rows and --recipe-only stores none: drop one of them")
    config = make_generate_config(**options, seed=seed, overwrite=overwrite, resume=resume, recipe_only=recipe_only)
    from jobs.generate.job import generate as run_generate  # after the input is checked: it imports Ray

    results = stdout_for_results()
    result = run_generate(config, log=log)
    if publish:
        from jobs.generate.storage import Storage
        from jobs.refresh import publish_generated

        parent = result.location.rstrip("/").rpartition("/")[0]
        verdict = publish_generated(Storage(parent), result.dataset_id, result.manifest, audit_config, log)
        click.echo(f"published: {result.dataset_id} (audit {verdict.verdict})", file=results)
    timings = result.manifest.timings
    if result.status == "up-to-date":
        log(f"dataset {result.dataset_id} is already committed; nothing to do")
    elif result.status == "recipe":
        log(
            f"recipe-only dataset of {result.manifest.n:,} rows: a manifest, no parts; read it with "
            "open_dataset(DIR).torch(source='decode')"
        )
    else:
        log(
            f"{result.status} {result.manifest.n:,} rows in {timings['seconds']:.1f} s "
            f"({timings['rows_per_s']:,.0f} rows/s), {result.manifest.total_bytes / 1e6:,.1f} MB"
        )
    click.echo(f"dataset_id: {result.dataset_id}", file=results)
    click.echo(f"location: {result.location}", file=results)


@click.command()
@generate_options("Number of samples (required).")
@click.option(
    "--keep",
    type=int,
    default=3,
    show_default=True,
    help="Newest committed datasets kept under --out (plus the one `latest` names, if older).",
)
@click.option(
    "--seed-policy",
    type=click.Choice(["fixed", "daily", "new"]),
    default="fixed",
    show_default=True,
    help="fixed: new data only when the promoted version changes; daily: a seed per UTC day; new: every run.",
)
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    default=0,
    show_default=True,
    help="The fixed seed / base of the daily seed.",
)
@click.option(
    "--lock-timeout",
    type=float,
    default=900.0,
    show_default=True,
    help="A lock whose holder's heartbeat is this many seconds old is stale (a dead holder on this host: at once).",
)
@audit_options
@handle_errors
def refresh(keep, seed_policy, seed, lock_timeout, no_audit, audit_rows, audit_tolerance, **options) -> None:
    """Rebuild the dataset when the promoted version changes; move ROOT/latest; prune old datasets.

    \b
    Examples:
      vaegen refresh --n 1000000 --out ./datasets
      vaegen refresh --model vae-decoder@champion --n 1000000 --out s3://bucket/synthetic --keep 3
    """
    audit_config = make_audit_config(no_audit, audit_rows, audit_tolerance)
    generate_config = make_generate_config(**options)
    from jobs.refresh import RefreshConfig  # after the input is checked: it imports Ray
    from jobs.refresh import refresh as run_refresh

    config = RefreshConfig(
        generate=generate_config,
        keep=keep,
        seed_policy=seed_policy,
        seed=seed,
        lock_timeout_s=lock_timeout,
        audit_config=audit_config,
    )
    results = stdout_for_results()
    result = run_refresh(config, log=log)
    click.echo(
        f"refresh: {result.action}"
        + (f" {result.dataset_id} (model version {result.model_version})" if result.dataset_id else ""),
        file=results,
    )
    for dataset_id in result.pruned:
        click.echo(f"pruned: {dataset_id}", file=results)
    for dataset_id, why in result.kept.items():
        click.echo(f"kept: {dataset_id} ({why})", file=results)
