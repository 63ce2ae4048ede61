"""What a person reads in the MLflow UI: markdown descriptions of model versions, registered
models and dataset runs, with links between the UI's pages. Pure functions of tags and records
(no MLflow calls), so the tags stay the source of truth and every rendering can be redone.

vaegen owns a description's text above GENERATED_END; what a person writes below that line in
the UI survives every re-rendering. The generated part comes first because the UI's lists (a
registered model's versions) show a description's first characters; the UI's sanitizer drops
HTML comments, so the marker only shows in the edit box.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from vae_core import privacy_block
from vae_core.config import RECIPES
from vae_core.quality_names import figures_from_tags

GENERATED_END = "<!-- vaegen: the text above is generated from the vaegen.* tags and replaced; write yours below -->"
SHA_CHARS = 12  # of a sha256 shown in prose; the full value is in the tags
DESCRIPTION_LIMIT = 5_000  # characters: the description columns of MLflow's SQL stores are VARCHAR(5000)
# The recipe fields a `vaegen train` flag changes; a version's recipe names those that differ from its --arch's
RECIPE_FLAGS = {
    "latent_dim": "--latent-dim",
    "hidden_sizes": "--hidden",
    "conv_channels": "--channels",
    "prior_flow_layers": "--prior-flow",
}
VERSION_EVENTS_SHOWN = 4  # promotions and rollbacks of one version, newest; the tags keep them all


def _kept(existing: str | None) -> str:
    """A person's part of a description: below the marker, or all of it before vaegen first wrote."""
    existing = existing or ""
    return (existing.split(GENERATED_END, 1)[1] if GENERATED_END in existing else existing).strip()


def replace_generated(existing: str | None, body: str) -> str:
    """`existing` with vaegen's part set to `body`; a person's part is kept below the marker."""
    kept = _kept(existing)
    return f"{body.strip()}\n\n{GENERATED_END}" + (f"\n\n{kept}" if kept else "")


def budget(existing: str | None) -> int:
    """Characters left for vaegen's part once a person's own text is kept."""
    return DESCRIPTION_LIMIT - len(_kept(existing)) - len(GENERATED_END) - 4


# The MLflow UI routes with hash fragments; relative links keep working behind a --static-prefix.
def run_link(experiment_id: str, run_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def version_link(name: str, version: int | str) -> str:
    return f"#/models/{quote(name, safe='')}/versions/{version}"


def logged_model_link(experiment_id: str, model_id: str) -> str:
    return f"#/experiments/{experiment_id}/models/{model_id}"


def cell(value: Any) -> str:
    """One markdown table cell: pipes escaped, line breaks flattened."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def action_text(event: dict[str, Any]) -> str:
    """'promote', 'rollback', or 'promote(forced: held_out_elbo)' for a promotion --force took past those gates."""
    forced = event.get("forced")
    if not forced:
        return event["action"]
    if not isinstance(forced, list):  # older records: a bool, True whenever --force was given
        return f"{event['action']}(--force)"
    return f"{event['action']}(forced: {', '.join(forced)})"


def gates_text(gates: list[dict[str, Any]], details: bool = True) -> str:
    return (
        "; ".join(
            f"{'PASS' if gate['passed'] else 'FAIL'} {gate['name']}" + (f": {gate['detail']}" if details else "")
            for gate in gates
        )
        or "-"
    )


def _sizes(values: Any, separator: str = ",") -> str:
    return separator.join(str(value) for value in values or ()) or "none"


def _training_budget(params: dict[str, str]) -> str:
    """'3000 steps of 128, cosine schedule; prior flow 1000 steps[; augmented: ...]' from the run's train.* params."""
    steps, epochs = params.get("train.steps"), params.get("train.epochs")
    if steps not in (None, "None", ""):
        budget = f"{steps} steps"
    elif epochs is not None:
        budget = f"{epochs} epochs"
    else:
        return "not recorded"
    budget += f" of {params['train.batch_size']}" if "train.batch_size" in params else ""
    budget += f", {params['train.lr_schedule']} schedule" if "train.lr_schedule" in params else ""
    if params.get("prior_flow_layers", "0") != "0" and "train.prior_flow_steps" in params:
        budget += f"; prior flow {params['train.prior_flow_steps']} steps"
    shift, rotate = params.get("train.augment_shift", "0"), params.get("train.augment_rotate", "0.0")
    if shift != "0" or float(rotate):
        budget += f"; augmented: shifts up to {shift} px, rotations up to {float(rotate):g} degrees"
    return budget


def model_facts(config: dict[str, Any], params: dict[str, str]) -> dict[str, str]:
    """What a person must know of a version before using it, from its config.json and its training run's params:
    architecture, input_shape, latent_dim, conditioning, recipe, training_budget (vaegen.* tags and descriptions)."""
    architecture = config.get("architecture", "mlp")
    hidden = config.get("hidden_sizes") or ()
    if architecture == "conv":
        layers = f"conv, channels {_sizes(config.get('conv_channels'))}"
        layers += f", dense {_sizes(hidden)}" if hidden else ""
    else:
        layers = f"MLP, hidden {_sizes(hidden)}"
    flow_layers = int(config.get("prior_flow_layers") or 0)
    if flow_layers:
        layers += f", RealNVP prior flow of {flow_layers} couplings"
    classes = int(config.get("num_classes") or 0)
    defaults = RECIPES.get(architecture, {})
    given = {field: tuple(value) if isinstance(value, list) else value for field, value in config.items()}
    changed = [
        f"{flag} {_sizes(given[field]) if isinstance(given[field], tuple) else given[field]}"
        for field, flag in RECIPE_FLAGS.items()
        if field in given and field in defaults and given[field] != defaults[field]
    ]
    recipe = " ".join([f"--arch {architecture}", *changed])
    return {
        "architecture": layers,
        "input_shape": _sizes(config.get("input_shape"), "x"),
        "latent_dim": str(config.get("latent_dim")),
        "conditioning": f"class-conditional ({classes} classes)" if classes else "unconditional",
        "recipe": recipe,
        "training_budget": _training_budget(params),
    }


def _data_rows(tags: dict[str, str]) -> list[tuple[str, str]]:
    """version_description's rows on the training data: its source and digest, and the split."""
    rows = []
    if "data_source" in tags:
        rows.append(("data", f"`{tags['data_source']}`, sha256 `{tags.get('data_sha256', '?')[:SHA_CHARS]}…`"))
    if "holdout_size" in tags:
        fraction = float(tags.get("holdout_fraction", "nan"))
        rows.append(
            (
                "split",
                f"{int(tags.get('train_size', 0)):,} train / {int(tags['holdout_size']):,} held out "
                f"(the last {fraction:.0%} of the source)",
            )
        )
    return rows


def _link_rows(run: dict[str, Any], model_id: str | None) -> list[tuple[str, str]]:
    """version_description's links: the training run and the logged model, where they are known."""
    rows = []
    if run.get("run_id"):
        rows.append(
            ("training run", f"[{run.get('name') or run['run_id']}]({run_link(run['experiment_id'], run['run_id'])})")
        )
    if model_id and run.get("experiment_id"):
        rows.append(
            (
                "logged model",
                f"[{model_id}]({logged_model_link(run['experiment_id'], model_id)}): "
                "its page lists the datasets generated from this version",
            )
        )
    return rows


def version_description(
    name: str, version: int, tags: dict[str, str], run: dict[str, Any], model_id: str | None
) -> str:
    """A version's summary. `tags` are its vaegen.* tags without the prefix; `run` holds the training
    run's name, run_id, experiment_id and params."""
    config = json.loads(tags.get("config", "{}"))
    params = run.get("params", {})
    facts = model_facts(config, params)
    lines = [_summary_sentence(facts, tags), ""]  # plain text first: the versions list shows the description's start
    rows = _data_rows(tags) + _model_rows(config, params, facts, tags) + _link_rows(run, model_id)
    lines += [table(("", ""), rows), ""]
    lines += _quality_lines(name, version, tags)
    lines += _promotion_lines(tags)
    return "\n".join(lines)


def _summary_sentence(facts: dict[str, str], tags: dict[str, str]) -> str:
    """version_description's opening sentence: what the decoder draws, from which data, how well it fits."""
    summary = (
        f"{facts['conditioning'].capitalize()} VAE decoder ({facts['architecture']}), "
        f"{facts['input_shape']} samples, latent {facts['latent_dim']}"
    )
    if "data_source" in tags:
        summary += f", trained on {tags['data_source']}"
    if "val_neg_elbo" in tags:
        summary += f"; held-out -ELBO {float(tags['val_neg_elbo']):.3f} nats"
    return summary + "."


def _model_rows(
    config: dict[str, Any], params: dict[str, str], facts: dict[str, str], tags: dict[str, str]
) -> list[tuple[str, str]]:
    """version_description's rows on the network, the recipe that trained it and its held-out loss."""
    rows = []
    if config:
        rows += [
            ("architecture", facts["architecture"]),
            ("sample shape", facts["input_shape"]),
            ("latent", facts["latent_dim"]),
            ("conditioning", facts["conditioning"]),
        ]
    if params:
        rows += [("recipe", f"`vaegen train {facts['recipe']}`"), ("training budget", facts["training_budget"])]
        settings = [f"{key} {params[f'train.{key}']}" for key in ("learning_rate", "seed") if f"train.{key}" in params]
        if settings:
            rows.append(("training", ", ".join(settings)))
    if "val_neg_elbo" in tags:
        rows.append(("held-out -ELBO", f"{float(tags['val_neg_elbo']):.3f} nats per sample"))
    return rows


def _quality_lines(name: str, version: int, tags: dict[str, str]) -> list[str]:
    """version_description's quality and privacy tables, or how to make the report it lacks."""
    quality = figures_from_tags(tags)
    if not quality:
        return [f"**Quality**: no report yet (`vaegen report --model {name}/{version}`)", ""]
    privacy_keys = set(privacy_block.HEADLINE_KEYS)
    shown = lambda value: "–" if value is None else _number(value)  # noqa: E731
    rows = [
        (row["figure"], shown(row["value"]), shown(row["floor"]), row["gate"] or "–", row["meaning"])
        for row in privacy_block.block(quality)
    ]
    return [
        "**Quality** (`vaegen report`: fresh samples vs the held-out data)",
        "",
        table(
            ("metric", "value"),
            [(key, _number(value)) for key, value in sorted(quality.items()) if key not in privacy_keys],
        ),
        "",
        "**Privacy** (each figure beside its real floor: held-out real data in the samples' place)",
        "",
        table(("figure", "value", "real floor", "promotion gate (default)", "meaning"), rows),
        "",
    ]


def _promotion_lines(tags: dict[str, str]) -> list[str]:
    """version_description's newest promotions and rollbacks of the version; none when it never had an alias."""
    events = sorted(
        (json.loads(value) for key, value in tags.items() if key.startswith(("promotion.", "rolled_back."))),
        key=lambda event: (event["at"], event["action"] == "rollback"),
        reverse=True,
    )[:VERSION_EVENTS_SHOWN]
    if not events:
        return []
    rows = [
        (
            event["at"],
            action_text(event),
            event["alias"],
            event.get("by", ""),
            event.get("reason", ""),
            gates_text(event.get("gates", [])),
        )
        for event in events
    ]
    return [
        "**Promotions** (the latest per alias)",
        "",
        table(("at (UTC)", "action", "alias", "by", "reason", "gates"), rows),
    ]


def history_description(name: str, histories: dict[str, list[dict[str, Any]]], limit: int = DESCRIPTION_LIMIT) -> str:
    """The promotion history of every alias of a registered model, newest event first, within `limit`
    characters (older events are dropped here, never from the tags; gate details are on each version)."""
    header = ("at (UTC)", "action", "to", "from", "by", "reason", "gates")
    head = (
        f"**Promotion history** (`vaegen models {name}` lists it too; rollback reads the `vaegen.history.<alias>` tags)"
    )
    tables = {alias: [] for alias in histories}
    # by time, then by position: events of one second keep their recorded order
    newest_first = sorted(
        (
            (event["at"], index, alias, event)
            for alias, events in histories.items()
            for index, event in enumerate(events)
        ),
        key=lambda item: item[:2],
        reverse=True,
    )

    def render(dropped: int) -> str:
        lines = [head, ""]
        for alias, rows in sorted(tables.items()):
            lines += [f"`@{alias}`", "", table(header, rows) if rows else "(older events only)", ""]
        if dropped:
            lines.append(f"{dropped} older event(s) not shown here.")
        return "\n".join(lines)

    for index, (_, _, alias, event) in enumerate(newest_first):
        previous = "-" if event.get("previous_version") is None else f"v{event['previous_version']}"
        link = f"[v{event['version']}]({version_link(name, event['version'])})"
        tables[alias].append(
            (
                event["at"],
                action_text(event),
                link,
                previous,
                event.get("by", ""),
                event.get("reason", ""),
                gates_text(event.get("gates", []), False),
            )
        )
        if len(render(len(newest_first) - index - 1)) > limit:
            tables[alias].pop()
            return render(len(newest_first) - index)
    return render(0)


def dataset_run_description(
    dataset_id: str,
    model: dict[str, Any],
    model_run: dict[str, Any] | None,
    model_id: str | None,
    manifest: dict[str, Any] | None = None,
    location: str | None = None,
) -> str:
    """A dataset run's summary: the model version it came from (with links), and once committed, what it holds."""
    name, version = model["name"], model["version"]
    source = f"[{name} v{version}]({version_link(name, version)})"
    if model.get("resolved_from") and model["resolved_from"] != f"{name}/{version}":
        source += f" (resolved from `{model['resolved_from']}`)"
    rows = [("model version", source)]
    if model_id and model_run:
        rows.append(("logged model", f"[{model_id}]({logged_model_link(model_run['experiment_id'], model_id)})"))
    if model_run:
        rows.append(
            (
                "training run",
                f"[{model_run.get('name') or model_run['run_id']}]"
                f"({run_link(model_run['experiment_id'], model_run['run_id'])})",
            )
        )
    if manifest is not None:
        rows += [
            ("rows", f"{manifest['n']:,} in {len(manifest['files'])} part(s), {manifest['total_bytes']:,} bytes"),
            (
                "content",
                f"seed {manifest['dataset_seed']} ({manifest['seed_scheme']}), dtype {manifest['dtype']}, "
                f"layout {manifest['layout']}",
            ),
        ]
    if location:
        rows.append(("location", f"`{location}`"))
    return "\n".join([f"**Dataset `{dataset_id}`**, generated by vaegen.", "", table(("", ""), rows)])
