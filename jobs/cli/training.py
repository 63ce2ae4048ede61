"""`vaegen train` and `vaegen sample`: a model version from data, and a look at what it draws."""

from __future__ import annotations

from typing import Any

import click

from jobs.cli.plumbing import handle_errors, log
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
