"""Refresh on promotion: an HTTP receiver for MLflow's alias webhooks that starts `vaegen refresh`.

A delivery is acted on only when it is signed with the shared secret, fresh, not seen before, and names an
alias this receiver watches; the alias is then re-read from the registry (the payload is never trusted) and
one refresh starts per watched root: as a Ray job with a submission id derived from the delivery (a
redelivery cannot start a second job) when a Ray job address is given, else as a local process. The
scheduled `vaegen refresh` stays the reconciler for deliveries that never arrive.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.server
import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from registry import webhooks

SEEN_DELIVERIES = 10_000  # ids remembered for deduplication; a replay older than the tolerance fails on its timestamp
REFRESH_SCRIPT = "from jobs.cli import vaegen_main; vaegen_main()"  # the `vaegen` console script, by this interpreter


@dataclasses.dataclass(frozen=True)
class RefreshTarget:
    args: tuple[str, ...]  # `vaegen refresh` arguments for one root, as given (they name the model reference)
    name: str  # the registered model whose alias is watched
    alias: str

    def submission_id(self, delivery_id: str) -> str:
        """Deterministic per (delivery, root): MLflow's retries of a delivery reuse its id."""
        digest = hashlib.sha256(f"{delivery_id}\0{shlex.join(self.args)}".encode()).hexdigest()
        return f"vaegen-refresh-{digest[:24]}"


def watched_alias(model_ref: str) -> tuple[str, str]:
    """(name, alias) of `NAME@ALIAS` or `models:/NAME@ALIAS`; a pinned reference has no alias to watch."""
    from vae_core.errors import UsageError

    name, at, alias = model_ref.removeprefix("models:/").partition("@")
    if not at or not name or not alias or "/" in name:
        raise UsageError(f"a refresh on promotion watches an alias: pass --model NAME@ALIAS, got --model {model_ref!r}")
    return name, alias


class LocalLauncher:
    """Each refresh as a `vaegen refresh` process on this host; one per submission id at a time."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.running: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()

    def launch(self, target: RefreshTarget, submission_id: str) -> None:
        with self.lock:
            if submission_id in self.running:
                self.log(f"{submission_id}: already running")
                return
            process = subprocess.Popen([sys.executable, "-c", REFRESH_SCRIPT, "refresh", *target.args])
            self.running[submission_id] = process
        self.log(f"{submission_id}: started `vaegen refresh {shlex.join(target.args)}` (pid {process.pid})")
        threading.Thread(target=self._reap, args=(submission_id, process), daemon=True).start()

    def _reap(self, submission_id: str, process: subprocess.Popen) -> None:
        code = process.wait()
        self.log(f"{submission_id}: refresh exited {code}")
        with self.lock:
            self.running.pop(submission_id, None)


class RayJobLauncher:
    """Each refresh as a Ray job on the cluster at `address` (the dashboard's HTTP address)."""

    def __init__(self, address: str, log: Callable[[str], None]):
        from ray.job_submission import JobSubmissionClient

        self.client = JobSubmissionClient(address)
        self.log = log

    def launch(self, target: RefreshTarget, submission_id: str) -> None:
        entrypoint = shlex.join(["vaegen", "refresh", *target.args])
        try:
            self.client.submit_job(entrypoint=entrypoint, submission_id=submission_id)
        except RuntimeError as error:
            if "already exists" not in str(error):
                raise
            self.log(f"{submission_id}: a Ray job with this id exists already; not started again")
            return
        self.log(f"{submission_id}: submitted Ray job `{entrypoint}`")


class Receiver:
    """What the HTTP handler calls; holds the deduplication memory. Thread-safe."""

    def __init__(self, secret: str, tracking_uri: str, targets: list[RefreshTarget], launcher, log, tolerance_s: float):
        self.secret, self.tracking_uri, self.targets = secret, tracking_uri, targets
        self.launcher, self.log, self.tolerance_s = launcher, log, tolerance_s
        self.seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.lock = threading.Lock()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """(HTTP status, outcome); every outcome is logged with the delivery id."""
        delivery = headers.get(webhooks.DELIVERY_ID_HEADER, "-")[:64]
        try:
            event = webhooks.verify(self.secret, headers, body, time.time(), self.tolerance_s)
        except webhooks.Refused as refused:
            return self._outcome(delivery, 401, f"refused: {refused}")
        if event is None:
            return self._outcome(delivery, 200, "ignored: not an alias event")
        with self.lock:
            if event.delivery_id in self.seen:
                return self._outcome(delivery, 200, "ignored: duplicate delivery")
            self.seen[event.delivery_id] = None
            while len(self.seen) > SEEN_DELIVERIES:
                self.seen.popitem(last=False)
        targets = [target for target in self.targets if (target.name, target.alias) == (event.name, event.alias)]
        if not targets:
            return self._outcome(delivery, 200, f"ignored: {event.name}@{event.alias} is not watched here")
        threading.Thread(target=self._refresh, args=(event, targets), daemon=True).start()
        return self._outcome(
            delivery, 202, f"accepted: {event.name}@{event.alias} -> version {event.version} (payload)"
        )

    def _refresh(self, event: webhooks.AliasEvent, targets: list[RefreshTarget]) -> None:
        try:
            current = webhooks.alias_version(self.tracking_uri, event.name, event.alias)
            if current is None:
                self.log(f"{event.delivery_id}: {event.name}@{event.alias} is not set in the registry; nothing to do")
                return
            if current != event.version:
                self.log(
                    f"{event.delivery_id}: the payload says version {event.version}, the registry "
                    f"{current}; the refresh resolves the registry's"
                )
            for target in targets:
                self.launcher.launch(target, target.submission_id(event.delivery_id))
        except Exception as error:  # a refresh that cannot start is logged; the scheduled refresh reconciles
            self.log(f"{event.delivery_id}: refresh not started: {type(error).__name__}: {error}")

    def _outcome(self, delivery: str, status: int, outcome: str) -> tuple[int, str]:
        self.log(f"{delivery}: {outcome}")
        return status, outcome


def _handler_class(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply(200, "ok") if self.path == "/health" else self._reply(404, "not found")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > webhooks.MAX_BODY_BYTES:
                self._reply(413, "body too large")
                return
            self._reply(*receiver.handle(dict(self.headers.items()), self.rfile.read(length)))

        def _reply(self, status: int, outcome: str) -> None:
            body = json.dumps({"outcome": outcome}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (the receiver logs outcomes itself)
            pass

    return Handler


def serve(receiver: Receiver, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGTERM or SIGINT, then return (a receiver's stop is not an error)."""
    server = http.server.ThreadingHTTPServer((host, port), _handler_class(receiver))
    server.daemon_threads = True

    def stop(signum, frame) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        on_ready(f"http://{host}:{server.server_address[1]}/")
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
