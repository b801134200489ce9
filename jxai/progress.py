"""A dependency-free progress bar for long batch runs: done/total, items/s, ETA, failures.

On a terminal the line is redrawn in place at most five times a second; when stderr is a file
(logs, CI) a complete line is printed every ``log_interval`` seconds instead, so logs stay
readable. The rate is measured over the last 30 seconds, so the ETA follows the current speed
rather than an average that includes compilation.
"""

from __future__ import annotations

import sys
import time
from collections import deque

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on stderr: done/total, items/s over the last seconds, ETA.

    On a terminal the line is redrawn in place (at most 5 times a second); otherwise (logs, CI)
    a full line is printed every ``log_interval`` seconds. No dependency beyond the stdlib.
    """

    def __init__(self, total: int | None, stream=None, log_interval: float = 10.0):
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = 0.2 if self.tty else log_interval
        self.start = time.perf_counter()
        self.samples: deque[tuple[float, int]] = deque([(self.start, 0)])
        self.done = self.failed = 0
        self.last_draw = 0.0

    def update(self, done: int, failed: int, force: bool = False) -> None:
        now = time.perf_counter()
        self.done, self.failed = done, failed
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[0][0] > 30.0:
            self.samples.popleft()
        if force or now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def rate(self) -> float:
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def line(self, now: float | None = None) -> str:
        rate = self.rate()
        parts = []
        if self.total:
            fraction = min(1.0, self.done / self.total)
            filled = int(fraction * 24)
            parts.append(f"[{'#' * filled}{'.' * (24 - filled)}] {self.done}/{self.total}")
        else:
            parts.append(f"{self.done} items")
        parts.append(f"{rate:.1f} items/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        parts.append(f"elapsed {_clock((now or time.perf_counter()) - self.start)}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line (e.g. a failure) without breaking the bar."""
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        if self.tty:
            self._draw(time.perf_counter())
        self.stream.flush()

    def close(self) -> None:
        self.update(self.done, self.failed, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
