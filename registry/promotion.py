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


def current_holder(name: str, alias: str, tracking_uri: str | None = None) -> PinnedModel | None:
    try:
        return resolve(f"{name}@{alias}", tracking_uri)
    except UsageError:
        return None


def history(name: str, alias: str, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    tags = client(tracking_uri).get_registered_model(name).tags
    return json.loads(tags.get(f"{TAG_PREFIX}history.{alias}", "[]"))


def _record(
    name: str, alias: str, version: int, kind: str, event: dict[str, Any], tracking_uri: str | None = None
) -> None:
    """Store an alias event: a `vaegen.<kind>.<alias>` tag on the version it concerns, the alias's
    history tag (what rollback reads), and both as readable descriptions in the MLflow UI."""
    mlflow_client = client(tracking_uri)
    mlflow_client.set_model_version_tag(name, str(version), f"{TAG_PREFIX}{kind}.{alias}", json.dumps(event))
    mlflow_client.set_registered_model_tag(
        name, f"{TAG_PREFIX}history.{alias}", json.dumps(_bounded_history(history(name, alias, tracking_uri), event))
    )
    describe_version(name, version, tracking_uri)
    describe_history(name, tracking_uri)


def _bounded_history(events: list[dict[str, Any]], event: dict[str, Any]) -> list[dict[str, Any]]:
    """The history with `event` appended: gate verdicts without their details, the oldest events
    dropped while more than HISTORY_LIMIT or HISTORY_MAX_CHARS of JSON."""
    compact = {**event, "gates": [{"name": gate["name"], "passed": gate["passed"]} for gate in event.get("gates", [])]}
    events = (events + [compact])[-HISTORY_LIMIT:]
    while len(events) > 1 and len(json.dumps(events)) > HISTORY_MAX_CHARS:
        events = events[1:]
    return events


def describe_history(name: str, tracking_uri: str | None = None) -> None:
    """Render every alias's history into the registered model's description (its page in the UI)."""
    mlflow_client = client(tracking_uri)
    model = mlflow_client.get_registered_model(name)
    prefix = f"{TAG_PREFIX}history."
    histories = {
        key.removeprefix(prefix): json.loads(value) for key, value in model.tags.items() if key.startswith(prefix)
    }
    body = descriptions.history_description(name, histories, descriptions.budget(model.description))
    mlflow_client.update_registered_model(name, descriptions.replace_generated(model.description, body))


@dataclasses.dataclass(frozen=True)
class _Promotion:
    """One promotion, read under the alias's lock: the candidate, the alias's holder and its recorded history, in
    the registry at tracking_uri (None: this process's)."""

    pinned: PinnedModel
    config: PromotionConfig
    holder: PinnedModel | None
    events: list[dict[str, Any]]
    tracking_uri: str | None

    @classmethod
    def read(cls, pinned: PinnedModel, config: PromotionConfig, tracking_uri: str | None) -> _Promotion:
        """Called holding the lock, so that the holder read is the one the alias move replaces."""
        holder = current_holder(pinned.name, config.alias, tracking_uri)
        return cls(pinned, config, holder, history(pinned.name, config.alias, tracking_uri), tracking_uri)

    @property
    def holder_version(self) -> int | None:
        return None if self.holder is None else self.holder.version

    @property
    def holds_ungated(self) -> bool:
        """The alias names the candidate already, but not by a promotion: promoting it gates it."""
        return (
            self.holder_version == self.pinned.version
            and ungated_reason(self.pinned.name, self.config.alias, self.pinned.version, self.events) is not None
        )

    def result(self, previous: int | None, gates: list[GateResult], promoted: bool) -> PromotionResult:
        return PromotionResult(self.pinned, self.config.alias, previous, gates, promoted)


def promote(reference: str, config: PromotionConfig, tracking_uri: str | None = None) -> PromotionResult:
    """Run the gates and, only if they pass, move the alias; returns what was actually done. `tracking_uri` names
    the registry to promote in when it is not this process's (a version copied into prod's registry)."""
    if not config.reason.strip():
        raise UsageError(
            '--reason is required: say why this version should serve, e.g. --reason "retrained on March data"'
        )
    pinned = resolve(reference, tracking_uri)
    with alias_lock(pinned.name, config.alias, f"promote v{pinned.version}", tracking_uri=tracking_uri) as lock:
        promotion = _Promotion.read(pinned, config, tracking_uri)
        if promotion.holder_version == pinned.version and not promotion.holds_ungated:
            already = GateResult("already_holder", True, f"{pinned.name}@{config.alias} is already v{pinned.version}")
            return promotion.result(promotion.holder_version, [already], False)
        gates = _run_gates(promotion)
        if any(not gate.passed and not (config.force and gate.forceable) for gate in gates):
            return promotion.result(promotion.holder_version, gates, False)
        lock.confirm()
        previous = _move_alias(promotion, gates)
    return promotion.result(previous, gates, True)


def _run_gates(promotion: _Promotion) -> list[GateResult]:
    """The gates in order; a failed safety or load gate ends the list (nothing else is looked at, and --force
    never takes a version past them)."""
    config, tracking_uri = promotion.config, promotion.tracking_uri
    safety = gate_artifacts(promotion.pinned, tracking_uri)
    if not safety.passed:
        return [safety]
    try:  # sizes before allocations: a config or weights.npz that does not add up stops here
        candidate = load_decoder(promotion.pinned, tracking_uri)
    except RefusedVersion as error:
        return [safety, GateResult("loads", False, str(error))]
    try:
        holder = load_decoder(promotion.holder, tracking_uri) if promotion.holder is not None else None
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
    return gates


def _move_alias(promotion: _Promotion, gates: list[GateResult]) -> int | None:
    """Point the alias at the candidate and record why; returns the version rollback will return to."""
    pinned, config = promotion.pinned, promotion.config
    previous = promotion.holder_version
    # gating the version an alias was moved to by hand: rollback returns to the last gated one
    if promotion.holds_ungated:
        previous = promotion.events[-1]["version"] if promotion.events else None
    client(promotion.tracking_uri).set_registered_model_alias(pinned.name, config.alias, str(pinned.version))
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
    _record(pinned.name, config.alias, pinned.version, "promotion", record, promotion.tracking_uri)
    return previous


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
