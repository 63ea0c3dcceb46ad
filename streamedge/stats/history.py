"""A bounded ring of per-interval statistics: what ``streamedge stats --plot`` draws.

Every ``stats.history.interval_s`` the ring takes one point: how much each
cumulative counter grew since the previous point, and the latency
percentiles of what was observed in between (from the difference of two
histogram marks). Taking a point is O(counters + buckets), independent of
the message rate; the ring holds at most ``stats.history.points`` points, and
the set of counter names is bounded by the code (drop reasons, tiers and
levels are fixed vocabularies), so its size is bounded in bytes.

:meth:`History.document` renders the ring in columns (one list per series),
the form published retained on ``<prefix>/stats/history``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from streamedge.records import JSON
from streamedge.stats.metrics import HistogramMark, Stats


@dataclass(frozen=True, slots=True)
class _Point:
    t: float
    dt: float
    counts: dict[str, float]
    latency: dict[str, tuple[float, float, float]]
    queue_depth: int | None


class History:
    """Per-interval deltas of a :class:`Stats`, in a ring of ``points``."""

    SCHEMA_VERSION = 1

    def __init__(self, stats: Stats, *, points: int, interval_s: float) -> None:
        self._stats = stats
        self.interval_s = interval_s
        self._points: deque[_Point] = deque(maxlen=points)
        self._last_counts: dict[str, float] = stats.counters()
        self._last_marks: dict[str, HistogramMark] = {
            name: h.mark() for name, h in stats.latency_histograms().items()
        }
        self._last_t = stats.uptime_s

    def __len__(self) -> int:
        return len(self._points)

    @property
    def capacity(self) -> int:
        """The most points kept."""
        return self._points.maxlen or 0

    def sample(self, wall_now: float, queue_depth: Callable[[], int | None] | None = None) -> None:
        """Take one point covering the time since the previous one."""
        st = self._stats
        now = st.uptime_s
        counts = st.counters()
        delta = {
            name: value - self._last_counts.get(name, 0)
            for name, value in counts.items()
            if value != self._last_counts.get(name, 0)
        }
        latency: dict[str, tuple[float, float, float]] = {}
        marks: dict[str, HistogramMark] = {}
        for name, hist in st.latency_histograms().items():
            part = hist.since(self._last_marks.get(name))
            if part.count:
                latency[name] = (part.quantile(0.5), part.quantile(0.95), part.quantile(0.99))
            marks[name] = hist.mark()
        self._points.append(
            _Point(
                t=round(wall_now, 3),
                dt=round(now - self._last_t, 3),
                counts=delta,
                latency=latency,
                queue_depth=queue_depth() if queue_depth is not None else None,
            )
        )
        self._last_counts = counts
        self._last_marks = marks
        self._last_t = now

    def document(self, *, gateway: str, version: str, ts: float) -> JSON:
        """The ring in columns: ``t``, ``dt``, ``counts.<name>``, ``latency_ms.<name>``."""
        points = list(self._points)
        count_names = sorted({n for p in points for n in p.counts})
        lat_names = sorted({n for p in points for n in p.latency})

        def number(x: float) -> float | int:
            return int(x) if float(x).is_integer() else round(x, 4)

        latency: JSON = {}
        for name in lat_names:
            cols: list[list[float | None]] = [[], [], []]
            for p in points:
                q = p.latency.get(name)
                for i in range(3):
                    cols[i].append(None if q is None else round(q[i] * 1e3, 3))
            latency[name] = {"p50": cols[0], "p95": cols[1], "p99": cols[2]}
        return {
            "schema_version": self.SCHEMA_VERSION,
            "gateway": gateway,
            "version": version,
            "ts": round(ts, 3),
            "interval_s": self.interval_s,
            "capacity": self.capacity,
            "t": [p.t for p in points],
            "dt": [p.dt for p in points],
            "counts": {
                name: [number(p.counts.get(name, 0)) for p in points] for name in count_names
            },
            "latency_ms": latency,
            "queue_depth": [p.queue_depth for p in points],
        }
