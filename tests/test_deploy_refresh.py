"""The CronJob's submit script (deploy/k8s/cronjob-refresh.yaml), run as its pod runs it, against a real Ray.

The script is taken verbatim from the manifest and started the way Kubernetes starts the container
(`command` + `args`, the container's env, the downward-API labels filled in); only `args`, the Ray
job itself, is replaced by a small program that records when it starts, ends or is interrupted, so
that each Ray job is counted on disk. The cluster is a `ray start --head` on 127.0.0.1
(tests/ray_cluster.py: private HOME and temp dir, auth mode set on both sides, stopped by pid),
started with the Ray settings of the ConfigMap `vaegen-config`, as the Ray pods are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ray_cluster import RayCluster, ray_cluster, wait_until  # tests/ is on sys.path (rootdir conftest)

pytestmark = pytest.mark.slow

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
RUN_TIMEOUT_S = 240  # one pod's whole run: a few `ray job` calls of 2-4 s each on a loaded 2-core box

RECORDER = """
import pathlib, signal, sys, time
log, seconds = pathlib.Path(sys.argv[1]), float(sys.argv[2])
release = log.with_suffix(".release")  # the test lets a job end early by creating it
def note(word):
    with log.open("a") as handle:
        handle.write(word + "\\n")
note("started")
try:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not release.exists():
        time.sleep(0.05)
except KeyboardInterrupt:  # what vaegen does on SIGINT: clean up, exit non-zero
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second SIGINT must not cut the record short
    note("interrupted")
    sys.exit(130)
note("finished")
"""


def _manifest(name: str, kind: str) -> dict[str, Any]:
    return next(doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc and doc["kind"] == kind)


def _submit_container() -> dict[str, Any]:
    return _manifest("cronjob-refresh.yaml", "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"
    ][0]


def _ray_settings() -> dict[str, str]:
    """The Ray job-supervisor settings the Ray pods get from the ConfigMap."""
    data = _manifest("mlflow.yaml", "ConfigMap")["data"]
    return {key: value for key, value in data.items() if key.startswith("RAY_")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _ray_settings().items():
            patch.setenv(key, value)  # inherited by `ray start`, so by the raylet and the job supervisors
        with ray_cluster(head_cpus=1, worker_node_cpus=()) as running:
            yield running


class Pod:
    """One pod of one Kubernetes Job of the CronJob: the manifest's command, env and a recording Ray job."""

    def __init__(
        self,
        cluster: RayCluster,
        tmp_path: Path,
        job_name: str,
        job_uid: str,
        *,
        sleep_s: float,
        deadline_s: int | None = None,
    ) -> None:
        container = _submit_container()
        assert container["envFrom"] == [{"configMapRef": {"name": "vaegen-config"}}]
        env = {
            **_manifest("mlflow.yaml", "ConfigMap")["data"],
            **{var["name"]: var["value"] for var in container["env"] if "value" in var},
        }
        assert env.pop("RAY_ADDRESS").endswith(":8265")
        if deadline_s is not None:
            env["REFRESH_DEADLINE_S"] = str(deadline_s)
        recorder = tmp_path / "recorder.py"
        recorder.write_text(RECORDER)
        self.log = tmp_path / f"{job_name}-{job_uid}.log"
        self.argv = [*container["command"], sys.executable, str(recorder), str(self.log), str(sleep_s)]
        self.env = cluster.env.environ(**env, RAY_ADDRESS=cluster.dashboard_url, JOB_NAME=job_name, JOB_UID=job_uid)
        self.submission_id = f"{job_name}-{job_uid.split('-')[0]}"
        self.tmp_path = tmp_path

    def run(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv, env=self.env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)

    def start(self) -> subprocess.Popen[str]:
        """The pod in the background; its output goes to self.output."""
        self.output = self.tmp_path / f"pod-{uuid.uuid4().hex[:6]}.out"
        with self.output.open("w") as out:
            return subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )

    def release(self) -> None:
        """Let the recording Ray job finish now (it sleeps up to sleep_s otherwise)."""
        self.log.with_suffix(".release").touch()

    def events(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


def ray_jobs(cluster: RayCluster, prefix: str) -> dict[str, str]:
    """submission id -> status of every Ray job on the cluster whose id starts with prefix."""
    code = (
        "import json, sys; from ray.job_submission import JobSubmissionClient; "
        "print(json.dumps({j.submission_id: j.status.value for j in JobSubmissionClient(sys.argv[1]).list_jobs()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, cluster.dashboard_url],
        env=cluster.env.environ(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout.strip().splitlines()[-1])
    return {job_id: status for job_id, status in jobs.items() if job_id and job_id.startswith(prefix)}


def test_one_ray_job_per_kubernetes_job_whatever_happens_to_its_pods(cluster: RayCluster, tmp_path: Path) -> None:
    job_name, job_uid = "vaegen-refresh-29410560", str(uuid.uuid4())
    # Runs until released: the replacement pod must find it running however slowly that pod starts.
    pod = Pod(cluster, tmp_path, job_name, job_uid, sleep_s=RUN_TIMEOUT_S)

    # The first pod submits, then dies while following (evicted, node lost): the Ray job goes on.
    first = pod.start()
    wait_until(lambda: "started" in pod.events(), RUN_TIMEOUT_S, "the Ray job to start")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)

    # Its replacement finds the job running and follows it to the end instead of submitting again.
    second = pod.start()
    wait_until(
        lambda: "exists (" in pod.output.read_text() or second.poll() is not None,
        RUN_TIMEOUT_S,
        "the replacement pod to find the Ray job",
    )
    pod.release()
    assert second.wait(timeout=RUN_TIMEOUT_S) == 0, pod.output.read_text()
    assert f"Ray job {pod.submission_id} exists (RUNNING)" in pod.output.read_text(), pod.output.read_text()
    assert pod.events() == ["started", "finished"]

    # A pod of the same Job after success: exit 0, nothing submitted.
    third = pod.run()
    assert third.returncode == 0 and "exists (SUCCEEDED)" in third.stdout, third.stdout + third.stderr
    assert pod.events() == ["started", "finished"]
    assert ray_jobs(cluster, job_name) == {pod.submission_id: "SUCCEEDED"}

    # Another Job, even under the same name (a manual run re-created), is a new Ray job.
    other = Pod(cluster, tmp_path, job_name, str(uuid.uuid4()), sleep_s=0)
    done = other.run()
    assert done.returncode == 0 and f"submitting Ray job {other.submission_id}" in done.stdout, (
        done.stdout + done.stderr
    )
    assert other.events() == ["started", "finished"]
    assert ray_jobs(cluster, job_name) == {pod.submission_id: "SUCCEEDED", other.submission_id: "SUCCEEDED"}


def test_the_deadline_interrupts_the_ray_job_and_a_failed_job_is_not_resubmitted(
    cluster: RayCluster, tmp_path: Path
) -> None:
    job_name = "vaegen-refresh-29410620"
    pod = Pod(cluster, tmp_path, job_name, str(uuid.uuid4()), sleep_s=600, deadline_s=3)
    started = time.monotonic()
    done = pod.run()
    took_s = time.monotonic() - started
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"Ray job {pod.submission_id} ended FAILED" in done.stderr, done.stderr
    assert pod.events() == ["started", "interrupted"], "SIGINT, not SIGKILL: refresh gets to release its lock"
    assert took_s < 120, f"a 3 s deadline took {took_s:.0f} s to stop the job"
    # A retry of the same Job does not start the failed refresh again (the next schedule resumes it).
    again = pod.run()
    assert again.returncode == 3 and "exists (FAILED)" in again.stdout, again.stdout + again.stderr
    assert pod.events() == ["started", "interrupted"]
    assert ray_jobs(cluster, job_name) == {pod.submission_id: "FAILED"}


def test_ray_job_stop_interrupts_with_the_configmap_signal(cluster: RayCluster, tmp_path: Path) -> None:
    """What the follower's `ray job stop` does on the Ray pods: SIGINT first (RAY_JOB_STOP_SIGNAL), not SIGTERM."""
    assert _ray_settings() == {"RAY_JOB_STOP_SIGNAL": "SIGINT", "RAY_JOB_STOP_WAIT_TIME_S": "60"}
    job_name = "vaegen-refresh-29410680"
    pod = Pod(cluster, tmp_path, job_name, str(uuid.uuid4()), sleep_s=600)
    running = pod.start()
    try:
        wait_until(lambda: "started" in pod.events(), RUN_TIMEOUT_S, "the Ray job to start")
        stop = subprocess.run(
            ["ray", "job", "stop", pod.submission_id],
            env=pod.env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert running.wait(timeout=RUN_TIMEOUT_S) == 3, "the follower reports a stopped Ray job as exit 3"
    finally:
        if running.poll() is None:
            os.killpg(running.pid, signal.SIGKILL)
    wait_until(lambda: len(pod.events()) > 1, 10, "the Ray job's last record")  # flushed as the job ended
    assert pod.events() == ["started", "interrupted"]
    assert ray_jobs(cluster, job_name) == {pod.submission_id: "STOPPED"}
