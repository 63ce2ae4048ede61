"""The `vaegen` command line: thin click wrappers over library functions.

Exit codes, in one place: 0 ok, 1 the job failed, 2 usage error (bad input), 130 interrupted.
Results go to stdout; progress and diagnostics to stderr; a traceback only with --debug.
"""

from __future__ import annotations

import functools
import getpass
import sys
from typing import Any, Callable

import click

from vae_core.errors import UsageError, VaegenError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _fail(message: str, code: int) -> None:
    click.echo(f"vaegen: error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn vaegen's and MLflow's exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        from registry import tracking

        tracking.configure_environment()
        debug = (click.get_current_context().find_root().params or {}).get("debug", False)
        try:
            return command(*args, **kwargs)
        except (VaegenError, MlflowException) as error:
            if debug:
                raise
            code = error.exit_code if isinstance(error, VaegenError) else EXIT_FAILED
            message = str(error) if isinstance(error, VaegenError) else f"MLflow: {error.message}"
            _fail(" ".join(message.split()), code)
        except KeyboardInterrupt:
            _fail("interrupted; rerun the same command to resume", EXIT_INTERRUPTED)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """vaegen: train a VAE, register its decoder in MLflow, generate synthetic datasets with Ray.

    Tracking: MLFLOW_TRACKING_URI (default: ./mlflow.db, MLflow's own default).
    Cluster: RAY_ADDRESS (default: a local Ray started by the job).
    """


@main.command()
@click.option("--data", default="digits", show_default=True, help="digits | mnist:DIR | npz:FILE[:KEY] | parquet:PATH[:COLUMN]")
@click.option("--epochs", type=int, default=50, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option("--latent-dim", type=int, default=2, show_default=True)
@click.option("--hidden", default="128", show_default=True, help="Decoder hidden layer sizes, comma-separated (encoder mirrors).")
@click.option("--holdout-fraction", type=float, default=0.2, show_default=True, help="The LAST fraction of the source is held out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--conditional", is_flag=True, help="Train a class-conditional VAE on the source's labels.")
@click.option("--register-as", default="vae-decoder", show_default=True, help="Registered model name.")
@click.option("--experiment", default="vaegen-train", show_default=True)
@click.option("--run-name", default=None)
@handle_errors
def train(data, epochs, batch_size, learning_rate, latent_dim, hidden, holdout_fraction, seed, conditional,
          register_as, experiment, run_name) -> None:
    """Train a VAE, log the run to MLflow and register the decoder as a new version."""
    from jobs import train as train_job
    from vae_core.config import TrainConfig

    config = train_job.TrainJobConfig(
        data=data, latent_dim=latent_dim, hidden_sizes=_parse_sizes(hidden), conditional=conditional,
        train=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
                          holdout_fraction=holdout_fraction, seed=seed),
        register_as=register_as, experiment=experiment, run_name=run_name,
    )

    def progress(metrics) -> None:
        click.echo(f"epoch {metrics.epoch:>3}/{epochs}  train {metrics.train_loss:8.3f}  "
                   f"held-out {metrics.val_loss:8.3f} nats  ({metrics.seconds:.2f} s)", err=True)

    result = train_job.run(config, on_epoch=progress)
    click.echo(f"run_id: {result.pinned.run_id}")
    click.echo(f"registered: {result.pinned.name}/{result.pinned.version}")
    click.echo(f"held-out negative ELBO: {result.val_neg_elbo:.3f} nats per sample")
    click.echo(f"tracking: {result.tracking_uri}")


def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated positive integers like 128 or 512,256, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--hidden must be comma-separated positive integers like 128 or 512,256, got {text!r}")
    return sizes


@main.command()
@click.option("--model", "model_ref", required=True, help="NAME@ALIAS, NAME/VERSION, models:/..., runs:/...")
@click.option("--n", type=int, default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default="samples.png", show_default=True)
@handle_errors
def sample(model_ref, n, seed, out) -> None:
    """Decode N(0, I) draws from a registered version into an image grid (PNG)."""
    from jobs import plots
    from jobs.sample import draw_images
    from registry import models, tracking

    tracking.ensure_reachable()
    loaded = models.load_decoder(models.resolve(model_ref))
    images, _ = draw_images(loaded.build(), n, seed)
    columns = loaded.config.num_classes or None
    title = f"{loaded.pinned.name}/{loaded.pinned.version}, seed {seed}"
    path = plots.save(plots.image_grid(images, columns, title), out)
    click.echo(str(path))


@main.command(name="models")
@click.argument("name", required=False)
@handle_errors
def list_models(name) -> None:
    """List registered versions with their aliases, held-out loss and promotion history."""
    from registry import models, tracking

    tracking.ensure_reachable()
    summaries = models.list_versions(name)
    if not summaries:
        click.echo("no registered models; run `vaegen train` first", err=True)
        return
    click.echo(f"{'model':<24} {'version':>7}  {'aliases':<20} {'-ELBO':>9}  {'kind':<12} data")
    for summary in summaries:
        kind = "conditional" if summary.tags.get("conditional") == "true" else "unconditional"
        click.echo(
            f"{summary.name:<24} {summary.version:>7}  {','.join(summary.aliases) or '-':<20} "
            f"{summary.tags.get('val_neg_elbo', '-'):>9}  {kind:<12} {summary.tags.get('data_source', '-')}"
        )


if __name__ == "__main__":
    main()
