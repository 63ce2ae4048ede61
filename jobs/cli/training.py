"""`vaegen train` and `vaegen sample`: a model version from data, and a look at what it draws."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from jobs.cli.plumbing import handle_errors, log
from vae_core.config import TrainConfig
from vae_core.errors import UsageError


def _recipe_default(field: str) -> str:
    """'16 for conv, 2 for mlp': the help text of an option whose default depends on --arch."""
    from vae_core.config import RECIPES

    def shown(value: Any) -> str:
        if value is None:
            return "none"
        return ",".join(map(str, value)) or "none" if isinstance(value, tuple) else str(value)

    return "[default: " + ", ".join(f"{shown(recipe[field])} for {name}" for name, recipe in RECIPES.items()) + "]"


@click.command()
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
    "--augment-shift",
    type=int,
    default=None,
    help="Shift each training image by up to this many pixels per axis, at random. " + _recipe_default("augment_shift"),
)
@click.option(
    "--augment-rotate",
    type=float,
    default=None,
    help="Rotate each training image by up to this many degrees, at random. " + _recipe_default("augment_rotate"),
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
def train(**options: Any) -> None:
    """Train a VAE, log the run to MLflow and register the decoder as a new version.

    \b
    Examples:
      vaegen train
      vaegen train --data mnist:/data/mnist --arch conv --conditional
      vaegen train --data mnist:/data/mnist --latent-dim 16 --hidden 512 --epochs 50
    """
    from jobs import train as train_job

    threads = options.pop("threads")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be a positive integer, got {threads}")
        import torch

        torch.set_num_threads(threads)
    result = train_job.run(_train_job_config(options))  # progress (steps, epochs, losses, ETA) on stderr
    _echo_trained(result, options["report"])


def _train_job_config(options: dict[str, Any]) -> Any:
    """jobs.train.TrainJobConfig from train's options: what was not given keeps the --arch recipe's value."""
    from jobs import train as train_job

    if options["epochs"] is not None and options["steps"] is not None:
        raise UsageError(
            f"pass --epochs or --steps, not both (got --epochs {options['epochs']} --steps {options['steps']})"
        )
    if options["channels"] is not None and options["architecture"] != "conv":
        raise UsageError(
            f"--channels sets conv layers; pass --arch conv with it, or drop --channels {options['channels']}"
        )
    hidden, channels = options.pop("hidden"), options.pop("channels")
    model = {
        "latent_dim": options.pop("latent_dim"),
        "prior_flow_layers": options.pop("prior_flow_layers"),
        "hidden_sizes": None if hidden is None else _parse_sizes(hidden, "--hidden", allow_none=True),
        "conv_channels": None if channels is None else _parse_sizes(channels, "--channels"),
    }
    trainer = {field.name for field in dataclasses.fields(TrainConfig)}
    training = {key: options.pop(key) for key in list(options) if key in trainer}
    given = lambda fields: {key: value for key, value in fields.items() if value is not None}  # noqa: E731
    return train_job.TrainJobConfig.for_architecture(
        options.pop("architecture"), train=given(training), **given(model), **options
    )


def _echo_trained(result: Any, report: bool) -> None:
    click.echo(f"run_id: {result.pinned.run_id}")
    click.echo(f"registered: {result.pinned.name}/{result.pinned.version}")
    click.echo(f"held-out negative ELBO: {result.val_neg_elbo:.3f} nats per sample")
    click.echo(f"tracking: {result.tracking_uri}")
    if result.quality is not None:
        metrics = result.quality.metrics
        click.echo(
            f"quality: Frechet {metrics.frechet_distance:.3g} (real floor {metrics.frechet_floor:.3g}), "
            f"precision {metrics.precision:.3f}, recall {metrics.recall:.3f}, "
            f"class coverage {metrics.class_coverage:.2f} -> {result.quality.png_path}"
        )
    elif report:
        log(f"no quality report: {result.quality_skipped}")


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


@click.command()
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
