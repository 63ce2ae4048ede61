"""`vaegen webhook serve` and `register`: refresh when MLflow says an alias moved."""

from __future__ import annotations

import os

import click

from jobs.cli.generating import make_audit_config, make_generate_config, refresh
from jobs.cli.plumbing import handle_errors, log
from vae_core.errors import UsageError


@click.group()
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


def refresh_target(text: str):
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
        make_audit_config(refresh_only["no_audit"], refresh_only["audit_rows"], refresh_only["audit_tolerance"])
        make_generate_config(**params)
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
    targets = [refresh_target(text) for text in refreshes]
    tracking.ensure_reachable()
    launcher = receiver.RayJobLauncher(ray_address, log) if ray_address else receiver.LocalLauncher(log)
    handler = receiver.Receiver(secret, tracking.tracking_uri(), targets, launcher, log, tolerance)
    watched = ", ".join(sorted({f"{target.name}@{target.alias}" for target in targets}))
    receiver.serve(handler, host, port, lambda url: log(f"webhook: listening on {url} for {watched}"))
    log("webhook: stopped")


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
