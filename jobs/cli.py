"""The `vaegen` command line: thin click wrappers over library functions.

Exit codes, in one place: 0 ok, 1 the job failed, 2 usage error (bad input), 3 `status`: not current,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
`refresh` exits 0 with `refresh: busy` when a live refresh holds the root's lock: that one reports.
Results go to stdout; progress and diagnostics to stderr; a traceback only with --debug.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from vae_core import privacy_block
from vae_core.errors import Terminated, UsageError, VaegenError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 128 + signal.SIGTERM
EXIT_STALE = 3  # `vaegen status`: the published data is not current


def _say_error(message: str) -> None:
    from registry.redaction import redact_text  # libraries quote URIs in errors; credentials never reach the terminal

    click.echo(f"vaegen: error: {redact_text(message)}", err=True)


def _fail(message: str, code: int) -> None:
    _say_error(message)
    sys.exit(code)


def _mlflow_message(error: BaseException) -> str | None:
    """MLflow's own message if `error` is an MlflowException; mlflow is never imported just to ask."""
    exceptions = sys.modules.get("mlflow.exceptions")
    if exceptions is not None and isinstance(error, exceptions.MlflowException):
        return f"MLflow: {error.message}"
    return None


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vaegen's and MLflow's exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from registry import tracking  # light: environment defaults only, no mlflow

        tracking.configure_environment()
        debug = (click.get_current_context().find_root().params or {}).get("debug", False)
        try:
            tracking.enter_store_folder_in_ray_job()
            return command(*args, **kwargs)
        except VaegenError as error:
            if debug:
                raise
            _fail(" ".join(str(error).split()), error.exit_code)
        except KeyboardInterrupt as error:
            if _terminated(error):
                _fail("terminated (SIGTERM); rerun the same command to resume", EXIT_TERMINATED)
            _fail("interrupted; rerun the same command to resume", EXIT_INTERRUPTED)
        except BrokenPipeError:  # `vaegen models | head`: the reader left; say nothing more
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_FAILED)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as error:  # MLflow's, a bug's or the environment's: one line, the traceback on --debug
            if debug:
                raise
            message = _mlflow_message(error)
            if message is None:
                message = f"{type(error).__name__}: {error} (rerun with --debug for the traceback)"
            _fail(" ".join(message.split()), EXIT_FAILED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """vaegen: train a VAE, register its decoder in MLflow, generate synthetic datasets with Ray.

    \b
    Model references (every --model and REFERENCE):
      NAME@ALIAS     vae-decoder@champion (resolved once, then pinned)
      NAME/VERSION   vae-decoder/3
      NAME/latest    the highest version of NAME
      models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/decoder

    Tracking: MLFLOW_TRACKING_URI (default: ./mlflow.db, MLflow's own default).
    Cluster: RAY_ADDRESS (default: a local Ray started by the job).
    """


def _recipe_default(field: str) -> str:
    """'16 for conv, 2 for mlp': the help text of an option whose default depends on --arch."""
    from vae_core.config import RECIPES

    def shown(value: Any) -> str:
        if value is None:
            return "none"
        return ",".join(map(str, value)) or "none" if isinstance(value, tuple) else str(value)

    return "[default: " + ", ".join(f"{shown(recipe[field])} for {name}" for name, recipe in RECIPES.items()) + "]"


@main.command()
@click.option(
    "--data", default="digits", show_default=True, help="digits | mnist:DIR | npz:FILE[:KEY] | parquet:PATH[:COLUMN]"
)
@click.option(
    "--arch",
    "architecture",
    type=click.Choice(["conv", "mlp"]),
    default="conv",
    show_default=True,
    help="conv: strided convolutions and a prior flow (README: the better samples); mlp: the tutorial's network.",
)
@click.option(
    "--epochs",
    type=int,
    default=None,
    help="Passes over the training split [default: 50 for mlp; conv counts --steps].",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Optimizer steps instead of epochs: the same budget for any source size. " + _recipe_default("steps"),
)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option(
    "--lr-schedule", type=click.Choice(["constant", "cosine"]), default=None, help=_recipe_default("lr_schedule")
)
@click.option("--latent-dim", type=int, default=None, help=_recipe_default("latent_dim"))
@click.option(
    "--hidden",
    default=None,
    help="Fully connected layer sizes, comma-separated, or none; the encoder mirrors "
    "them. " + _recipe_default("hidden_sizes"),
)
@click.option(
    "--channels",
    default=None,
    help="conv only: channels of the stride-2 layers, comma-separated. " + _recipe_default("conv_channels"),
)
@click.option(
    "--prior-flow",
    "prior_flow_layers",
    type=int,
    default=None,
    help="Coupling layers of the RealNVP prior flow fitted to the latents after training; 0 for none. "
    + _recipe_default("prior_flow_layers"),
)
@click.option(
    "--prior-flow-steps", type=int, default=1_000, show_default=True, help="Adam steps fitting the prior flow."
)
@click.option(
    "--holdout-fraction",
    type=float,
    default=0.2,
    show_default=True,
    help="The LAST fraction of the source is held out.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads for training [default: torch's, one per core].")
@click.option("--conditional", is_flag=True, help="Train a class-conditional VAE on the source's labels.")
@click.option("--register-as", default="vae-decoder", show_default=True, help="Registered model name.")
@click.option("--experiment", default="vaegen-train", show_default=True)
@click.option(
    "--run-name", default=None, help="MLflow run name [default: train-<data>-<vae|cvae><hidden>-z<latent>-<UTC time>]."
)
@click.option("--report/--no-report", default=True, show_default=True, help="Quality report for the new version.")
@handle_errors
def train(  # noqa: PLR0913 (a click command takes one parameter per option)
    data,
    architecture,
    epochs,
    steps,
    batch_size,
    learning_rate,
    lr_schedule,
    latent_dim,
    hidden,
    channels,
    prior_flow_layers,
    prior_flow_steps,
    holdout_fraction,
    seed,
    threads,
    conditional,
    register_as,
    experiment,
    run_name,
    report,
) -> None:
    """Train a VAE, log the run to MLflow and register the decoder as a new version.

    \b
    Examples:
      vaegen train
      vaegen train --data mnist:/data/mnist --arch conv --conditional
      vaegen train --data mnist:/data/mnist --latent-dim 16 --hidden 512 --epochs 50
    """
    from jobs import train as train_job

    if epochs is not None and steps is not None:
        raise UsageError(f"pass --epochs or --steps, not both (got --epochs {epochs} --steps {steps})")
    if channels is not None and architecture != "conv":
        raise UsageError(f"--channels sets conv layers; pass --arch conv with it, or drop --channels {channels}")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        import torch

        torch.set_num_threads(threads)
    given = {
        "latent_dim": latent_dim,
        "prior_flow_layers": prior_flow_layers,
        "hidden_sizes": None if hidden is None else _parse_sizes(hidden, "--hidden", allow_none=True),
        "conv_channels": None if channels is None else _parse_sizes(channels, "--channels"),
    }
    train_given = {
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "lr_schedule": lr_schedule,
        "holdout_fraction": holdout_fraction,
        "seed": seed,
        "prior_flow_steps": prior_flow_steps,
    }
    config = train_job.TrainJobConfig.for_architecture(
        architecture,
        train={key: value for key, value in train_given.items() if value is not None},
        **{key: value for key, value in given.items() if value is not None},
        data=data,
        conditional=conditional,
        register_as=register_as,
        experiment=experiment,
        run_name=run_name,
        report=report,
    )

    result = train_job.run(config)  # progress (steps, epochs, losses, ETA) on stderr
    click.echo(f"run_id: {result.pinned.run_id}")
    click.echo(f"registered: {result.pinned.name}/{result.pinned.version}")
    click.echo(f"held-out negative ELBO: {result.val_neg_elbo:.3f} nats per sample")
    click.echo(f"tracking: {result.tracking_uri}")
    if result.quality is not None:
        metrics = result.quality.metrics
        click.echo(
            f"quality: Frechet {metrics['frechet_distance']:.3g} (real floor {metrics['frechet_floor']:.3g}), "
            f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
            f"class coverage {metrics['class_coverage']:.2f} -> {result.quality.png_path}"
        )
    elif report:
        _log(f"no quality report: {result.quality_skipped}")


def _parse_sizes(text: str, option: str, allow_none: bool = False) -> tuple[int, ...]:
    if allow_none and text.strip().lower() == "none":
        return ()
    hint = f"{option} must be comma-separated positive integers like 128 or 512,256" + (
        ", or none" if allow_none else ""
    )
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{hint}, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"{hint}, got {text!r}")
    return sizes


@main.command()
@click.option(
    "--model", "model_ref", required=True, help="NAME@ALIAS, NAME/VERSION, NAME/latest, models:/..., runs:/..."
)
@click.option("--n", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
@handle_errors
def sample(model_ref, n, seed, out) -> None:
    """Decode N(0, I) draws from a registered version into an image grid (PNG).

    \b
    Examples:
      vaegen sample --model vae-decoder/latest --out samples.png
      vaegen sample --model vae-decoder@champion --n 100 --seed 7 --out grid.png
    """
    from jobs import plots
    from jobs.sample import draw_images
    from registry import models, tracking

    if n < 1:
        raise UsageError(f"--n must be a positive integer, got {n}")
    tracking.ensure_reachable()
    loaded = models.load_decoder(models.resolve(model_ref))
    images, labels = draw_images(loaded.build(), n, seed)
    title = f"{loaded.pinned.name}/{loaded.pinned.version}, seed {seed}"
    title += "" if labels is None else ", a row per class"
    path = plots.save(plots.image_grid(*plots.class_rows(images, labels), title), out)
    click.echo(str(path))


@main.command(name="models")
@click.argument("name", required=False)
@handle_errors
def list_models(name) -> None:
    """List registered versions with their aliases, held-out loss and promotion history.

    NAME limits the listing to one registered model; without it, every registered model is listed.

    \b
    Examples:
      vaegen models
      vaegen models vae-decoder
    """
    from registry import descriptions, models, promotion, tracking

    tracking.ensure_reachable()
    summaries = models.list_versions(name)
    if not summaries:
        click.echo("no registered models; run `vaegen train` first", err=True)
        return
    histories = {(model_name, alias): events for model_name, alias, events in models.alias_histories(name)}
    ungated = [
        promotion.ungated_reason(summary.name, alias, summary.version, histories.get((summary.name, alias), []))
        for summary in summaries
        for alias in summary.aliases
    ]
    click.echo(
        f"{'model':<24} {'version':>7}  {'aliases':<20} {'-ELBO':>9}  {'shape':<7} {'z':>3}  {'kind':<24} "
        f"{'data':<20} architecture; training"
    )
    for summary in summaries:
        try:
            config = json.loads(summary.tags.get("config", "{}"))
            facts = {**descriptions.model_facts(config if isinstance(config, dict) else {}, {}), **summary.tags}
        except (ValueError, TypeError, AttributeError):  # a hand-edited config tag: the listing goes on
            facts = {**descriptions.model_facts({}, {}), **summary.tags}
        kind = facts["conditioning"].replace("class-conditional", "conditional")
        click.echo(
            f"{summary.name:<24} {summary.version:>7}  {','.join(_alias_marks(summary, histories)) or '-':<20} "
            f"{summary.tags.get('val_neg_elbo', '-'):>9}  {facts['input_shape']:<7} {facts['latent_dim']:>3}  "
            f"{kind:<24} "
            f"{summary.tags.get('data_source', '-'):<20} {facts['architecture']}; {facts['training_budget']}"
        )
        refusal = models.version_refusal(models.PinnedModel(summary.name, summary.version, summary.run_id, "", ""))
        if refusal is not None:
            click.echo(f"{'':<24} {'':>7}  REFUSED: not vaegen's own model code ({refusal}); never loaded or promoted")
    for (model_name, alias), events in histories.items():
        click.echo(f"\nhistory of {model_name}@{alias}:")
        for event in events:
            previous = "-" if event["previous_version"] is None else f"v{event['previous_version']}"
            click.echo(
                f"  {event['at']}  {descriptions.action_text(event):<8} {previous} -> v{event['version']}  "
                f"by {event['by']}: {event['reason']}"
            )
    for reason in filter(None, ungated):
        click.echo(f"\nUNGATED: {reason}; generate and refresh refuse it without --allow-ungated")


def _alias_marks(summary: Any, histories: dict[tuple[str, str], list[dict[str, Any]]]) -> list[str]:
    """The version's aliases, each one that `vaegen promote` did not set marked `(ungated)`."""
    from registry import promotion

    return [
        alias
        + (
            "(ungated)"
            if promotion.ungated_reason(summary.name, alias, summary.version, histories.get((summary.name, alias), []))
            else ""
        )
        for alias in summary.aliases
    ]


def _generate_options(n_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options shared by `generate` and `refresh`: what to generate and where it runs."""
    return functools.partial(_add_generate_options, n_help=n_help)


def _add_generate_options(command: Callable[..., Any], n_help: str) -> Callable[..., Any]:
    options = [
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
        click.option(
            "--num-workers", type=int, default=None, help="Decoder replicas [default: one per GPU, else per CPU]."
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
    for option in reversed(options):
        command = option(command)
    return command


def _audit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The publish audit's options, shared by `refresh` and `generate --publish`."""
    options = [
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
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _audit_config(no_audit: bool, audit_rows: int, audit_tolerance: tuple[str, ...]):
    from jobs.audit import AuditConfig, parse_tolerances  # light: no torch, no MLflow

    return AuditConfig(enabled=not no_audit, quality_rows=audit_rows, tolerances=parse_tolerances(audit_tolerance))


def _generate_config(**options: Any):
    """The GenerateConfig of generate's options, passed by name as click passes them (refresh and --resume too):
    --model is the config's model, the engine's four options its EngineOptions, every other one a field."""
    from jobs.generate.config import EngineOptions, GenerateConfig  # light: checks input before anything heavy

    engine = EngineOptions(
        num_workers=options.pop("num_workers"),
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


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _log(message: str) -> None:
    click.echo(message, err=True)


def _stdout_for_results() -> Any:
    """Reserve stdout for this command's results, which it prints to the stream returned: for the rest of
    the process anything else written to sys.stdout goes to stderr. Ray forwards worker and raylet lines
    ("(raylet) A worker died ...") to stdout, repeated ones only when it flushes them, as late as exit."""
    results = sys.stdout
    sys.stdout = sys.stderr
    return results


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_generate_options("Number of samples (required, except with --resume).")
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
@_audit_options
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
    audit_config = _audit_config(no_audit, audit_rows, audit_tolerance)
    if publish and recipe_only:
        raise UsageError("--publish audits stored rows and --recipe-only stores none: drop one of them")
    config = _generate_config(**options, seed=seed, overwrite=overwrite, resume=resume, recipe_only=recipe_only)
    from jobs.generate.job import generate as run_generate  # after the input is checked: it imports Ray

    results = _stdout_for_results()
    result = run_generate(config, log=_log)
    if publish:
        from jobs.generate.storage import Storage
        from jobs.refresh import publish_generated

        parent = result.location.rstrip("/").rpartition("/")[0]
        verdict = publish_generated(Storage(parent), result.dataset_id, result.manifest, audit_config, _log)
        click.echo(f"published: {result.dataset_id} (audit {verdict['verdict']})", file=results)
    timings = result.manifest["timings"]
    if result.status == "up-to-date":
        _log(f"dataset {result.dataset_id} is already committed; nothing to do")
    elif result.status == "recipe":
        _log(
            f"recipe-only dataset of {result.manifest['n']:,} rows: a manifest, no parts; read it with "
            "open_dataset(DIR).torch(source='decode')"
        )
    else:
        _log(
            f"{result.status} {result.manifest['n']:,} rows in {timings['seconds']:.1f} s "
            f"({timings['rows_per_s']:,.0f} rows/s), {result.manifest['total_bytes'] / 1e6:,.1f} MB"
        )
    click.echo(f"dataset_id: {result.dataset_id}", file=results)
    click.echo(f"location: {result.location}", file=results)


main.add_command(generate)


def _console(command: click.Command) -> Callable[[], None]:
    """A console-script entry point whose usage errors are one line too (click's are several), and which
    exits as soon as its last line is printed."""

    def run() -> None:
        code = EXIT_OK
        signal.signal(signal.SIGTERM, _terminate)
        try:
            command.main(standalone_mode=False)
        except click.UsageError as error:
            hint = f"; see `{error.ctx.command_path} --help`" if error.ctx is not None else ""
            _say_error(f"{error.format_message().rstrip('.')}{hint}")
            code = EXIT_USAGE
        except click.exceptions.Abort as error:  # Ctrl-C or SIGTERM outside a command (parsing, importing)
            terminated = _terminated(error.__cause__)
            _say_error("terminated (SIGTERM)" if terminated else "aborted")
            code = EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
        except click.ClickException as error:
            _say_error(error.format_message())
            code = error.exit_code
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else EXIT_FAILED
        _exit(code)

    return run


_SIGTERM_RECEIVED: list[bool] = []  # set once the handler ran: Ray's blocking calls re-raise a plain KeyboardInterrupt


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM raises Terminated (a KeyboardInterrupt) in the main thread, once: the way out then runs as for
    Ctrl-C (locks released, runs ended KILLED, one line, exit 143); a second SIGTERM does not cut it short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _SIGTERM_RECEIVED.append(True)
    raise Terminated()


def _terminated(error: BaseException | None) -> bool:
    """Whether an interruption came from SIGTERM: ray.wait and ray.get turn the handler's Terminated into a
    plain KeyboardInterrupt, so the handler's record counts too."""
    return isinstance(error, Terminated) or bool(_SIGTERM_RECEIVED)


def _exit(code: int) -> None:
    """Leave as soon as the last line is out. Python's own teardown of what a command imported (mlflow,
    SQLAlchemy, pyarrow, pandas) takes a second or more, and a local Ray's graceful stop several; but
    everything a command writes is written and closed before it returns. So: stop the local Ray this
    process started, end an MLflow run still open, flush, and exit."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from jobs.generate import engine

        engine.stop_local_ray()
        if ray.is_initialized():  # a cluster's driver: disconnecting sends its last metric points (jobs/metrics.py)
            ray.shutdown()
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.end_run({EXIT_OK: "FINISHED", EXIT_INTERRUPTED: "KILLED", EXIT_TERMINATED: "KILLED"}.get(code, "FAILED"))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


vaegen_main = _console(main)  # the `vaegen` console script
generate_main = _console(generate)  # the `generate` console script: `ray job submit ... -- generate --n 1000000`


@main.command(name="inspect")
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
    from jobs.generate.inspect import inspect
    from registry.redaction import redact_uri

    report = inspect(dataset, deep=deep)
    record = report.manifest
    model, labels, lineage = record["model"], record.get("labels") or {}, record["lineage"]
    field = lambda mapping, key: str(mapping.get(key, "?"))[:200]  # noqa: E731 - a hand-edited manifest may lack any
    click.echo(f"dataset: {record['dataset_id']} at {report.location}")
    click.echo(
        f"model: {model['name']}/{model['version']} (resolved from {field(model, 'resolved_from')}), "
        f"run {model['run_id']}"
    )
    click.echo(
        f"rows: {record['n']:,} in {len(record['files'])} files, {record['total_bytes'] / 1e6:,.1f} MB, "
        f"dtype {record['dtype']}, layout {record['layout']}, seed {record['dataset_seed']} "
        f"({field(record, 'seed_scheme')})"
    )
    if labels:
        click.echo(
            f"labels: {field(labels, 'policy')} over {field(labels, 'classes')}, counts {field(labels, 'counts')}"
        )
    click.echo(
        f"lineage: MLflow run {field(lineage, 'run_id')} at "
        f"{redact_uri(str(lineage.get('tracking_uri') or 'a redacted tracking URI'))}"
    )
    from jobs import audit
    from jobs.generate.storage import Storage

    parent, _, dataset_id = report.location.rstrip("/").rpartition("/")
    click.echo(f"audit: {audit.summary(audit.read_record(Storage(parent or '.'), dataset_id))}")  # before publishing
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if not report.ok:
        raise VaegenError(f"{len(report.problems)} problem(s) in {report.location}")
    for note in report.notes:
        _log(f"note: {note}")
    if record.get("recipe_only"):
        click.echo("verified: recipe-only (a manifest without parts; rows are decoded on read)")
        return
    click.echo(
        f"verified: {len(record['files'])} files"
        + (
            f", {report.rows_checked_deep:,} rows re-derived, x of {report.rows_decoded_deep:,} re-decoded"
            if deep
            else ""
        )
    )


@main.command()
@click.argument("reference")
@click.option("--alias", default="champion", show_default=True)
@click.option("--reason", required=True, help="Why this version should serve; recorded on the version.")
@click.option("--by", default=None, help="Who promotes [default: the OS user].")
@click.option(
    "--force",
    is_flag=True,
    help="Promote even if a gate cannot compare, or past a failing privacy gate (the "
    "data may be disclosed: say so in --reason); never past another failing gate.",
)
@click.option(
    "--allow-schema-change",
    is_flag=True,
    help="Promote a version whose sample shape or conditioning differs from the alias holder's: the data "
    "`generate` and `refresh` write from the alias changes with it (the schema gate says how).",
)
@click.option(
    "--elbo-tolerance", type=float, default=0.5, show_default=True, help="Allowed held-out -ELBO regression, nats."
)
@click.option(
    "--to-model", default=None, help="Copy the version into this registered model first, and promote the copy."
)
@click.option(
    "--to-tracking-uri", default=None, help="With --to-model: the registry to copy into (e.g. prod's server)."
)
@click.option(
    "--quality-gate/--no-quality-gate", default=True, show_default=True, help="Gate 3: the quality report's metrics."
)
@click.option("--min-precision", type=float, default=0.3, show_default=True)
@click.option(
    "--min-class-coverage",
    type=float,
    default=0.8,
    show_default=True,
    help="Share of classes the generated data gives a fair share (not k-NN coverage).",
)
@click.option("--min-coverage", "renamed_min_coverage", default=None, hidden=True)
@click.option("--max-memorisation", type=float, default=0.05, show_default=True)
@click.option(
    "--max-frechet-ratio",
    type=float,
    default=25.0,
    show_default=True,
    help="Frechet distance / the real-vs-real floor of the same report.",
)
@click.option("--min-label-accuracy", type=float, default=0.8, show_default=True, help="Conditional models only.")
@click.option(
    "--min-tstr-ratio",
    type=float,
    default=0.8,
    show_default=True,
    help="Conditional models only: train-on-synthetic / train-on-real accuracy on real held-out data.",
)
@click.option(
    "--privacy-gate/--no-privacy-gate",
    default=True,
    show_default=True,
    help="The privacy gates over the report's privacy block: membership inference, DCR ratio, detection "
    "(one gate each; --no-quality-gate skips them too).",
)
@click.option(
    "--max-mia-auc",
    type=float,
    default=privacy_block.GATES["mia_auc"][1],
    show_default=True,
    help="Membership-inference AUC (DOMIAS attack; 0.5 = the samples say nothing of who was trained on).",
)
@click.option(
    "--min-dcr-ratio",
    type=float,
    default=privacy_block.GATES["dcr_ratio"][1],
    show_default=True,
    help="5th-percentile distance of samples to the closest training row / that of unseen real rows.",
)
@click.option(
    "--max-detection-auc",
    type=float,
    default=privacy_block.GATES["detection_auc"][1],
    show_default=True,
    help="AUC of a classifier telling samples from real rows (0.5 = indistinguishable).",
)
@handle_errors
def promote(  # noqa: PLR0913 (a click command takes one parameter per option)
    reference,
    alias,
    reason,
    by,
    force,
    allow_schema_change,
    elbo_tolerance,
    to_model,
    to_tracking_uri,
    quality_gate,
    min_precision,
    min_class_coverage,
    renamed_min_coverage,
    max_memorisation,
    max_frechet_ratio,
    min_label_accuracy,
    min_tstr_ratio,
    privacy_gate,
    max_mia_auc,
    min_dcr_ratio,
    max_detection_auc,
) -> None:
    """Move an alias to a version only after its gates pass; prints each gate's result.

    \b
    Examples:
      vaegen promote vae-decoder/7 --reason "retrained on March data"
      vaegen promote vae-decoder/latest --alias staging --reason "nightly"
    """
    from registry import promotion, tracking

    if renamed_min_coverage is not None:  # "coverage" is k-NN coverage now: never guess which one was meant
        raise UsageError(
            "--min-coverage was renamed --min-class-coverage (the share of classes generated); "
            f"pass --min-class-coverage {renamed_min_coverage}"
        )
    if to_tracking_uri and not to_model:
        raise UsageError("--to-tracking-uri needs --to-model NAME: the registered model to copy into there")
    tracking.ensure_reachable()
    if to_model:
        if to_tracking_uri:
            tracking.ensure_reachable(to_tracking_uri, create=True)  # copying into a new local store creates it
        reference = promotion.copy_version(reference, to_model, to_tracking_uri)
        if to_tracking_uri:  # the gates and the alias move happen in the target registry
            tracking.use(to_tracking_uri)
        _log(f"copied to {reference}" + (f" at {tracking.shown_uri(to_tracking_uri)}" if to_tracking_uri else ""))
    thresholds = promotion.QualityThresholds(
        min_precision, min_class_coverage, max_memorisation, min_label_accuracy, max_frechet_ratio, min_tstr_ratio
    )
    config = promotion.PromotionConfig(
        alias=alias,
        reason=reason,
        by=by or getpass.getuser(),
        force=force,
        allow_schema_change=allow_schema_change,
        elbo_tolerance_nats=elbo_tolerance,
        quality=thresholds if quality_gate else None,
        # the privacy gates read the same report: --no-quality-gate skips them too
        privacy=promotion.PrivacyThresholds(max_mia_auc, min_dcr_ratio, max_detection_auc)
        if privacy_gate and quality_gate
        else None,
    )
    result = promotion.promote(reference, config)
    for gate in result.gates:
        click.echo(f"gate {gate.name:<14} {'PASS' if gate.passed else 'FAIL'}  {gate.detail}")
    target = f"{result.pinned.name}@{alias}"
    if not result.promoted:
        if any(gate.name == "already_holder" for gate in result.gates):
            click.echo(f"{target} already points to version {result.pinned.version}; nothing to do")
            return
        stays = "unset" if result.previous_version is None else f"at version {result.previous_version}"
        raise VaegenError(f"not promoted: {target} stays {stays}; see the failed gates above")
    click.echo(f"promoted: {target} -> version {result.pinned.version} (was {result.previous_version})")


@main.command()
@click.argument("name")
@click.option("--alias", default="champion", show_default=True)
@click.option("--reason", default="rollback", show_default=True)
@click.option("--by", default=None, help="Who rolls back [default: the OS user].")
@handle_errors
def rollback(name, alias, reason, by) -> None:
    """Point the alias back to the version it held before the current one was promoted.

    \b
    Examples:
      vaegen rollback vae-decoder
      vaegen rollback vae-decoder --alias staging --reason "bad samples in v8"
    """
    from registry import promotion, tracking

    tracking.ensure_reachable()
    previous, target = promotion.rollback(name, alias, by=by, reason=reason)
    click.echo(f"rolled back: {name}@{alias} -> version {target} (was {previous})")


@main.command()
@_generate_options("Number of samples (required).")
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
@_audit_options
@handle_errors
def refresh(keep, seed_policy, seed, lock_timeout, no_audit, audit_rows, audit_tolerance, **options) -> None:
    """Rebuild the dataset when the promoted version changes; move ROOT/latest; prune old datasets.

    \b
    Examples:
      vaegen refresh --n 1000000 --out ./datasets
      vaegen refresh --model vae-decoder@champion --n 1000000 --out s3://bucket/synthetic --keep 3
    """
    audit_config = _audit_config(no_audit, audit_rows, audit_tolerance)
    generate_config = _generate_config(**options)
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
    results = _stdout_for_results()
    result = run_refresh(config, log=_log)
    click.echo(
        f"refresh: {result.action}"
        + (f" {result.dataset_id} (model version {result.model_version})" if result.dataset_id else ""),
        file=results,
    )
    for dataset_id in result.pruned:
        click.echo(f"pruned: {dataset_id}", file=results)
    for dataset_id, why in result.kept.items():
        click.echo(f"kept: {dataset_id} ({why})", file=results)


@main.command(name="status")
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


@main.command()
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


@main.command()
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
    moved = f" (moved from {previous['dataset_id']})" if previous and previous["dataset_id"] != dataset_id else ""
    click.echo(f"tagged: {storage.location()}@{name} -> {dataset_id}{moved}")


@main.command()
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
    block = privacy_block.block(result.metrics)
    shown = set(privacy_block.HEADLINE_KEYS)
    for key in reports.HEADLINE:
        if key not in shown and isinstance(result.metrics.get(key), (int, float)):
            click.echo(f"{key:<20} {result.metrics[key]:.4g}")
    click.echo("privacy (figure, real floor, promote's default gate; docs/decisions.md defines each):")
    for row in block:
        value, floor = (_figure(row[key]) for key in ("value", "floor"))
        click.echo(f"  {row['figure']:<18} {value:>8}  floor {floor:<8} gate {row['gate'] or '-'}")
    click.echo(f"report: {result.json_path} {result.png_path} (logged to MLflow run {result.run_id})")


@main.group()
def webhook() -> None:
    """Refresh on promotion: receive MLflow's alias webhooks (`serve`), create the webhook (`register`).

    \b
    Examples:
      vaegen webhook serve --refresh "--model vae-decoder@champion --n 1000000 --out ./datasets"
      vaegen webhook register --url http://127.0.0.1:8090/
    """


WEBHOOK_SECRET_HELP = "Environment variable holding the webhook's shared secret (at least 16 characters)."
MIN_SECRET_CHARS = 16  # HMAC-SHA256 with a guessable secret is no authentication


def _webhook_secret(secret_env: str) -> str:
    secret = os.environ.get(secret_env, "")
    if len(secret) < MIN_SECRET_CHARS:
        state = "is not set" if not secret else f"has {len(secret)} characters"
        raise UsageError(
            f"{secret_env} {state}: set it to a random secret of {MIN_SECRET_CHARS}+ characters, the same "
            f"for `vaegen webhook register` and `serve` (e.g. export {secret_env}=$(openssl rand -hex 32))"
        )
    return secret


def _refresh_target(text: str):
    """A --refresh value checked as `vaegen refresh` would check it, before anything listens."""
    import shlex

    from jobs.webhook import RefreshTarget, watched_alias

    args = tuple(shlex.split(text))
    try:
        with refresh.make_context("refresh", list(args)) as ctx:
            params = dict(ctx.params)
    except click.UsageError as error:
        raise UsageError(f"--refresh {text!r}: {error.format_message()}") from None
    refresh_only = {
        name: params.pop(name)
        for name in ("keep", "seed_policy", "seed", "lock_timeout", "no_audit", "audit_rows", "audit_tolerance")
    }
    try:
        _audit_config(refresh_only["no_audit"], refresh_only["audit_rows"], refresh_only["audit_tolerance"])
        _generate_config(**params)
        return RefreshTarget(args, *watched_alias(params["model_ref"]))
    except UsageError as error:
        raise UsageError(f"--refresh {text!r}: {error}") from None


@webhook.command(name="serve")
@click.option(
    "--refresh",
    "refreshes",
    multiple=True,
    required=True,
    metavar="ARGS",
    help="`vaegen refresh` arguments for one root, quoted; repeat per root. Its --model NAME@ALIAS is watched.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 in a pod).")
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True)
@click.option("--secret-env", default="VAEGEN_WEBHOOK_SECRET", show_default=True, help=WEBHOOK_SECRET_HELP)
@click.option(
    "--ray-address",
    default=None,
    help="Start each refresh as a Ray job there (http://HEAD:8265) [default: a local `vaegen refresh`].",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(1, 3600),
    default=300.0,
    show_default=True,
    help="Seconds a delivery's signed timestamp may differ from now (older ones are replays).",
)
@handle_errors
def webhook_serve(refreshes, host, port, secret_env, ray_address, tolerance) -> None:
    """Receive MLflow alias webhooks; start `vaegen refresh` for each watched root when its alias moves.

    \b
    Examples:
      export VAEGEN_WEBHOOK_SECRET=$(openssl rand -hex 32)
      vaegen webhook serve --port 8090 --refresh "--model vae-decoder@champion --n 1000000 --out ./datasets"
      vaegen webhook serve --host 0.0.0.0 --ray-address http://head:8265 \\
          --refresh "--n 1000000 --out s3://bucket/synthetic --keep 3"
    """
    from jobs import webhook as receiver
    from registry import tracking

    secret = _webhook_secret(secret_env)
    targets = [_refresh_target(text) for text in refreshes]
    tracking.ensure_reachable()
    launcher = receiver.RayJobLauncher(ray_address, _log) if ray_address else receiver.LocalLauncher(_log)
    handler = receiver.Receiver(secret, tracking.tracking_uri(), targets, launcher, _log, tolerance)
    watched = ", ".join(sorted({f"{target.name}@{target.alias}" for target in targets}))
    receiver.serve(handler, host, port, lambda url: _log(f"webhook: listening on {url} for {watched}"))
    _log("webhook: stopped")


@webhook.command(name="register")
@click.option("--url", required=True, help="The receiver's URL as the MLflow server reaches it.")
@click.option("--secret-env", default="VAEGEN_WEBHOOK_SECRET", show_default=True, help=WEBHOOK_SECRET_HELP)
@click.option(
    "--name", default="vaegen-refresh", show_default=True, help="The webhook's name; registering again updates it."
)
@handle_errors
def webhook_register(url, secret_env, name) -> None:
    """Create (or update) the MLflow webhook that sends alias events to a `vaegen webhook serve`.

    \b
    Examples:
      vaegen webhook register --url http://vaegen-webhook:8090/
    """
    from registry import tracking, webhooks

    secret = _webhook_secret(secret_env)
    webhooks.require_server(tracking.tracking_uri())
    tracking.ensure_reachable()
    webhook_id, created = webhooks.register(tracking.tracking_uri(), url, secret, name)
    click.echo(
        f"webhook: {'created' if created else 'updated'} {name} ({webhook_id}) -> {url} on {webhooks.ALIAS_EVENT}"
    )


if __name__ == "__main__":
    main()
