"""Publishing statistics: the retained ``<prefix>/stats`` snapshot and stats requests."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from streamedge.errors import PublishError
from streamedge.gateways.mqtt import MqttTransport
from streamedge.records import Inbound, OutboundMessage
from streamedge.stats.config import StatsConfig
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme

logger = logging.getLogger(__name__)


class StatsPublisher:
    """Publishes a gateway's :class:`Stats` on MQTT and answers ``stats/get``."""

    def __init__(
        self, stats: Stats, cfg: StatsConfig, *, transport: MqttTransport, topics: TopicScheme
    ) -> None:
        self._stats = stats
        self._cfg = cfg
        self._transport = transport
        self._topics = topics

    async def publish(self) -> None:
        """Publish one retained snapshot now (skipped while disconnected)."""
        body = json.dumps(self._stats.snapshot(), separators=(",", ":")).encode()
        try:
            await self._transport.publish_now(
                OutboundMessage(topic=self._topics.stats, payload=body, qos=0, retain=True)
            )
        except PublishError as exc:
            logger.debug("stats not published: %s", exc)

    async def run(self) -> None:
        """Publish every ``interval_s`` (every 2 s until the first message, so a fresh
        gateway shows up quickly)."""
        interval = self._cfg.interval_s
        while True:
            await asyncio.sleep(min(interval, 2.0) if self._stats.messages_in == 0 else interval)
            await self.publish()

    async def answer(self, msg: Inbound) -> None:
        """Answer ``<prefix>/stats/get`` (MQTT 5 Response Topic, or ``reply_to``)."""
        request: dict[str, Any] = {}
        if msg.payload.strip():
            try:
                loaded = json.loads(msg.payload)
                if isinstance(loaded, dict):
                    request = loaded
            except ValueError:
                logger.warning("stats request with a malformed payload ignored")
                return
        reply_to = msg.reply_to or request.get("reply_to")
        if not isinstance(reply_to, str) or not reply_to or "#" in reply_to or "+" in reply_to:
            logger.warning("stats request without a usable reply_to / Response Topic ignored")
            return
        device = request.get("device")
        stream = request.get("stream")
        doc = self._stats.snapshot(
            device=device if isinstance(device, str) else None,
            stream=stream if isinstance(stream, str) else None,
        )
        if "correlation" in request:
            doc["correlation"] = request["correlation"]
        try:
            await self._transport.publish(
                OutboundMessage(
                    topic=reply_to,
                    payload=json.dumps(doc, separators=(",", ":")).encode(),
                    qos=0,
                    correlation=msg.correlation,
                )
            )
        except PublishError as exc:
            logger.warning("stats answer not queued: %s", exc)
