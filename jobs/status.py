"""Is the published data current? What `ROOT/latest` names, its audit and age, the alias holder and whether
`latest` was made from it, and what else the root holds; for a probe or an alert (`vaegen status`)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from jobs.generate.published import LATEST, LatestPointer, listing
from jobs.generate.storage import Storage
from vae_core.errors import UsageError

DURATION = re.compile(r"(?P<value>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhd]?)")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '6h', '1d' -> seconds."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--max-lag must be a duration like 90s, 15m, 6h or 1d, got {text!r}")
    return float(match["value"]) * UNIT_S[match["unit"]]


def _age_s(timestamp: str | None, now: dt.datetime) -> float | None:
    try:
        return (now - dt.datetime.fromisoformat(str(timestamp))).total_seconds()
    except ValueError:
        return None


def _alias(model: str, published_version: int | None, now: dt.datetime) -> dict[str, Any]:
    """The alias's holder, whether vaegen gated it, and since when it waits unpublished (None: published)."""
    from registry import models, promotion

    if "@" not in model:
        raise UsageError(f"--model must be NAME@ALIAS (the alias refresh follows), got {model!r}")
    pinned = models.resolve(model)
    events = promotion.history(pinned.name, pinned.alias)
    ungated = promotion.ungated_reason(pinned.name, pinned.alias, pinned.version, events)
    moved_at = events[-1]["at"] if events and ungated is None else None
    waiting_s = None
    if published_version != pinned.version:  # unknown when (moved by hand): as if for ever
        waiting_s = _age_s(moved_at, now) if moved_at else float("inf")
    return {
        "reference": model,
        "version": pinned.version,
        "gated": ungated is None,
        "ungated_reason": ungated,
        "moved_at": moved_at,
        "latest_made_from_it": published_version == pinned.version,
        "unpublished_for_s": waiting_s,
    }


def status(root: str, model: str | None = None, max_lag_s: float | None = None) -> dict[str, Any]:
    """The root's state and `stale`: the reasons it is not current (empty when it is)."""
    storage = Storage(root)
    if not storage.exists():
        raise UsageError(f"output root {storage.location()} does not exist; pass the --out of a refresh")
    now = dt.datetime.now(dt.timezone.utc)
    record = storage.read_json(LATEST)  # a corrupt pointer is an error here, naming its path
    pointer = None if record is None else LatestPointer.from_json(record)
    rows = listing(storage)
    state: dict[str, Any] = {
        "root": storage.location(),
        "latest": None,
        "alias": None,
        "stale": [],
        "datasets": rows,
        "max_lag_s": max_lag_s,
    }
    if pointer is None:
        state["stale"].append(f"nothing is published under {storage.location()} (no `latest`)")
    else:
        state["latest"] = {
            "dataset_id": pointer.dataset_id,
            "model_version": pointer.model_version,
            "audit": pointer.audit_verdict or "none",
            "published_at": pointer.updated_at,
            "age_s": _age_s(pointer.updated_at, now),
        }
    if model is not None:
        alias = state["alias"] = _alias(model, (state["latest"] or {}).get("model_version"), now)
        waiting_s = alias["unpublished_for_s"]
        if waiting_s is not None and waiting_s > (max_lag_s or 0.0):
            state["stale"].append(
                f"{model} is version {alias['version']}, `latest` was made from version "
                f"{(state['latest'] or {}).get('model_version')}: no refresh has published it "
                + ("(moved outside vaegen promote)" if waiting_s == float("inf") else f"for {waiting_s:,.0f} s")
            )
        if waiting_s == float("inf"):
            alias["unpublished_for_s"] = None  # JSON has no infinity: unknown, moved_at says why (null)
    elif max_lag_s is not None and state["latest"] and (state["latest"]["age_s"] or 0) > max_lag_s:
        state["stale"].append(
            f"`latest` was published {state['latest']['age_s']:,.0f} s ago, over --max-lag {max_lag_s:g} s"
        )
    return state


def lines(state: dict[str, Any]) -> list[str]:
    """The state for people, one fact a line."""
    latest, alias = state["latest"], state["alias"]
    out = [f"root: {state['root']}"]
    if latest:
        out.append(
            f"latest: {latest['dataset_id']} (model version {latest['model_version']}, audit {latest['audit']}, "
            f"published {latest['published_at']}, {latest['age_s']:,.0f} s ago)"
        )
    if alias:
        out.append(
            f"alias: {alias['reference']} -> version {alias['version']} ("
            + ("gated by vaegen promote" if alias["gated"] else "UNGATED")
            + "), latest "
            + ("was" if alias["latest_made_from_it"] else "was NOT")
            + " made from it"
        )
    for row in state["datasets"]:
        held = [text for text in row["states"] if text != "published"]
        if held:
            out.append(f"dataset: {row['dataset_id']}: {', '.join(held)}")
    out += [f"STALE: {reason}" for reason in state["stale"]] or ["current"]
    return out
