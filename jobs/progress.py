"""Progress of every long step on stderr, through one helper: a tqdm bar with its rate and ETA on a terminal,
periodic log lines elsewhere (Ray job logs, CI, a pipe), each with the count, the total, the rate and the ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # often enough to see a job move in `ray job logs`, rare enough to stay readable


class Progress:
    """`total` units of work named `description`. Off a terminal it logs a line when it starts, then at most every
    `log_interval_s` (0: at every advance), and when done; `note` (an epoch's losses, a stage's name) rides along,
    else what the `note` callable says (a job's workers alive and retries, jobs.metrics.JobMonitor)."""

    def __init__(
        self,
        total: int,
        description: str,
        unit: str = "rows",
        stream: TextIO | None = None,
        log_interval_s: float = LOG_INTERVAL_S,
        note: Callable[[], str] | None = None,
    ):
        self.stream = stream or sys.stderr
        self.total, self.description, self.unit = total, description, unit
        self.log_interval_s = log_interval_s
        self.default_note = note
        self.count = 0
        self.started = self.last_log = time.perf_counter()
        is_terminal = getattr(self.stream, "isatty", lambda: False)()
        self.bar = (
            tqdm(
                total=total,
                desc=description,
                unit=unit,
                unit_scale=unit == "rows",
                file=self.stream,
                dynamic_ncols=True,
            )
            if is_terminal
            else None
        )
        if self.bar is None:
            self._log(None)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.count += count
        if note is None and self.default_note is not None:
            note = self.default_note()
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.log_interval_s or self.count >= self.total:
            self.last_log = now
            self._log(note)

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = time.perf_counter() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None before the first unit."""
        rate = self.rate()
        if self.count >= self.total:
            return 0.0
        return (self.total - self.count) / rate if rate > 0 else None

    def _log(self, note: str | None) -> None:
        if note is None and self.default_note is not None:
            note = self.default_note()
        rate, eta_s = self.rate(), self.eta_s()
        eta = f"ETA {eta_s:,.0f} s" if eta_s is not None else "ETA unknown"
        if self.count >= self.total:
            eta = f"done in {time.perf_counter() - self.started:,.1f} s"
        rate_text = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
        line = f"{self.description}: {self.count:,}/{self.total:,} {self.unit}, {rate_text} {self.unit}/s, {eta}" + (
            f"; {note}" if note else ""
        )
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
