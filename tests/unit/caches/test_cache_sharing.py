"""Cache sharing logic: wire format, HMAC, replay window, token bucket, merging, privacy.

Two gateways are two CacheSharing objects whose publish functions append to a
list; the real-broker version is tests/integration/test_cache_sharing.py.
"""

from __future__ import annotations

import logging
from typing import Any

import msgpack
import numpy as np
import pytest

from streamedge.caches.cache import ApproximateCache, build_cache
from streamedge.caches.config import CacheConfig, SharingConfig
from streamedge.caches.sharing import (
    CacheSharing,
    ReplayGuard,
    SharedEntry,
    ShareError,
    TokenBucket,
    decode_message,
    encode_message,
    shared_namespaces,
)
from streamedge.config import parse_config
from streamedge.errors import ConfigError, PublishError
from streamedge.records import (
    CacheQuery,
    Frame,
    InferenceResult,
    ModelInput,
    ModelRef,
    OutboundMessage,
    StreamKey,
    Tier,
    Vector,
)
from tests.unit.caches.conftest import MODEL, FakeClock

DIM = 16
SECRET = "a-long-enough-group-secret"


class FakeEmbedder:
    name = "fake"
    version = "1"
    dim = DIM

    def embed(self, item: ModelInput) -> Vector:
        raise AssertionError("tests pass vectors explicitly")


def _cache(
    clock: FakeClock, model: ModelRef = MODEL, embedder: Any = None, **overrides: Any
) -> ApproximateCache:
    cfg: dict[str, Any] = {
        "policy": {"type": "threshold", "max_distance": 0.05},
        "store": {"max_bytes": 1 << 22, "ttl_s": 600.0},
        "answer_key": "label",
    }
    cfg.update(overrides)
    return build_cache(
        CacheConfig.model_validate(cfg),
        model=model,
        embedder=embedder or FakeEmbedder(),
        clock=clock,
        wall_clock=lambda: clock() + 1e9,
    )


def _vec(seed: int) -> Vector:
    return np.random.default_rng(seed).random(DIM, dtype=np.float32)


def _result(label: str, model: ModelRef = MODEL) -> InferenceResult:
    return InferenceResult(
        model=model, answer={"label": label}, tier=Tier.LOCAL, backend="t", latency_s=0.04
    )


def _sharing_cfg(**kw: Any) -> SharingConfig:
    return SharingConfig.model_validate({"enabled": True, "secret": SECRET} | kw)


class Wire:
    """What a broker would carry: published messages, in order."""

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []
        self.full = False

    async def publish(self, msg: OutboundMessage) -> None:
        if self.full:
            raise PublishError("outgoing queue is full")
        self.messages.append(msg)


def _gateway(
    name: str,
    clock: FakeClock,
    wire: Wire,
    cache: ApproximateCache | None = None,
    *,
    shared: bool = True,
    **cfg: Any,
) -> tuple[CacheSharing, ApproximateCache]:
    cache = cache or _cache(clock)
    sharing = CacheSharing(
        _sharing_cfg(**cfg),
        gateway=name,
        caches={cache.namespace: cache},
        shared={cache.namespace} if shared else set(),
        publish=wire.publish,
        clock=clock,
        wall_clock=lambda: clock() + 1e9,
    )
    sharing.attach()
    return sharing, cache


async def _put(cache: ApproximateCache, seed: int, label: str, origin: str = "cam1/video") -> None:
    await cache.put(cache.query_for(None, vector=_vec(seed)), _result(label), origin=origin)  # type: ignore[arg-type]


def _query(cache: ApproximateCache, seed: int, noise: float = 0.0) -> CacheQuery:
    v = _vec(seed) + np.float32(noise)
    return cache.query_for(None, vector=v)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- end to end (no broker)


async def test_an_entry_stored_on_a_is_published_and_merged_by_b(clock: FakeClock) -> None:
    wire = Wire()
    a, cache_a = _gateway("gw-a", clock, wire)
    b, cache_b = _gateway("gw-b", clock, wire)
    await _put(cache_a, 1, "person")
    assert len(wire.messages) == 1
    msg = wire.messages[0]
    assert msg.topic == f"streamedge-share/cache/{cache_a.namespace}"
    assert a.sent == 1 and a.bytes_sent == len(msg.payload)

    assert await b.receive(msg.topic, msg.payload) == "merged"
    assert b.merged == 1 and cache_b.entries == 1
    hit = await cache_b.get(_query(cache_b, 1, noise=0.01))
    assert hit is not None and hit.entry.answer == {"label": "person"}
    assert hit.entry.origin == "peer/gw-a/cam1/video"
    assert len(wire.messages) == 1, "a merged entry must never be re-published"
    # The broker hands A its own message back: ignored, not merged, not rejected.
    assert await a.receive(msg.topic, msg.payload) == "own"
    assert cache_a.entries == 1 and a.own == 1 and not a.rejected


async def test_the_wire_carries_vector_answer_and_provenance(clock: FakeClock) -> None:
    wire = Wire()
    _, cache_a = _gateway("gw-a", clock, wire)
    await _put(cache_a, 7, "car", origin="door/cam")
    entry = decode_message(wire.messages[0].payload, SECRET.encode())
    assert entry.gateway == "gw-a" and entry.device == "door" and entry.stream == "cam"
    assert entry.model == MODEL and entry.embedder == "fake@1"
    assert entry.namespace == cache_a.namespace
    assert entry.answer == {"label": "car"}
    np.testing.assert_array_equal(entry.vector, _vec(7))
    assert entry.ts == pytest.approx(clock() + 1e9)
    assert entry.cost_s == pytest.approx(0.04)
    assert len(entry.nonce) == 12


# ---------------------------------------------------------------------- authentication


def _payload(clock: FakeClock, **over: Any) -> bytes:
    entry = SharedEntry(
        namespace=f"{MODEL}/fake@1",
        model=MODEL,
        embedder="fake@1",
        vector=_vec(3),
        answer={"label": "dog"},
        gateway="gw-x",
        device="d",
        stream="s",
        ts=clock() + 1e9,
        age_s=0.0,
        cost_s=0.02,
        confidence=0.9,
        nonce=over.pop("nonce", b"n" * 12),
    )
    for key, value in over.items():
        entry = SharedEntry(**{**{f: getattr(entry, f) for f in entry.__slots__}, key: value})
    return encode_message(entry, SECRET.encode())


async def test_wrong_secret_missing_mac_and_tampering_are_rejected(clock: FakeClock) -> None:
    wire = Wire()
    b, cache_b = _gateway("gw-b", clock, wire)
    topic = f"streamedge-share/cache/{MODEL}/fake@1"
    good = _payload(clock)
    envelope = msgpack.unpackb(good)
    forged = encode_message(decode_message(good, SECRET.encode()), b"another-secret-entirely")
    no_mac = msgpack.packb({"v": 1, "b": envelope["b"]})
    body = msgpack.unpackb(envelope["b"])
    body["answer"] = {"label": "cat"}
    tampered = msgpack.packb({"v": 1, "b": msgpack.packb(body), "m": envelope["m"]})
    assert await b.receive(topic, forged) == "bad_mac"
    assert await b.receive(topic, no_mac) == "unauthenticated"
    assert await b.receive(topic, tampered) == "bad_mac"
    assert await b.receive(topic, b"\xc1 not msgpack") == "malformed"
    assert await b.receive(topic, msgpack.packb([1, 2])) == "malformed"
    assert cache_b.entries == 0
    assert dict(b.rejected) == {"bad_mac": 2, "unauthenticated": 1, "malformed": 2}
    assert await b.receive(topic, good) == "merged"


async def test_replays_and_stale_entries_are_rejected(clock: FakeClock) -> None:
    wire = Wire()
    b, cache_b = _gateway("gw-b", clock, wire, max_skew_s=30.0)
    topic = f"streamedge-share/cache/{MODEL}/fake@1"
    payload = _payload(clock)
    assert await b.receive(topic, payload) == "merged"
    assert await b.receive(topic, payload) == "replay", "the same message twice (bridge loop)"
    clock.advance(31.0)
    assert await b.receive(topic, payload) == "stale", "outside the window it is stale"
    future = _payload(clock, ts=clock() + 1e9 + 31.0, nonce=b"f" * 12)
    assert await b.receive(topic, future) == "stale"
    assert cache_b.entries == 1
    assert dict(b.rejected) == {"replay": 1, "stale": 2}


async def test_previous_secrets_are_accepted_for_rotation(clock: FakeClock) -> None:
    wire = Wire()
    new_secret = "the-next-group-secret-2026"
    # A gateway already on the new secret still accepts entries signed with the old one.
    b, cache_b = _gateway("gw-b", clock, wire, secret=new_secret, previous_secrets=[SECRET])
    topic = f"streamedge-share/cache/{MODEL}/fake@1"
    assert await b.receive(topic, _payload(clock)) == "merged"
    # ... and signs its own with the new one, which an old-secret gateway rejects.
    c, _ = _gateway("gw-c", clock, wire)
    await _put(cache_b, 2, "cat")
    msg = wire.messages[-1]
    assert decode_message(msg.payload, new_secret.encode()).gateway == "gw-b"
    assert await c.receive(msg.topic, msg.payload) == "bad_mac"


def test_replay_guard_forgets_old_nonces_and_is_bounded() -> None:
    guard = ReplayGuard(window_s=10.0, memory=100)
    assert guard.check(b"a", 0.0, 1.0) is None
    assert guard.check(b"a", 0.0, 2.0) == "replay"
    assert guard.check(b"b", 12.0, 12.0) is None  # "a" has left the window
    assert len(guard) == 1
    for i in range(500):
        assert guard.check(i.to_bytes(4, "big"), 20.0, 20.0) is None
    assert len(guard) <= 100


# ---------------------------------------------------------------------- versions and opt-out


async def test_version_mismatches_and_unknown_namespaces_are_rejected(clock: FakeClock) -> None:
    wire = Wire()
    b, cache_b = _gateway("gw-b", clock, wire)
    newer = ModelRef(MODEL.name, "2")
    cases = {
        "model_version": _payload(clock, model=newer, namespace=f"{newer}/fake@1", nonce=b"1" * 12),
        "embedder_version": _payload(
            clock, embedder="fake@2", namespace=f"{MODEL}/fake@2", nonce=b"2" * 12
        ),
        "unknown_namespace": _payload(
            clock, model=ModelRef("other", "1"), namespace="other@1/fake@1", nonce=b"3" * 12
        ),
    }
    for reason, payload in cases.items():
        ns = decode_message(payload, SECRET.encode()).namespace
        assert await b.receive(f"streamedge-share/cache/{ns}", payload) == reason
    # The topic must name the entry's namespace (a relabelled entry is refused).
    moved = _payload(clock, nonce=b"4" * 12)
    assert await b.receive("streamedge-share/cache/x@1/fake@1", moved) == "malformed"
    assert cache_b.entries == 0


async def test_a_namespace_that_opted_out_neither_sends_nor_merges(clock: FakeClock) -> None:
    wire = Wire()
    a, cache_a = _gateway("gw-a", clock, wire, shared=False)
    await _put(cache_a, 1, "person")
    assert wire.messages == [] and a.sent == 0
    topic = f"streamedge-share/cache/{MODEL}/fake@1"
    assert await a.receive(topic, _payload(clock)) == "not_shared"
    assert cache_a.entries == 1


def test_only_profiles_neither_private_nor_opted_out_are_shared() -> None:
    cfg = parse_config(
        {
            "sharing": {
                "enabled": True,
                "secret": "${SHARE_SECRET}",
                "previous_secrets": ["${OLD_SECRET}"],
            },
            "caches": [
                {"name": "open"},
                {"name": "closed", "share": False},
                {"name": "mine", "private": True},
            ],
        },
        env={"SHARE_SECRET": SECRET, "OLD_SECRET": "the-old-group-secret"},
    )
    assert [s.get_secret_value() for s in cfg.sharing.previous_secrets] == ["the-old-group-secret"]
    assert shared_namespaces({c.name: c for c in cfg.caches}) == {"open"}
    assert cfg.sharing.secret is not None
    assert cfg.sharing.secret.get_secret_value() == SECRET
    assert SECRET not in repr(cfg.sharing), "the secret must not show in logs"
    with pytest.raises(ConfigError, match="secret is required"):
        parse_config({"sharing": {"enabled": True}})
    with pytest.raises(ConfigError, match="at least 16"):
        parse_config({"sharing": {"enabled": True, "secret": "short"}})
    with pytest.raises(ConfigError, match="wildcards"):
        parse_config({"sharing": {"topic_prefix": "a/+/b"}})


# ---------------------------------------------------------------------- bandwidth


def test_token_bucket_spends_refills_and_caps() -> None:
    clock = FakeClock(0.0)
    bucket = TokenBucket(rate=1000.0, burst=3000, clock=clock)
    assert bucket.take(2000)
    assert not bucket.take(1500)
    clock.advance(0.5)  # +500
    assert bucket.take(1500)
    clock.advance(100.0)  # capped at the burst
    assert bucket.take(3000)
    assert not bucket.take(1)
    assert not TokenBucket(1e9, 1024, clock).take(2000), "larger than the burst never passes"


async def test_entries_over_the_bandwidth_cap_are_skipped_not_queued(clock: FakeClock) -> None:
    wire = Wire()
    a, cache_a = _gateway("gw-a", clock, wire, bytes_per_s=1024, burst_bytes=1024)
    for i in range(10):  # ~300 bytes each: three fit the burst
        await _put(cache_a, i, f"l{i}")
    sent = len(wire.messages)
    assert 1 <= sent < 10
    assert a.sent == sent and a.skipped["bandwidth"] == 10 - sent
    assert a.bytes_sent <= 1024
    clock.advance(2.0)  # the bucket refills; skipped entries stay skipped
    await _put(cache_a, 99, "late")
    assert len(wire.messages) == sent + 1
    assert cache_a.entries == 11, "the local cache keeps every entry"


async def test_disconnected_or_full_transport_skips_and_counts(clock: FakeClock) -> None:
    wire = Wire()
    up = False
    cache = _cache(clock)
    a = CacheSharing(
        _sharing_cfg(),
        gateway="gw-a",
        caches={cache.namespace: cache},
        shared={cache.namespace},
        publish=wire.publish,
        connected=lambda: up,
        clock=clock,
    )
    a.attach()
    await _put(cache, 1, "x")
    up = True
    wire.full = True
    await _put(cache, 2, "y")
    assert dict(a.skipped) == {"disconnected": 1, "queue_full": 1}
    assert a.gauge()["sharing"]["skipped"] == {"disconnected": 1, "queue_full": 1}


async def test_oversized_messages_are_rejected_before_parsing(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    wire = Wire()
    b, _ = _gateway("gw-b", clock, wire, max_message_bytes=1024)
    with caplog.at_level(logging.WARNING):
        assert await b.receive("streamedge-share/cache/x", b"\x00" * 2000) == "too_large"
    assert "rejecting a shared cache entry" in caplog.text


# ---------------------------------------------------------------------- privacy


def _frame(device: str) -> Frame:
    return Frame(
        stream=StreamKey(device, "video"), ts=0.0, image=np.zeros((4, 4, 3), dtype=np.uint8)
    )


async def test_a_private_cache_reuses_answers_only_for_the_same_device(clock: FakeClock) -> None:
    cache = _cache(clock, private=True)
    v = _vec(5)
    q1 = cache.query_for(_frame("cam1"), vector=v)
    assert q1.owner == "cam1"
    assert q1.key != cache.query_for(_frame("cam2"), vector=v).key, "no shared single-flight"
    await cache.put(q1, _result("person"), origin="cam1/video")
    assert await cache.get(cache.query_for(_frame("cam2"), vector=v)) is None
    assert await cache.get(cache.query_for(_frame("cam1"), vector=v)) is not None
    # Other devices crowding the neighbourhood do not hide the device's own entry.
    for i in range(40):
        q = cache.query_for(_frame(f"other{i}"), vector=v + np.float32(1e-4))
        await cache.put(q, _result("x"), origin=f"other{i}/video")
    hit = await cache.get(cache.query_for(_frame("cam1"), vector=v + np.float32(1e-4)))
    assert hit is not None and hit.entry.answer == {"label": "person"}


async def test_a_shared_cache_reuses_across_devices(clock: FakeClock) -> None:
    cache = _cache(clock)
    v = _vec(5)
    q1 = cache.query_for(_frame("cam1"), vector=v)
    assert q1.owner is None
    await cache.put(q1, _result("person"), origin="cam1/video")
    assert await cache.get(cache.query_for(_frame("cam2"), vector=v)) is not None


async def test_merge_rejects_bad_vectors(clock: FakeClock) -> None:
    wire = Wire()
    b, cache_b = _gateway("gw-b", clock, wire)
    payload = _payload(clock, vector=np.full(DIM, np.nan, dtype=np.float32))
    assert await b.receive(f"streamedge-share/cache/{cache_b.namespace}", payload) == "malformed"
    short = _payload(clock, vector=np.zeros(DIM // 2, dtype=np.float32), nonce=b"s" * 12)
    assert await b.receive(f"streamedge-share/cache/{cache_b.namespace}", short) == "malformed"
    assert cache_b.entries == 0
    with pytest.raises(ShareError):
        decode_message(b"", SECRET.encode())


# ---------------------------------------------------------------------- stats outputs


async def test_sharing_counters_reach_the_snapshot_and_prometheus(clock: FakeClock) -> None:
    import jsonschema
    from prometheus_client.parser import text_string_to_metric_families

    from streamedge.stats.metrics import Stats
    from streamedge.stats.prometheus import render
    from streamedge.stats.schema import snapshot_schema

    wire = Wire()
    a, cache_a = _gateway("gw-a", clock, wire)
    b, _ = _gateway("gw-b", clock, wire)
    await _put(cache_a, 1, "person")
    msg = wire.messages[0]
    await b.receive(msg.topic, msg.payload)
    await b.receive(msg.topic, msg.payload)  # a replay
    stats = Stats(gateway="gw-b", version="t", clock=clock, wall_clock=lambda: clock() + 1e9)
    stats.cache_gauges["device"] = b.gauge
    stats.cache_result("device", hit=True, saved_s=0.04)
    snap = stats.snapshot()
    jsonschema.Draft202012Validator(snapshot_schema()).validate(snap)
    device = snap["cache"]["device"]
    assert device["hits"] == 1
    assert device["sharing"]["merged"] == 1 and device["sharing"]["rejected"] == {"replay": 1}
    fams = {f.name: f for f in text_string_to_metric_families(render(stats).decode())}
    samples = {
        (s.labels["event"], s.labels["reason"]): s.value
        for s in fams["streamedge_cache_shared_entries"].samples
        if s.name.endswith("_total")
    }
    assert samples[("merged", "")] == 1
    assert samples[("received", "")] == 2
    assert samples[("rejected", "replay")] == 1
    received = [
        s.value
        for s in fams["streamedge_cache_shared_bytes"].samples
        if s.labels["direction"] == "received" and s.name.endswith("_total")
    ]
    assert received == [2 * len(msg.payload)]
    assert a.bytes_sent == len(msg.payload)
