"""The tier router: fallback, timeouts, breakers, escalation, cost model, store-and-forward."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from streamedge.errors import AllTiersFailedError, DeferredError
from streamedge.inference.breaker import BreakerState
from streamedge.inference.config import InferenceConfig
from streamedge.inference.router import TierRouter, normalised_entropy
from streamedge.inference.store import DeferredStore
from streamedge.records import InferenceRequest, InferenceResult, StreamKey, Tier
from streamedge.stats.metrics import Stats
from tests.unit.inference.fakes import FakeBackend, FakeClock, request


def config(**overrides: Any) -> InferenceConfig:
    doc: dict[str, Any] = {
        "tiers": [
            {
                "type": "local",
                "name": "a",
                "timeout_s": 0.2,
                "breaker": {"failures": 2, "reset_s": 10},
            },
            {
                "type": "edge",
                "name": "b",
                "timeout_s": 0.2,
                "breaker": {"failures": 2, "reset_s": 10},
            },
            {"type": "cloud", "name": "c", "url": "http://x", "timeout_s": 0.2},
        ]
    }
    doc.update(overrides)
    return InferenceConfig.model_validate(doc)


def make(
    cfg: InferenceConfig | None = None, *, store: DeferredStore | None = None
) -> tuple[TierRouter, list[FakeBackend], FakeClock, Stats]:
    clock = FakeClock()
    backends = [FakeBackend("a"), FakeBackend("b", Tier.EDGE), FakeBackend("c", Tier.CLOUD)]
    stats = Stats(gateway="t", version="0", clock=clock, wall_clock=lambda: 0.0)
    router = TierRouter(backends, cfg or config(), stats=stats, store=store, clock=clock)
    return router, backends, clock, stats


async def test_first_tier_answers_and_says_so() -> None:
    router, (a, b, _), _, stats = make()
    async with router:
        result = await router.infer(request())
    assert (result.tier, result.backend) == (Tier.LOCAL, "a")
    assert (a.calls, b.calls) == (1, 0)
    assert stats.snapshot()["inference"]["a"]["calls"] == 1


async def test_error_and_timeout_fall_back_to_the_next_tier() -> None:
    router, (a, b, c), _, stats = make()
    a.mode = "fail"
    b.mode = "stall"  # never answers: its 0.2 s deadline expires
    async with router:
        result = await router.infer(request())
    assert result.backend == "c"
    snap = stats.snapshot()["inference"]
    assert (snap["a"]["failures"], snap["b"]["failures"], snap["c"]["failures"]) == (1, 1, 0)


async def test_every_tier_failing_raises_with_each_cause() -> None:
    router, backends, _, _ = make()
    for b in backends:
        b.mode = "fail"
    async with router:
        with pytest.raises(AllTiersFailedError) as info:
            await router.infer(request())
    assert info.value.reason == "all_tiers_failed"
    assert [str(c).split(":")[0] for c in info.value.causes] == ["a", "b", "c"]


async def test_no_serving_tier_is_a_reason_of_its_own() -> None:
    router, backends, _, _ = make()
    for b in backends:
        b._serves = lambda _m: False
    async with router:
        with pytest.raises(AllTiersFailedError) as info:
            await router.infer(request())
    assert info.value.reason == "no_tier"


async def test_breaker_opens_skips_probes_and_closes() -> None:
    router, (a, b, _), clock, _ = make()
    a.mode = "fail"
    async with router:
        for _ in range(2):
            assert (await router.infer(request())).backend == "b"
        assert router.tiers[0].breaker.state == BreakerState.OPEN
        calls = a.calls
        assert (await router.infer(request())).backend == "b"
        assert a.calls == calls  # skipped while open, no timeout paid
        clock.t += 10  # reset_s later: one probe goes through
        a.mode = "ok"
        assert (await router.infer(request())).backend == "a"
        assert str(router.tiers[0].breaker.state) == "closed"
        assert router.gauge()["tiers"]["a"]["breaker_opens"] == 1


async def test_failed_probe_reopens_the_breaker() -> None:
    router, (a, _, _), clock, _ = make()
    a.mode = "fail"
    async with router:
        for _ in range(2):
            await router.infer(request())
        clock.t += 10
        await router.infer(request())  # the probe fails
        assert router.tiers[0].breaker.state is BreakerState.OPEN
        calls = a.calls
        await router.infer(request())
        assert a.calls == calls


async def test_low_confidence_escalates_and_the_stronger_answer_wins() -> None:
    cfg = config(escalation=[{"tiers": ["a"], "min_confidence": 0.6}])
    router, (a, b, _), _, stats = make(cfg)
    a.confidence = 0.3
    async with router:
        result = await router.infer(request())
        assert result.backend == "b"
        a.confidence = 0.8
        assert (await router.infer(request())).backend == "a"
    assert stats.snapshot()["inference"]["a"]["escalations"] == 1
    assert b.calls == 1


async def test_escalation_goes_to_the_named_tiers() -> None:
    cfg = config(escalation=[{"tiers": ["a"], "to": ["c"], "min_confidence": 0.6}])
    router, (a, b, c), _, _ = make(cfg)
    a.confidence = 0.3
    async with router:
        assert (await router.infer(request())).backend == "c"
    assert (b.calls, c.calls) == (0, 1)


async def test_high_entropy_escalates() -> None:
    cfg = config(escalation=[{"tiers": ["a"], "max_entropy": 0.9}])
    router, (a, _, _), _, _ = make(cfg)
    a.confidence = None
    a.answer = {"label": "x", "scores": {"x": 0.52, "y": 0.48}}
    async with router:
        assert (await router.infer(request())).backend == "b"
        a.answer = {"label": "x", "scores": {"x": 0.99, "y": 0.01}}
        assert (await router.infer(request())).backend == "a"


async def test_failed_escalation_keeps_the_weak_answer() -> None:
    cfg = config(escalation=[{"tiers": ["a"], "min_confidence": 0.6}])
    router, (a, b, c), _, _ = make(cfg)
    a.confidence = 0.1
    b.mode = c.mode = "fail"
    async with router:
        result = await router.infer(request())
    assert result.backend == "a"


def test_normalised_entropy() -> None:
    assert normalised_entropy({"scores": {"a": 0.5, "b": 0.5}}) == pytest.approx(1.0)
    assert normalised_entropy({"scores": {"a": 1.0, "b": 0.0}}) == pytest.approx(0.0)
    assert normalised_entropy({"label": "a"}) is None


async def test_latency_order_prefers_the_fastest_and_weighs_queue_depth() -> None:
    cfg = config(order="latency")
    router, (a, b, c), _, _ = make(cfg)
    async with router:
        for t in router.tiers:  # measured service times
            t.last_sample = 1000.0
        router.tiers[0].service_s = 0.050
        router.tiers[1].service_s = 0.010
        router.tiers[2].service_s = 0.030
        assert (await router.infer(request())).backend == "b"
        b.depth = 5  # five waiting on one slot: 6 x 10 ms > 30 ms
        assert (await router.infer(request())).backend == "c"


async def test_latency_order_measures_unmeasured_and_stale_tiers() -> None:
    cfg = config(order="latency", stale_s=5)
    router, _, clock, _ = make(cfg)
    async with router:
        router.tiers[0].service_s, router.tiers[0].last_sample = 0.05, clock()
        router.tiers[1].service_s, router.tiers[1].last_sample = 0.5, clock() - 60  # stale
        router.tiers[2].service_s, router.tiers[2].last_sample = 0.01, clock()
        # b's measurement is stale: it counts as unmeasured and is tried again
        assert (await router.infer(request())).backend == "b"


async def test_authoritative_flag_follows_the_tier_config() -> None:
    cfg = config()
    tiers = [
        t.model_copy(update={"authoritative": ["other"]}) if t.tier_name() == "a" else t
        for t in cfg.tiers
    ]
    router, (a, _, _), _, _ = make(cfg.model_copy(update={"tiers": tiers}))
    async with router:
        assert not (await router.infer(request())).authoritative
        a.mode = "fail"
        assert (await router.infer(request())).authoritative


# -- store-and-forward --------------------------------------------------------------


def stored(path: Path) -> list[Path]:
    return sorted(path.glob("*.req"))


def sf_config(**sf: Any) -> InferenceConfig:
    return config(store_and_forward={"enabled": True, "streams": ["*/slow"], "retry_s": 0.05, **sf})


async def test_non_urgent_requests_wait_on_disk_and_are_answered_after_recovery(
    tmp_path: Path,
) -> None:
    store = DeferredStore(tmp_path, max_entries=10, max_bytes=2**20)
    router, backends, clock, _ = make(sf_config(), store=store)
    late: list[tuple[InferenceRequest, InferenceResult | None, str | None]] = []

    async def on_late(req: InferenceRequest, res: InferenceResult | None, err: str | None) -> None:
        late.append((req, res, err))

    router.on_late = on_late
    for b in backends:
        b.mode = "fail"
    async with router:
        with pytest.raises(DeferredError):
            await router.infer(request(StreamKey("cam", "slow"), value=7))
        with pytest.raises(AllTiersFailedError):  # urgent: an error now, not later
            await router.infer(request(StreamKey("cam", "fast")))
        assert len(stored(tmp_path)) == 1
        backends[2].mode = "ok"
        clock.t += 100  # every breaker may probe again
        async with asyncio.timeout(10):
            while not late:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    req, res, err = late[0]
    assert err is None and res is not None and res.backend == "c"
    assert str(req.input.stream) == "cam/slow"
    assert int(req.input.image[0, 0, 0]) == 7  # type: ignore[union-attr]
    assert not stored(tmp_path)
    assert router.gauge()["store_and_forward"]["answered"] == 1


async def test_stored_requests_survive_a_restart(tmp_path: Path) -> None:
    router, backends, _, _ = make(
        sf_config(), store=DeferredStore(tmp_path, max_entries=10, max_bytes=2**20)
    )
    for b in backends:
        b.mode = "fail"
    async with router:
        for _ in range(3):
            with pytest.raises(DeferredError):
                await router.infer(request(StreamKey("cam", "slow")))
    late: list[str | None] = []

    async def on_late(req: InferenceRequest, res: InferenceResult | None, err: str | None) -> None:
        late.append(res.backend if res else err)

    again, _, _, _ = make(
        sf_config(), store=DeferredStore(tmp_path, max_entries=10, max_bytes=2**20)
    )
    again.on_late = on_late
    async with again:
        async with asyncio.timeout(10):
            while len(late) < 3:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    assert late == ["a", "a", "a"]


async def test_a_full_store_refuses_with_a_reason(tmp_path: Path) -> None:
    store = DeferredStore(tmp_path, max_entries=1, max_bytes=2**20)
    router, backends, _, _ = make(sf_config(), store=store)
    for b in backends:
        b.mode = "fail"
    async with router:
        with pytest.raises(DeferredError):
            await router.infer(request(StreamKey("cam", "slow")))
        with pytest.raises(AllTiersFailedError) as info:
            await router.infer(request(StreamKey("cam", "slow")))
    assert info.value.reason == "store_full"
    assert store.refused == 1


async def test_expired_requests_get_an_error_answer(tmp_path: Path) -> None:
    wall = [1000.0]
    store = DeferredStore(tmp_path, max_entries=10, max_bytes=2**20, wall_clock=lambda: wall[0])
    router, backends, _, _ = make(sf_config(max_age_s=60), store=store)
    late: list[str | None] = []

    async def on_late(req: InferenceRequest, res: InferenceResult | None, err: str | None) -> None:
        late.append(err)

    router.on_late = on_late
    for b in backends:
        b.mode = "fail"
    async with router:
        with pytest.raises(DeferredError):
            await router.infer(request(StreamKey("cam", "slow")))
        wall[0] += 61
        async with asyncio.timeout(10):
            while not late:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    assert late == ["expired"]
    assert not stored(tmp_path)
