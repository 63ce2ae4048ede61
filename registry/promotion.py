"""Gated promotion of a version to an alias (`champion` by default), rollback, and their history.

Aliases, never the deprecated stages. Two promotions of the same alias are serialised by a
lock that MLflow itself makes atomic: creating a registered model whose name is taken fails,
on SQLite and PostgreSQL stores alike, locally or over REST. The lock's holder reads the
current alias holder, runs the gates, moves the alias and appends to the history, so the
`previous_version` it records is the version it actually replaced.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import json
from typing import Any

from registry import descriptions
from registry.alias_lock import alias_lock
from registry.artifacts import RefusedVersion
from registry.gates import (
    GateResult,
    QualityThresholds,
    gate_artifacts,
    gate_elbo,
    gate_loads,
    gate_quality,
    gate_schema,
)
from registry.models import (
    TAG_PREFIX,
    PinnedModel,
    client,
    describe_version,
    load_decoder,
    resolve,
)
from registry.privacy_gate import PrivacyThresholds, gate_privacy
from vae_core.errors import UsageError, VaegenError

HISTORY_LIMIT = 25  # alias events kept on the registered model
# MLflow's SQL stores keep a registered model's tag value in a VARCHAR(5000): PostgreSQL refuses more
# (SQLite does not check). The history keeps each gate's verdict; the version's promotion tag keeps its details.
HISTORY_MAX_CHARS = 5_000


@dataclasses.dataclass(frozen=True)
class PromotionConfig:
    alias: str = "champion"
    reason: str = ""
    by: str = dataclasses.field(default_factory=getpass.getuser)
    elbo_tolerance_nats: float = 0.5  # seed-to-seed noise of held-out -ELBO on digits is ~0.3 nats
    # promote even when the ELBO, quality or privacy gates have nothing to compare with, or past a failing privacy
    # gate (whether a leak matters depends on the data: public digits, or private records); never past another failure
    force: bool = False
    probe_rows: int = 256  # decoded by the load gate: seed-scheme rows 0..255 of dataset seed 0
    quality: QualityThresholds | None = None  # None skips gate 3; the CLI passes the defaults
    privacy: PrivacyThresholds | None = None  # None skips the privacy gates; the CLI passes the defaults
    # What generate and refresh write from the alias (x's shape, a label column) changes only when asked by name:
    # --force, meant for "nothing to compare with", never does it.
    allow_schema_change: bool = False


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    pinned: PinnedModel
    alias: str
    previous_version: int | None
    gates: list[GateResult]
    promoted: bool


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class UngatedAlias(VaegenError):
    """An alias holder that vaegen's gates did not put there."""


def ungated_reason(name: str, alias: str, version: int, events: list[dict[str, Any]] | None = None) -> str | None:
    """None when vaegen's last record for the alias (written under the promotion lock, after the gates passed)
    names this version; else what is known about how the alias got there, one clause."""
    events = history(name, alias) if events is None else events
    last = events[-1] if events else None
    if last is not None and int(last["version"]) == version and last.get("action") in ("promote", "rollback"):
        return None
    known = (
        "vaegen has no promotion record for the alias"
        if last is None
        else f"vaegen's last record for the alias is a {last.get('action')} to v{last['version']} by {last.get('by')} "
        f"at {last.get('at')}"
    )
    return (
        f"{name}@{alias} names version {version}, set outside `vaegen promote` (by MLflow's UI or API, which "
        f"record no author); {known}"
    )


def gate_alias(pinned: PinnedModel, allow_ungated: bool) -> PinnedModel:
    """The pinned alias holder, marked gated; an ungated one is refused unless allowed, and then marked so."""
    if pinned.alias is None:
        return pinned
    reason = ungated_reason(pinned.name, pinned.alias, pinned.version)
    if reason is None:
        return dataclasses.replace(pinned, alias_gate="promoted")
    if not allow_ungated:
        raise UngatedAlias(
            f"refused: {reason}; gate it with `vaegen promote {pinned.name}/{pinned.version} --alias "
            f"{pinned.alias} --reason ...`, or pass --allow-ungated to use it anyway (recorded in the "
            "manifest, the card and the dataset's run)"
        )
    return dataclasses.replace(pinned, alias_gate="ungated (--allow-ungated)")


def current_holder(name: str, alias: str) -> PinnedModel | None:
    try:
        return resolve(f"{name}@{alias}")
    except UsageError:
        return None


def history(name: str, alias: str) -> list[dict[str, Any]]:
    tags = client().get_registered_model(name).tags
    return json.loads(tags.get(f"{TAG_PREFIX}history.{alias}", "[]"))


def _record(name: str, alias: str, version: int, kind: str, event: dict[str, Any]) -> None:
    """Store an alias event: a `vaegen.<kind>.<alias>` tag on the version it concerns, the alias's
    history tag (what rollback reads), and both as readable descriptions in the MLflow UI."""
    client().set_model_version_tag(name, str(version), f"{TAG_PREFIX}{kind}.{alias}", json.dumps(event))
    client().set_registered_model_tag(
        name, f"{TAG_PREFIX}history.{alias}", json.dumps(_bounded_history(history(name, alias), event))
    )
    describe_version(name, version)
    describe_history(name)


def _bounded_history(events: list[dict[str, Any]], event: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with `event` appended: gate verdicts without their details, the oldest events
    dropped while more than HISTORY_LIMIT or HISTORY_MAX_CHARS of JSON."""
    compact = {**event, "gates": [{"name": gate["name"], "passed": gate["passed"]} for gate in event.get("gates", [])]}
    events = (events + [compact])[-HISTORY_LIMIT:]
    while len(events) > 1 and len(json.dumps(events)) > HISTORY_MAX_CHARS:
        events = events[1:]
    return events


def describe_history(name: str) -> None:
    """Render every alias's history into the registered model's description (its page in the UI)."""
    model = client().get_registered_model(name)
    prefix = f"{TAG_PREFIX}history."
    histories = {
        key.removeprefix(prefix): json.loads(value) for key, value in model.tags.items() if key.startswith(prefix)
    }
    body = descriptions.history_description(name, histories, descriptions.budget(model.description))
    client().update_registered_model(name, descriptions.replace_generated(model.description, body))


def promote(reference: str, config: PromotionConfig) -> PromotionResult:
    """Run the gates and, only if they pass, move the alias; returns what was actually done."""
    if not config.reason.strip():
        raise UsageError(
            '--reason is required: say why this version should serve, e.g. --reason "retrained on March data"'
        )
    pinned = resolve(reference)
    with alias_lock(pinned.name, config.alias, purpose=f"promote v{pinned.version}") as lock:
        holder_pin = current_holder(pinned.name, config.alias)
        events = history(pinned.name, config.alias)
        holds_ungated = (
            holder_pin is not None
            and holder_pin.version == pinned.version
            and ungated_reason(pinned.name, config.alias, pinned.version, events) is not None
        )
        if holder_pin is not None and holder_pin.version == pinned.version and not holds_ungated:
            return PromotionResult(
                pinned,
                config.alias,
                holder_pin.version,
                [GateResult("already_holder", True, f"{pinned.name}@{config.alias} is already v{pinned.version}")],
                False,
            )
        safety = gate_artifacts(pinned)
        if not safety.passed:  # nothing else is looked at, and --force does not apply
            return PromotionResult(
                pinned, config.alias, None if holder_pin is None else holder_pin.version, [safety], False
            )
        previous = None if holder_pin is None else holder_pin.version
        try:  # sizes before allocations: a config or weights.npz that does not add up stops here
            candidate = load_decoder(pinned)
        except RefusedVersion as error:
            return PromotionResult(
                pinned, config.alias, previous, [safety, GateResult("loads", False, str(error))], False
            )
        try:
            holder = load_decoder(holder_pin) if holder_pin is not None else None
            elbo = gate_elbo(candidate, holder, config.elbo_tolerance_nats)
        except RefusedVersion as error:
            holder = None
            elbo = GateResult("held_out_elbo", False, f"cannot compare with the holder: {error}", forceable=True)
        gates = [
            safety,
            gate_loads(candidate, config.probe_rows),
            gate_schema(candidate, holder, config.alias, config.allow_schema_change),
            elbo,
        ]
        if config.quality is not None:
            gates.append(gate_quality(candidate, config.quality))
        if config.privacy is not None:
            gates += gate_privacy(candidate, config.privacy)
        blocking = [gate for gate in gates if not gate.passed and not (config.force and gate.forceable)]
        if blocking:
            return PromotionResult(
                pinned, config.alias, None if holder_pin is None else holder_pin.version, gates, False
            )
        previous = None if holder_pin is None else holder_pin.version
        if holds_ungated:  # gating the version an alias was moved to by hand: rollback returns to the last gated one
            previous = events[-1]["version"] if events else None
        lock.confirm()
        client().set_registered_model_alias(pinned.name, config.alias, str(pinned.version))
        record = {
            "action": "promote",
            "alias": config.alias,
            "version": pinned.version,
            "previous_version": previous,
            # the gates --force took it past (each had nothing to compare with); [] when none
            "at": _now(),
            "by": config.by,
            "reason": config.reason,
            "forced": [gate.name for gate in gates if not gate.passed],
            "gates": [gate.to_dict() for gate in gates],
        }
        _record(pinned.name, config.alias, pinned.version, "promotion", record)
    return PromotionResult(pinned, config.alias, previous, gates, True)


def rollback(name: str, alias: str = "champion", by: str | None = None, reason: str = "rollback") -> tuple[int, int]:
    """Point the alias back at the version it held before the current holder's promotion: (from, to)."""
    by = by or getpass.getuser()
    with alias_lock(name, alias, purpose="rollback") as lock:
        holder = current_holder(name, alias)
        if holder is None:
            raise UsageError(f"{name}@{alias} does not exist; nothing to roll back")
        events = history(name, alias)
        promotion = next(
            (
                event
                for event in reversed(events)
                if event["action"] == "promote" and event["version"] == holder.version
            ),
            None,
        )
        if promotion is None or promotion["previous_version"] is None:
            raise UsageError(f"{name}@{alias} (v{holder.version}) has no recorded previous holder to roll back to")
        target = int(promotion["previous_version"])
        lock.confirm()
        client().set_registered_model_alias(name, alias, str(target))
        record = {
            "action": "rollback",
            "alias": alias,
            "version": target,
            "previous_version": holder.version,
            "at": _now(),
            "by": by,
            "reason": reason,
        }
        _record(name, alias, holder.version, "rolled_back", record)
    return holder.version, target
