"""The promotion lock: `<name>.vaegen-lock.<alias>`, a registered model whose creation MLflow makes atomic (a
unique name, on SQLite and PostgreSQL, locally or over REST); its tags say who holds it, for what, since when,
and carry a token only the holder knows. A holder dead on this host is taken over at once, any other after
LOCK_STALE_S."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import socket
import time
import uuid
from collections.abc import Iterator

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from registry import holders
from registry.models import (
    LOCK_MARK,
    client,
)
from vae_core.errors import VaegenError

LOCK_STALE_S = 600.0  # a promotion takes seconds; a lock this old belongs to a crashed one (a dead pid here: at once)
LOCK_HOLDER_TAG = "vaegen.lock_holder"  # registry.holders.this_process() of the holder, as JSON
LOCK_WAIT_S = 60.0
LOCK_POLL_S = 0.5


def _lock_name(name: str, alias: str) -> str:
    return f"{name}{LOCK_MARK}{alias}"


class AliasLock:
    """`<name>.vaegen-lock.<alias>`, held: a registered model whose creation is atomic (a unique name in
    the store), tagged with who holds it, for what, since when, and a token only the holder knows."""

    def __init__(self, lock: str, tags: dict[str, str], mlflow_client: MlflowClient):
        self.lock, self.tags, self.client = lock, tags, mlflow_client

    def confirm(self) -> None:
        """Raise unless the lock still carries our token: called before the alias moves, so that a holder
        whose lock was taken over (judged stale, or deleted by a stray retried request) changes nothing."""
        with contextlib.suppress(MlflowException):
            token = self.client.get_registered_model(self.lock).tags.get("vaegen.lock_token")
            if token == self.tags["vaegen.lock_token"]:
                return
        raise VaegenError(f"lost the promotion lock {self.lock!r} before moving the alias; nothing was changed: retry")


@contextlib.contextmanager
def alias_lock(
    name: str,
    alias: str,
    purpose: str = "",
    wait_s: float = LOCK_WAIT_S,
    stale_s: float = LOCK_STALE_S,
    tracking_uri: str | None = None,
) -> Iterator[AliasLock]:
    """The lock of `name@alias` in the registry at `tracking_uri` (None: this process's), held until the block ends."""
    mlflow_client = client(tracking_uri)
    lock = _lock_name(name, alias)
    owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()}"
    tags = {
        "vaegen.lock_owner": owner,
        "vaegen.lock_purpose": purpose or "promotion",
        "vaegen.lock_token": uuid.uuid4().hex,
        "vaegen.lock_since": str(time.time()),
        LOCK_HOLDER_TAG: holders.this_process().to_bytes().decode(),
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
        yield AliasLock(lock, tags, mlflow_client)
    finally:
        with contextlib.suppress(MlflowException):
            if mlflow_client.get_registered_model(lock).tags.get("vaegen.lock_token") == tags["vaegen.lock_token"]:
                mlflow_client.delete_registered_model(lock)


def _lock_is_stale(tags: dict[str, str], stale_s: float) -> bool:
    """A lock whose holder is gone from this host (killed with -9 or SIGTERM) is stale at once, as the
    refresh lock is; any other once it is `stale_s` old."""
    held = holders.LockRecord.from_bytes(tags.get(LOCK_HOLDER_TAG, "{}").encode(errors="surrogatepass"))
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
