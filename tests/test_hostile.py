"""Issue 20's probes from outside vaegen's own commands (parts 3-6), each through the real `vaegen` command in
its own process: FIFOs and devices named like records, a prune killed midway, two writers racing on an object
store (moto), a promotion killed with its lock held, SIGTERM before and during a Ray job, and the smaller
failures (an --out inside a dataset, absolute paths, quotes in model names, runs:/ references, what reaches the
card, a version whose config and weights disagree, the private Ray's ports). A real SQLite registry
(conftest.py), a real local Ray, a real moto S3 server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from conftest import private_local_ray
from jobs.generate.storage import DatasetBusy, Storage
from jobs.prune import committed_datasets, finish_pruning, prune
from jobs.refresh import LOCK, RefreshLock
from ray_cluster import make_ray_env, stop_tagged, wait_until

VAEGEN = str(Path(sys.executable).with_name("vaegen"))
TIMEOUT_S = 300  # a hang fails the test instead of hanging the suite; a loaded 2-core box needs room
MODEL = "vae-decoder/1"
DASHBOARD_AGENT_DEFAULT_PORT = 52365


# ---------------------------------------------------------------- helpers


def vaegen(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VAEGEN, *args], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=cwd, env={**os.environ, **env}
    )


def one_error_line(done: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The exit code, exactly one `vaegen: error:` line, last on stderr, and no traceback."""
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vaegen: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def ray_address(untrained_version) -> Iterator[str]:
    """A private local Ray that the `vaegen` subprocesses join (RAY_ADDRESS), so that each does not start its own."""
    with private_local_ray() as address:
        yield address


def fake_dataset(root: Path, name: str, files: int = 3) -> Path:
    """A folder that refresh's prune takes for a committed dataset (its manifest says when it finished)."""
    folder = root / name
    folder.mkdir(parents=True)
    for index in range(files):
        (folder / f"part-{index:05d}.parquet").write_bytes(b"x")
    (folder / "_manifest.json").write_text(json.dumps({"timings": {"finished_at": f"2026-01-0{len(name) % 9 + 1}"}}))
    return folder


# ---------------------------------------------------------------- only regular files are records


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_inspect_of_a_manifest_that_is_a_fifo_or_a_device_is_one_line_not_a_hang(tmp_path, kind):
    folder = tmp_path / "dataset"
    folder.mkdir()
    if kind == "fifo":
        os.mkfifo(folder / "_manifest.json")
    else:
        (folder / "_manifest.json").symlink_to("/dev/zero")
    done = vaegen("inspect", str(folder))
    kind_shown = "FIFO" if kind == "fifo" else "device"
    one_error_line(done, 1, str(folder / "_manifest.json"), kind_shown, "not a regular file")


def test_refresh_skips_a_fifo_manifest_and_finishes_a_killed_prune(untrained_version, ray_address, tmp_path):
    root = tmp_path / "out"
    (root / "fifo-dataset").mkdir(parents=True)
    os.mkfifo(root / "fifo-dataset" / "_manifest.json")
    leftover = root / ".pruned.old-dataset.0123abcd"  # what a prune killed after its rename leaves
    leftover.mkdir()
    for index in range(1_001):
        (leftover / f"part-{index:05d}.parquet").write_bytes(b"x")
    done = vaegen(
        "refresh",
        "--model",
        MODEL,
        "--n",
        "1000",
        "--rows-per-shard",
        "500",
        "--num-workers",
        "1",
        "--out",
        str(root),
        "--keep",
        "1",
        RAY_ADDRESS=ray_address,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refresh: generated"), done.stdout
    assert "not pruned: fifo-dataset: unreadable manifest" in done.stderr and "(NotRegularFile)" in done.stderr
    assert not leftover.exists() and not (root / LOCK).exists()
    assert sorted(path.name for path in root.iterdir() if path.name != "latest") == sorted(
        ["fifo-dataset", done.stdout.split()[2]]
    )


PRUNE_SCRIPT = """
import os, signal, sys, threading
from pathlib import Path
from jobs.generate.storage import Storage
from jobs.prune import retire
root = Path(sys.argv[1])
def kill_once_renamed():  # SIGKILL in the middle of the deletion, as a scheduler's kill would land
    while not any(root.glob(".pruned.*")):
        pass
    os.kill(os.getpid(), signal.SIGKILL)
threading.Thread(target=kill_once_renamed, daemon=True).start()
retire(Storage(str(root)), "doomed")
"""


def test_a_prune_killed_midway_leaves_no_dataset_folder_without_a_manifest(tmp_path):
    folder = fake_dataset(tmp_path, "doomed", files=0)
    for index in range(20_000):
        (folder / f"f{index}").write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", PRUNE_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = [path.name for path in tmp_path.iterdir()]
    assert "doomed" not in left  # before the fix: a manifest-less "doomed" with most of its files, forever
    assert [name for name in left if name.startswith(".pruned.doomed.")], left  # killed mid-deletion, as meant
    storage = Storage(str(tmp_path))
    assert committed_datasets(storage) == ([], []) and finish_pruning(storage) == []
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- object-store writer guard (moto S3)


def race(pairs: int, attempt) -> list[int]:
    """Run `attempt(pair, entered)` in two threads per pair, released together; how many entered, per pair."""
    entered = [0] * pairs
    lock = threading.Lock()

    def enter(pair: int) -> None:
        with lock:
            entered[pair] += 1

    threads = []
    for pair in range(pairs):
        start, done = threading.Barrier(2), threading.Barrier(2)
        threads += [threading.Thread(target=attempt, args=(pair, start, done, enter)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    return entered


def test_two_simultaneous_writers_on_an_object_store_never_both_enter(moto_s3):
    storage = Storage(f"{moto_s3}/pairs")

    def attempt(pair, start, done, enter):
        start.wait()
        try:
            with storage.writer_guard(f"ds-{pair}"):
                enter(pair)
                done.wait()  # hold it until the other one has tried
        except DatasetBusy:
            done.wait()

    assert race(20, attempt) == [1] * 20  # before: write-then-read-back let both in for 1 of 14 pairs
    assert [name for name in storage.list() if name.endswith(".lock")] == []  # each winner released its lock


def test_two_takers_of_a_dead_holders_record_on_an_object_store_never_both_enter(moto_s3):
    storage = Storage(f"{moto_s3}/takeover")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "user": "x", "since": "then"}

    def attempt(pair, start, done, enter):
        start.wait()
        try:
            with storage.writer_guard(f"ds-{pair}"):
                enter(pair)
                done.wait()
        except DatasetBusy:
            done.wait()

    for pair in range(10):
        storage.write_json(stale, f".ds-{pair}.lock")
    assert race(10, attempt) == [1] * 10

    def acquire(pair, start, done, enter):  # the refresh lock is built on the same conditional writes
        lock = RefreshLock(Storage(f"{moto_s3}/refresh-{pair}"), 900.0)
        start.wait()
        if lock.acquire():
            enter(pair)
            done.wait()
            lock.release()
        else:
            done.wait()

    assert race(10, acquire) == [1] * 10


def test_prune_on_an_object_store_marks_first_and_a_later_prune_finishes_a_killed_one(moto_s3):
    storage = Storage(f"{moto_s3}/prune")
    for name, day in (("old", "01"), ("new", "02")):
        storage.write_json({"timings": {"finished_at": f"2026-01-{day}"}}, name, "_manifest.json")
        storage.write_json({}, name, "part-00000.parquet")
    storage.write_json({}, "killed", "part-00000.parquet")  # what a prune killed after its commit went leaves:
    storage.write_json({"dataset_id": "killed"}, ".pruned.killed")  # no manifest, and the marker naming it
    assert prune(storage, keep=1, protected="new")[:2] == (["old"], [])
    assert storage.list() in (["new"], [".retiring", "new"])  # an object store may keep the notices' folder
    assert storage.list(".retiring") == []  # but no notice: each was withdrawn once its dataset was gone


# ---------------------------------------------------------------- the promotion lock


LOCK_AND_DIE = """
import os, signal
from registry.alias_lock import alias_lock
with alias_lock("vae-decoder", "canary", purpose="killed"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_promotion_killed_with_its_lock_held_blocks_no_later_one(untrained_version):
    killed = subprocess.run(
        [sys.executable, "-c", LOCK_AND_DIE],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=untrained_version.root,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lock = mlflow.MlflowClient().get_registered_model("vae-decoder.vaegen-lock.canary")
    assert lock.tags["vaegen.lock_purpose"] == "killed"  # left behind, naming a pid that is gone
    started = time.monotonic()
    done = vaegen(
        "promote",
        MODEL,
        "--alias",
        "canary",
        "--reason",
        "after a kill",
        "--no-quality-gate",
        cwd=untrained_version.root,
    )
    assert done.returncode == 0, done.stderr
    assert "promoted: vae-decoder@canary -> version 1" in done.stdout
    assert time.monotonic() - started < 60  # before: waited 60 s, failed, and blocked the alias for 600 s


# ---------------------------------------------------------------- SIGTERM


LOCK_AND_TERMINATE = """
import os, signal, time
from jobs import cli
from registry.alias_lock import alias_lock
signal.signal(signal.SIGTERM, cli._terminate)  # the console script's handler
try:
    with alias_lock("vae-decoder", "termed", purpose="terminated"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
except KeyboardInterrupt as error:
    raise SystemExit(143 if cli._terminated(error) else 1)
"""


def test_a_promotion_terminated_with_its_lock_held_releases_it(untrained_version):
    """SIGTERM (Kubernetes stopping a pod) while a promotion holds its alias lock: the lock goes with it."""
    done = subprocess.run(
        [sys.executable, "-c", LOCK_AND_TERMINATE],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=untrained_version.root,
    )
    assert done.returncode == 143, done.stderr
    names = [model.name for model in mlflow.MlflowClient().search_registered_models()]
    assert "vae-decoder.vaegen-lock.termed" not in names, names
    started = time.monotonic()
    promoted = vaegen(
        "promote",
        MODEL,
        "--alias",
        "termed",
        "--reason",
        "after a SIGTERM",
        "--no-quality-gate",
        cwd=untrained_version.root,
    )
    assert promoted.returncode == 0, promoted.stderr
    assert time.monotonic() - started < 60


def signals_caught(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)


def test_sigterm_before_ray_starts_is_one_line_and_exit_143(tmp_path):
    with socket.socket() as silent:  # a tracking server that accepts and never answers: the job waits on it
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        process = subprocess.Popen(
            [VAEGEN, "generate", "--model", MODEL, "--n", "10", "--out", str(tmp_path / "out")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{silent.getsockname()[1]}"},
        )
        wait_until(lambda: signals_caught(process.pid) & (1 << (signal.SIGTERM - 1)), TIMEOUT_S, "a SIGTERM handler")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    one_error_line(
        subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), 143, "terminated (SIGTERM)"
    )  # before: exit 143 from the kernel, and not a word


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if entry.isdigit():
                parent = int(Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def cmdlines(pids: list[int]) -> list[str]:
    lines = []
    for pid in pids:
        with contextlib.suppress(OSError):
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


def test_sigterm_during_a_job_ends_it_like_ctrl_c_and_its_private_ray_takes_free_ports(untrained_version, tmp_path):
    ray_env, root = make_ray_env(), tmp_path / "out"
    dataset = "vae-decoder-v1-n3000000-seed5-float32-f3"
    log = tmp_path / "stderr.txt"
    try:
        with open(log, "w") as stderr:
            process = subprocess.Popen(
                [
                    VAEGEN,
                    "generate",
                    "--model",
                    MODEL,
                    "--n",
                    "3000000",
                    "--seed",
                    "5",
                    "--num-workers",
                    "1",
                    "--out",
                    str(root),
                ],
                cwd=untrained_version.root,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=ray_env.environ(),
            )
            wait_until(
                lambda: (root / dataset / "_progress.json").exists() or process.poll() is not None,
                TIMEOUT_S,
                "the job's MLflow run and progress record",
            )
            agents = [line for line in cmdlines(descendants(process.pid)) if "dashboard/agent.py" in line]
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=TIMEOUT_S)
        done = subprocess.CompletedProcess(process.args, process.returncode, "", log.read_text())
        one_error_line(done, 143, "terminated (SIGTERM)")  # before: exit 15 and Ray's C++ stack dump
        assert "SIGTERM received" not in done.stderr and "*** " not in done.stderr, done.stderr
        assert agents and all(f"--listen-port={DASHBOARD_AGENT_DEFAULT_PORT}" not in line for line in agents), agents
        assert not (root / f".{dataset}.lock").exists()
        client = mlflow.MlflowClient()
        runs = client.search_runs(
            [experiment.experiment_id for experiment in client.search_experiments()],
            filter_string=f"tags.`vaegen.dataset_id` = '{dataset}'",
        )
        assert [run.info.status for run in runs] == ["KILLED"]
        wait_until(lambda: not [pid for pid in descendants(process.pid)], 30, "the job's Ray to be gone")
    finally:
        stop_tagged(ray_env.tag)


# ---------------------------------------------------------------- smaller failures


def test_an_out_inside_a_committed_dataset_is_refused(untrained_version, tmp_path):
    dataset = fake_dataset(tmp_path, "committed")
    for out in (dataset, dataset / "nested" / "deeper"):
        done = vaegen("generate", "--model", MODEL, "--n", "10", "--out", str(out), cwd=untrained_version.root)
        one_error_line(done, 2, f"output root {out} is inside the committed dataset {dataset}")
    parts = [f"part-{index:05d}.parquet" for index in range(3)]
    assert sorted(path.name for path in dataset.iterdir()) == ["_manifest.json", *parts]  # untouched


def test_absolute_paths_stay_absolute(untrained_version, ray_address, tmp_path):
    name = f"vaegen-absent-{uuid.uuid4().hex[:8]}"
    fake_dataset(tmp_path, name)  # ./NAME exists: `/NAME` must not read it
    done = vaegen("inspect", f"/{name}", cwd=tmp_path)
    one_error_line(done, 2, f"dataset /{name} not found: check the path")
    done = vaegen("generate", "--resume", f"/{name}", cwd=tmp_path, RAY_ADDRESS=ray_address)
    one_error_line(done, 2, f"--resume /{name}: no dataset in progress at /{name}")


def test_models_lists_models_whose_names_hold_quotes(untrained_version, tmp_path):
    client = mlflow.MlflowClient()
    source = str(tmp_path)  # `vaegen models` reads no artifacts; a source of its own keeps runs:/ of v1 unambiguous
    names = ["it's", 'say "hi"', "both'\"quotes"]
    for name in names:
        client.create_registered_model(name)
        client.create_model_version(name, source)
    done = vaegen("models", cwd=untrained_version.root)
    assert done.returncode == 0, done.stderr  # before: one model named it's failed the whole listing
    listed = {line.split("  ")[0].strip() for line in done.stdout.splitlines()[1:] if line.strip()}
    assert set(names) <= listed, done.stdout  # `both'"quotes`: no filter literal holds it; compared in Python


def test_runs_references_are_limited_and_the_card_escapes_what_reaches_it(untrained_version, ray_address, tmp_path):
    hostile = "runs:/abc/<b>x</b>`\nname"
    done = vaegen("sample", "--model", hostile, "--out", str(tmp_path / "grid.png"), cwd=untrained_version.root)
    one_error_line(done, 2, "a runs:/ reference names the model vaegen logs in a training run, runs:/RUN_ID/decoder")

    run_id = mlflow.MlflowClient().get_model_version("vae-decoder", "1").run_id
    root = tmp_path / "odd <i>|`name`"  # a real folder name: every character is allowed in a local path
    done = vaegen(
        "generate",
        "--model",
        f"runs:/{run_id}/decoder",
        "--n",
        "1000",
        "--seed",
        "2",
        "--out",
        str(root),
        cwd=untrained_version.root,
        RAY_ADDRESS=ray_address,
    )
    assert done.returncode == 0, done.stderr
    card = (root / "vae-decoder-v1-n1000-seed2-float32-f3" / "_README.md").read_text()
    prose = card.split("## Load it")[0] + card.split("## Verify it")[1]  # code blocks show paths as Python strings
    assert "<i>" not in prose and "|`name`" not in prose
    assert "<code>vaegen inspect " in prose and "odd &lt;i&gt;&#124;&#96;name&#96;" in prose
    assert f"| resolved from | `runs:/{run_id}/decoder` |" in card


def test_a_version_whose_config_and_weights_disagree_fails_once_and_is_not_resumable(
    untrained_version, ray_address, tmp_path
):
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/vae-decoder/1", dst_path=folder))
        config = json.loads((local / "artifacts" / "config.json").read_text())
        config["hidden_sizes"] = [size + 1 for size in config["hidden_sizes"]]  # weights stay the old shapes
        (local / "artifacts" / "config.json").write_text(json.dumps(config))
        run = client.create_run(client.get_experiment_by_name("vaegen-train").experiment_id)
        client.log_artifacts(run.info.run_id, str(local), "decoder")
        client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/decoder"
    version = client.create_model_version("vae-decoder", source, run_id=run.info.run_id).version
    root = tmp_path / "out"
    done = vaegen(
        "generate",
        "--model",
        f"vae-decoder/{version}",
        "--n",
        "4000",
        "--rows-per-shard",
        "1000",
        "--seed",
        "1",
        "--out",
        str(root),
        cwd=untrained_version.root,
        RAY_ADDRESS=ray_address,
    )
    # Caught on the driver, before any worker or folder: the weights' npy headers against config.json.
    error = one_error_line(done, 1, f"vae-decoder/{version} is refused", "config.json implies")
    assert "failed 3 times" not in error and "rerun the same command" not in error and "--resume" not in error
    assert not root.exists() or [path.name for path in root.iterdir()] == []  # no unfinished folder to mislead
