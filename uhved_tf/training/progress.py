"""A dependency-free progress bar with rate and ETA (stderr), quiet when not on a terminal."""

from __future__ import annotations

import sys
import time


def format_seconds(s: float) -> str:
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
    def __init__(self, total: int, start: int = 0, desc: str = "", stream=None, every: int | None = None,
                 enabled: bool = True):
        self.total, self.count, self.desc = total, start, desc
        self.start_count = start
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every or (1 if self.tty else max(1, (total - start) // 20))
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.t_first = None
        self.postfix = ""

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        if self.t_first is None:
            # The first step includes tracing; rates are measured from the end of it.
            self.t_first = time.perf_counter()
            self.first_count = self.count
        self.postfix = postfix
        if self.enabled and ((self.count - self.start_count) % self.every == 0 or self.count >= self.total):
            self._draw()

    def _draw(self) -> None:
        now = time.perf_counter()
        done = self.count - getattr(self, "first_count", self.count)
        rate = (now - self.t_first) / done if done > 0 else None
        eta = format_seconds(rate * (self.total - self.count)) if rate else "?"
        pct = 100.0 * self.count / max(1, self.total)
        width = 24
        filled = int(width * self.count / max(1, self.total))
        bar = "#" * filled + "-" * (width - filled)
        speed = f"{rate:.2f}s/it" if rate else "-- s/it"
        line = (f"{self.desc} [{bar}] {self.count}/{self.total} {pct:3.0f}% {speed} "
                f"elapsed {format_seconds(now - self.t0)} ETA {eta} {self.postfix}")
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
            if self.count >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.count < self.total:
            self.stream.write("\n")
            self.stream.flush()


def window_progress(case_id):
    """A progress bar over the sliding-window batches of one case (created on the first call,
    when the number of windows is known)."""
    state = {}

    def update(done, total):
        if "bar" not in state:
            state["bar"] = Progress(total, desc=f"  {case_id} windows")
        bar = state["bar"]
        bar.update(done - bar.count)
        if done >= total:
            bar.close()
    return update
