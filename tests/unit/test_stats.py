from __future__ import annotations

import json

import pytest

from streamedge.caches.layer.wiring import layer_cache_report
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


# -- histograms -----------------------------------------------------------------
def test_histogram_exports_exact_cumulative_counts_at_prometheus_bounds() -> None:
    from streamedge.stats.metrics import PROMETHEUS_BOUNDS

    h = Histogram()
    for x in (0.001, 0.0010001, 0.0025, 0.05, 0.0500001, 70.0):
        h.observe(x)
    got = dict(h.cumulative(PROMETHEUS_BOUNDS))
    # "le" is inclusive: a value exactly on a bound counts in that bound's bucket.
    assert got[0.0005] == 0
    assert got[0.001] == 1
    assert got[0.0025] == 3
    assert got[0.05] == 4
    assert got[0.1] == 5
    assert got[60.0] == 5
    assert h.count == 6


def test_histogram_since_a_mark_covers_only_later_observations() -> None:
    h = Histogram()
    for _ in range(100):
        h.observe(0.001)
    mark = h.mark()
    for _ in range(10):
        h.observe(0.2)
    part = h.since(mark)
    assert part.count == 10
    assert part.sum == pytest.approx(2.0)
    assert part.quantile(0.5) == pytest.approx(0.2, rel=0.21)
    assert h.quantile(0.5) == pytest.approx(0.001, rel=0.21)
    assert h.since(None).count == 110


def test_histogram_ignores_nonsense_durations() -> None:
    h = Histogram()
    h.observe(float("nan"))
    h.observe(-1.0)
    assert h.count == 2 and h.max == 0.0 and h.sum == 0.0


# -- sliding windows --------------------------------------------------------------
def test_sliding_counter_answers_for_a_shorter_window() -> None:
    clock = Clock()
    sc = SlidingCounter(60, clock, slots=60)
    sc.add("x", 1)
    clock.t += 20
    sc.add("x", 2)
    clock.t += 20
    sc.add("x", 4)
    assert sc.totals() == {"x": 7}
    assert sc.totals(window_s=10) == {"x": 4}
    assert sc.totals(window_s=25) == {"x": 6}
    assert sc.effective_window(0.1) == pytest.approx(1.0)  # one slot at least
    assert sc.effective_window(1e6) == pytest.approx(60.0)  # at most the window


def test_sliding_counter_caps_its_names() -> None:
    clock = Clock()
    sc = SlidingCounter(60, clock, slots=6, max_names=3)
    for i in range(10):
        sc.add(f"n{i}")
    totals = sc.totals()
    assert set(totals) == {"n0", "n1", "n2", "other"}
    assert totals["other"] == 7


def test_sliding_counter_work_and_memory_do_not_grow_with_events_or_time() -> None:
    """O(1) per event and bounded: however many events over however long, the
    counter holds at most slots x names entries, and an add touches one slot."""
    clock = Clock()
    sc = SlidingCounter(300, clock, slots=60)
    names = ["in", "answered", "application.hit", "application.miss"]
    touched: set[int] = set()
    for i in range(200_000):
        clock.t += 0.37  # ~20 hours of simulated time, every slot reused many times
        before = [dict(c) for c in sc._counts] if i % 10_007 == 0 else None
        sc.add(names[i % 4])
        if before is not None:
            changed = [j for j, c in enumerate(sc._counts) if c != before[j]]
            assert len(changed) == 1  # one slot written, nothing else scanned or rewritten
            touched.update(changed)
    assert len(sc._counts) == 60
    assert sum(len(c) for c in sc._counts) <= 60 * len(names)
    assert len(touched) > 1  # the ring really turns
    # The window still counts only its last 300 s: 300 / 0.37 events.
    assert sum(sc.totals().values()) == pytest.approx(300 / 0.37, rel=0.02)


def test_stats_memory_is_bounded_whatever_the_traffic() -> None:
    import tracemalloc

    clock = Clock()
    st = make_stats(clock, max_streams=50)

    def traffic(n: int, offset: int) -> None:
        for i in range(n):
            clock.t += 0.01
            key = f"d{(offset + i) % 5000}/s"  # far more streams than tracked
            st.received(key, 100)
            st.cache_result("application", hit=i % 3 == 0, stream=key, model="m@1")
            st.inference("local", 0.01, ok=True, stream=key, model="m@1")
            st.answered(key, "local", 0.02)
            st.recheck("m@1/e@1", agreed=i % 10 != 0)

    traffic(20_000, 0)  # warm up: every structure at its bound
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    traffic(30_000, 20_000)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert grown < 64 * 1024, grown
    assert len(st.streams) == 50
    assert st.messages_in == 50_000


# -- levels, accuracy, filters of a snapshot ----------------------------------------
def test_every_cache_level_is_in_the_snapshot_and_unknown_levels_are_refused() -> None:
    st = make_stats(Clock())
    st.cache_result("device", hit=True, saved_s=0.5)
    st.cache_result("layer", hit=False)
    cache = st.snapshot()["cache"]
    assert set(cache) == {"layer", "application", "device"}
    assert cache["device"]["hits"] == 1 and cache["device"]["hit_ratio"] == 1.0
    assert cache["layer"]["misses"] == 1 and cache["layer"]["hit_ratio"] == 0.0
    assert cache["application"]["hit_ratio"] is None
    with pytest.raises(ValueError, match="unknown cache level"):
        st.cache_result("edge", hit=True)
    with pytest.raises(ValueError, match="unknown cache level"):
        st.recheck("ns", agreed=True, level="nowhere")


def test_recheck_reports_agreement_with_its_sample_count() -> None:
    clock = Clock()
    st = make_stats(clock)
    for i in range(10):
        st.recheck("m@1/down@1", agreed=i != 0)
    clock.t += 400  # out of the window
    st.recheck("m@1/down@1", agreed=False)
    st.recheck("n@2/down@1", agreed=True, level="device")
    acc = st.snapshot()["accuracy"]
    assert (acc["checked"], acc["agreed"]) == (12, 10)
    assert acc["agreement"] == pytest.approx(10 / 12, abs=1e-4)
    assert (acc["window_checked"], acc["window_agreed"]) == (2, 1)
    assert acc["levels"]["application"] == {"checked": 11, "agreed": 9, "agreement": 0.8182}
    assert acc["levels"]["device"]["checked"] == 1
    assert acc["namespaces"]["m@1/down@1"]["level"] == "application"
    only_n = st.snapshot(model="n")["accuracy"]["namespaces"]
    assert list(only_n) == ["n@2/down@1"]


def test_recheck_namespaces_are_capped() -> None:
    st = make_stats(Clock())
    for i in range(Stats.MAX_NAMESPACES + 10):
        st.recheck(f"m{i}@1/e@1", agreed=True)
    namespaces = st.snapshot()["accuracy"]["namespaces"]
    assert len(namespaces) == Stats.MAX_NAMESPACES
    assert namespaces["other"]["checked"] == 11


def test_reuse_ratio_counts_answers_reused() -> None:
    st = make_stats(Clock())
    for tier in ("cache", "cache", "filter", "local"):
        st.answered("d/s", tier, 0.01)
    reuse = st.snapshot()["reuse"]
    assert reuse["answers"] == 4 and reuse["reused"] == 3
    assert reuse["ratio"] == 0.75 and reuse["window_ratio"] == 0.75


def test_snapshot_filters_by_model_and_window() -> None:
    clock = Clock()
    st = make_stats(clock)
    st.gauges["caches"] = lambda: {
        "a@1/e@1": {"entries": 1, "bytes": 10},
        "b@2/e@1": {"entries": 2, "bytes": 20},
    }
    st.inference("local", 0.01, ok=True, model="a@1")
    st.inference("local", 0.01, ok=True, model="b@2")
    st.cache_result("application", hit=True)
    clock.t += 100
    st.cache_result("application", hit=False)
    snap = st.snapshot(model="a", window_s=30)
    assert list(snap["models"]) == ["a@1"]
    assert list(snap["caches"]) == ["a@1/e@1"]
    assert snap["window_s"] == pytest.approx(30.0)
    app = snap["cache"]["application"]
    assert (app["window_hits"], app["window_misses"]) == (0, 1)
    assert snap["selection"] == {"device": None, "stream": None, "model": "a", "window_s": 30}
    assert "selection" not in st.snapshot()
    assert st.snapshot(model="a@1")["models"].keys() == {"a@1"}


# -- the JSON Schema ------------------------------------------------------------
def full_stats() -> Stats:  # one line per observation kind
    """A Stats fed through every observation, with the gateway's gauges."""
    clock = Clock()
    st = make_stats(clock)
    st.gauges["queues"] = lambda: {
        "depth": 1,
        "bytes": 10,
        "max_bytes": 100,
        "shards": {"shard0": 1},
    }
    st.gauges["caches"] = lambda: {"m@1/e@1": {"entries": 3, "bytes": 300}}
    st.gauges["transport"] = lambda: {
        "connected": True,
        "protocol": "5",
        "out_queue": 0,
        "reconnects": 0,
        "lost_incoming": 0,
        "lost_outgoing": 0,
        "stray_messages": 0,
    }
    st.gauges["device_topics"] = lambda: {"followed": ["d"]}
    st.gauges["tiers"] = lambda: {
        "order": "config",
        "tiers": {
            "local": {
                "breaker": "closed",
                "breaker_opens": 0,
                "in_flight": 0,
                "capacity": 2,
                "service_ms": 3.5,
                "expected_ms": 3.5,
                "escalations": 1,
            }
        },
        "store_and_forward": dict.fromkeys(
            ("entries", "bytes", "stored", "refused", "answered", "expired", "lost"), 0
        ),
    }
    st.cache_gauges["layer"] = lambda: layer_cache_report({})
    st.deferred_to_store("d/s")
    st.escalation("local")
    st.received("d/s", 10)
    st.received(None, 0)
    st.dropped("bad_payload")
    st.filter_result("deadband", "pass")
    st.filter_result("deadband", "drop")
    st.filtered("d/s")
    for level in ("layer", "application", "device"):
        st.cache_result(level, hit=True, stream="d/s", saved_s=0.1, model="m@1")
        st.recheck(f"m@1/{level}", agreed=True, level=level)
    st.inference("local", 0.02, ok=True, stream="d/s", model="m@1")
    st.inference("all", 0.5, ok=False, model="m@1")
    st.stage("decode", 0.001)
    st.answered("d/s", "local", 0.03)
    st.published(2)
    st.saved_bytes(1000)
    st.error("handle")
    st.request(valid=True)
    return st


def test_a_fully_fed_snapshot_is_valid_against_the_schema() -> None:
    import jsonschema

    from streamedge.stats.schema import snapshot_schema

    schema = snapshot_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    st = full_stats()
    for snap in (
        st.snapshot(),
        st.snapshot(device="d"),
        st.snapshot(stream="s", model="m", window_s=20),
        make_stats(Clock()).snapshot(),
    ):
        validator.validate(snap)
        # Every section streamedge publishes is described (not only tolerated).
        assert set(snap) <= set(schema["properties"]), set(snap) - set(schema["properties"])


def test_the_schema_rejects_what_it_should() -> None:
    import jsonschema

    from streamedge.stats.schema import snapshot_schema

    validator = jsonschema.Draft202012Validator(snapshot_schema())
    snap = full_stats().snapshot()
    assert validator.is_valid(snap)
    broken = json.loads(json.dumps(snap))
    del broken["cache"]["device"]
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(snap))
    broken["cache"]["application"]["hit_ratio"] = 1.5
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(snap))
    broken["schema_version"] = 1
    assert not validator.is_valid(broken)


# -- history --------------------------------------------------------------------
def test_history_points_are_per_interval_deltas_in_a_bounded_ring() -> None:
    import jsonschema

    from streamedge.stats.history import History
    from streamedge.stats.schema import history_schema

    clock = Clock()
    st = make_stats(clock)
    hist = History(st, points=3, interval_s=10)
    for _ in range(4):
        st.received("d/s", 1)
        st.answered("d/s", "local", 0.001)
        st.cache_result("application", hit=False)
        st.inference("local", 0.001, ok=True)
    clock.t += 10
    hist.sample(1.7e9, lambda: 2)
    for _ in range(6):
        st.received("d/s", 1)
        st.answered("d/s", "cache", 0.2)
        st.cache_result("application", hit=True)
    st.dropped("too_large")
    clock.t += 10
    hist.sample(1.7e9 + 10)
    doc = hist.document(gateway="g", version="0", ts=1.7e9 + 10)
    jsonschema.Draft202012Validator(history_schema()).validate(doc)
    assert doc["counts"]["in"] == [4, 6]
    assert doc["counts"]["cache.application.hits"] == [0, 6]
    assert doc["counts"]["drops.too_large"] == [0, 1]
    assert doc["dt"] == [10, 10]
    assert doc["queue_depth"] == [2, None]
    e2e = doc["latency_ms"]["end_to_end"]
    assert e2e["p50"][0] == pytest.approx(1.0, rel=0.21)
    assert e2e["p50"][1] == pytest.approx(200.0, rel=0.21)  # only the second interval's
    assert doc["latency_ms"]["inference.local"]["p50"] == [pytest.approx(1.0, rel=0.21), None]
    for _ in range(5):
        clock.t += 10
        hist.sample(1.7e9)
    assert len(hist) == 3 and len(hist.document(gateway="g", version="0", ts=0)["t"]) == 3
