"""Progress of every long step on stderr, through one helper: a tqdm bar with its rate and ETA on a terminal,
periodic log lines elsewhere (Ray job logs, CI, a pipe), each with the count, the total, the rate and the ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # often enough to see a job move in `ray job logs`, rare enough to stay readable


class Progress:
    """`total` units of work named `description`. Off a terminal it logs a line when it starts, then at most every
    `log_interval_s` (0: at every advance), and when done; `note` (an epoch's losses, a stage's name) rides along."""

    def __init__(self, total: int, description: str, unit: str = "rows", stream: TextIO | None = None,
                 log_interval_s: float = LOG_INTERVAL_S):
        self.stream = stream or sys.stderr
        self.total, self.description, self.unit = total, description, unit
        self.log_interval_s = log_interval_s
        self.count = 0
        self.started = self.last_log = time.perf_counter()
        is_terminal = getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, desc=description, unit=unit, unit_scale=unit == "rows", file=self.stream,
                        dynamic_ncols=True) if is_terminal else None
        if self.bar is None:
            self._log(None)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def advance(self, count: int = 1, note: str | None = None) -> None:
        self.count += count
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(count)
            return
        now = time.perf_counter()
        if now - self.last_log >= self.log_interval_s or self.count >= self.total:
            self.last_log = now
            self._log(note)

    def _log(self, note: str | None) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.count / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {(self.total - self.count) / rate:,.0f} s" if rate > 0 else "ETA unknown"
        if self.count >= self.total:
            eta = f"done in {elapsed:,.1f} s"
        rate_text = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
        line = (f"{self.description}: {self.count:,}/{self.total:,} {self.unit}, {rate_text} {self.unit}/s, {eta}"
                + (f"; {note}" if note else ""))
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
