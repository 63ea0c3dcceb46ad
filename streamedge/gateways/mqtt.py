"""The MQTT transport (aiomqtt 2.x). All aiomqtt calls live in this module.

One long-running :meth:`MqttTransport.run` task connects, subscribes,
delivers messages and reconnects with jittered exponential backoff. Answers
are published from a bounded, byte-capped outgoing queue by a sender task,
so a broker outage holds answers instead of losing them (up to the cap,
past which each loss is counted). The Last Will marks the gateway
``offline``; a graceful stop publishes ``stopped`` first.

MQTT 5 is used when the broker accepts it (``protocol: auto``); the embedded
amqtt broker speaks 3.1.1 only, and everything here works on both.

Nothing is lost across restarts: the session is persistent by default
(``clean_start: false``, a stable client id), and QoS 1 input is
acknowledged only once the gateway has taken it (queued or answered), so the
broker redelivers whatever a broken connection or a shutdown left unacknowledged,
and MQTT 5 Receive Maximum bounds what is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamedge.errors import PublishError
from streamedge.gateways.config import MqttConfig
from streamedge.protocols import Deliver
from streamedge.records import Clock, Inbound, OutboundMessage

logger = logging.getLogger(__name__)

_REFUSED_V5 = {1, 132}  # "unacceptable protocol version" in 3.1.1 and 5 reason codes
_SEND_WINDOW = 100  # answers published and awaiting their PUBACKs at once


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter and its QoS."""

    topic: str
    qos: int = 0
    shared: bool = False
    """Use the configured share group (MQTT 5 shared subscription), if any."""


def backoff_delay(attempt: int, *, min_s: float, max_s: float, jitter: float) -> float:
    """Exponential backoff with a random share (full jitter for jitter=1)."""
    base = min(max_s, min_s * (2.0 ** min(attempt, 30)))
    return base * (1 - jitter) + base * jitter * random.random()


def _payload_bytes(payload: Any) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    if payload is None:
        return b""
    return str(payload).encode()


class _Redeliver(Exception):  # noqa: N818  # a control-flow signal, not an error
    """Reconnect so the broker sends again the QoS 1 input the full buffer left unacknowledged."""


class MqttTransport:
    """Connects to one broker; delivers inbound messages; publishes answers."""

    name = "mqtt"

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        available_topic: str,
        subscriptions: Sequence[Subscription],
        host: str | None = None,
        port: int | None = None,
        clock: Clock = time.monotonic,
        on_lost: Callable[[str], None] | None = None,
        mqtt311_only: bool = False,
    ) -> None:
        self._cfg = cfg
        self._host = host or cfg.host or "127.0.0.1"
        self._port = port if port is not None else cfg.port
        self._client_id = client_id
        self._available = available_topic
        self._subs = list(subscriptions)
        self._clock = clock
        self._on_lost = on_lost or (lambda _reason: None)
        self._out: deque[OutboundMessage] = deque()
        self._out_bytes = 0
        self._out_ready = asyncio.Event()
        self._out_empty = asyncio.Event()
        self._out_empty.set()
        self._out_space = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self.protocol: str | None = None
        # None: not known yet (protocol 'auto'); True/False once a connection settled it.
        self._v5: bool | None = {"5": True, "3.1.1": False}.get(cfg.protocol)
        if mqtt311_only:
            self._v5 = False
        self.reconnects = 0
        self.lost_incoming = 0
        self.lost_outgoing = 0
        self._acking = True
        self._unacked_overflow = 0
        self.redelivery_reconnects = 0
        self._share_warned = False

    # -- public -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """Whether a broker connection is up."""
        return self._connected.is_set()

    @property
    def mqtt5(self) -> bool:
        """Whether the current connection speaks MQTT 5."""
        return self.protocol == "5"

    @property
    def out_depth(self) -> int:
        """Answers waiting to be published."""
        return len(self._out)

    async def publish(self, message: OutboundMessage) -> None:
        """Queue an answer; wait while the outgoing queue is full (backpressure on the
        workers, hence on unacknowledged input), and raise PublishError after
        ``publish_timeout_s``."""
        n = len(message.payload)
        if self._out_full(n):
            try:
                async with asyncio.timeout(self._cfg.publish_timeout_s):
                    while self._out_full(n):
                        self._out_space.clear()
                        await self._out_space.wait()
            except TimeoutError:
                self.lost_outgoing += 1
                raise PublishError("outgoing queue is full (broker unreachable?)") from None
        self._out.append(message)
        self._out_bytes += n
        self._out_empty.clear()
        self._out_ready.set()

    def _out_full(self, n: int) -> bool:
        return len(self._out) >= self._cfg.out_queue_size or bool(
            self._out and self._out_bytes + n > self._cfg.out_queue_max_bytes
        )

    async def publish_now(self, message: OutboundMessage, *, timeout: float | None = None) -> None:
        """Publish immediately on the live connection (stats, availability)."""
        client = self._client
        if client is None:
            raise PublishError("not connected")
        await self._send(client, message, timeout or self._cfg.publish_timeout_s)

    async def flush(self, timeout: float) -> bool:
        """Wait until queued answers are published; return whether all were."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._out_empty.wait()
        return not self._out

    def stop_acking(self) -> None:
        """Leave input unacknowledged from now on (shutdown): the broker keeps it
        in the persistent session and delivers it again after the restart."""
        self._acking = False

    def subscription_topic(self, sub: Subscription) -> str:
        """The topic filter to subscribe with on the current connection."""
        group = self._cfg.share_group
        if not sub.shared or group is None:
            return sub.topic
        if not self.mqtt5:
            if not self._share_warned:
                self._share_warned = True
                logger.warning(
                    "share_group %r needs MQTT 5; subscribing to %s without sharing",
                    group,
                    sub.topic,
                )
            return sub.topic
        return f"$share/{group}/{sub.topic}"

    async def close(self, *, graceful: bool) -> None:
        """Flush answers and publish ``stopped`` (graceful); the caller then cancels run()."""
        if not graceful or self._client is None:
            return
        if not await self.flush(timeout=min(5.0, self._cfg.publish_timeout_s)):
            logger.warning("%d answers still queued at shutdown", len(self._out))
        try:
            await self.publish_now(
                OutboundMessage(topic=self._available, payload=b"stopped", qos=1, retain=True)
            )
        except PublishError as exc:
            logger.warning("could not publish 'stopped': %s", exc)

    # -- the connection loop ----------------------------------------------------
    def _queue_type(self) -> type[asyncio.Queue[aiomqtt.Message]]:
        transport = self

        class CountingQueue(asyncio.Queue[aiomqtt.Message]):
            """aiomqtt discards messages when its queue is full.

            QoS 1 input is not acknowledged until taken, so the broker still owes it:
            note it and reconnect once the queue drained (brokers resend unacknowledged
            messages only on a new connection; Mosquitto 2.0 sends a persistent
            session's whole backlog at once, past Receive Maximum). QoS 0 is lost: count it.
            """

            def put_nowait(self, item: aiomqtt.Message) -> None:
                # Only a persistent session outlives the reconnect that gets it resent.
                if (
                    self.full()
                    and item.qos > 0
                    and transport._acking
                    and not transport._cfg.clean_start
                ):
                    transport._unacked_overflow += 1
                    return
                try:
                    super().put_nowait(item)
                except asyncio.QueueFull:
                    transport.lost_incoming += 1
                    transport._on_lost("mqtt_incoming_full")
                    raise

        return CountingQueue

    def _make_client(self, *, v5: bool, probe: bool = False) -> aiomqtt.Client:
        will = aiomqtt.Will(self._available, b"offline", qos=1, retain=True)
        password = self._cfg.password.get_secret_value() if self._cfg.password else None
        cfg = self._cfg
        kwargs: dict[str, Any] = {}
        if v5:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V5
            kwargs["clean_start"] = cfg.clean_start
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            # Without a Session Expiry Interval an MQTT 5 session ends at disconnect.
            props.SessionExpiryInterval = 0 if cfg.clean_start else cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
            kwargs["properties"] = props
        else:
            kwargs["protocol"] = aiomqtt.ProtocolVersion.V311
            kwargs["clean_session"] = cfg.clean_start
        if cfg.tls.enabled:
            kwargs["tls_context"] = self._tls_context()
        client = aiomqtt.Client(
            self._host,
            self._port,
            identifier=self._client_id,
            username=self._cfg.username,
            password=password,
            will=will,
            keepalive=self._cfg.keepalive_s,
            # A 3.1.1-only broker may sit on an MQTT 5 CONNECT instead of refusing
            # it; do not wait the full timeout to find out.
            timeout=min(3.0, self._cfg.publish_timeout_s) if probe else self._cfg.publish_timeout_s,
            queue_type=self._queue_type(),
            max_queued_incoming_messages=self._cfg.max_queued_incoming,
            **kwargs,
        )
        # aiomqtt has no switch for it: acknowledge QoS 1 input only once it is taken.
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = _SEND_WINDOW + 10  # the sender's window is deliberate
        return client

    def _tls_context(self) -> ssl.SSLContext:
        tls = self._cfg.tls
        ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
        if tls.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    async def run(self, deliver: Deliver, ready: asyncio.Event) -> None:
        """Connect, subscribe, deliver, reconnect; runs until cancelled."""
        attempt = 0
        while True:
            # In 'auto' mode alternate versions until one connects: a 3.1.1-only
            # broker may refuse MQTT 5 cleanly (rc 132) or hang on its CONNECT.
            v5 = self._v5 if self._v5 is not None else attempt % 2 == 0
            try:
                async with self._make_client(v5=v5, probe=self._v5 is None and v5) as client:
                    self._client = client
                    self._v5 = v5
                    self.protocol = "5" if v5 else "3.1.1"
                    await self._on_connect(client)
                    if self.reconnects:
                        logger.info("reconnected to %s:%d", self._host, self._port)
                    attempt = 0
                    ready.set()
                    await self._serve(client, deliver)
            except _Redeliver:
                self._lost_connection()
                logger.warning(
                    "incoming buffer was full; reconnected so the broker resends %d "
                    "unacknowledged message(s)",
                    self._unacked_overflow,
                )
                self._unacked_overflow = 0
                self.redelivery_reconnects += 1
                continue
            except aiomqtt.MqttCodeError as exc:
                self._lost_connection()
                if v5 and self._cfg.protocol == "auto" and exc.rc in _REFUSED_V5:
                    logger.info("broker refused MQTT 5; using MQTT 3.1.1")
                    self._v5 = False
                    continue
                delay = self._delay(attempt)
                logger.warning(
                    "MQTT %s:%d: %s; retrying in %.1f s", self._host, self._port, exc, delay
                )
            except aiomqtt.MqttError as exc:
                self._lost_connection()
                if self._v5 is None and v5:
                    # The MQTT 5 probe got no answer (amqtt sits on a v5 CONNECT): try 3.1.1 now.
                    logger.info("no answer to an MQTT 5 CONNECT (%s); trying MQTT 3.1.1", exc)
                    attempt += 1
                    continue
                delay = self._delay(attempt)
                logger.warning(
                    "MQTT %s:%d: %s; retrying in %.1f s", self._host, self._port, exc, delay
                )
            attempt += 1
            self.reconnects += 1
            await asyncio.sleep(delay)

    def _delay(self, attempt: int) -> float:
        rc = self._cfg.reconnect
        return backoff_delay(attempt, min_s=rc.min_s, max_s=rc.max_s, jitter=rc.jitter)

    def _lost_connection(self) -> None:
        self._connected.clear()
        self._client = None

    async def _on_connect(self, client: aiomqtt.Client) -> None:
        # paho leaves Nagle on: an answer written right after an input's PUBACK would
        # wait for the broker's delayed TCP ACK (milliseconds, more at low rates).
        sock = client._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Subscribe first: "online" promises that input is being taken.
        for sub in self._subs:
            await client.subscribe(self.subscription_topic(sub), qos=sub.qos)
        self._connected.set()
        await client.publish(self._available, b"online", qos=1, retain=True)
        logger.info(
            "connected to MQTT %s:%d (MQTT %s%s) as %s",
            self._host,
            self._port,
            self.protocol,
            ", TLS" if self._cfg.tls.enabled else "",
            self._client_id,
        )

    async def _serve(self, client: aiomqtt.Client, deliver: Deliver) -> None:
        # The sender lives exactly as long as this connection: created here,
        # cancelled and awaited in the finally (a TaskGroup would wrap the
        # MqttError that ends the connection into an ExceptionGroup).
        sender = asyncio.create_task(self._sender(client), name=f"{self._client_id}.mqtt-sender")
        try:
            messages = aiter(client.messages)
            queue = client._queue
            while True:
                # aiomqtt's iterator starts a task and an asyncio.wait per message;
                # take what is already queued directly (the iterator still watches
                # for the disconnect whenever the queue runs dry).
                try:
                    message = queue.get_nowait()
                except asyncio.QueueEmpty:
                    message = await anext(messages)
                await deliver(self._inbound(message))
                if message.qos > 0 and self._acking:
                    client._client.ack(message.mid, int(message.qos))
                if self._unacked_overflow and len(client.messages) == 0:
                    raise _Redeliver
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _inbound(self, message: aiomqtt.Message) -> Inbound:
        props = message.properties
        reply_to = correlation = content_type = None
        if props is not None:
            reply_to = getattr(props, "ResponseTopic", None)
            correlation = getattr(props, "CorrelationData", None)
            content_type = getattr(props, "ContentType", None)
        return Inbound(
            topic=message.topic.value,
            payload=_payload_bytes(message.payload),
            received_at=self._clock(),
            content_type=content_type,
            qos=int(message.qos),
            reply_to=reply_to,
            correlation=correlation,
            transport=self.name,
        )

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Publish queued answers in order, up to _SEND_WINDOW awaiting their PUBACKs
        (one at a time would cap the answers at one per broker round trip). An answer
        leaves the queue only once acknowledged; after a failure the unacknowledged
        ones are sent again, on this connection if it lives, else on the next (at
        least once: some may arrive twice)."""
        pending: deque[asyncio.Task[None]] = deque()  # for self._out[0 : len(pending)]
        wake = self._out_ready  # set by publish() and by every finished send
        timeout = self._cfg.publish_timeout_s
        try:
            while True:
                wake.clear()
                while pending and pending[0].done():
                    if pending[0].exception() is not None:
                        exc = pending[0].exception()
                        if not isinstance(exc, PublishError):
                            raise exc  # type: ignore[misc]
                        # Usually the connection is gone and _serve ends this task; if
                        # not (a slow broker), send the unacknowledged ones again.
                        logger.warning("publish failed, sending again: %s", exc)
                        await self._cancel(pending)
                        await asyncio.sleep(0.5)
                        break
                    pending.popleft()
                    self._out_bytes -= len(self._out.popleft().payload)
                    self._out_space.set()
                if not self._out:
                    self._out_empty.set()
                while len(pending) < min(_SEND_WINDOW, len(self._out)):
                    task = asyncio.ensure_future(
                        self._send(client, self._out[len(pending)], timeout)
                    )
                    task.add_done_callback(lambda _t: wake.set())
                    pending.append(task)
                await wake.wait()
        finally:
            await self._cancel(pending)

    @staticmethod
    async def _cancel(pending: deque[asyncio.Task[None]]) -> None:
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, PublishError):
                await task
        pending.clear()

    async def _send(self, client: aiomqtt.Client, message: OutboundMessage, timeout: float) -> None:
        props = None
        if self.mqtt5 and (message.correlation is not None or message.content_type):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if message.correlation is not None:
                props.CorrelationData = message.correlation
            if message.content_type:
                props.ContentType = message.content_type
        try:
            await client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=props,
                timeout=timeout,
            )
        except aiomqtt.MqttError as exc:
            raise PublishError(str(exc)) from exc
