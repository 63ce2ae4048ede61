"""What the live metrics cost a generate job: the same job with metrics on and off, in one run.

    python benchmarks/metrics.py [--n 2000000] [--repeats 2] [--out benchmarks/out/metrics.json]

The job: n float32 28x28 rows (the README's 2M-row throughput job), 65,536 rows per part, a 2 -> 128 -> 784 decoder
with random weights (decode cost is a trained one's), on a local Ray with 2 CPUs and its dashboard and metrics agent
running (so the recorded points are exported, as on a cluster). Each run writes a fresh dataset into a temporary
folder through WorkerPool.run with a JobMonitor, the path `vaegen generate` takes; worker start-up is excluded.
"on": the driver and the workers record every metric (jobs/metrics.py); "off": `metrics=False`, nothing recorded.
A warm-up run (off) comes first and is not counted. Runs alternate on/off/off/on..., so that load changing on a
shared box hits both alike. At the end the metrics port is scraped: the rows counter must equal n times the "on"
runs (the metrics were really exported).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tail import decoder_state  # noqa: E402  the same random-weights 28x28 decoder


def run_once(export: bool, spec, config: dict, state: dict, root: Path) -> dict:
    import ray

    from jobs import metrics
    from jobs.generate.engine import Placement
    from jobs.generate.pool import WorkerPool
    from jobs.generate.storage import Storage

    placement = Placement("cpu", 2, 1.0, 0.0, 1, 1)
    with (
        tempfile.TemporaryDirectory(dir=root) as out,
        WorkerPool(Storage(out), placement, export_metrics=export) as pool,
    ):
        ray.get([worker.pid.remote() for worker in pool.workers])  # started: start-up is not timed
        monitor = metrics.JobMonitor(
            spec.n,
            f"generate {spec.dataset_id}",
            metrics.labels_of(spec.dataset_id, spec.model_name, spec.model_version),
            placement.num_workers,
            export,
        )
        started = time.perf_counter()
        parts = pool.run(spec, config, state, range(spec.num_shards), lambda info: None, monitor=monitor)
        seconds = time.perf_counter() - started
        monitor.close()
    return {
        "metrics": "on" if export else "off",
        "seconds": seconds,
        "rows_per_s": spec.n / seconds,
        "parts": len(parts),
        "load_average_1m": os.getloadavg()[0],
    }


def per_call_us(calls: int) -> dict[str, float]:
    """Microseconds one record() costs the calling process, per kind: the A/B above drowns in a shared box's noise,
    this does not. A job makes ~5 calls per part (3 counters on the driver, 2 histograms on a worker) and ~5 gauge
    sets per second of the driver."""
    from jobs import metrics

    labels = metrics.labels_of("bench", "bench-decoder", 1)
    costs = {}
    for kind, name in (
        ("counter", "vaegen_rows_written"),
        ("gauge", "vaegen_shards_in_flight"),
        ("histogram", "vaegen_decode_seconds"),
    ):
        metrics.record(name, 1.0, labels)  # the recorder is made on first use: not timed
        started = time.perf_counter()
        for _ in range(calls):
            metrics.record(name, 1.0, labels)
        costs[kind] = 1e6 * (time.perf_counter() - started) / calls
    return costs


def exported_rows(port: int, dataset_id: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == "ray_vaegen_rows_written_total" and sample.labels.get("dataset_id") == dataset_id
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, on and off")
    parser.add_argument("--calls", type=int, default=20_000, help="record() calls timed per kind")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "metrics.json"))
    args = parser.parse_args()

    import ray

    from jobs.generate.spec import DatasetSpec

    config, state = decoder_state()
    spec = DatasetSpec(
        model_name="bench-decoder",
        model_version=1,
        n=args.n,
        seed=42,
        latent_dim=2,
        sample_shape=(28, 28),
        rows_per_shard=65_536,
    )
    order = [
        export for repeat in range(args.repeats) for export in ((True, False) if repeat % 2 == 0 else (False, True))
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="vaegen-metrics-") as folder:
        os.environ.update(
            {
                "RAY_TMPDIR": folder,
                "HOME": folder,
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_metrics_report_interval_ms": "1000",
            }
        )
        ray.init(
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level=logging.WARNING,
            _temp_dir=str(Path(folder) / "ray"),
        )
        try:
            port = ray._private.worker._global_node.metrics_export_port
            warm_up = run_once(False, spec, config, state, Path(folder))  # first-run effects (page cache): not counted
            print(f"warm-up     {warm_up['seconds']:7.2f} s (not counted)", file=sys.stderr, flush=True)
            for export in order:
                result = run_once(export, spec, config, state, Path(folder))
                results.append(result)
                print(
                    f"metrics {result['metrics']:3} {result['seconds']:7.2f} s  {result['rows_per_s']:9,.0f} rows/s  "
                    f"load {result['load_average_1m']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )
            calls_us = per_call_us(args.calls)
            time.sleep(3)  # one report interval and more: the last points reach the agent
            exported = exported_rows(port, spec.dataset_id)
        finally:
            ray.shutdown()
    on = [r["seconds"] for r in results if r["metrics"] == "on"]
    off = [r["seconds"] for r in results if r["metrics"] == "off"]
    summary = {
        "median_seconds_on": statistics.median(on),
        "median_seconds_off": statistics.median(off),
        "cost_percent": 100 * (statistics.median(on) / statistics.median(off) - 1),
        "rows_exported": exported,
        "rows_expected": args.n * len(on),
        "record_call_us": calls_us,
    }
    calls_per_job = 5 * spec.num_shards + 5 * statistics.median(off)  # per part, and gauges once a second
    summary["record_calls_per_job"] = round(calls_per_job)
    summary["record_cost_percent_of_job"] = 100 * calls_per_job * max(calls_us.values()) / 1e6 / statistics.median(off)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "n": args.n,
        "warm_up": warm_up,
        "results": results,
        "summary": summary,
        "command": "python benchmarks/metrics.py " + " ".join(sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    if exported != args.n * len(on):
        raise SystemExit(f"the metrics port showed {exported:,.0f} rows written, expected {args.n * len(on):,}")


if __name__ == "__main__":
    main()
