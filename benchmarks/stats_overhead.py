"""What statistics cost per message, and proof that it does not grow.

Records one message the way the pipeline does (received, filter verdict,
cache lookup, inference, three stage timings, answered) and times it, in
one process, under conditions side by side:

- the baseline: a 60-slot window, 100 streams, a fresh ``Stats``;
- a window with 100x more slots (6000): O(1) per event means the same cost;
- after 1,000,000 earlier messages: the cost must not grow with history;
- 100x more distinct streams than are tracked (LRU churn on every message).

It also times what runs per interval or per request, not per message:
rendering a snapshot, the Prometheus text, and taking a history point.
The clock advances 1 ms per message, so the windows really turn.
Ratios to the baseline are the figures to read (the machine is shared).

Usage::

    python benchmarks/stats_overhead.py --json bench-results/stats_overhead.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamedge.stats.history import History
from streamedge.stats.metrics import Stats
from streamedge.stats.prometheus import render


class SimClock:
    """A clock the benchmark advances (1 ms per message)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(slots: int, max_streams: int) -> tuple[Stats, SimClock]:
    clock = SimClock()
    st = Stats(
        gateway="bench",
        version="0",
        clock=clock,
        wall_clock=time.time,
        window_s=300.0,
        window_slots=slots,
        max_streams=max_streams,
    )
    st.gauges["queues"] = lambda: {"depth": 0, "bytes": 0, "max_bytes": 1, "shards": {"s0": 0}}
    st.gauges["caches"] = lambda: {"m@1/e@1": {"entries": 100, "bytes": 10_000}}
    return st, clock


def record(st: Stats, clock: SimClock, i: int, streams: int) -> None:
    """One message, as the pipeline records it."""
    clock.t += 0.001
    key = f"dev{i % streams}/cam"
    st.received(key, 4096)
    st.filter_result("noscope", "pass")
    hit = i % 3 != 0
    st.cache_result("application", hit=hit, stream=key, saved_s=0.02, model="m@1")
    st.stage("decode", 0.001)
    st.stage("embed", 0.0005)
    st.stage("lookup", 0.0002)
    if hit:
        st.answered(key, "cache", 0.002)
    else:
        st.inference("local", 0.02, ok=True, stream=key, model="m@1")
        st.answered(key, "local", 0.025)
    st.published()


def run_once(st: Stats, clock: SimClock, streams: int, n: int, start: int) -> float:
    """The mean cost of one recorded message over ``n`` messages (µs)."""
    t0 = time.perf_counter()
    for i in range(start, start + n):
        record(st, clock, i, streams)
    return (time.perf_counter() - t0) / n * 1e6


def timed_ms(fn: Callable[[], object], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per timed run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--history", type=int, default=1_000_000, help="earlier messages")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    cases = [
        ("baseline: 60 slots, 100 streams, fresh", 60, 10_000, 100, 0),
        ("6000-slot window", 6000, 10_000, 100, 0),
        (f"after {args.history:,} messages", 60, 10_000, 100, args.history),
        ("10,000 streams, 100 tracked (LRU churn)", 60, 100, 10_000, 0),
    ]
    states = []
    for _name, slots, max_streams, streams, before in cases:
        st, clock = make(slots, max_streams)
        for i in range(before):
            record(st, clock, i, streams)
        states.append((st, clock, streams, before))
    # Round-robin the cases so a busy moment of the shared machine hits them all alike.
    runs: list[list[float]] = [[] for _ in cases]
    for r in range(args.repeats):
        for k, (st, clock, streams, before) in enumerate(states):
            runs[k].append(run_once(st, clock, streams, args.messages, before + r * args.messages))
    rows: list[dict[str, Any]] = [
        {"case": case[0], "us_per_message": round(statistics.median(times), 3)}
        for case, times in zip(cases, runs, strict=True)
    ]
    base = rows[0]["us_per_message"]
    for row in rows:
        row["ratio"] = round(row["us_per_message"] / base, 2)

    st, clock = make(60, 10_000)
    for i in range(100_000):
        record(st, clock, i, 1000)
    hist = History(st, points=240, interval_s=15)
    for _ in range(240):
        for i in range(100):
            record(st, clock, i, 1000)
        hist.sample(time.time())
    doc = hist.document(gateway="bench", version="0", ts=time.time())
    periodic = {
        "snapshot_ms": timed_ms(st.snapshot, args.repeats),
        "snapshot_device_filter_ms": timed_ms(lambda: st.snapshot(device="dev1"), args.repeats),
        "prometheus_text_ms": timed_ms(lambda: render(st), args.repeats),
        "history_point_ms": timed_ms(lambda: hist.sample(time.time()), args.repeats),
        "history_document_ms": timed_ms(
            lambda: hist.document(gateway="bench", version="0", ts=time.time()), args.repeats
        ),
        "snapshot_bytes": len(json.dumps(st.snapshot(), separators=(",", ":"))),
        "history_bytes_240_points": len(json.dumps(doc, separators=(",", ":"))),
        "prometheus_bytes": len(render(st)),
    }

    width = max(len(r["case"]) for r in rows)
    print(f"{'per message (one recorded message)':<{width}}  {'µs':>8}  {'ratio':>6}")
    for row in rows:
        print(f"{row['case']:<{width}}  {row['us_per_message']:8.2f}  {row['ratio']:6.2f}")
    print()
    print("per interval / per request")
    for key, value in periodic.items():
        shown = f"{value:10.3f}" if key.endswith("_ms") else f"{value:10d}"
        print(f"  {key:<28}{shown}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.machine(),
                    "python": platform.python_version(),
                    "messages": args.messages,
                    "repeats": args.repeats,
                    "per_message": rows,
                    "periodic": {k: round(v, 4) for k, v in periodic.items()},
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
