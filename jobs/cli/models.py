"""`vaegen models`, `promote` and `rollback`: the registered versions and the aliases that serve them."""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

from jobs.cli.plumbing import handle_errors, log
from vae_core import privacy_block
from vae_core.errors import UsageError, VaegenError


@click.command(name="models")
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
    from registry import descriptions, listing, models, promotion, tracking

    tracking.ensure_reachable()
    summaries = listing.list_versions(name)
    if not summaries:
        click.echo("no registered models; run `vaegen train` first", err=True)
        return
    histories = {(model_name, alias): events for model_name, alias, events in listing.alias_histories(name)}
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


@click.command()
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
def promote(**options: Any) -> None:
    """Move an alias to a version only after its gates pass; prints each gate's result.

    \b
    Examples:
      vaegen promote vae-decoder/7 --reason "retrained on March data"
      vaegen promote vae-decoder/latest --alias staging --reason "nightly"
    """
    from registry import promotion, tracking

    _check_promote_options(options)
    tracking.ensure_reachable()
    reference, to_tracking_uri = options["reference"], options["to_tracking_uri"]
    if options["to_model"]:  # the gates and the alias move happen where the copy is
        reference = _copy_for_promotion(reference, options["to_model"], to_tracking_uri)
    result = promotion.promote(reference, _promotion_config(options), to_tracking_uri)
    _echo_promotion(result)


def _check_promote_options(options: dict[str, Any]) -> None:
    """Usage errors before anything is reached or copied."""
    if options["renamed_min_coverage"] is not None:  # "coverage" is k-NN coverage now: never guess which one was meant
        raise UsageError(
            "--min-coverage was renamed --min-class-coverage (the share of classes generated); "
            f"pass --min-class-coverage {options['renamed_min_coverage']}"
        )
    if options["to_tracking_uri"] and not options["to_model"]:
        raise UsageError("--to-tracking-uri needs --to-model NAME: the registered model to copy into there")


def _copy_for_promotion(reference: str, to_model: str, to_tracking_uri: str | None) -> str:
    """Copy the version into --to-model, in this registry or in the one at --to-tracking-uri; the copy's reference."""
    from registry import copying, tracking

    if to_tracking_uri:
        tracking.ensure_reachable(to_tracking_uri, create=True)  # copying into a new local store creates it
    copied = copying.copy_version(reference, to_model, to_tracking_uri)
    log(f"copied to {copied}" + (f" at {tracking.shown_uri(to_tracking_uri)}" if to_tracking_uri else ""))
    return copied


def _promotion_config(options: dict[str, Any]) -> Any:
    """registry.promotion.PromotionConfig from promote's options."""
    from registry import gates, promotion

    thresholds = gates.QualityThresholds(
        options["min_precision"],
        options["min_class_coverage"],
        options["max_memorisation"],
        options["min_label_accuracy"],
        options["max_frechet_ratio"],
        options["min_tstr_ratio"],
    )
    privacy = promotion.PrivacyThresholds(
        options["max_mia_auc"], options["min_dcr_ratio"], options["max_detection_auc"]
    )
    return promotion.PromotionConfig(
        alias=options["alias"],
        reason=options["reason"],
        by=options["by"] or getpass.getuser(),
        force=options["force"],
        allow_schema_change=options["allow_schema_change"],
        elbo_tolerance_nats=options["elbo_tolerance"],
        quality=thresholds if options["quality_gate"] else None,
        # the privacy gates read the same report: --no-quality-gate skips them too
        privacy=privacy if options["privacy_gate"] and options["quality_gate"] else None,
    )


def _echo_promotion(result: Any) -> None:
    """Each gate's verdict, then what happened to the alias; a promotion the gates refused exits 1."""
    for gate in result.gates:
        click.echo(f"gate {gate.name:<14} {'PASS' if gate.passed else 'FAIL'}  {gate.detail}")
    target = f"{result.pinned.name}@{result.alias}"
    if not result.promoted:
        if any(gate.name == "already_holder" for gate in result.gates):
            click.echo(f"{target} already points to version {result.pinned.version}; nothing to do")
            return
        stays = "unset" if result.previous_version is None else f"at version {result.previous_version}"
        raise VaegenError(f"not promoted: {target} stays {stays}; see the failed gates above")
    click.echo(f"promoted: {target} -> version {result.pinned.version} (was {result.previous_version})")


@click.command()
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
