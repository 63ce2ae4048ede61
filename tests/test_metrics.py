"""Live metrics and progress of a submitted job, end to end (issue 24, parts 1 and 4).

One real `ray start --head` (2 CPUs, its metrics export port on a free port, Ray's metrics report interval cut to
0.5 s so that a job of a few seconds shows up while it runs) for the module. README's "Watching a job" block runs
verbatim in bash: it submits `generate` as a Ray job, follows its log and greps the metrics endpoint. Meanwhile the
test scrapes http://127.0.0.1:PORT/metrics itself and parses it with prometheus_client's parser: a scrape taken
before the manifest existed shows the job's counters part-way, and at the end they equal the manifest.
The Grafana dashboard's queries are checked against jobs/metrics.py and that same scrape (Ray's node metrics).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from conftest import register_untrained_decoder
from helpers import metric_value as value
from helpers import readme_block
from helpers import scrape_metrics as scrape
from jobs import metrics
from jobs.progress import Progress
from ray_cluster import RayCluster, ray_cluster, wait_until
from vae_core.config import VAEConfig

pytestmark = pytest.mark.slow  # a real `ray start` cluster and `ray job submit`

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "vaegen-dashboard.json"
SECTION = "## Watching a job"
N = 500_000  # what the README block generates: 8 parts of 65,536 28x28 rows, several seconds on 2 CPUs
DATASET = "vae-decoder-v1-n500000-seed0-uint8-f3"
JOB_TIMEOUT_S = 300
REPORT_INTERVAL_MS = "500"  # Ray's metrics report interval (RAY_metrics_report_interval_ms), 10 s by default


@pytest.fixture(scope="module")
def cluster(module_sqlite) -> Iterator[RayCluster]:
    register_untrained_decoder(config=VAEConfig(input_shape=(28, 28)))  # vae-decoder/1: random weights, real cost
    environment = {"RAY_metrics_report_interval_ms": REPORT_INTERVAL_MS, "MLFLOW_TRACKING_URI": module_sqlite.uri}
    with ray_cluster(head_cpus=2, worker_node_cpus=(), extra_env=environment) as started:
        yield started


@pytest.fixture(scope="module")
def watched(cluster: RayCluster, tmp_path_factory) -> dict:
    """README's block run verbatim in bash, with the test scraping the metrics port while the job runs."""
    folder = tmp_path_factory.mktemp("watch")
    directory = folder / "datasets" / DATASET
    metrics_url = f"http://127.0.0.1:{cluster.metrics_port}"
    env = cluster.env.environ(RAY_DASHBOARD=cluster.dashboard_url, RAY_METRICS=metrics_url)
    block = readme_block(SECTION)
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    during, output, names = [], io.StringIO(), set()
    logs_before_commit = ""
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while shell.poll() is None and time.monotonic() < deadline:
            time.sleep(0.25)
            try:
                samples = scrape(cluster.metrics_port)
            except OSError:  # the agent restarting its HTTP server, a loaded box: the next poll tries again
                continue
            names.update(name for name, _ in samples)
            if not (directory / "_manifest.json").exists():  # checked after the scrape: it was taken before the commit
                during.append(samples)
                logs_before_commit = job_logs(cluster, "watched-1") or logs_before_commit
        output.write(shell.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    committed = directory / "_manifest.json"
    manifest = json.loads(committed.read_text()) if committed.exists() else None
    return {
        "returncode": shell.returncode,
        "output": output.getvalue(),
        "during": during,
        "manifest": manifest,
        "logs_before_commit": logs_before_commit,
        "names": names,
    }


def job_logs(cluster: RayCluster, submission_id: str) -> str:
    try:
        with urllib.request.urlopen(f"{cluster.dashboard_url}/api/jobs/{submission_id}/logs", timeout=5) as response:
            return json.load(response).get("logs", "")
    except (OSError, ValueError):
        return ""


def test_readme_block_shows_progress_and_metrics_of_a_submitted_job(watched):
    assert watched["returncode"] == 0, watched["output"][-4000:]
    record = watched["manifest"]
    assert record is not None and record["n"] == N, watched["output"][-3000:]
    output = watched["output"]
    # the progress lines, in the job's log: rows, rows/s, ETA or time taken, workers alive, retries
    prefix = f"generate {DATASET}: "
    first = re.escape(prefix) + r"0/500,000 rows, 0 rows/s, ETA unknown; 0/2 workers alive, 0 retries"
    assert re.search(first, output), output[-3000:]
    done = re.escape(prefix) + r"500,000/500,000 rows, [\d,]+ rows/s, done in [\d.]+ s; 2/2 workers alive, 0 retries"
    assert re.search(done, output), output[-3000:]
    # printed and flushed while the job ran: the job's log had the first line before the manifest existed
    assert prefix + "0/500,000 rows" in watched["logs_before_commit"]
    # the README's curl | grep line: the counter of this dataset, equal to its rows
    grepped = [line for line in output.splitlines() if line.startswith("ray_vaegen_rows_written_total{")]
    assert any(f'dataset_id="{DATASET}"' in line and line.endswith(f" {float(N)}") for line in grepped), grepped


def test_metrics_are_scraped_while_the_job_runs_and_end_equal_to_the_manifest(watched, cluster):
    labels = {"dataset_id": DATASET, "model_name": "vae-decoder", "model_version": "1"}
    rows_during = [value(samples, "ray_vaegen_rows_written_total", **labels) for samples in watched["during"]]
    part_way = [rows for rows in rows_during if rows is not None and 0 < rows < N]
    assert part_way, f"no scrape before the commit saw the job part-way: {rows_during}"
    assert any((value(samples, "ray_vaegen_shards_in_flight", **labels) or 0) >= 1 for samples in watched["during"])
    assert any(value(samples, "ray_vaegen_job_eta_seconds", **labels) is not None for samples in watched["during"])
    record = watched["manifest"]

    def final() -> dict | None:
        samples = scrape(cluster.metrics_port)
        return samples if value(samples, "ray_vaegen_parts_committed_total", **labels) == len(record["files"]) else None

    samples = wait_until(final, 30, "the final counters", interval_s=0.25)
    assert value(samples, "ray_vaegen_rows_written_total", **labels) == record["n"] == N
    assert value(samples, "ray_vaegen_bytes_written_total", **labels) == record["total_bytes"]
    assert value(samples, "ray_vaegen_shards_retried_total", **labels) is None  # none happened: never incremented
    # the workers' histograms: one observation per part they wrote (the last ones may die with their worker unsent)
    decoded = value(samples, "ray_vaegen_decode_seconds_count", **labels)
    assert decoded is not None and 1 <= decoded <= len(record["files"])
    assert value(samples, "ray_vaegen_encode_seconds_sum", **labels) > 0


def test_every_dashboard_query_names_a_metric_the_code_or_ray_emits(watched, cluster):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(panels) >= 10 and all(panel["type"] in ("timeseries", "stat", "bargauge") for panel in panels)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        position = panel["gridPos"]
        assert position["w"] > 0 and position["h"] > 0 and position["x"] + position["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"])
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    expressions.append(variables["dataset_id"]["definition"])
    named = {name for expr in expressions for name in re.findall(r"\b([a-z_]*(?:vaegen|ray_node)_[a-z_]+)\b", expr)}
    assert named >= {metric.exported for metric in metrics.METRICS.values() if metric.kind != "histogram"}
    ours = {name for name in named if "vaegen" in name}
    assert ours <= metrics.exported_names(), ours - metrics.exported_names()
    scraped = watched["names"] | {name for name, _ in scrape(cluster.metrics_port)}
    ray_own = named - ours
    # Ray's node metrics as this Ray exports them (gauges: each shows in the scrapes after the agent's report,
    # every 5 s); GPU ones only where a GPU is, so those from Ray's reporter's source
    reporter = Path(ray.__file__).parent.joinpath("dashboard", "modules", "reporter", "reporter_agent.py").read_text()
    gpu = {name for name in ray_own if "gpu" in name}
    assert ray_own - gpu and ray_own - gpu <= scraped, ray_own - gpu - scraped
    assert all(f'"{name.removeprefix("ray_")}"' in reporter for name in gpu), gpu
    assert ours & scraped >= {"ray_vaegen_rows_written_total", "ray_vaegen_decode_seconds_bucket"}


def test_progress_and_metrics_read_the_same_numbers():
    stream = io.StringIO()
    monitor = metrics.JobMonitor(100, "generate d", metrics.labels_of("d", "m", 1), workers=2, stream=stream)
    monitor.tick(2, 2, 2)
    monitor.shard_retried()
    monitor.worker_lost()
    monitor.part(40, 1_000)
    monitor.progress.log_interval_s = 0.0
    monitor.tick(1, 1, 2)
    monitor.part(60, 1_000)
    monitor.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "generate d: 0/100 rows, 0 rows/s, ETA unknown; 0/2 workers alive, 0 retries"
    assert re.fullmatch(
        r"generate d: 100/100 rows, \S+ rows/s, done in [\d.]+ s; 1/2 workers alive, 1 retry, 1 lost", lines[-1]
    ), lines
    assert monitor.progress.eta_s() == 0.0 and monitor.progress.count == 100
    bare = Progress(10, "x", stream=io.StringIO())
    assert bare.eta_s() is None and bare.rate() == 0.0


REFRESH_DRIVER = """
import ray
from jobs import metrics
ray.init()
model = {"name": "vae-decoder", "version": 1}
metrics.record_lock_takeover("vae-decoder", 1)
metrics.record_audit("d-refresh", model, "pass")
metrics.record_published("d-refresh", model)
"""


def test_refresh_metrics_reach_the_metrics_port(cluster, watched, tmp_path):
    """What refresh and publish record, from a driver of the cluster: valid names and labels, exported on exit."""
    env = cluster.env.environ(RAY_ADDRESS=cluster.gcs_address, PYTHONPATH=str(ROOT))
    before = time.time()
    done = subprocess.run(
        [sys.executable, "-c", REFRESH_DRIVER], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr[-3000:]

    def exported() -> dict | None:
        samples = scrape(cluster.metrics_port)
        return samples if value(samples, "ray_vaegen_refresh_last_publish_timestamp_seconds") else None

    samples = wait_until(exported, 30, "the refresh metrics", interval_s=0.25)
    model = {"model_name": "vae-decoder", "model_version": "1"}
    assert value(samples, "ray_vaegen_audit_verdicts_total", dataset_id="d-refresh", verdict="pass", **model) == 1
    assert value(samples, "ray_vaegen_lock_takeovers_total", dataset_id="", **model) == 1
    published = value(samples, "ray_vaegen_refresh_last_publish_timestamp_seconds", dataset_id="d-refresh", **model)
    assert before <= published <= time.time()
