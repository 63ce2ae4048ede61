"""MLflow's registry webhooks, as vaegen uses them: verify a delivery, re-read the alias it names, register one.

MLflow (3.3+) signs each delivery like Standard Webhooks: `X-MLflow-Signature: v1,<base64 HMAC-SHA256>` over
`<delivery id>.<timestamp>.<body>` with the webhook's secret, `X-MLflow-Timestamp` in Unix seconds and
`X-MLflow-Delivery-Id` a UUID that retries of one delivery share. A payload is a hint, never the truth: the
receiver re-reads the alias from the registry before acting on it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from registry.redaction import redact_uri
from vae_core.errors import UsageError

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = ("model_version_alias", "created")  # MLflow sends this when an alias is set or moved
ALIAS_EVENT = "model_version_alias.created"
MAX_BODY_BYTES = 64 * 1024  # an alias event is ~200 bytes; anything near this is not MLflow's


class Refused(Exception):
    """A delivery that must not be acted on; str() is the one-line reason that is logged."""


@dataclasses.dataclass(frozen=True)
class AliasEvent:
    delivery_id: str
    timestamp: int  # Unix seconds, as signed
    name: str  # registered model
    alias: str
    version: str  # as the payload says: a hint only (see module docstring)


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(secret: str, headers: Mapping[str, str], body: bytes, now_s: float, tolerance_s: float) -> AliasEvent | None:
    """The alias event of an authentic, fresh delivery; None for an authentic delivery of another event.

    Raises Refused for an unsigned, forged, stale or malformed delivery. Replays inside the tolerance window
    carry a delivery id already seen: the caller deduplicates on AliasEvent.delivery_id."""
    delivery_id, timestamp, sent = (
        headers.get(key) for key in (DELIVERY_ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER)
    )
    if not delivery_id or not timestamp or not sent:
        raise Refused("unsigned: missing X-MLflow-Signature, -Timestamp or -Delivery-Id (is the webhook's secret set?)")
    if len(body) > MAX_BODY_BYTES:
        raise Refused(f"body of {len(body)} bytes is over {MAX_BODY_BYTES}")
    if not hmac.compare_digest(sent.encode(), signature(secret, delivery_id, timestamp, body).encode()):
        raise Refused("bad signature (a forged delivery, or the receiver and the webhook have different secrets)")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise Refused(f"timestamp {timestamp[:40]!r} is not Unix seconds") from None
    if abs(now_s - sent_at) > tolerance_s:
        raise Refused(
            f"timestamp {sent_at} is {now_s - sent_at:+.0f} s from now, outside {tolerance_s:g} s (a replay?)"
        )
    try:
        message = json.loads(body)
        if (message.get("entity"), message.get("action")) != ALIAS_CREATED:
            return None
        data = message["data"]
        return AliasEvent(delivery_id, sent_at, str(data["name"]), str(data["alias"]), str(data["version"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused("signed, but not an MLflow webhook payload") from None


def alias_version(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version `name@alias` points to now in the registry, or None where the alias is not set."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register(tracking_uri: str, url: str, secret: str, name: str) -> tuple[str, bool]:
    """Create (or update, by name) the webhook that sends alias events to `url`; (webhook id, created)."""
    from mlflow import MlflowClient

    require_server(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = [hook for hook in _all_webhooks(client) if hook.name == name]
    if found:
        client.update_webhook(found[0].webhook_id, url=url, events=[ALIAS_EVENT], secret=secret, status="ACTIVE")
        return found[0].webhook_id, False
    return client.create_webhook(name=name, url=url, events=[ALIAS_EVENT], secret=secret).webhook_id, True


def require_server(tracking_uri: str) -> None:
    """Webhooks are stored by any registry but sent only by an `mlflow server`: refuse a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        raise UsageError(
            f"webhooks are sent by an `mlflow server`, and MLFLOW_TRACKING_URI is {redact_uri(tracking_uri)}:"
            " start `mlflow server` on this store and point MLFLOW_TRACKING_URI at it"
        )


def _all_webhooks(client: Any) -> list[Any]:
    hooks, token = [], None
    while True:
        page = client.list_webhooks(max_results=100, page_token=token)
        hooks.extend(page)
        token = page.token
        if not token:
            return hooks
