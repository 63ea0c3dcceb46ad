"""Cache sharing between gateways: authenticated entries on a bridged MQTT topic.

A gateway that stores an authoritative answer in a shared namespace publishes
the entry on ``<topic_prefix>/cache/<namespace>`` (namespace
``model@version/embedder@version``, so the topic has two more levels); a broker
bridge carries ``<topic_prefix>/cache/#`` to the neighbours' brokers, and each
neighbour merges the entry into its own cache, where hits on it count at the
``device`` cache level (FoggyCache's cross-device reuse).

**Wire format** (version 1): a msgpack map ``{"v": 1, "b": body, "m": mac}``.
``body`` is itself msgpack bytes of a map with ``ns`` (namespace), ``model``
and ``emb`` (``name@version`` each), ``dim``, ``vec`` (the key vector as
little-endian float32 bytes), ``answer``, provenance ``gw``/``dev``/``st``
(gateway, device, stream), ``ts`` (wall-clock publish time), ``age`` (entry age
then), ``cost`` (inference seconds the answer cost), ``conf`` (confidence or
nil) and ``n`` (a random 12-byte nonce). ``mac`` is HMAC-SHA256 of
``b"streamedge-share/1\\n" + body`` under the group's shared secret.

**Receiving** checks, in order, and counts each rejection by reason: size
(``too_large``), envelope (``malformed``), MAC present (``unauthenticated``)
and right (``bad_mac``), body (``malformed``), own gateway (ignored, not a
rejection: our own messages come back from the broker), timestamp within
``max_skew_s`` of our clock (``stale``), nonce not seen before (``replay``;
also what stops an entry that a bridge loop delivers twice), topic and body
namespace agree (``malformed``), a local cache of the same model and embedder
(``unknown_namespace``) at the same versions (``model_version``,
``embedder_version``) that takes part in sharing (``not_shared``), vector
shape (``malformed``), and finally room in the store (``store_rejected``).

**Sending** is capped by a token bucket (``bytes_per_s``, ``burst_bytes``):
an entry that does not fit is skipped and counted (``bandwidth``), never
queued, so a busy gateway cannot build a backlog; while the broker is
disconnected entries are skipped too (``disconnected``). Merged entries are
never re-published (no loops): they enter the cache through
:meth:`~streamedge.caches.cache.ApproximateCache.merge`, which bypasses the
publish hook.

Security: ``previous_secrets`` are accepted on receipt, so a new secret can be
rolled out one gateway at a time. The MAC authenticates the group, not a gateway; any holder of the
secret can publish entries (cache poisoning by an insider is not prevented).
Entries are not encrypted: vectors are thumbnails of the input, so keep the
bridge on TLS and mark privacy-sensitive profiles ``private`` or
``share: false``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from streamedge.caches.cache import ApproximateCache
from streamedge.caches.config import CacheConfig, SharingConfig
from streamedge.caches.store import PEER_ORIGIN
from streamedge.errors import CacheError, PublishError
from streamedge.records import JSON, CacheEntry, Clock, ModelRef, OutboundMessage, Vector
from streamedge.topics import valid_segment

__all__ = [
    "FORMAT_VERSION",
    "CacheSharing",
    "ReplayGuard",
    "ShareError",
    "SharedEntry",
    "TokenBucket",
    "decode_message",
    "encode_message",
    "shared_namespaces",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAC_CONTEXT = b"streamedge-share/1\n"
_NONCE_BYTES = 12

Publish = Callable[[OutboundMessage], Awaitable[None]]


class ShareError(Exception):
    """A received message is rejected; ``reason`` is the counted drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedEntry:
    """One cache entry as it travels between gateways."""

    namespace: str
    model: ModelRef
    embedder: str
    """``name@version`` of the embedder."""
    vector: Vector
    answer: JSON
    gateway: str
    device: str
    stream: str
    ts: float
    """Wall-clock seconds when it was published."""
    age_s: float
    cost_s: float
    confidence: float | None
    nonce: bytes


# ---------------------------------------------------------------------- wire format


def _mac(secret: bytes, body: bytes) -> bytes:
    return hmac.new(secret, _MAC_CONTEXT + body, hashlib.sha256).digest()


def encode_message(entry: SharedEntry, secret: bytes) -> bytes:
    """The MQTT payload of a shared entry: body and its HMAC."""
    body = msgpack.packb(
        {
            "ns": entry.namespace,
            "model": str(entry.model),
            "emb": entry.embedder,
            "dim": int(entry.vector.shape[0]),
            "vec": np.ascontiguousarray(entry.vector, dtype="<f4").tobytes(),
            "answer": entry.answer,
            "gw": entry.gateway,
            "dev": entry.device,
            "st": entry.stream,
            "ts": entry.ts,
            "age": entry.age_s,
            "cost": entry.cost_s,
            "conf": entry.confidence,
            "n": entry.nonce,
        },
        use_bin_type=True,
    )
    out: bytes = msgpack.packb(
        {"v": FORMAT_VERSION, "b": body, "m": _mac(secret, body)}, use_bin_type=True
    )
    return out


def _unpack_map(blob: bytes, what: str) -> dict[str, Any]:
    try:
        raw = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ShareError("malformed", f"cannot unpack the {what}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ShareError("malformed", f"the {what} is not a map")
    return raw


def _get(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ShareError("malformed", f"field {name!r} missing or of the wrong type")
    return value


def decode_message(payload: bytes, secret: bytes, *older: bytes) -> SharedEntry:
    """Verify and parse a shared entry (its MAC under ``secret`` or one of ``older``).

    Raises:
        ShareError: with the rejection reason (malformed, unauthenticated, bad_mac).
    """
    envelope = _unpack_map(payload, "envelope")
    if envelope.get("v") != FORMAT_VERSION:
        raise ShareError("malformed", f"unsupported format version {envelope.get('v')!r}")
    body = envelope.get("b")
    if not isinstance(body, bytes):
        raise ShareError("malformed", "no body")
    mac = envelope.get("m")
    if not isinstance(mac, bytes) or not mac:
        raise ShareError("unauthenticated", "no MAC")
    if not any(hmac.compare_digest(mac, _mac(key, body)) for key in (secret, *older)):
        raise ShareError("bad_mac", "MAC does not match (wrong secret or altered entry)")
    raw = _unpack_map(body, "body")
    dim = _get(raw, "dim", int)
    vec_bytes = _get(raw, "vec", bytes)
    if dim <= 0 or len(vec_bytes) != 4 * dim:
        raise ShareError("malformed", "vector does not match dim")
    answer = _get(raw, "answer", dict)
    confidence = raw.get("conf")
    if confidence is not None and not isinstance(confidence, int | float):
        raise ShareError("malformed", "bad confidence")
    nonce = _get(raw, "n", bytes)
    ts, age, cost = (float(_get(raw, k, (int, float))) for k in ("ts", "age", "cost"))
    if not all(math.isfinite(x) for x in (ts, age, cost)):
        raise ShareError("malformed", "non-finite time field")
    try:
        model = ModelRef.parse(_get(raw, "model", str))
    except (ValueError, TypeError) as exc:
        raise ShareError("malformed", f"bad model reference: {exc}") from exc
    return SharedEntry(
        namespace=_get(raw, "ns", str),
        model=model,
        embedder=_get(raw, "emb", str),
        vector=np.frombuffer(vec_bytes, dtype="<f4").astype(np.float32),
        answer=answer,
        gateway=_get(raw, "gw", str),
        device=_get(raw, "dev", str),
        stream=_get(raw, "st", str),
        ts=ts,
        age_s=age,
        cost_s=cost,
        confidence=None if confidence is None else float(confidence),
        nonce=nonce,
    )


# ---------------------------------------------------------------------- rate and replay


class TokenBucket:
    """Bytes per second with a burst; :meth:`take` never waits.

    Args:
        rate: Tokens (bytes) added per second.
        burst: Most tokens held (also the largest single take that can succeed).
        clock: Monotonic seconds.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, n: int) -> bool:
        """Spend ``n`` tokens if there are that many; return whether it did."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if n > self._tokens:
            return False
        self._tokens -= n
        return True


class ReplayGuard:
    """Rejects entries outside a time window, and nonces seen within it.

    Nonces are remembered (in arrival order) until they fall out of the window
    or ``memory`` are held; a replay of a nonce already forgotten because of
    the memory cap would merge one duplicate entry, which is harmless.
    """

    def __init__(self, window_s: float, memory: int) -> None:
        self.window_s = window_s
        self.memory = memory
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check(self, nonce: bytes, ts: float, now: float) -> str | None:
        """The rejection reason (``stale``, ``replay``) or ``None``; remembers the nonce."""
        if abs(now - ts) > self.window_s:
            return "stale"
        seen = self._seen
        while seen:
            oldest, at = next(iter(seen.items()))
            if now - at <= self.window_s and len(seen) < self.memory:
                break
            del seen[oldest]
        if nonce in seen:
            return "replay"
        seen[nonce] = ts
        return None

    def __len__(self) -> int:
        return len(self._seen)


# ---------------------------------------------------------------------- the component


def shared_namespaces(profiles: Mapping[str, CacheConfig]) -> set[str]:
    """Namespaces whose profile takes part in sharing (neither private nor ``share: false``)."""
    return {ns for ns, p in profiles.items() if p.share and not p.private}


class CacheSharing:
    """Publishes a gateway's shared cache entries and merges its neighbours'.

    Args:
        cfg: The ``sharing`` section (enabled, with a secret).
        gateway: This gateway's name (provenance; our own messages are ignored).
        caches: Namespace → cache, all of this gateway's caches.
        shared: Namespaces that take part (profiles neither private nor ``share: false``).
        publish: Queues an MQTT message (the gateway transport's ``publish``).
        connected: Whether the broker connection is up.
        clock: Monotonic seconds.
        wall_clock: Epoch seconds (timestamps on the wire).
    """

    def __init__(
        self,
        cfg: SharingConfig,
        *,
        gateway: str,
        caches: Mapping[str, ApproximateCache],
        shared: set[str],
        publish: Publish,
        connected: Callable[[], bool] = lambda: True,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if cfg.secret is None:
            raise CacheError("cache sharing needs sharing.secret")
        self.cfg = cfg
        self.gateway = gateway
        self._secret = cfg.secret.get_secret_value().encode()
        self._older = tuple(s.get_secret_value().encode() for s in cfg.previous_secrets)
        self._caches = dict(caches)
        self._shared = set(shared)
        self._by_name = {
            (c.model.name, c.embedder.name): c for ns, c in self._caches.items() if ns in shared
        }
        self._publish = publish
        self._connected = connected
        self._clock = clock
        self._wall = wall_clock
        self.bucket = TokenBucket(cfg.bytes_per_s, cfg.burst_bytes, clock)
        self.replay = ReplayGuard(cfg.max_skew_s, cfg.replay_memory)
        self.root = f"{cfg.topic_prefix}/cache/"
        self.sent = 0
        self.bytes_sent = 0
        self.skipped: Counter[str] = Counter()
        self.received = 0
        self.bytes_received = 0
        self.merged = 0
        self.own = 0
        self.rejected: Counter[str] = Counter()
        self.publish_s = 0.0
        self.merge_s = 0.0
        self._topics: dict[str, str | None] = {}

    @property
    def topic_filter(self) -> str:
        """What to subscribe to: every namespace's sharing topic."""
        return f"{self.root}#"

    def handles(self, topic: str) -> bool:
        """Whether a received topic is a sharing topic."""
        return topic.startswith(self.root)

    def attach(self) -> int:
        """Hook the publisher into every shared cache; return how many."""
        for ns in self._shared:
            cache = self._caches.get(ns)
            if cache is not None and self._topic(ns) is not None:
                cache.on_put = self._on_put_for(cache)
        return sum(1 for ns in self._shared if ns in self._caches)

    def _topic(self, namespace: str) -> str | None:
        if namespace not in self._topics:
            parts = namespace.split("/")
            if all(valid_segment(p) for p in parts):
                self._topics[namespace] = self.root + namespace
            else:
                logger.warning("cache %s cannot be shared: not a valid MQTT topic", namespace)
                self._topics[namespace] = None
        return self._topics[namespace]

    def _on_put_for(self, cache: ApproximateCache) -> Callable[[CacheEntry], Awaitable[None]]:
        async def on_put(entry: CacheEntry) -> None:
            await self.publish_entry(cache, entry)

        return on_put

    # -- sending -----------------------------------------------------------------
    def encode(self, cache: ApproximateCache, entry: CacheEntry) -> bytes:
        """The payload that shares ``entry`` (provenance from its origin)."""
        device, _, stream = entry.origin.partition("/")
        shared = SharedEntry(
            namespace=cache.namespace,
            model=entry.model,
            embedder=f"{cache.embedder.name}@{cache.embedder.version}",
            vector=entry.vector,
            answer=entry.answer,
            gateway=self.gateway,
            device=device,
            stream=stream,
            ts=self._wall(),
            age_s=max(0.0, self._clock() - entry.created_at),
            cost_s=entry.cost_s,
            confidence=entry.confidence,
            nonce=os.urandom(_NONCE_BYTES),
        )
        return encode_message(shared, self._secret)

    async def publish_entry(self, cache: ApproximateCache, entry: CacheEntry) -> bool:
        """Publish one stored entry, or skip it (counted); return whether it went out."""
        topic = self._topic(cache.namespace)
        if topic is None or cache.namespace not in self._shared:
            self.skipped["not_shared"] += 1
            return False
        if not self._connected():
            self.skipped["disconnected"] += 1
            return False
        start = time.perf_counter()
        payload = self.encode(cache, entry)
        n = len(payload)
        if n > self.cfg.max_message_bytes:
            self.skipped["too_large"] += 1
            logger.warning("shared cache entry of %d bytes is over max_message_bytes", n)
            return False
        if not self.bucket.take(n):
            self.skipped["bandwidth"] += 1
            return False
        try:
            await self._publish(OutboundMessage(topic=topic, payload=payload, qos=self.cfg.qos))
        except PublishError as exc:
            self.skipped["queue_full"] += 1
            logger.warning("shared cache entry not published: %s", exc)
            return False
        self.publish_s += time.perf_counter() - start
        self.sent += 1
        self.bytes_sent += n
        return True

    # -- receiving ---------------------------------------------------------------
    async def receive(self, topic: str, payload: bytes) -> str:
        """Verify and merge a neighbour's entry; return the outcome (counted).

        The outcome is ``merged``, ``own`` or a rejection reason.
        """
        self.received += 1
        self.bytes_received += len(payload)
        start = time.perf_counter()
        try:
            outcome = await self._receive(topic, payload)
        except ShareError as exc:
            self.rejected[exc.reason] += 1
            logger.warning("rejecting a shared cache entry on %s: %s", topic[:200], exc)
            return exc.reason
        if outcome == "merged":
            self.merged += 1
            self.merge_s += time.perf_counter() - start
        elif outcome == "own":
            self.own += 1
        return outcome

    async def _receive(self, topic: str, payload: bytes) -> str:
        if len(payload) > self.cfg.max_message_bytes:
            raise ShareError("too_large", f"{len(payload)} bytes")
        entry = decode_message(payload, self._secret, *self._older)
        if entry.gateway == self.gateway:
            return "own"  # the broker hands our own publications back
        if (why := self.replay.check(entry.nonce, entry.ts, self._wall())) is not None:
            raise ShareError(why, f"from {entry.gateway}, stamped {entry.ts:.3f}")
        if topic[len(self.root) :] != entry.namespace:
            raise ShareError("malformed", "topic and entry namespace differ")
        cache = self._cache_for(entry)
        origin = f"{PEER_ORIGIN}{entry.gateway}/{entry.device}/{entry.stream}"
        try:
            kept = await cache.merge(
                entry.vector,
                entry.answer,
                origin=origin,
                age_s=entry.age_s + max(0.0, self._wall() - entry.ts),
                cost_s=entry.cost_s,
                confidence=entry.confidence,
            )
        except CacheError as exc:
            raise ShareError("malformed", str(exc)) from exc
        if not kept:
            raise ShareError("store_rejected", "the store refused the entry (too large)")
        return "merged"

    def _cache_for(self, entry: SharedEntry) -> ApproximateCache:
        cache = self._caches.get(entry.namespace)
        if cache is not None:
            if entry.namespace not in self._shared:
                raise ShareError("not_shared", f"{entry.namespace} is not shared here")
            if cache.model != entry.model:  # a namespace names its model: forged body
                raise ShareError("malformed", "namespace and model disagree")
            return cache
        emb_name = entry.embedder.rsplit("@", 1)[0]
        local = self._by_name.get((entry.model.name, emb_name))
        if local is None:
            raise ShareError("unknown_namespace", f"no shared cache for {entry.namespace}")
        if local.model != entry.model:
            raise ShareError(
                "model_version", f"entry of {entry.model}, this gateway runs {local.model}"
            )
        raise ShareError(
            "embedder_version",
            f"entry embedded by {entry.embedder}, this gateway uses "
            f"{local.embedder.name}@{local.embedder.version}",
        )

    # -- stats -------------------------------------------------------------------
    def gauge(self) -> JSON:
        """The ``sharing`` figures of the ``device`` cache level."""
        return {
            "sharing": {
                "namespaces": len(self._shared),
                "sent": self.sent,
                "bytes_sent": self.bytes_sent,
                "skipped": dict(sorted(self.skipped.items())),
                "received": self.received,
                "bytes_received": self.bytes_received,
                "merged": self.merged,
                "own_ignored": self.own,
                "rejected": dict(sorted(self.rejected.items())),
            }
        }
