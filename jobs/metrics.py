"""Every vaegen metric, defined once, and the driver's running numbers of a job that both the metrics and the
stderr progress lines read (one source of truth).

Metrics go out through Ray's metrics agent (`ray.util.metrics`): each node serves them on its metrics export port
(`ray start --metrics-export-port`, 8080 on KubeRay), where Prometheus scrapes them. Ray prefixes every application
metric with `ray_` and gives a counter its `_total`: the counter defined here as `vaegen_rows_written` is scraped as
`ray_vaegen_rows_written_total` (`exported_names()` lists them all; deploy/grafana's dashboard uses those).
Recording is per part, per shard event or per driver poll, never per row. Where no metrics agent runs (a local
`ray.init()` without the dashboard) Ray drops the points; where Ray is not started at all nothing is recorded.
Ray exports a gauge only while it is being set: the driver sets its gauges again at every poll (`TICK_S`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TextIO

from jobs.progress import Progress

RAY_PREFIX = "ray_"  # what Ray's metrics agent puts before every application metric's name
LABELS = ("dataset_id", "model_name", "model_version")
TICK_S = 1.0  # the driver refreshes its gauges at most this often (Ray exports a gauge only while it is set)
# Seconds a part takes to decode or to encode: 65,536 rows take ~0.3 s (MLP) to ~10 s (conv on one CPU core).
PART_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 600.0)


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str  # as recorded; scraped with RAY_PREFIX, counters with `_total` too
    kind: str  # counter | gauge | histogram
    description: str
    extra_labels: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return LABELS + self.extra_labels

    @property
    def exported(self) -> str:
        return RAY_PREFIX + self.name + ("_total" if self.kind == "counter" else "")


METRICS = {
    metric.name: metric
    for metric in (
        # generate: the driver, once per committed part, retry, lost or restarted worker, poll
        Metric("vaegen_rows_written", "counter", "Rows in the parts committed (written or verified on a resume)"),
        Metric("vaegen_parts_committed", "counter", "Part files committed (written or verified on a resume)"),
        Metric("vaegen_bytes_written", "counter", "Bytes of the part files committed"),
        Metric("vaegen_shards_retried", "counter", "Shards tried again after a worker died or raised"),
        Metric("vaegen_workers_lost", "counter", "Workers seen dead while running a shard"),
        Metric("vaegen_workers_restarted", "counter", "Workers that came back (restarted by Ray) after being lost"),
        Metric("vaegen_workers_added", "counter", "Workers a growing pool (--num-workers MIN:MAX, auto) added mid-job"),
        Metric("vaegen_shards_in_flight", "gauge", "Shards running on workers now"),
        Metric("vaegen_workers_alive", "gauge", "Workers that take shards now"),
        Metric("vaegen_rows_per_second", "gauge", "Rows committed per second since the job started"),
        Metric("vaegen_job_eta_seconds", "gauge", "Expected seconds until every row is committed, at the rate so far"),
        Metric("vaegen_job_progress_ratio", "gauge", "Share of the job's rows committed, 0 to 1"),
        # generate: the workers, once per part written
        Metric("vaegen_decode_seconds", "histogram", "Seconds a worker spent decoding one part's rows"),
        Metric("vaegen_encode_seconds", "histogram", "Seconds a worker spent encoding one part's Parquet"),
        # refresh (and generate --publish)
        Metric("vaegen_refresh_last_publish_timestamp_seconds", "gauge", "Unix time at which `latest` last moved"),
        Metric(
            "vaegen_audit_verdicts", "counter", "Audits of a dataset before publishing it, by verdict", ("verdict",)
        ),
        Metric("vaegen_lock_takeovers", "counter", "Refresh locks taken over from a dead holder"),
    )
}

_recorders: dict[str, Any] = {}  # name -> the ray.util.metrics object of this process, made on first use


def exported_names() -> set[str]:
    """Every series name a scrape can show, histograms' `_bucket`, `_sum` and `_count` included."""
    names = set()
    for metric in METRICS.values():
        suffixes = ("_bucket", "_sum", "_count") if metric.kind == "histogram" else ("",)
        names.update(metric.exported + suffix for suffix in suffixes)
    return names


def labels_of(dataset_id: str, model_name: str, model_version: int | str) -> dict[str, str]:
    return {"dataset_id": dataset_id, "model_name": model_name, "model_version": str(model_version)}


def _recorder(name: str) -> Any | None:
    """The process's recorder of `name`; None where Ray is not started (a test, a notebook without Ray)."""
    recorder = _recorders.get(name)
    if recorder is not None:
        return recorder
    import ray

    if not ray.is_initialized():
        return None
    from ray.util import metrics as ray_metrics

    metric = METRICS[name]
    if metric.kind == "counter":
        recorder = ray_metrics.Counter(name, metric.description, metric.labels)
    elif metric.kind == "gauge":
        recorder = ray_metrics.Gauge(name, metric.description, metric.labels)
    else:
        recorder = ray_metrics.Histogram(name, metric.description, list(PART_SECONDS_BUCKETS), metric.labels)
    _recorders[name] = recorder
    return recorder


def record(name: str, value: float, labels: dict[str, str]) -> None:
    """Add to a counter, set a gauge or observe a histogram value; a no-op without Ray."""
    recorder = _recorder(name)
    if recorder is None:
        return
    kind = METRICS[name].kind
    if kind == "counter":
        if value > 0:  # Ray refuses increments of 0
            recorder.inc(value, labels)
    elif kind == "gauge":
        recorder.set(value, labels)
    else:
        recorder.observe(value, labels)


def record_part_timings(labels: dict[str, str], decode_s: float, encode_s: float) -> None:
    """On a worker, once per part it wrote."""
    record("vaegen_decode_seconds", decode_s, labels)
    record("vaegen_encode_seconds", encode_s, labels)


def record_audit(dataset_id: str, model: dict[str, Any], verdict: str) -> None:
    """On the driver of a refresh (or generate --publish), once per dataset audited; `model`: the manifest's."""
    record("vaegen_audit_verdicts", 1, {**labels_of(dataset_id, model["name"], model["version"]), "verdict": verdict})


def record_published(dataset_id: str, model: dict[str, Any]) -> None:
    """Once `latest` names the dataset."""
    record(
        "vaegen_refresh_last_publish_timestamp_seconds",
        time.time(),
        labels_of(dataset_id, model["name"], model["version"]),
    )


def record_lock_takeover(model_name: str, model_version: int | str) -> None:
    """A refresh took over a dead holder's lock; its dataset is not known yet (dataset_id "")."""
    record("vaegen_lock_takeovers", 1, labels_of("", model_name, model_version))


class Unmonitored:
    """What the engine reports to when nobody listens (a benchmark's or a test's bare WorkerPool.run)."""

    def part(self, rows: int, size_bytes: int) -> None: ...
    def shard_retried(self) -> None: ...
    def worker_lost(self) -> None: ...
    def worker_restarted(self) -> None: ...
    def worker_added(self) -> None: ...
    def tick(self, in_flight: int, workers_alive: int, workers_total: int) -> None: ...


UNMONITORED = Unmonitored()  # stateless: one instance serves every caller that passes no monitor


class JobMonitor(Unmonitored):
    """The driver's numbers of one generate job: what it exports, and what its stderr progress lines say.

    The engine reports events (a part committed, a shard retried, a worker lost or back) and calls `tick` at
    every poll; each updates the counts once, and both the metrics and the progress line read those counts.
    """

    def __init__(
        self,
        total_rows: int,
        description: str,
        labels: dict[str, str],
        workers: int,
        export: bool = True,
        stream: TextIO | None = None,
    ):
        self.labels, self.export = labels, export
        self.workers_total, self.workers_alive = workers, 0  # alive once they answer (pool._Job pings them)
        self.in_flight = self.retries = self.lost = self.restarted = 0
        self.progress = Progress(total_rows, description, stream=stream, note=self.note)
        self.next_tick_s = 0.0

    def note(self) -> str:
        return (
            f"{self.workers_alive}/{self.workers_total} workers alive, {self.retries} "
            f"retr{'y' if self.retries == 1 else 'ies'}" + (f", {self.lost} lost" if self.lost else "")
        )

    def _count(self, name: str, value: float = 1) -> None:
        if self.export:
            record(name, value, self.labels)

    def part(self, rows: int, size_bytes: int) -> None:
        self._count("vaegen_rows_written", rows)
        self._count("vaegen_parts_committed")
        self._count("vaegen_bytes_written", size_bytes)
        self.progress.advance(rows)
        self.next_tick_s = 0.0  # the gauges follow the count at once

    def shard_retried(self) -> None:
        self.retries += 1
        self._count("vaegen_shards_retried")

    def worker_lost(self) -> None:
        self.lost += 1
        self._count("vaegen_workers_lost")

    def worker_restarted(self) -> None:
        self.restarted += 1
        self._count("vaegen_workers_restarted")

    def worker_added(self) -> None:
        self._count("vaegen_workers_added")

    def tick(self, in_flight: int, workers_alive: int, workers_total: int) -> None:
        """At every poll of the driver: the gauges, at most every TICK_S."""
        self.in_flight, self.workers_alive, self.workers_total = in_flight, workers_alive, workers_total
        now = time.monotonic()
        if not self.export or now < self.next_tick_s:
            return
        self.next_tick_s = now + TICK_S
        eta_s = self.progress.eta_s()
        for name, value in (
            ("vaegen_shards_in_flight", in_flight),
            ("vaegen_workers_alive", workers_alive),
            ("vaegen_rows_per_second", self.progress.rate()),
            ("vaegen_job_progress_ratio", self.progress.count / max(self.progress.total, 1)),
            ("vaegen_job_eta_seconds", eta_s),
        ):
            if value is not None:
                record(name, value, self.labels)

    def close(self) -> None:
        self.next_tick_s = 0.0
        self.tick(0, self.workers_alive, self.workers_total)
        self.progress.close()
