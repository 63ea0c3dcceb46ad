from __future__ import annotations

import pytest

from streamedge.stats.metrics import Histogram, SlidingCounter, Stats


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_histogram_quantiles_within_a_bucket() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.observe(ms / 1000)
    assert h.count == 100
    assert h.mean == pytest.approx(0.0505)
    assert h.quantile(0.5) == pytest.approx(0.050, rel=0.21)
    assert h.quantile(0.99) == pytest.approx(0.099, rel=0.21)
    assert h.quantile(1.0) <= h.max == pytest.approx(0.1)
    assert Histogram().quantile(0.5) == 0.0


def test_sliding_counter_forgets_old_slots() -> None:
    clock = Clock()
    sc = SlidingCounter(60, clock, slots=60)
    sc.add("hit", 5)
    clock.t += 30
    sc.add("hit", 1)
    sc.add("miss", 2)
    assert sc.totals() == {"hit": 6, "miss": 2}
    clock.t += 45  # the first slot is now out of the window
    assert sc.totals() == {"hit": 1, "miss": 2}
    clock.t += 120
    assert sc.totals() == {}


def make_stats(clock: Clock, max_streams: int = 100) -> Stats:
    return Stats(
        gateway="g", version="0", clock=clock, wall_clock=lambda: 1.7e9, max_streams=max_streams
    )


def test_snapshot_books_balance_and_pending_counts_in_flight() -> None:
    clock = Clock()
    st = make_stats(clock)
    for _ in range(10):
        st.received("d/s", 100)
    for _ in range(4):
        st.answered("d/s", "local", 0.01)
    st.filtered("d/s")
    st.dropped("bad_payload", "d/s")
    snap = st.snapshot()
    m = snap["messages"]
    assert m["in"] == 10
    assert m["in"] == m["answered"] + m["filtered"] + m["dropped"] + m["pending"]
    assert m["pending"] == 4
    assert snap["drops"] == {"bad_payload": 1}
    assert snap["schema_version"] == Stats.SCHEMA_VERSION


def test_cache_ratios_total_and_windowed() -> None:
    clock = Clock()
    st = make_stats(clock)
    for _ in range(3):
        st.cache_result("application", hit=True, saved_s=0.1)
    st.cache_result("application", hit=False)
    clock.t += 400  # beyond the 300 s window
    st.cache_result("application", hit=False)
    c = st.snapshot()["cache"]["application"]
    assert (c["hits"], c["misses"]) == (3, 2)
    assert c["hit_ratio"] == pytest.approx(0.6)
    assert c["window_hit_ratio"] == 0.0
    assert st.snapshot()["saved"]["inference_s"] == pytest.approx(0.3)


def test_per_stream_counters_are_bounded_and_filterable() -> None:
    clock = Clock()
    st = make_stats(clock, max_streams=2)
    st.received("a/x", 1)
    st.received("b/x", 1)
    st.received("c/y", 1)
    assert list(st.streams) == ["b/x", "c/y"]
    snap = st.snapshot(device="c")
    assert list(snap["streams"]) == ["c/y"]
    assert "streams" not in st.snapshot()


def test_inference_and_stage_latency_in_snapshot() -> None:
    st = make_stats(Clock())
    st.inference("local", 0.02, ok=True)
    st.inference("local", 0.0, ok=False)
    st.stage("decode", 0.001)
    snap = st.snapshot()
    assert snap["inference"]["local"]["calls"] == 2
    assert snap["inference"]["local"]["failures"] == 1
    assert snap["inference"]["local"]["latency_ms"]["count"] == 1
    assert snap["latency_ms"]["stages"]["decode"]["count"] == 1
