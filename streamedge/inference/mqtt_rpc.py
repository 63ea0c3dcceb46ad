"""MQTT request/response for edge inference (aiomqtt; every aiomqtt call of the edge tier
and of ``streamedge worker`` lives here).

Requests go to ``<prefix>/infer/{model}``; workers subscribe to
``$share/<group>/<prefix>/infer/{model}`` on MQTT 5, so the broker hands each
request to one worker and a second worker doubles capacity with no
configuration change. Replies go to the request's MQTT 5 Response Topic with
its Correlation Data. On MQTT 3.1.1 (amqtt) there are neither properties nor
shared subscriptions: the request carries ``reply_to`` and ``correlation`` in
its msgpack body (it always does, so tools that only read the body work too),
and every worker subscribed to the topic answers; the requester keeps the
first reply and counts the others as late.

Workers announce themselves on ``<prefix>/workers/{name}`` (retained JSON,
``{"state": "online", "models": [...], "concurrency": n}``, and the Last Will
``{"state": "offline"}``), so a requester knows whether anyone serves a model
and fails over at once when nobody does instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamedge.errors import BackendUnavailableError, DecodeError
from streamedge.gateways.mqtt import backoff_delay
from streamedge.inference.wire import pack, unpack

logger = logging.getLogger(__name__)

_REFUSED_V5 = {1, 132}


def infer_topic(prefix: str, model: str) -> str:
    """Where requests for ``model`` (its name) go."""
    return f"{prefix}/infer/{model}"


def workers_topic(prefix: str, worker: str = "+") -> str:
    """A worker's retained status topic (``+``: all of them)."""
    return f"{prefix}/workers/{worker}"


@dataclass(frozen=True, slots=True)
class Broker:
    """Where and how to connect."""

    host: str
    port: int
    client_id: str
    protocol: str = "auto"
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 15
    connect_timeout_s: float = 5.0


class _Connection:
    """Connect with the right MQTT version and back off between attempts."""

    def __init__(self, broker: Broker, will: aiomqtt.Will | None) -> None:
        self.broker = broker
        self._will = will
        self.v5: bool | None = {"5": True, "3.1.1": False}.get(broker.protocol)
        self.attempt = 0

    def client(self) -> tuple[aiomqtt.Client, bool]:
        v5 = self.v5 if self.v5 is not None else self.attempt % 2 == 0
        b = self.broker
        kwargs: dict[str, Any] = {}
        if v5:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
        else:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
            kwargs["clean_session"] = True
        probe = self.v5 is None and v5
        client = aiomqtt.Client(
            b.host,
            b.port,
            identifier=b.client_id,
            username=b.username,
            password=b.password,
            will=self._will,
            keepalive=b.keepalive_s,
            timeout=min(3.0, b.connect_timeout_s) if probe else b.connect_timeout_s,
            max_queued_incoming_messages=10_000,
            **kwargs,
        )
        return client, v5

    def failed(self, exc: aiomqtt.MqttError, *, v5: bool) -> float:
        """Record a failed or lost connection; return the delay before the next try."""
        if self.v5 is None and v5:
            code = getattr(exc, "rc", None)
            code = getattr(code, "value", code)  # an int, or paho's ReasonCode
            refused = isinstance(code, int) and code in _REFUSED_V5
            logger.info(
                "%s: MQTT 5 %s; trying MQTT 3.1.1",
                self.broker.client_id,
                "refused" if refused else f"got no answer ({exc})",
            )
            self.attempt += 1
            return 0.0
        delay = backoff_delay(self.attempt, min_s=0.2, max_s=5.0, jitter=0.5)
        self.attempt += 1
        logger.warning(
            "%s: MQTT %s:%d: %s; retrying in %.1f s",
            self.broker.client_id,
            self.broker.host,
            self.broker.port,
            exc,
            delay,
        )
        return delay

    def connected(self, *, v5: bool) -> None:
        self.v5 = v5
        self.attempt = 0


def _props(message: aiomqtt.Message) -> tuple[str | None, bytes | None]:
    props = message.properties
    if props is None:
        return None, None
    reply = getattr(props, "ResponseTopic", None)
    corr = getattr(props, "CorrelationData", None)
    return (reply if isinstance(reply, str) else None), (bytes(corr) if corr else None)


def _payload(message: aiomqtt.Message) -> bytes:
    p: Any = message.payload
    if isinstance(p, bytes | bytearray):
        return bytes(p)
    if isinstance(p, str):
        return p.encode()
    return b""


# --------------------------------------------------------------------------
# The requester (the gateway's edge tier)
# --------------------------------------------------------------------------


class MqttRpcClient:
    """Sends requests and matches replies by correlation; tracks which workers are online.

    A separate connection from the gateway's :class:`MqttTransport`, on purpose:
    requests must fail fast while disconnected (the router falls back to another
    tier) rather than wait in the transport's outgoing queue, which holds answers
    through an outage; request frames (tens of kB) must not queue behind or in
    front of answers; the workers' broker may not be the devices' broker; and the
    gateway's connection may be MQTT 3.1.1 (the embedded amqtt broker) while the
    workers' broker speaks 5.
    """

    def __init__(self, broker: Broker, *, prefix: str, qos: int = 0) -> None:
        self.broker = broker
        self.prefix = prefix
        self.qos = qos
        self.reply_topic = f"{prefix}/replies/{broker.client_id}"
        self._conn = _Connection(broker, None)
        self._client: aiomqtt.Client | None = None
        self._v5 = False
        self._pending: dict[bytes, asyncio.Future[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.workers: dict[str, dict[str, Any]] = {}
        self.late_replies = 0
        self.bad_replies = 0
        self.reconnects = 0

    @property
    def protocol(self) -> str | None:
        """``5`` or ``3.1.1`` while connected."""
        if self._client is None:
            return None
        return "5" if self._v5 else "3.1.1"

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"{self.broker.client_id}.rpc")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_pending("edge client stopped")

    def workers_for(self, model: str) -> int:
        """Workers that announced ``model`` online."""
        return sum(
            1
            for status in self.workers.values()
            if status.get("state") == "online" and model in (status.get("models") or ())
        )

    def concurrency_for(self, model: str) -> int:
        """Requests the online workers of ``model`` run at once (together)."""
        total = 0
        for status in self.workers.values():
            if status.get("state") == "online" and model in (status.get("models") or ()):
                c = status.get("concurrency")
                total += c if isinstance(c, int) and c > 0 else 1
        return total

    async def request(self, topic: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Publish a request and wait for its reply (the caller sets the deadline).

        Raises:
            BackendUnavailableError: not connected, or the connection was lost.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise BackendUnavailableError("edge broker not connected")
        corr = uuid.uuid4().bytes
        body = pack({**doc, "reply_to": self.reply_topic, "correlation": corr})
        props = None
        if self._v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = corr
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[corr] = future
        try:
            try:
                await client.publish(topic, body, qos=self.qos, properties=props)
            except aiomqtt.MqttError as exc:
                raise BackendUnavailableError(f"cannot publish a request: {exc}") from exc
            return await future
        finally:
            self._pending.pop(corr, None)

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailableError(reason))
        self._pending.clear()

    async def _run(self) -> None:
        while True:
            client, v5 = self._conn.client()
            try:
                async with client:
                    self._client, self._v5 = client, v5
                    self._conn.connected(v5=v5)
                    await client.subscribe(self.reply_topic, qos=self.qos)
                    await client.subscribe(workers_topic(self.prefix), qos=1)
                    self.connected.set()
                    logger.info(
                        "edge: connected to %s:%d (MQTT %s)",
                        self.broker.host,
                        self.broker.port,
                        "5" if v5 else "3.1.1",
                    )
                    async for message in client.messages:
                        self._on_message(message)
            except aiomqtt.MqttError as exc:
                delay = self._conn.failed(exc, v5=v5)
            else:  # the message iterator ended: treat it as a lost connection
                delay = self._conn.failed(aiomqtt.MqttError("connection closed"), v5=v5)
            self.connected.clear()
            self._client = None
            self.workers.clear()
            self.reconnects += 1
            # In-flight requests cannot be answered on a new connection's reply topic
            # subscription in time to matter: fail them now so the router falls back.
            self._fail_pending("edge broker connection lost")
            await asyncio.sleep(delay)

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic == self.reply_topic:
            self._on_reply(message)
        elif topic.startswith(f"{self.prefix}/workers/"):
            name = topic.rsplit("/", 1)[-1]
            try:
                status = json.loads(_payload(message) or b"{}")
            except ValueError:
                status = None
            if isinstance(status, dict) and status.get("state") == "online":
                self.workers[name] = status
            else:
                self.workers.pop(name, None)

    def _on_reply(self, message: aiomqtt.Message) -> None:
        _, corr = _props(message)
        try:
            doc = unpack(_payload(message))
        except DecodeError:
            self.bad_replies += 1
            logger.warning("edge: malformed reply ignored")
            return
        if corr is None:
            body_corr = doc.get("correlation")
            corr = bytes(body_corr) if isinstance(body_corr, bytes | bytearray) else None
        future = self._pending.get(corr) if corr is not None else None
        if future is None or future.done():
            self.late_replies += 1  # after a timeout, or a second 3.1.1 worker's answer
            return
        future.set_result(doc)


# --------------------------------------------------------------------------
# The server (``streamedge worker``)
# --------------------------------------------------------------------------

Handler = Callable[[str, bytes], Awaitable[dict[str, Any]]]
"""``(model name, request body) -> reply document``; never raises InferenceError."""


class MqttRpcServer:
    """Subscribes to the models' request topics and answers each request."""

    def __init__(
        self,
        broker: Broker,
        *,
        prefix: str,
        group: str,
        worker: str,
        models: list[str],
        handler: Handler,
        concurrency: int,
        max_pending: int,
        qos: int = 0,
        admit: int | None = None,
    ) -> None:
        self.broker = broker
        self.prefix = prefix
        self.group = group
        self.worker = worker
        self.models = list(models)
        self._handler = handler
        self.concurrency = concurrency
        # Requests handed to the handler at once: more than the runners, so that
        # waiting requests can form batches in the local backend.
        self._admit = admit or concurrency
        self._max_pending = max_pending
        self.qos = qos
        self.status_topic = workers_topic(prefix, worker)
        will = aiomqtt.Will(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self._conn = _Connection(broker, will)
        self.pending = 0
        self.served = 0
        self.rejected = 0
        self.bad_requests = 0
        self.protocol: str | None = None

    def subscriptions(self, *, v5: bool) -> list[str]:
        """Shared subscriptions on MQTT 5, plain ones on 3.1.1."""
        topics = [infer_topic(self.prefix, m) for m in self.models]
        return [f"$share/{self.group}/{t}" for t in topics] if v5 else topics

    async def run(self, ready: asyncio.Event) -> None:
        """Connect, subscribe, serve and reconnect until cancelled."""
        while True:
            client, v5 = self._conn.client()
            try:
                async with client:
                    self._conn.connected(v5=v5)
                    self.protocol = "5" if v5 else "3.1.1"
                    for topic in self.subscriptions(v5=v5):
                        await client.subscribe(topic, qos=self.qos)
                    status = {
                        "state": "online",
                        "models": self.models,
                        "concurrency": self.concurrency,
                        "protocol": self.protocol,
                    }
                    await client.publish(
                        self.status_topic, json.dumps(status).encode(), qos=1, retain=True
                    )
                    logger.info(
                        "worker %s serving %s on %s:%d (MQTT %s%s)",
                        self.worker,
                        ", ".join(self.models),
                        self.broker.host,
                        self.broker.port,
                        self.protocol,
                        f", shared group {self.group}" if v5 else ", no shared subscription",
                    )
                    ready.set()
                    await self._serve(client, v5=v5)
            except aiomqtt.MqttError as exc:
                delay = self._conn.failed(exc, v5=v5)
            else:
                delay = self._conn.failed(aiomqtt.MqttError("connection closed"), v5=v5)
            self.protocol = None
            await asyncio.sleep(delay)

    async def stop(self, client: aiomqtt.Client) -> None:
        """Announce ``stopped`` (retained) before a clean disconnect."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.status_topic, json.dumps({"state": "stopped"}).encode(), qos=1, retain=True
            )

    async def _serve(self, client: aiomqtt.Client, *, v5: bool) -> None:
        # Request tasks live exactly as long as this connection: created here,
        # cancelled and awaited in the finally (a TaskGroup would wrap the
        # MqttError that ends the connection into an ExceptionGroup).
        slots = asyncio.Semaphore(self._admit)
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for message in client.messages:
                topic = message.topic.value
                model = topic.rsplit("/", 1)[-1]
                if not topic.startswith(f"{self.prefix}/infer/") or model not in self.models:
                    continue  # amqtt replays other clients' retained messages
                if self.pending >= self._max_pending:
                    self.rejected += 1
                    coro = self._reject(client, message)
                else:
                    self.pending += 1
                    coro = self._answer(client, message, model, slots)
                task = asyncio.create_task(coro, name=f"{self.worker}.request")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.stop(client)

    def _reply_address(
        self, message: aiomqtt.Message, doc: dict[str, Any] | None
    ) -> tuple[str | None, bytes | None]:
        reply_to, corr = _props(message)
        if doc is not None:
            if reply_to is None and isinstance(doc.get("reply_to"), str):
                reply_to = doc["reply_to"]
            body_corr = doc.get("correlation")
            if corr is None and isinstance(body_corr, bytes | bytearray):
                corr = bytes(body_corr)
        if reply_to is not None and ("#" in reply_to or "+" in reply_to):
            reply_to = None
        return reply_to, corr

    async def _reject(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        try:
            doc: dict[str, Any] | None = unpack(_payload(message))
        except DecodeError:
            doc = None
        reply = {"v": 1, "ok": False, "reason": "overloaded", "error": "worker overloaded"}
        await self._send(client, message, doc, reply)

    async def _answer(
        self, client: aiomqtt.Client, message: aiomqtt.Message, model: str, slots: asyncio.Semaphore
    ) -> None:
        body = _payload(message)
        doc: dict[str, Any] | None = None
        try:
            try:
                doc = unpack(body)
            except DecodeError as exc:
                self.bad_requests += 1
                logger.warning("worker %s: malformed request: %s", self.worker, exc)
                reply = {"v": 1, "ok": False, "reason": exc.reason, "error": str(exc)}
            else:
                async with slots:
                    reply = await self._handler(model, body)
                self.served += 1
            await self._send(client, message, doc, reply)
        except Exception:  # one request's bug must not stop the worker: contain, log, go on
            self.bad_requests += 1
            logger.exception("worker %s: request failed", self.worker)
        finally:
            self.pending -= 1

    async def _send(
        self,
        client: aiomqtt.Client,
        message: aiomqtt.Message,
        doc: dict[str, Any] | None,
        reply: dict[str, Any],
    ) -> None:
        reply_to, corr = self._reply_address(message, doc)
        if reply_to is None:
            self.bad_requests += 1
            logger.warning("worker %s: request without a reply topic ignored", self.worker)
            return
        props = None
        if self.protocol == "5" and corr is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.CorrelationData = corr
        if corr is not None:
            reply = {**reply, "correlation": corr}
        try:
            await client.publish(reply_to, pack(reply), qos=self.qos, properties=props)
        except aiomqtt.MqttError as exc:
            logger.warning("worker %s: reply not sent: %s", self.worker, exc)
