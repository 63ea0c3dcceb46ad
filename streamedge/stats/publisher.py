"""Publishing statistics on MQTT.

Topics (``<prefix>`` is ``mqtt.topic_prefix``):

- ``<prefix>/stats``: the retained snapshot, every ``stats.interval_s``.
- ``<prefix>/stats/history``: the retained history ring (:mod:`.history`),
  every ``stats.interval_s``.
- ``<prefix>/stats/get``: requests. The answer goes to the MQTT 5 Response
  Topic (with the Correlation Data) or to ``reply_to`` in the payload (3.1.1).
  The payload is an optional JSON object: ``device``, ``stream``, ``model``,
  ``window_s``, ``correlation``, ``follow_s``.
- ``<prefix>/stats/{device}``: the snapshot filtered to one device, published
  (not retained) every ``stats.interval_s`` only while followed: a request
  with ``device`` and ``follow_s`` starts (or renews) it for that long, capped
  by ``stats.device_topics.max_follow_s``; ``follow_s: 0`` stops it. At most
  ``stats.device_topics.max_devices`` devices are followed at once, so the
  number of topics stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from streamedge.errors import PublishError
from streamedge.gateways.mqtt import MqttTransport
from streamedge.records import JSON, Inbound, OutboundMessage
from streamedge.stats.config import StatsConfig
from streamedge.stats.history import History
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme, valid_segment

logger = logging.getLogger(__name__)

#: Names under ``<prefix>/stats/`` that are not device topics.
RESERVED = frozenset({"get", "history", "reply"})


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """One parsed ``stats/get`` request."""

    reply_to: str | None = None
    correlation: Any = None
    has_correlation: bool = False
    device: str | None = None
    stream: str | None = None
    model: str | None = None
    window_s: float | None = None
    follow_s: float | None = None


def _opt_str(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{key}' must be a non-empty string")
    return value


def _opt_seconds(doc: dict[str, Any], key: str, *, zero_ok: bool) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"'{key}' must be a number of seconds")
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"'{key}' must be {'>= 0' if zero_ok else '> 0'}")
    return float(value)


def parse_request(payload: bytes, response_topic: str | None = None) -> StatsRequest:
    """Parse a request payload (empty, or a JSON object); unknown keys are ignored.

    Raises:
        ValueError: the payload is not a JSON object or a field has the wrong type;
            the message says which.
    """
    doc: dict[str, Any] = {}
    if payload.strip():
        try:
            loaded = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"the request is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ValueError("the request must be a JSON object")
        doc = loaded
    reply_to = response_topic or doc.get("reply_to")
    if reply_to is not None and (
        not isinstance(reply_to, str) or not reply_to or "#" in reply_to or "+" in reply_to
    ):
        raise ValueError("'reply_to' must be a topic without wildcards")
    return StatsRequest(
        reply_to=reply_to,
        correlation=doc.get("correlation"),
        has_correlation="correlation" in doc,
        device=_opt_str(doc, "device"),
        stream=_opt_str(doc, "stream"),
        model=_opt_str(doc, "model"),
        window_s=_opt_seconds(doc, "window_s", zero_ok=False),
        follow_s=_opt_seconds(doc, "follow_s", zero_ok=True),
    )


class DeviceFollows:
    """Which devices get ``<prefix>/stats/{device}``, and until when (bounded)."""

    def __init__(self, *, max_devices: int, default_s: float, max_s: float) -> None:
        self._until: dict[str, float] = {}
        self._max = max_devices
        self._default_s = default_s
        self._max_s = max_s

    def __len__(self) -> int:
        return len(self._until)

    def follow(self, device: str, seconds: float | None, now: float) -> float:
        """Start, renew (seconds > 0) or stop (seconds == 0) following; return the
        granted duration.

        Raises:
            ValueError: the device cannot be a topic level, or too many are followed.
        """
        if not valid_segment(device) or device in RESERVED:
            raise ValueError(f"'{device}' cannot be a stats topic level")
        duration = self._default_s if seconds is None else min(seconds, self._max_s)
        self.expire(now)
        if duration == 0:
            self._until.pop(device, None)
            return 0.0
        if device not in self._until and len(self._until) >= self._max:
            raise ValueError(
                f"already following {len(self._until)} devices (stats.device_topics.max_devices)"
            )
        self._until[device] = now + duration
        return duration

    def expire(self, now: float) -> None:
        """Forget follows whose time is up."""
        for device in [d for d, until in self._until.items() if until <= now]:
            del self._until[device]
            logger.info("stopped publishing stats for device %s (follow expired)", device)

    def devices(self, now: float) -> list[str]:
        """The devices followed now."""
        self.expire(now)
        return sorted(self._until)


class StatsPublisher:
    """Publishes a gateway's :class:`Stats` on MQTT and answers ``stats/get``."""

    def __init__(
        self, stats: Stats, cfg: StatsConfig, *, transport: MqttTransport, topics: TopicScheme
    ) -> None:
        self._stats = stats
        self._cfg = cfg
        self._transport = transport
        self._topics = topics
        self.history = History(stats, points=cfg.history.points, interval_s=cfg.history.interval_s)
        self.follows = DeviceFollows(
            max_devices=cfg.device_topics.max_devices,
            default_s=cfg.device_topics.default_follow_s,
            max_s=cfg.device_topics.max_follow_s,
        )
        stats.gauges.setdefault(
            "device_topics", lambda: {"followed": self.follows.devices(stats.clock())}
        )

    @property
    def history_topic(self) -> str:
        """Where the history ring is published (retained)."""
        return f"{self._topics.stats}/history"

    def device_topic(self, device: str) -> str:
        """Where a followed device's snapshot is published."""
        return f"{self._topics.stats}/{device}"

    def _queue_depth(self) -> int | None:
        gauge = self._stats.gauges.get("queues")
        depth = gauge().get("depth") if gauge is not None else None
        return depth if isinstance(depth, int) else None

    async def _publish_now(self, topic: str, doc: JSON, *, retain: bool) -> None:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        try:
            await self._transport.publish_now(
                OutboundMessage(topic=topic, payload=body, qos=0, retain=retain)
            )
        except PublishError as exc:
            logger.debug("stats not published on %s: %s", topic, exc)

    async def publish(self) -> None:
        """Publish the retained snapshot and history, and followed devices (skipped
        while disconnected)."""
        st = self._stats
        await self._publish_now(self._topics.stats, st.snapshot(), retain=True)
        doc = self.history.document(gateway=st.gateway, version=st.version, ts=st.wall_clock())
        await self._publish_now(self.history_topic, doc, retain=True)
        for device in self.follows.devices(st.clock()):
            await self._publish_now(
                self.device_topic(device), st.snapshot(device=device), retain=False
            )

    def sample_history(self) -> None:
        """Take one history point now."""
        self.history.sample(self._stats.wall_clock(), self._queue_depth)

    async def run(self) -> None:
        """Publish every ``interval_s`` (every 2 s until the first message, so a fresh
        gateway shows up quickly) and sample the history every ``history.interval_s``."""
        clock = self._stats.clock
        interval = self._cfg.interval_s
        hist_interval = self._cfg.history.interval_s
        now = clock()
        next_pub = now + min(interval, 2.0)
        next_hist = now + hist_interval
        while True:
            await asyncio.sleep(max(0.0, min(next_pub, next_hist) - clock()))
            now = clock()
            if now >= next_hist:
                self.sample_history()
                # Fixed cadence; after a stall, skip the missed points instead of bursting.
                next_hist = max(next_hist + hist_interval, now)
            if now >= next_pub:
                await self.publish()
                quick = self._stats.messages_in == 0
                next_pub = now + (min(interval, 2.0) if quick else interval)

    async def answer(self, msg: Inbound) -> None:
        """Answer ``<prefix>/stats/get`` (MQTT 5 Response Topic, or ``reply_to``)."""
        st = self._stats
        try:
            req = parse_request(msg.payload, msg.reply_to)
        except ValueError as exc:
            st.request(valid=False)
            logger.warning("stats request refused: %s", exc)
            await self._reply_error(msg, str(exc))
            return
        follow: JSON | None = None
        if req.follow_s is not None:
            if req.device is None:
                follow = {"error": "'follow_s' needs 'device'"}
            else:
                try:
                    granted = self.follows.follow(req.device, req.follow_s, st.clock())
                    follow = {"topic": self.device_topic(req.device), "expires_in_s": granted}
                except ValueError as exc:
                    follow = {"error": str(exc)}
                    logger.warning("stats follow refused: %s", exc)
        if req.reply_to is None and follow is None:
            st.request(valid=False)
            logger.warning("stats request without a Response Topic or 'reply_to' ignored")
            return
        st.request(valid=follow is None or "error" not in follow)
        doc = st.snapshot(
            device=req.device, stream=req.stream, model=req.model, window_s=req.window_s
        )
        if follow is not None:
            doc["follow"] = follow
            if "error" not in follow and req.follow_s:
                # The first publication now, so a subscriber need not wait an interval.
                await self._queue(
                    self.device_topic(req.device or ""), st.snapshot(device=req.device)
                )
        if req.has_correlation:
            doc["correlation"] = req.correlation
        if req.reply_to is not None:
            await self._queue(req.reply_to, doc, correlation=msg.correlation)

    async def _reply_error(self, msg: Inbound, error: str) -> None:
        reply_to = msg.reply_to
        correlation: Any = None
        try:
            loaded = json.loads(msg.payload) if msg.payload.strip() else {}
        except ValueError:
            loaded = {}
        if isinstance(loaded, dict):
            if reply_to is None and isinstance(loaded.get("reply_to"), str):
                reply_to = loaded["reply_to"]
            correlation = loaded.get("correlation")
        if not reply_to or "#" in reply_to or "+" in reply_to:
            return
        doc: JSON = {"gateway": self._stats.gateway, "error": error}
        if correlation is not None:
            doc["correlation"] = correlation
        await self._queue(reply_to, doc, correlation=msg.correlation)

    async def _queue(self, topic: str, doc: JSON, *, correlation: bytes | None = None) -> None:
        try:
            await self._transport.publish(
                OutboundMessage(
                    topic=topic,
                    payload=json.dumps(doc, separators=(",", ":"), allow_nan=False).encode(),
                    qos=0,
                    correlation=correlation,
                )
            )
        except PublishError as exc:
            logger.warning("stats answer not queued: %s", exc)
