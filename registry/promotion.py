"""Gated promotion of a version to an alias (`champion` by default), rollback, and their history.

Aliases, never the deprecated stages. Two promotions of the same alias are serialised by a
lock that MLflow itself makes atomic: creating a registered model whose name is taken fails,
on SQLite and PostgreSQL stores alike, locally or over REST. The lock's holder reads the
current alias holder, runs the gates, moves the alias and appends to the history, so the
`previous_version` it records is the version it actually replaced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import json
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from registry import descriptions, holders
from registry.artifacts import RefusedVersion
from registry.gates import GateResult
from registry.models import (
    LOCK_MARK,
    MODEL_ARTIFACT,
    TAG_PREFIX,
    LoadedDecoder,
    PinnedModel,
    client,
    describe_version,
    load_decoder,
    resolve,
    version_refusal,
)
from registry.privacy_gate import PrivacyThresholds, gate_privacy
from registry.redaction import redact_uri
from vae_core.errors import UsageError, VaegenError

HISTORY_LIMIT = 25  # alias events kept on the registered model
# MLflow's SQL stores keep a registered model's tag value in a VARCHAR(5000): PostgreSQL refuses more
# (SQLite does not check). The history keeps each gate's verdict; the version's promotion tag keeps its details.
HISTORY_MAX_CHARS = 5_000
LOCK_STALE_S = 600.0  # a promotion takes seconds; a lock this old belongs to a crashed one (a dead pid here: at once)
LOCK_HOLDER_TAG = "vaegen.lock_holder"  # registry.holders.this_process() of the holder, as JSON
LOCK_WAIT_S = 60.0
LOCK_POLL_S = 0.5
COPY_EXPERIMENT = "vaegen-copies"  # the runs holding versions copied in from another registry


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


def _lock_name(name: str, alias: str) -> str:
    return f"{name}{LOCK_MARK}{alias}"


class AliasLock:
    """`<name>.vaegen-lock.<alias>`, held: a registered model whose creation is atomic (a unique name in
    the store), tagged with who holds it, for what, since when, and a token only the holder knows."""

    def __init__(self, lock: str, tags: dict[str, str]):
        self.lock, self.tags = lock, tags

    def confirm(self) -> None:
        """Raise unless the lock still carries our token: called before the alias moves, so that a holder
        whose lock was taken over (judged stale, or deleted by a stray retried request) changes nothing."""
        with contextlib.suppress(MlflowException):
            if client().get_registered_model(self.lock).tags.get("vaegen.lock_token") == self.tags["vaegen.lock_token"]:
                return
        raise VaegenError(f"lost the promotion lock {self.lock!r} before moving the alias; nothing was changed: retry")


@contextlib.contextmanager
def alias_lock(
    name: str, alias: str, purpose: str = "", wait_s: float = LOCK_WAIT_S, stale_s: float = LOCK_STALE_S
) -> Iterator[AliasLock]:
    mlflow_client = client()
    lock = _lock_name(name, alias)
    owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
    tags = {
        "vaegen.lock_owner": owner,
        "vaegen.lock_purpose": purpose or "promotion",
        "vaegen.lock_token": uuid.uuid4().hex,
        "vaegen.lock_since": str(time.time()),
        LOCK_HOLDER_TAG: json.dumps(holders.this_process()),
    }
    deadline = time.monotonic() + wait_s
    holder: dict[str, str] = {}
    while True:
        try:
            mlflow_client.create_registered_model(
                lock, tags=tags, description="vaegen promotion lock; safe to delete if stale"
            )
            break
        except MlflowException as error:
            # On a server with several workers, a create that collides with a lock deleted a moment later
            # answers RESOURCE_DOES_NOT_EXIST (MLflow reads the existing model back to word its refusal).
            if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
            with contextlib.suppress(MlflowException):  # gone meanwhile: try again
                holder = mlflow_client.get_registered_model(lock).tags
                if holder.get("vaegen.lock_token") == tags["vaegen.lock_token"]:
                    break  # our create went through; its answer was lost and the request retried
                if _lock_is_stale(holder, stale_s):
                    mlflow_client.delete_registered_model(lock)  # a crashed promotion's lock
                    continue
            if time.monotonic() > deadline:
                raise VaegenError(
                    f"{name}@{alias} is held by another promotion: {_describe_lock(holder)}; "
                    f"waited {wait_s:g} s. Retry later; if that promotion crashed, delete the registered "
                    f"model {lock!r} (it is taken over after {stale_s:g} s anyway, at once on the host "
                    "where it ran)"
                ) from None
            time.sleep(LOCK_POLL_S)
    try:
        yield AliasLock(lock, tags)
    finally:
        with contextlib.suppress(MlflowException):
            if mlflow_client.get_registered_model(lock).tags.get("vaegen.lock_token") == tags["vaegen.lock_token"]:
                mlflow_client.delete_registered_model(lock)


def _lock_is_stale(tags: dict[str, str], stale_s: float) -> bool:
    """A lock whose holder is gone from this host (killed with -9 or SIGTERM) is stale at once, as the
    refresh lock is; any other once it is `stale_s` old."""
    try:
        held = json.loads(tags.get(LOCK_HOLDER_TAG, "{}"))
    except ValueError:
        held = {}
    if holders.dead_reason(held) is not None:
        return True
    try:
        since = float(tags["vaegen.lock_since"])
    except (KeyError, ValueError):  # read between its creation and its tags (a server with several workers): live
        return False
    return time.time() - since > stale_s


def _describe_lock(tags: dict[str, str]) -> str:
    if "vaegen.lock_owner" not in tags:
        return "a lock that names no holder"
    since = float(tags.get("vaegen.lock_since", "0"))
    started = dt.datetime.fromtimestamp(since, dt.timezone.utc).isoformat(timespec="seconds")
    return (
        f"{tags.get('vaegen.lock_purpose', 'promotion')} by {tags['vaegen.lock_owner']}, "
        f"since {started} ({time.time() - since:,.0f} s ago)"
    )


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


def gate_artifacts(pinned: PinnedModel) -> GateResult:
    """Gate 0, safety: the version is vaegen's models-from-code pyfunc and nothing else, its code byte-identical to
    vaegen's own (registry.artifacts), so that neither vaegen nor a generic `mlflow.pyfunc.load_model` of the alias
    can be made to unpickle or run anything else. Never forceable."""
    reason = version_refusal(pinned)
    if reason is not None:
        return GateResult(
            "safe_artifacts", False, f"refused: {reason} (loading it could run code that is not vaegen's)"
        )
    return GateResult("safe_artifacts", True, "vaegen's own code, byte for byte; weights.npz + config.json; no pickle")


def gate_loads(candidate: LoadedDecoder, probe_rows: int) -> GateResult:
    """Gate 1: loads without pickle (it just did) and decodes probe z to finite values in range, right shape."""
    import numpy as np

    from vae_core import sampling

    ids = np.arange(probe_rows, dtype=np.int64)
    _, z = sampling.draw(0, ids, candidate.config.latent_dim)
    labels = (ids % candidate.config.num_classes).astype(np.int64) if candidate.config.conditional else None
    x = sampling.decode(candidate.build(), z, labels)
    expected = (probe_rows, *candidate.config.input_shape)
    if x.shape != expected:
        return GateResult("loads", False, f"decoded shape {x.shape}, declared {expected}")
    if not np.isfinite(x).all():
        return GateResult(
            "loads", False, f"{int((~np.isfinite(x)).sum())} non-finite values in {probe_rows} probe samples"
        )
    if x.min() < 0 or x.max() > 1:
        return GateResult("loads", False, f"values in [{x.min():.3g}, {x.max():.3g}], outside [0, 1]")
    return GateResult(
        "loads", True, f"weights-only load; {probe_rows} probe samples finite, in [0, 1], shape {expected[1:]}"
    )


def _data_kind(loaded: LoadedDecoder) -> str:
    shape = "x".join(map(str, loaded.config.input_shape))
    classes = loaded.config.num_classes
    return f"{shape} samples " + (f"with a label column (classes 0..{classes - 1})" if classes else "without labels")


def gate_schema(candidate: LoadedDecoder, holder: LoadedDecoder | None, alias: str, allowed: bool) -> GateResult:
    """Gate: the alias keeps the data it serves; a version with another sample shape or conditioning needs
    --allow-schema-change, and the detail says what `generate` and `refresh` from the alias would write instead."""
    if holder is None:
        return GateResult("schema", True, f"no current holder; {_data_kind(candidate)}")
    before, after = _data_kind(holder), _data_kind(candidate)
    if before == after:
        return GateResult("schema", True, f"same as v{holder.pinned.version}: {after}")
    change = (
        f"`generate`/`refresh` from {candidate.pinned.name}@{alias} would write {after} "
        f"instead of v{holder.pinned.version}'s {before}"
    )
    if allowed:
        return GateResult("schema", True, f"{change} (allowed by --allow-schema-change)")
    return GateResult(
        "schema",
        False,
        f"{change}; pass --allow-schema-change if readers of that data expect it, "
        "or register the version under another name",
    )


def gate_elbo(candidate: LoadedDecoder, holder: LoadedDecoder | None, tolerance_nats: float) -> GateResult:
    """Gate 2: held-out -ELBO not worse than the holder's by more than the tolerance, on the same data and split."""
    if holder is None:
        return GateResult("held_out_elbo", True, "no current holder to compare with")
    unsealed = [f"v{loaded.pinned.version}" for loaded in (candidate, holder) if "val_neg_elbo" not in loaded.evidence]
    if unsealed:
        return GateResult(
            "held_out_elbo",
            False,
            f"cannot compare with {holder.pinned.name}/{holder.pinned.version}: no held-out -ELBO sealed by "
            f"vaegen for {' and '.join(unsealed)}'s artifacts (copied, edited or hand-registered tags are "
            "not evidence; use --force to promote anyway)",
            forceable=True,
        )
    ours_tags, theirs_tags = candidate.evidence, holder.evidence
    keys = ("data_sha256", "holdout_fraction")
    mismatched = [key for key in keys if ours_tags.get(key) != theirs_tags.get(key)]
    if mismatched:
        return GateResult(
            "held_out_elbo",
            False,
            f"cannot compare with {holder.pinned.name}/{holder.pinned.version}: different "
            f"{', '.join(mismatched)} (use --force to promote anyway)",
            forceable=True,
        )
    try:
        ours, theirs = float(ours_tags["val_neg_elbo"]), float(theirs_tags["val_neg_elbo"])
    except ValueError:
        return GateResult("held_out_elbo", False, "a held-out -ELBO tag is not a number")
    passed = ours <= theirs + tolerance_nats
    return GateResult(
        "held_out_elbo",
        passed,
        f"{ours:.3f} vs {theirs:.3f} nats (v{holder.pinned.version}), tolerance {tolerance_nats:g}",
    )


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    """Gate 3 over `vaegen report`'s metrics; None turns a check off. Defaults sit between what was measured
    (README, docs/decisions.md): trained models reach precision >= 0.65, class coverage 0.9-1.0, Frechet at most
    17.4x its real floor (the tutorial MLP on digits) and TSTR >= 0.95 of TRTR; a 1-epoch model has precision
    ~0 and class coverage ~0.3; uniform noise sits at 45x (digits) and 205x (MNIST) the floor, a constant mean
    image at 58-86x; real held-out data has memorisation ~0.01 by construction."""

    min_precision: float | None = 0.3
    min_class_coverage: float | None = 0.8  # share of classes the generated set gives a fair share
    max_memorisation_share: float | None = 0.05
    min_label_accuracy: float | None = 0.8  # conditional models only: the classifier agrees with the asked label
    max_frechet_ratio: float | None = 25.0  # Frechet distance / its real-vs-real floor
    min_tstr_ratio: float | None = 0.8  # conditional models only: TSTR accuracy / TRTR accuracy


def gate_quality(candidate: LoadedDecoder, thresholds: QualityThresholds) -> GateResult:
    """Gate 3: the quality report's metrics, as stored on the version by `vaegen report` / `vaegen train`."""
    rerun = f"`vaegen report --model {candidate.pinned.name}/{candidate.pinned.version}`"
    try:
        metrics = {
            key.removeprefix("quality."): float(value)
            for key, value in candidate.evidence.items()
            if key.startswith("quality.")
        }
    except ValueError:
        return GateResult(
            "quality", False, f"a quality tag of v{candidate.pinned.version} is not a number; run {rerun}"
        )
    if not metrics:
        unsealed = any(key.startswith("quality.") for key in candidate.tags)
        why = "its quality tags are not sealed by vaegen for its artifacts" if unsealed else "no quality report"
        return GateResult(
            "quality", False, f"cannot compare: {why} on v{candidate.pinned.version}; run {rerun}", forceable=True
        )
    if "class_coverage" not in metrics:
        # Reports before class_coverage stored the class share as quality.coverage, the name k-NN coverage has now:
        # reading either as the other would gate on the wrong number, so the report is refused, not guessed at.
        return GateResult(
            "quality",
            False,
            f"cannot compare: v{candidate.pinned.version}'s quality report predates "
            f"class_coverage (its quality.coverage is the old class share); run {rerun}",
            forceable=True,
        )

    def ratio(top: str, bottom: str) -> float | None:
        return None if top not in metrics or not metrics.get(bottom) else metrics[top] / metrics[bottom]

    checks = [
        ("precision", metrics.get("precision"), thresholds.min_precision, ">="),
        ("class_coverage", metrics.get("class_coverage"), thresholds.min_class_coverage, ">="),
        ("memorisation_share", metrics.get("memorisation_share"), thresholds.max_memorisation_share, "<="),
        ("frechet_ratio", ratio("frechet_distance", "frechet_floor"), thresholds.max_frechet_ratio, "<="),
    ]
    if candidate.config.conditional:
        checks += [
            ("label_accuracy", metrics.get("label_accuracy"), thresholds.min_label_accuracy, ">="),
            ("tstr_ratio", ratio("tstr_accuracy", "trtr_accuracy"), thresholds.min_tstr_ratio, ">="),
        ]
    failures, parts = [], []
    for name, value, bound, sense in checks:
        if bound is None:
            continue
        ok = value is not None and (value >= bound if sense == ">=" else value <= bound)
        parts.append(f"{name} {value if value is None else round(value, 3)} {sense} {bound}")
        if not ok:
            failures.append(name)
    return GateResult("quality", not failures, "; ".join(parts))


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


def copy_version(reference: str, to_model: str, to_tracking_uri: str | None = None) -> str:
    """Copy a version into another registered model, in this registry or in another one (a dev
    registry promoting into a prod one); returns the copy's reference in the target registry."""
    pinned = resolve(reference)
    source_tags = client().get_model_version(pinned.name, str(pinned.version)).tags
    # The source's alias records (promotion, rollback) describe the source model's aliases, not the copy's.
    alias_records = (f"{TAG_PREFIX}promotion.", f"{TAG_PREFIX}rolled_back.")
    tags = {
        key: value
        for key, value in source_tags.items()
        if key.startswith(TAG_PREFIX) and not key.startswith(alias_records)
    }
    tags[f"{TAG_PREFIX}copied_from"] = pinned.uri
    if to_tracking_uri is not None:
        tags[f"{TAG_PREFIX}copied_from_tracking_uri"] = redact_uri(mlflow.get_tracking_uri())
    if to_tracking_uri is None:
        target = client()
        copied = target.copy_model_version(pinned.uri, to_model)
        for key in source_tags:  # MLflow copies every tag; drop the alias records
            if key.startswith(alias_records):
                target.delete_model_version_tag(to_model, copied.version, key)
        version = copied.version
    else:
        target = mlflow.MlflowClient(tracking_uri=to_tracking_uri, registry_uri=to_tracking_uri)
        version = _copy_across_registries(pinned, target, to_model)
    for key, value in tags.items():
        target.set_model_version_tag(to_model, str(version), key, value)
    if to_tracking_uri is None:  # MLflow copied the source's description, promotions included: render the copy's own
        describe_version(to_model, int(version))
    return f"{to_model}/{version}"


def _copy_across_registries(pinned: PinnedModel, target: mlflow.MlflowClient, to_model: str) -> str:
    """Another tracking server cannot read this one's artifacts: move the bytes, then register them there."""
    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=pinned.uri, dst_path=folder)
        experiment = target.get_experiment_by_name(COPY_EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else target.create_experiment(COPY_EXPERIMENT)
        run = target.create_run(experiment_id, run_name=f"copy-{pinned.name}-v{pinned.version}")
        target.log_artifacts(run.info.run_id, local, MODEL_ARTIFACT)
        target.set_terminated(run.info.run_id)
    with contextlib.suppress(MlflowException):
        target.create_registered_model(to_model)
    created = target.create_model_version(to_model, f"{run.info.artifact_uri}/{MODEL_ARTIFACT}", run_id=run.info.run_id)
    return created.version
