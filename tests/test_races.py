"""Races between real `vaegen` processes, against the embedded SQLite store and against an `mlflow
server` on a real PostgreSQL (conftest.py): 8 promotions of different versions to one alias at once;
4 refreshes of one root at once; a refresh killed with SIGKILL once in each phase, after a seeded random delay,
then rerun. Every outcome is counted and printed (`pytest -s` shows the tallies).

The racing processes are forked from a "zygote" that has imported what the commands need: each
child runs `vaegen ARGS` through the console script's entry point, in its own session, with its own
stdout/stderr files. Imports cost ~4 CPU-seconds and 400 MB per process on a 2-core box: forked,
the racers start within milliseconds of each other (so that they really meet) and cost neither."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from conftest import TrackingStore, private_local_ray, register_untrained_decoder, sqlite_uri, use_tracking_store
from helpers import invoke
from jobs.generate import card
from jobs.generate.croissant import CROISSANT
from jobs.generate.manifest import AUDIT, MANIFEST
from jobs.generate.verify import inspect
from jobs.refresh import LATEST, LOCK
from ray_cluster import wait_until
from registry import promotion
from registry.models import LOCK_MARK

pytestmark = pytest.mark.slow  # many real processes, an mlflow server on PostgreSQL, a Ray

PROMOTERS, REFRESHERS, KILL_SEED = 8, 4, 13
N, ROWS_PER_SHARD = 2_000, 1_000  # 2 parts: a refresh is over in seconds, so random kills land in every phase
KEEP = 2
MAX_KILL_DELAY_S = 0.3  # after the step a trial targets: the kill lands somewhere inside that step
PROCESS_TIMEOUT_S = 300
ZYGOTE = r"""
import json, os, signal, sys
import jobs.cli, jobs.refresh, registry.promotion  # everything `promote` and `refresh` import

prefixes = {}  # child pid -> where its output and exit code go


def reap(signum, frame):
    # vaegen ends with os._exit(): its exit status, read here, is the only record of its exit code.
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        prefix = prefixes.pop(pid)
        with open(prefix + ".code.tmp", "w") as handle:
            handle.write(str(os.waitstatus_to_exitcode(status)))
        os.rename(prefix + ".code.tmp", prefix + ".code")


signal.signal(signal.SIGCHLD, reap)
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # reap() must know the pid before it exits
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.setsid()
        for fd, suffix in ((1, ".stdout"), (2, ".stderr")):
            os.dup2(os.open(request["prefix"] + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.argv = ["vaegen", *request["args"]]
        try:
            jobs.cli.vaegen_main()  # the console script: it exits the process itself
        finally:
            os._exit(70)
    prefixes[pid] = request["prefix"]
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    print(pid, flush=True)
"""


# ---------------------------------------------------------------- helpers


@dataclasses.dataclass
class Child:
    """One `vaegen` process forked by the zygote: its pid and where its output and exit code land."""

    pid: int
    prefix: Path
    started_s: float

    def exit_code(self) -> int | None:
        path = self.prefix.with_suffix(".code")
        return int(path.read_text()) if path.exists() else None

    def finish(self) -> tuple[int, str, str]:
        wait_until(lambda: self.exit_code() is not None, PROCESS_TIMEOUT_S, f"vaegen process {self.pid} to exit")
        return (
            self.exit_code(),
            self.prefix.with_suffix(".stdout").read_text(),
            self.prefix.with_suffix(".stderr").read_text(),
        )

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{self.pid}").exists(), 30, f"process {self.pid} to go")


class Zygote:
    def __init__(self, env: dict[str, str], folder: Path):
        self.folder = folder
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=folder,
        )
        line = self.process.stdout.readline()
        assert line == "ready\n", line
        self.children: list[Child] = []

    def spawn(self, *args: str) -> Child:
        prefix = self.folder / f"vaegen-{len(self.children)}"
        self.process.stdin.write(json.dumps({"args": args, "prefix": str(prefix)}) + "\n")
        self.process.stdin.flush()
        child = Child(int(self.process.stdout.readline()), prefix, time.monotonic())
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            if child.exit_code() is None:
                child.kill()
        self.process.stdin.close()
        self.process.wait(timeout=30)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("vaegen: error: ")]


def register_versions(count: int) -> str:
    """A new registered model with `count` versions of one untrained decoder (equal held-out loss, so every
    gate passes against any holder)."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    register_untrained_decoder(name)
    for _ in range(count - 1):
        mlflow.MlflowClient().copy_model_version(f"models:/{name}/1", name)
    return name


def lock_models(name: str) -> list[str]:
    return [
        model.name
        for model in mlflow.MlflowClient().search_registered_models(filter_string=f"name LIKE '{name}%'")
        if LOCK_MARK in model.name
    ]


def report(title: str, store: TrackingStore, counts: dict[str, Any]) -> None:
    backend = "sqlite" if store.uri.startswith("sqlite") else "postgresql"
    print(f"\n[race figures] {title}, {backend}: {json.dumps(counts, sort_keys=True)}")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request, tmp_path_factory) -> Iterator[TrackingStore]:
    """The embedded SQLite file store every process opens itself, then the PostgreSQL-backed server."""
    if request.param == "sqlite":
        root = tmp_path_factory.mktemp("race-sqlite")
        with use_tracking_store(sqlite_uri(root), root) as tracking:
            yield tracking
    else:
        yield request.getfixturevalue("module_postgres")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with private_local_ray() as address:
        yield address


@pytest.fixture(scope="module")
def zygote(store, ray_address, tmp_path_factory) -> Iterator[Zygote]:
    """Forks `vaegen` processes that use this store and join this Ray."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "RAY_ADDRESS": ray_address}
    started = Zygote(env, tmp_path_factory.mktemp("zygote"))
    try:
        yield started
    finally:
        started.close()


# ---------------------------------------------------------------- promotions


def test_eight_concurrent_promotions_form_one_chain(store, zygote):
    name = register_versions(1 + PROMOTERS)
    promotion.promote(f"{name}/1", promotion.PromotionConfig(reason="start", by="tester"))
    racers = {
        version: zygote.spawn(
            "promote",
            f"{name}/{version}",
            "--reason",
            f"race {version}",
            "--by",
            f"racer-{version}",
            "--no-quality-gate",
        )
        for version in range(2, 2 + PROMOTERS)
    }
    outcomes = {version: racer.finish() for version, racer in racers.items()}

    winners, refused = [], []
    for version, (code, stdout, stderr) in outcomes.items():
        if code == 0:
            assert f"promoted: {name}@champion -> version {version} (was " in stdout, stdout
            gates = [line for line in stdout.splitlines() if line.startswith("gate ")]
            assert any(line.startswith("gate held_out_elbo ") for line in gates), stdout  # compared with the holder
            assert all(" PASS " in line for line in gates), stdout
            winners.append(version)
        else:
            errors = error_lines(stderr)
            assert code == 1 and len(errors) == 1 and "Traceback" not in stderr, (version, stderr[-3000:])
            # Refused while another held the lock, or (a loaded server: a holder's retried delete of its own lock
            # landing after the next holder took it) found its lock gone just before moving the alias: either way
            # it changed nothing, which the chain below checks.
            held = f"{name}@champion is held by another promotion: promote v" in errors[0]
            lost = (
                f"lost the promotion lock '{name}.vaegen-lock.champion' before moving the alias; nothing" in errors[0]
            )
            assert held or lost, errors[0]
            refused.append(version)

    events = promotion.history(name, "champion")
    said = {
        version: stdout.strip().splitlines()[-1:] + error_lines(stderr)
        for version, (_, stdout, stderr) in outcomes.items()
    }
    story = json.dumps(
        {"history": [(event["version"], event["previous_version"], event["at"]) for event in events], "racers": said}
    )
    assert events[0]["version"] == 1
    chain = events[1:]
    assert sorted(event["version"] for event in chain) == sorted(winners), story  # each winner exactly once
    for before, after in itertools.pairwise(events):
        assert after["previous_version"] == before["version"], story  # each replaced the one before it
    assert int(mlflow.MlflowClient().get_registered_model(name).aliases["champion"]) == chain[-1]["version"]
    assert not lock_models(name)
    report(
        f"{PROMOTERS} concurrent promotions",
        store,
        {
            "won": len(winners),
            "refused_held_by": len(refused),
            "other": PROMOTERS - len(winners) - len(refused),
            "order": [event["version"] for event in chain],
        },
    )


# ---------------------------------------------------------------- refreshes


@pytest.fixture
def champion(store) -> str:
    name = register_versions(1)
    promotion.promote(f"{name}/1", promotion.PromotionConfig(reason="serve", by="tester"))
    return f"{name}@champion"


def refresh_args(model: str, root: Path, *extra: str) -> list[str]:
    return [
        "refresh",
        "--model",
        model,
        "--n",
        str(N),
        "--rows-per-shard",
        str(ROWS_PER_SHARD),
        "--out",
        str(root),
        "--num-workers",
        "1",
        *extra,
    ]


def committed(root: Path) -> list[str]:
    return sorted(path.parent.name for path in root.glob("*/_manifest.json"))


def assert_consistent(root: Path) -> dict[str, Any]:
    """No lock; `latest` names a committed dataset by its manifest's hash; every committed dataset inspects
    clean and holds nothing but its parts, card and manifest. Returns what is there, for the tallies."""
    assert not (root / LOCK).exists()
    pointer = json.loads((root / LATEST).read_text())
    assert pointer["dataset_id"] in committed(root), pointer
    manifest_bytes = (root / pointer["dataset_id"] / "_manifest.json").read_bytes()
    assert pointer["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    for dataset_id in committed(root):
        result = inspect(str(root / dataset_id))
        assert result.ok, (dataset_id, result.problems)
        assert not [
            path.name
            for path in (root / dataset_id).iterdir()
            if path.name.startswith((".", "_"))
            and path.name not in (MANIFEST, card.CARD, card.HF_YAML, CROISSANT, AUDIT)
        ], dataset_id  # no temporary left
    unfinished = [path.name for path in root.iterdir() if path.is_dir() and not (path / "_manifest.json").exists()]
    return {"committed": len(committed(root)), "unfinished": len(unfinished)}


def test_four_concurrent_refreshes_make_one_dataset(store, zygote, champion, tmp_path):
    root = tmp_path / "out"
    racers = [zygote.spawn(*refresh_args(champion, root)) for _ in range(REFRESHERS)]
    outcomes = [racer.finish() for racer in racers]

    assert [code for code, _, _ in outcomes] == [0] * REFRESHERS, [stderr[-2000:] for _, _, stderr in outcomes]
    actions = collections.Counter(
        next(line for line in stdout.splitlines() if line.startswith("refresh: ")).split()[1]
        for _, stdout, _ in outcomes
    )
    assert actions["generated"] == 1 and set(actions) <= {"generated", "busy", "up-to-date"}, actions
    for _, _, stderr in outcomes:
        assert "Traceback" not in stderr and not error_lines(stderr), stderr[-2000:]
    assert sorted(path.name for path in root.iterdir()) == sorted([*committed(root), LATEST])  # nothing partial
    assert len(committed(root)) == 1
    assert_consistent(root)
    report(f"{REFRESHERS} concurrent refreshes", store, dict(actions))


@dataclasses.dataclass(frozen=True)
class Disk:
    """What a refresh of `root` has done so far, read from the disk alone."""

    root: Path
    before: frozenset[str]  # dataset folders before the refresh started
    latest_before: str

    def new(self) -> list[Path]:
        return [path for path in self.root.iterdir() if path.is_dir() and path.name not in self.before]

    def latest(self) -> str | None:
        try:
            return json.loads((self.root / LATEST).read_text())["dataset_id"]
        except (OSError, ValueError):
            return None

    def phase(self) -> str:
        if self.latest() != self.latest_before:
            return "after moving latest (pruning, releasing the lock)"
        if any((path / "_manifest.json").exists() for path in self.new()):
            return "committed, before moving latest"
        if any(path.glob("part-*.parquet") for path in self.new()):
            return "writing parts"
        if self.new():
            return "starting the dataset"
        return "holding the lock" if (self.root / LOCK).exists() else "before taking the lock"


# Where a trial kills: once the disk shows this step (the first that a refresh reaches), after a random delay.
KILL_AFTER = (
    "before taking the lock",
    "holding the lock",
    "starting the dataset",
    "writing parts",
    "committed, before moving latest",
    "after moving latest (pruning, releasing the lock)",
)


def test_refresh_killed_at_random_points_then_rerun_is_consistent(store, zygote, champion, tmp_path):
    root = tmp_path / "out"
    args = refresh_args(champion, root, "--seed-policy", "new", "--keep", str(KEEP))
    rng = random.Random(KILL_SEED)
    tally: collections.Counter[str] = collections.Counter()
    first = zygote.spawn(*args)
    code, _, stderr = first.finish()
    assert code == 0, stderr[-3000:]
    targets = list(KILL_AFTER)  # every phase once (10 random picks used to miss some), in a seeded order
    rng.shuffle(targets)
    for trial, target in enumerate(targets):
        disk = Disk(
            root,
            frozenset(path.name for path in root.iterdir() if path.is_dir()),
            json.loads((root / LATEST).read_text())["dataset_id"],
        )
        victim = zygote.spawn(*args)
        wait_until(
            lambda victim=victim, disk=disk, target=target: (
                victim.exit_code() is not None or KILL_AFTER.index(disk.phase()) >= KILL_AFTER.index(target)
            ),
            PROCESS_TIMEOUT_S,
            f"a refresh to reach {target!r}",
            interval_s=0.005,
        )
        time.sleep(rng.uniform(0, MAX_KILL_DELAY_S))
        finished = victim.exit_code() is not None
        victim.kill()
        tally["finished before the kill" if finished else disk.phase()] += 1

        rerun = invoke(*args)
        assert rerun.exit_code == 0, (trial, rerun.output)
        action = next(line for line in rerun.stdout.splitlines() if line.startswith("refresh: ")).split()[1]
        assert action == "generated", (trial, rerun.output)  # never "busy" behind the dead one's lock
        state = assert_consistent(root)
        assert state["committed"] <= KEEP, state
    # A rerun that takes over a dead refresh's lock ends that refresh's MLflow run: none says RUNNING forever.
    refresh_runs = mlflow.search_runs(experiment_names=["vaegen-refresh"], output_format="list")
    assert (
        len(refresh_runs) > len(KILL_AFTER)
        and [run.info.run_name for run in refresh_runs if run.info.status == "RUNNING"] == []
    )
    report(
        f"{len(KILL_AFTER)} refreshes killed, one in each phase (seed {KILL_SEED})",
        store,
        {"killed_while": dict(tally), "reruns_generated": len(KILL_AFTER), "end_state": assert_consistent(root)},
    )
