"""A client for a gateway's statistics over MQTT (what ``streamedge stats`` uses).

It speaks MQTT 3.1.1 with ``reply_to`` in the request payload, so it works
against any broker (Mosquitto, NanoMQ, EMQX, amqtt) and any gateway
version that answers ``stats/get``; the retained ``<prefix>/stats`` is the
fallback when no gateway answers. All aiomqtt calls, and the mapping of
their errors into :mod:`streamedge.errors`, live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from types import TracebackType
from typing import Any, Self

import aiomqtt

from streamedge.errors import ConnectError, StreamedgeError, TransportError

logger = logging.getLogger(__name__)


class NoAnswerError(StreamedgeError):
    """No gateway answered and nothing was retained."""


class StatsClient:
    """One MQTT connection for asking a gateway: ``async with StatsClient(...) as c``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        prefix: str = "streamedge",
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self._id = uuid.uuid4().hex[:12]
        self.reply_topic = f"{prefix}/stats/reply/{self._id}"
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=f"streamedge-stats-{self._id}",
            username=username,
            password=password,
            timeout=timeout,
        )
        self._where = f"{host}:{port}"
        self._seq = 0
        self._subscribed: set[str] = set()
        self.retained: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> Self:
        try:
            await self._client.__aenter__()
            await self._subscribe(self.reply_topic)
        except (aiomqtt.MqttError, OSError) as exc:
            raise ConnectError(f"cannot reach the broker at {self._where}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def _subscribe(self, topic: str) -> None:
        if topic not in self._subscribed:
            await self._client.subscribe(topic, qos=0)
            self._subscribed.add(topic)

    async def _next(self, deadline: float, want: str | None, correlation: str | None) -> Any:
        """Messages until one on ``want`` (with ``correlation``) arrives; stash the rest."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline if deadline > loop.time() else loop.time()):
                async for message in self._client.messages:
                    topic = message.topic.value
                    try:
                        doc = json.loads(message.payload)
                    except ValueError:
                        logger.debug("ignoring a non-JSON message on %s", topic)
                        continue
                    if not isinstance(doc, dict):
                        continue
                    if topic != self.reply_topic:
                        self.retained[topic] = doc
                    if topic == want and (
                        correlation is None or doc.get("correlation") == correlation
                    ):
                        return doc
        return None

    async def request(
        self,
        *,
        device: str | None = None,
        stream: str | None = None,
        model: str | None = None,
        window_s: float | None = None,
        follow_s: float | None = None,
        fallback: bool = True,
    ) -> dict[str, Any]:
        """Ask ``<prefix>/stats/get``; on no answer, the retained snapshot (if ``fallback``).

        Raises:
            NoAnswerError: no answer and (with ``fallback``) no retained snapshot.
            TransportError: the connection failed.
        """
        self._seq += 1
        correlation = f"{self._id}-{self._seq}"
        options = {
            "device": device,
            "stream": stream,
            "model": model,
            "window_s": window_s,
            "follow_s": follow_s,
        }
        req: dict[str, Any] = {
            "reply_to": self.reply_topic,
            "correlation": correlation,
            **{k: v for k, v in options.items() if v is not None},
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        stats_topic = f"{self.prefix}/stats"
        try:
            if fallback:
                await self._subscribe(stats_topic)
            await self._client.publish(f"{self.prefix}/stats/get", json.dumps(req).encode())
            doc = await self._next(deadline, self.reply_topic, correlation)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"MQTT {self._where}: {exc}") from exc
        if doc is not None:
            if "error" in doc and "schema_version" not in doc:
                raise StreamedgeError(f"the gateway refused the request: {doc['error']}")
            return dict(doc)
        if fallback and stats_topic in self.retained:
            logger.warning(
                "no answer on %s/stats/get within %.0f s; showing the retained snapshot",
                self.prefix,
                self.timeout,
            )
            return dict(self.retained[stats_topic])
        raise NoAnswerError(f"no answer from a gateway under '{self.prefix}' at {self._where}")

    async def retained_doc(self, suffix: str) -> dict[str, Any]:
        """The retained document on ``<prefix>/stats/<suffix>`` (e.g. ``history``).

        Raises:
            NoAnswerError: nothing retained there within the timeout.
            TransportError: the connection failed.
        """
        topic = f"{self.prefix}/stats/{suffix}"
        if topic in self.retained:
            return self.retained[topic]
        loop = asyncio.get_running_loop()
        try:
            await self._subscribe(topic)
            doc = await self._next(loop.time() + self.timeout, topic, None)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"MQTT {self._where}: {exc}") from exc
        if doc is None:
            raise NoAnswerError(f"nothing retained on {topic} at {self._where}")
        return dict(doc)
