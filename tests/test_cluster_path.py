"""The README's "Run on a Ray cluster" lines, run verbatim against a real `ray start --head`, and a plain
`vaegen generate` beside that cluster, after it was killed (stale /tmp/ray/ray_current_cluster), and inside
Ray jobs whose tracking store or output root the cluster cannot reach.

The README block is extracted from README.md, so the docs cannot rot. It runs in a private HOME (so its
~/.ray/auth_token is its own) and RAY_TMPDIR, in a folder that holds the quick start's state: an
`mlflow.db` whose `vae-decoder@champion` is version 1, and `.venv` (a link to this venv). Its
`ray stop` (a separate line of the README) would stop every Ray on the machine: the processes it
started are stopped by their environment tag instead (tests/ray_cluster.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers import quick_start_folder, readme_block, shell_env
from ray_cluster import RayEnv, make_ray_env, stop_tagged, tagged_pids, wait_until

pytestmark = pytest.mark.slow  # a real `ray start` cluster and `ray job submit`

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Run on a Ray cluster"
DEFAULT_PORTS = (6379, 8265, 10001, 52365)  # GCS, dashboard, Ray client, dashboard agent: the README uses the defaults
PORTS_WAIT_S = 180  # another Ray on this machine (a concurrent test run) may hold them for a while
COMMAND_TIMEOUT_S = 600


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def readme_cluster(tmp_path_factory) -> Iterator[tuple[Path, RayEnv, subprocess.CompletedProcess]]:
    # Ray's default ports are per machine; any other Ray (even a plain ray.init(), which always takes the
    # dashboard agent's 52365) makes `ray start` come up without a working job API.
    wait_until(
        lambda: all(port_is_free(port) for port in DEFAULT_PORTS),
        PORTS_WAIT_S,
        f"Ray's default ports {DEFAULT_PORTS} on 127.0.0.1 to be free (another Ray runs on this machine)",
        1.0,
    )
    folder = tmp_path_factory.mktemp("quickstart")
    quick_start_folder(folder)
    ray_env = make_ray_env()
    try:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_block(SECTION)],
            cwd=folder,
            env=shell_env(ray_env),
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        yield folder, ray_env, done
    finally:
        survivors = stop_tagged(ray_env.tag)
        shutil.rmtree(ray_env.root, ignore_errors=True)
        assert not survivors, survivors


def vaegen(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("vaegen")), *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def test_readme_cluster_lines_run_verbatim(readme_cluster):
    folder, _, done = readme_cluster
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in done.stdout, done.stdout[-3000:]
    inspected = done.stdout.strip().splitlines()[-1]
    assert inspected.startswith("verified: "), done.stdout[-2000:]
    directory = folder / "datasets" / "vae-decoder-v1-n1000000-seed0-float32-f3"
    record = json.loads((directory / "_manifest.json").read_text())
    assert record["n"] == 1_000_000 and record["model"]["alias"] == "champion"
    assert pq.ParquetFile(directory / "part-00000.parquet").metadata.num_rows == 65_536


def test_plain_generate_beside_the_running_cluster_starts_its_own_ray(readme_cluster):
    folder, ray_env, _ = readme_cluster
    env = {**shell_env(ray_env), "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    cluster_pids = set(tagged_pids(ray_env.tag))
    assert (ray_env.root / "ray" / "ray_current_cluster").is_file()  # what a plain ray.init() would join
    done = vaegen(folder, env, "generate", "--n", "1000", "--seed", "1", "--out", "beside")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / "beside" / "vae-decoder-v1-n1000-seed1-float32-f3" / "_manifest.json").is_file()
    # It started and stopped a Ray of its own: the cluster's processes are the same ones, all alive.
    assert set(tagged_pids(ray_env.tag)) >= cluster_pids
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "list", "jobs", "--address", "127.0.0.1:6379", "--format", "json"],
        env={**env, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    drivers = [job for job in json.loads(listed.stdout) if job.get("type") == "DRIVER"]
    assert drivers == [], f"generate joined the cluster instead of starting its own: {drivers}"


UNREACHABLE = [  # (MLFLOW_TRACKING_URI in the job's runtime env, --out, the error it must give)
    ("", "/abs/out", "MLFLOW_TRACKING_URI is not set inside this Ray job"),
    ("sqlite:///mlflow.db", "/abs/out", "MLFLOW_TRACKING_URI=sqlite:///mlflow.db is a relative path"),
    (None, "relative-out", "output root 'relative-out' is a relative path"),
]


def test_a_job_whose_store_or_output_the_cluster_cannot_reach_fails_in_one_line(readme_cluster):
    folder, ray_env, _ = readme_cluster
    env = {**shell_env(ray_env), "RAY_AUTH_MODE": "token"}
    submits = []
    for tracking, out, _ in UNREACHABLE:  # submitted at once: each waits for its own job only
        runtime_env = {} if tracking is None else {"env_vars": {"MLFLOW_TRACKING_URI": tracking}}
        submits.append(
            subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("ray")),
                    "job",
                    "submit",
                    "--address",
                    "http://127.0.0.1:8265",
                    "--runtime-env-json",
                    json.dumps(runtime_env),
                    "--",
                    "generate",
                    "--n",
                    "10",
                    "--out",
                    out,
                ],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for submit, (tracking, out, fragment) in zip(submits, UNREACHABLE, strict=True):
        stdout, _ = submit.communicate(timeout=COMMAND_TIMEOUT_S)  # the job's log is on stdout
        assert submit.returncode != 0, (tracking, out, stdout[-2000:])
        errors = {line for line in stdout.splitlines() if "vaegen: error:" in line}  # Ray echoes the job's log twice
        assert len(errors) == 1 and fragment in errors.pop(), (tracking, out, stdout[-3000:])
        assert "Traceback" not in stdout
    assert not list(folder.glob("**/mlflow.db"))[1:], "an empty store was created"


def test_plain_generate_after_the_cluster_was_killed(readme_cluster, tmp_path):
    """Last in this module: kills the cluster. A `ray start` killed rather than stopped leaves
    ray_current_cluster behind; a plain `vaegen generate` must not try to join it."""
    folder, ray_env, _ = readme_cluster
    for pid in tagged_pids(ray_env.tag):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not tagged_pids(ray_env.tag), 30, "the killed cluster's processes to go")
    assert (ray_env.root / "ray" / "ray_current_cluster").is_file()
    env = {**shell_env(ray_env), "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    done = vaegen(folder, env, "generate", "--n", "1000", "--seed", "2", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "vae-decoder-v1-n1000-seed2-float32-f3" / "_manifest.json").is_file()
