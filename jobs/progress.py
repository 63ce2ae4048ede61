"""Progress on stderr: a bar with rows/s and ETA on a terminal, periodic log lines elsewhere (Ray job logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # often enough to see a job move in `ray job logs`, rare enough to stay readable


class Progress:
    def __init__(self, total: int, description: str, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = total
        self.description = description
        self.count = 0
        self.started = time.perf_counter()
        self.last_log = self.started
        self.bar = tqdm(total=total, desc=description, unit="rows", unit_scale=True, file=self.stream) if self.stream.isatty() else None

    def advance(self, rows: int) -> None:
        self.count += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.perf_counter()
        if now - self.last_log >= LOG_INTERVAL_S or self.count >= self.total:
            self.last_log = now
            elapsed = now - self.started
            rate = self.count / elapsed if elapsed > 0 else 0.0
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            print(f"{self.description}: {self.count:,}/{self.total:,} rows, {rate:,.0f} rows/s, ETA {eta:,.0f} s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
