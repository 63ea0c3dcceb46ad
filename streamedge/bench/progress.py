"""A one-line progress display on stderr (count, rate, time left).

No progress library is used: the harness needs a count, a rate and an
estimate of the time left, which a dozen lines give without a dependency
(rich and tqdm are not installed with streamedge). On a terminal the line is
redrawn in place at most every 0.2 s; when stderr is not a terminal (CI logs,
``make bench > file``) a line is written at every 10 % instead, so logs stay
short.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO


class Progress(Protocol):
    """Something told how far a long loop has got."""

    def advance(self, n: int = 1) -> None:
        """``n`` more items are done."""
        ...


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def advance(self, n: int = 1) -> None:
        """Ignore the update."""
        del n


class ProgressLine:
    """Progress of one phase as a line on stderr: ``label  123/795  9.8/s  ETA 1:08``.

    Use as a context manager so the line is finished even on errors.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        stream: TextIO | None = None,
        unit: str = "frames",
        interval_s: float = 0.2,
    ) -> None:
        """Start a phase of ``total`` items (None: unknown)."""
        self.label = label
        self.total = total
        self.unit = unit
        self.done = 0
        self._out = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._out, "isatty", lambda: False)())
        self._interval = interval_s
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more items and redraw when due."""
        self.done += n
        now = time.monotonic()
        if self._tty:
            if now - self._last_draw >= self._interval:
                self._last_draw = now
                self._out.write("\r" + self.render(now) + "\x1b[K")
                self._out.flush()
        elif self.total:
            decile = min(10, self.done * 10 // self.total)
            if decile > self._last_decile:
                self._last_decile = decile
                self._out.write(self.render(now) + "\n")
                self._out.flush()

    def render(self, now: float | None = None) -> str:
        """The progress line's text."""
        elapsed = max((now if now is not None else time.monotonic()) - self._start, 1e-9)
        rate = self.done / elapsed
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        text = f"{self.label}  {count} {self.unit}  {rate:.1f}/s"
        if self.total and rate > 0 and self.done < self.total:
            left = int((self.total - self.done) / rate)
            text += f"  ETA {left // 60}:{left % 60:02d}"
        else:
            text += f"  {elapsed:.1f} s"
        return text

    def close(self) -> None:
        """Finish the line."""
        if self._tty:
            self._out.write("\r" + self.render() + "\x1b[K\n")
        elif self._last_decile < 10:
            self._out.write(self.render() + "\n")
        self._out.flush()
