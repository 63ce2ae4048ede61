"""Refresh on promotion: a real `mlflow server` sends its signed alias webhook to a real `vaegen webhook serve`,
which starts a real `vaegen refresh`; forged, replayed, stale and foreign deliveries do nothing and are logged."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from conftest import TrackingStore, register_untrained_decoder
from helpers import readme_block, repository_copy, shell_env
from ray_cluster import free_port, make_ray_env, stop_tagged, wait_until
from registry import webhooks

SECRET = "test-secret-0123456789abcdef"
VAEGEN = "from jobs.cli import vaegen_main; vaegen_main()"
REFRESH_START_TIMEOUT_S = 60  # the target is < 5 s on a quiet machine (benchmarks/webhook.py); CI is loaded
REFRESH_DONE_TIMEOUT_S = 240  # a private local Ray plus 256 rows, on a loaded 2-core box


def signed(body: dict, *, secret: str = SECRET, delivery_id: str | None = None, timestamp: int | None = None):
    """Headers and body as MLflow's server sends them."""
    raw = json.dumps(body).encode()
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        webhooks.DELIVERY_ID_HEADER: delivery_id,
        webhooks.TIMESTAMP_HEADER: timestamp,
        webhooks.SIGNATURE_HEADER: webhooks.signature(secret, delivery_id, timestamp, raw),
        "Content-Type": "application/json",
    }
    return headers, raw


def alias_event(name: str, alias: str = "champion", version: str = "1") -> dict:
    return {
        "entity": "model_version_alias",
        "action": "created",
        "timestamp": "2026-12-02T00:00:00+00:00",
        "data": {"name": name, "alias": alias, "version": version},
    }


# ---------------------------------------------------------------- verification, pure


def test_verify_accepts_mlflows_signature_and_refuses_everything_else():
    headers, body = signed(alias_event("m"))
    event = webhooks.verify(SECRET, headers, body, time.time(), 300)
    assert (event.name, event.alias, event.version) == ("m", "champion", "1")

    refusals = {
        "bad signature": signed(alias_event("m"), secret="another-secret-0123456789"),
        "outside 300 s (a replay?)": signed(alias_event("m"), timestamp=int(time.time()) - 301),
        "unsigned": ({"Content-Type": "application/json"}, body),
        "not Unix seconds": signed(alias_event("m"), timestamp="yesterday"),  # type: ignore[arg-type]
    }
    for reason, (bad_headers, bad_body) in refusals.items():
        with pytest.raises(webhooks.Refused, match=re.escape(reason)):
            webhooks.verify(SECRET, bad_headers, bad_body, time.time(), 300)
    tampered = body.replace(b'"1"', b'"9"')
    with pytest.raises(webhooks.Refused, match="bad signature"):
        webhooks.verify(SECRET, headers, tampered, time.time(), 300)
    other_headers, other_body = signed({"entity": "model_version", "action": "created", "data": {}})
    assert webhooks.verify(SECRET, other_headers, other_body, time.time(), 300) is None
    junk_headers, junk_body = signed(["not", "a", "payload"])  # type: ignore[arg-type]
    with pytest.raises(webhooks.Refused, match="not an MLflow webhook payload"):
        webhooks.verify(SECRET, junk_headers, junk_body, time.time(), 300)


def test_serve_refuses_bad_configuration_in_one_line(tmp_path):
    env = {**os.environ, "VAEGEN_WEBHOOK_SECRET": SECRET, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    cases = {
        (
            "--refresh",
            "--n 10 --out /tmp/x --model m/3",
        ): "--refresh '--n 10 --out /tmp/x --model m/3': a refresh on promotion watches an alias",
        ("--refresh", "--n -1 --out /tmp/x"): "--refresh '--n -1 --out /tmp/x': --n must be a positive integer",
        ("--refresh", "--bogus"): "--refresh '--bogus': No such option '--bogus'",
    }
    for args, fragment in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", VAEGEN, "webhook", "serve", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and done.stderr.count("vaegen: error:") == 1 and fragment in done.stderr, (
            done.stderr
        )
    short = {**env, "VAEGEN_WEBHOOK_SECRET": "short"}
    done = subprocess.run(
        [sys.executable, "-c", VAEGEN, "webhook", "serve", "--refresh", "--n 1 --out /tmp/x"],
        env=short,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "VAEGEN_WEBHOOK_SECRET has 5 characters" in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-c", VAEGEN, "webhook", "register", "--url", "http://127.0.0.1:1/"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "webhooks are sent by an `mlflow server`" in done.stderr, done.stderr


# ---------------------------------------------------------------- the whole path, real processes


class Receiver:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_for(self, fragment: str, timeout_s: float) -> str:
        wait_until(
            lambda: any(fragment in line for line in self.lines()),
            timeout_s,
            f"{fragment!r} in the receiver's log:\n" + self.log.read_text()[-3000:],
        )
        return next(line for line in self.lines() if fragment in line)


@pytest.fixture(scope="module")
def store(module_http: TrackingStore) -> TrackingStore:
    return module_http


@pytest.fixture(scope="module")
def model_name(store) -> str:
    name = f"hooked-{uuid.uuid4().hex[:8]}"  # the HTTP server is shared by the session: a name of its own
    register_untrained_decoder(name)
    return name


@pytest.fixture(scope="module")
def receiver(store, model_name, tmp_path_factory) -> Iterator[Receiver]:
    root = tmp_path_factory.mktemp("hooked-out")
    ray_env = make_ray_env()  # the refresh's private local Ray: own HOME and temp dir, stopped by tag
    port, log = free_port(), root.parent / "receiver.log"
    env = ray_env.environ(MLFLOW_TRACKING_URI=store.uri, VAEGEN_WEBHOOK_SECRET=SECRET)
    env.pop("RAY_ADDRESS", None)
    refresh = f"--model {model_name}@champion --n 256 --rows-per-shard 128 --num-workers 1 --out {root / 'datasets'}"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", VAEGEN, "webhook", "serve", "--port", str(port), "--refresh", refresh],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    served = Receiver(process, f"http://127.0.0.1:{port}/", log)
    try:
        served.wait_for("webhook: listening on", 60)
        yield served
    finally:
        process.terminate()
        process.wait(timeout=30)
        stop_tagged(ray_env.tag)


def vaegen(store: TrackingStore, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "VAEGEN_WEBHOOK_SECRET": SECRET}
    return subprocess.run([sys.executable, "-c", VAEGEN, *args], env=env, capture_output=True, text=True, timeout=120)


def receiver_root(receiver: Receiver) -> Path:
    return Path(receiver.process.args[-1].split("--out ")[1])


@pytest.mark.slow  # an mlflow server, a receiver, a refresh on a local Ray
def test_only_a_genuine_promotion_starts_a_refresh_and_it_moves_latest(store, model_name, receiver):
    def post(headers, body) -> requests.Response:
        return requests.post(receiver.url, data=body, headers=headers, timeout=10)

    # Before any promotion: what must start nothing.
    forged_headers, forged_body = signed(alias_event(model_name), secret="attacker-secret-0123456789")
    assert post(forged_headers, forged_body).status_code == 401
    assert post({"Content-Type": "application/json"}, json.dumps(alias_event(model_name)).encode()).status_code == 401
    stale_headers, stale_body = signed(alias_event(model_name), timestamp=int(time.time()) - 3600)
    assert post(stale_headers, stale_body).status_code == 401
    foreign_headers, foreign_body = signed(alias_event("someone-elses-model"))
    assert post(foreign_headers, foreign_body).status_code == 200
    replay = post(foreign_headers, foreign_body)
    assert replay.status_code == 200 and replay.json()["outcome"] == "ignored: duplicate delivery"
    # Genuine and watched, but the registry says the alias is not set: the payload is not trusted.
    lying_headers, lying_body = signed(alias_event(model_name, version="1"))
    assert post(lying_headers, lying_body).status_code == 202
    assert requests.get(receiver.url + "health", timeout=10).status_code == 200
    for fragment in (
        "refused: bad signature",
        "refused: unsigned",
        "a replay?",
        "someone-elses-model@champion is not watched here",
        f"{foreign_headers[webhooks.DELIVERY_ID_HEADER]}: ignored: duplicate delivery",
        f"{model_name}@champion is not set in the registry; nothing to do",
    ):
        receiver.wait_for(fragment, 30)
    assert not [line for line in receiver.lines() if "started `vaegen refresh" in line]

    # The real path: register the webhook, promote, MLflow delivers, the refresh runs and moves latest.
    registered = vaegen(store, "webhook", "register", "--url", receiver.url)
    assert registered.returncode == 0 and "webhook: created vaegen-refresh" in registered.stdout, registered.stderr
    again = vaegen(store, "webhook", "register", "--url", receiver.url)  # by name: updated, not a second webhook
    assert again.returncode == 0 and "webhook: updated vaegen-refresh" in again.stdout, again.stderr
    promoted = vaegen(store, "promote", f"{model_name}/1", "--reason", "webhook test", "--no-quality-gate")
    assert promoted.returncode == 0, promoted.stderr
    receiver.wait_for(f"accepted: {model_name}@champion -> version 1", REFRESH_START_TIMEOUT_S)
    started = receiver.wait_for("started `vaegen refresh", REFRESH_START_TIMEOUT_S)
    submission = started.split(": ")[0]
    assert submission.startswith("vaegen-refresh-"), started
    receiver.wait_for(f"{submission}: refresh exited 0", REFRESH_DONE_TIMEOUT_S)
    root = receiver_root(receiver)
    latest = json.loads((root / "latest").read_text())
    manifest = json.loads((root / latest["dataset_id"] / "_manifest.json").read_text())
    assert (manifest["model"]["name"], manifest["model"]["version"], manifest["n"]) == (model_name, 1, 256)
    assert len([line for line in receiver.lines() if "started `vaegen refresh" in line]) == 1


def test_the_deployed_receivers_refresh_arguments_are_accepted_as_serve_would():
    """deploy/k8s/webhook.yaml and deploy/compose.yaml give `--refresh` a whole refresh command line: it must
    pass the checks `vaegen webhook serve` makes at start (a typo there is a crash-looping pod)."""
    import yaml

    from jobs.cli import _refresh_target

    deploy = Path(__file__).resolve().parent.parent / "deploy"
    docs = list(yaml.safe_load_all((deploy / "k8s" / "webhook.yaml").read_text()))
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    k8s_command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    compose_command = yaml.safe_load((deploy / "compose.yaml").read_text())["services"]["webhook"]["command"]
    compose_refresh = compose_command[compose_command.index("--refresh") + 1]
    compose_refresh = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", compose_refresh)  # Compose's defaults
    for command, refresh in (
        (k8s_command, k8s_command[k8s_command.index("--refresh") + 1]),
        (compose_command, compose_refresh),
    ):
        assert command[:3] == ["vaegen", "webhook", "serve"] and "--ray-address" in command
        target = _refresh_target(refresh)
        assert (target.name, target.alias) == ("vae-decoder", "champion"), refresh


# ---------------------------------------------------------------- the README's block, verbatim

README_SECTION = "### Refresh on promotion"
QUICK_START_SECTION = "## Quick start: one command"
README_PORTS = (5000, 8090)  # the block's mlflow server and receiver: fixed, as a user types them
README_TIMEOUT_S = 540  # each block: the quick start (install, training, report, generation); a server, a receiver...


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop_group(process: subprocess.Popen) -> None:
    """The block's shell and what it left in the background (the mlflow server, the receiver): its process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
            time.sleep(2)  # the group's other members take a moment after the shell


def run_block(block: str, folder: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A README block in bash -euo pipefail, in its own process group (what it starts in the background too)."""
    with open(log, "ab") as sink:  # a file, not a pipe: the background processes keep it open
        return subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=folder,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.mark.slow  # an install, a training, a promotion, a generation; a server, a receiver, a refresh on local Rays
def test_readme_quick_start_then_refresh_on_promotion_run_verbatim(tmp_path):
    """The quick start's line, verbatim, in a copy of the repository, then the "Refresh on promotion" block in
    the folder it left, as the README tells a new user."""
    wait_until(lambda: all(map(port_is_free, README_PORTS)), 120, f"ports {README_PORTS} to be free", 1.0)
    folder = tmp_path / "clone"
    repository_copy(folder)
    ray_env = make_ray_env()
    env = shell_env(ray_env)
    log = tmp_path / "blocks.log"
    try:
        quick_start = run_block(readme_block(QUICK_START_SECTION), folder, env, log)
        try:
            assert quick_start.wait(timeout=README_TIMEOUT_S) == 0, log.read_text()[-4000:]
        finally:
            stop_group(quick_start)
        said = log.read_text()
        assert "registered: vae-decoder/1" in said and "promoted: vae-decoder@champion -> version 1" in said, said
        assert (folder / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        (dataset,) = (folder / "datasets").glob("vae-decoder-v1-n100000-seed0-*")
        assert json.loads((dataset / "_manifest.json").read_text())["n"] == 100_000
        shell = run_block(readme_block(README_SECTION), folder, env, log)
        try:
            assert shell.wait(timeout=README_TIMEOUT_S) == 0, log.read_text()[-4000:]
            assert "promoted: vae-decoder@staging -> version 1 (was None)" in log.read_text(), log.read_text()[-4000:]
            latest = folder / "staging" / "latest"
            wait_until(latest.is_file, REFRESH_DONE_TIMEOUT_S, "the refresh started by the webhook to move latest", 1.0)
            assert json.loads(latest.read_text())["dataset_id"].startswith("vae-decoder-v1-n100000-")
            assert re.search(r": started `vaegen refresh --model vae-decoder@staging --n 100000 ", log.read_text())
        finally:
            stop_group(shell)
    finally:
        survivors = stop_tagged(ray_env.tag)
        assert not survivors, survivors
    assert all(map(port_is_free, README_PORTS))  # nothing the block started is left listening
