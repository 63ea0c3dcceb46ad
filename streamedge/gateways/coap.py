"""The CoAP server (aiocoap). All aiocoap calls live in this module.

Resources (``<p>`` is ``mqtt.topic_prefix``; its slashes become path segments)::

    POST          /ps/<p>/in/{device}/{stream}    input, like an MQTT publish on <p>/in/...
    GET, Observe  /ps/<p>/out/{device}/{stream}   the stream's latest answer
    GET, Observe  /ps/<p>/stats                   the latest stats snapshot
    GET           /.well-known/core               the resources above (link-format)

A POST goes through the same entry as an MQTT message (the gateway's deliver
function, so the same decoders, queues and counting) and is answered once
its pipeline outcome is known: 2.04 Changed (with the answer as the body when
there is one), 4.00 for a payload the decoders refuse, 4.04 for an unknown
path or a stream no rule matches, 4.13 over ``limits.max_payload_bytes``
(checked on the first block of a block-wise upload, before reassembly), and
5.03 with Max-Age when the queue is full or too many requests are in flight.
Every refusal is counted as a drop with its reason.

Observe notifications are rate-limited per resource: at most one every
``coap.min_notify_interval_s``, coalesced to the latest value (aiocoap
notifies on every trigger). Out resources, their bytes and the observers are
capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import aiocoap
from aiocoap import resource
from aiocoap.numbers.codes import Code
from aiocoap.numbers.contentformat import ContentFormat
from aiocoap.optiontypes import BlockOption

from streamedge.gateways.config import CoapConfig
from streamedge.protocols import Deliver
from streamedge.records import JSON, Clock, Inbound, OutboundMessage, StreamKey
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme, valid_segment

logger = logging.getLogger(__name__)

_JSON_CF = 50  # application/json
#: Pipeline drop reasons that mean "your payload is wrong" (4.00).
_BAD_REQUEST = frozenset({"bad_payload", "bad_image", "missing_field", "wrong_input_kind"})
#: Drop reasons that mean "try again later" (5.03 with Max-Age).
_UNAVAILABLE = frozenset(
    {"queue_full", "queue_bytes", "shutdown", "inference_failed", "publish_failed"}
)
#: Drop reasons that still mean the input was taken (a reading waiting for its window).
_ACCEPTED = frozenset({"window_incomplete"})
#: How long a partial block-wise upload is remembered (RFC 7252 MAX_TRANSMIT_WAIT).
_UPLOAD_TTL_S = 93.0


def coap_path(topic: str) -> tuple[str, ...]:
    """``streamedge/out/cam1/camera`` → ``("ps", "streamedge", "out", "cam1", "camera")``."""
    return ("ps", *topic.split("/"))


def response_code(kind: str, reason: str | None) -> Code:
    """The CoAP code answering a POST whose pipeline outcome is (kind, reason)."""
    if kind != "dropped" or reason in _ACCEPTED:
        return Code.CHANGED
    if reason in _BAD_REQUEST:
        return Code.BAD_REQUEST
    if reason == "too_large":
        return Code.REQUEST_ENTITY_TOO_LARGE
    if reason in _UNAVAILABLE:
        return Code.SERVICE_UNAVAILABLE
    return Code.INTERNAL_SERVER_ERROR


def content(request: aiocoap.Message, body: bytes) -> aiocoap.Message:
    """A 2.05 JSON response with an ETag, cut to the requested (or first) Block2 block.

    aiocoap does not split Observe notifications, and a peer such as libcoap
    drops a datagram larger than its block size, so large bodies always
    leave block-wise; the client fetches the rest with plain GETs, and the
    ETag tells it when the body changed in between.
    """
    msg = aiocoap.Message(code=Code.CONTENT, payload=body, content_format=_JSON_CF)
    msg.opt.etag = hashlib.blake2b(body, digest_size=8).digest()
    block2 = request.opt.block2
    max_payload = request.remote.maximum_payload_size
    if block2 is None and len(body) <= max_payload:
        return msg
    if block2 is None:
        block2 = BlockOption.BlockwiseTuple(0, False, request.remote.maximum_block_size_exp)
    return msg._extract_block(block2.block_number, block2.size_exponent, max_payload)


def later_block(request: aiocoap.Message) -> bool:
    """Whether a request asks for a block after the first (never an observation)."""
    block2 = request.opt.block2
    return block2 is not None and block2.block_number > 0


def refuse(servobs: Any) -> None:
    """Serve an Observe request as a plain GET.

    aiocoap 0.4.17 calls the cancellation callback of every observation it
    set up, accepted or not; accepting with a no-op and deregistering before
    the first response is its way of saying no.
    """
    servobs.accept(lambda: None)
    servobs.deregister()


class _Notifier:
    """The observers of one resource, notified at most once per interval.

    An update inside the interval schedules one notification at its end; any
    further updates until then ride on it (the render reads the latest value).
    """

    def __init__(self, server: CoapServer) -> None:
        self._server = server
        self.observers: set[Any] = set()
        self._last = -math.inf
        self._pending: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        if not self.observers:
            return
        if self._pending is not None:
            self._server.coalesced += 1
            return
        loop = asyncio.get_running_loop()
        wait = self._last + self._server.cfg.min_notify_interval_s - loop.time()
        if wait <= 0:
            self._fire()
        else:
            self._pending = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._last = asyncio.get_running_loop().time()
        for obs in list(self.observers):
            self._server.notifications += 1
            obs.trigger()

    def add(self, servobs: Any) -> bool:
        """Accept an observation unless the server-wide cap is reached."""
        server = self._server
        if server.observer_count >= server.cfg.max_observers:
            server.refused_observers += 1
            logger.warning("CoAP observation refused: coap.max_observers reached")
            refuse(servobs)
            return False
        self.observers.add(servobs)
        server.observer_count += 1

        def cancelled() -> None:
            if servobs in self.observers:
                self.observers.discard(servobs)
                server.observer_count -= 1

        servobs.accept(cancelled)
        return True

    def close(self) -> None:
        """End every observation (the resource went away): a final 4.04."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        for obs in list(self.observers):
            obs.trigger(aiocoap.Message(code=Code.NOT_FOUND, payload=b"resource evicted"))


class _OutEntry:
    __slots__ = ("notifier", "payload")

    def __init__(self, payload: bytes, notifier: _Notifier) -> None:
        self.payload = payload
        self.notifier = notifier


class _OutResources(resource.ObservableResource, resource.PathCapable):  # type: ignore[misc]
    """``/ps/<p>/out/{device}/{stream}``: one entry per stream that has an answer."""

    def __init__(self, server: CoapServer) -> None:
        super().__init__()
        self._server = server
        self.entries: OrderedDict[tuple[str, ...], _OutEntry] = OrderedDict()
        self.nbytes = 0

    def update(self, path: tuple[str, ...], payload: bytes) -> None:
        entry = self.entries.get(path)
        if entry is None:
            entry = self.entries[path] = _OutEntry(payload, _Notifier(self._server))
        else:
            self.nbytes -= len(entry.payload)
            entry.payload = payload
            self.entries.move_to_end(path)
        self.nbytes += len(payload)
        cfg = self._server.cfg
        while len(self.entries) > 1 and (
            len(self.entries) > cfg.max_out_resources or self.nbytes > cfg.max_out_bytes
        ):
            _, old = self.entries.popitem(last=False)
            self.nbytes -= len(old.payload)
            old.notifier.close()
            self._server.evicted += 1
        entry.notifier.changed()

    def latest(self, key: StreamKey) -> bytes | None:
        entry = self.entries.get((key.device, key.stream))
        return entry.payload if entry is not None else None

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # content() cuts blocks from the entry's current payload

    async def add_observation(self, request: aiocoap.Message, servobs: Any) -> None:
        entry = self.entries.get(tuple(request.opt.uri_path))
        if entry is None or later_block(request):
            refuse(servobs)  # render_get answers 4.04, or serves the block
        else:
            entry.notifier.add(servobs)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        entry = self.entries.get(tuple(request.opt.uri_path))
        if entry is None:
            self._server.not_found += 1
            return aiocoap.Message(code=Code.NOT_FOUND, payload=b"no answer for this stream yet")
        return content(request, entry.payload)

    def get_resources_as_linkheader(self) -> Any:
        from aiocoap.util.linkformat import Link, LinkFormat

        return LinkFormat(
            [Link("/" + "/".join(path), ct=str(_JSON_CF), obs=None) for path in self.entries]
        )


class _StatsResource(resource.ObservableResource):  # type: ignore[misc]
    """``/ps/<p>/stats``: the snapshot, notified on the stats cadence."""

    ct = _JSON_CF
    rt = "streamedge.stats"

    def __init__(self, server: CoapServer) -> None:
        super().__init__()
        self._server = server
        self.notifier = _Notifier(server)
        self._body = b""

    async def needs_blockwise_assembly(self, request: aiocoap.Message) -> bool:
        return False  # content() cuts blocks from the last rendered snapshot

    async def add_observation(self, request: aiocoap.Message, servobs: Any) -> None:
        if later_block(request):
            refuse(servobs)
        else:
            self.notifier.add(servobs)

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        # A new snapshot for a first block; later blocks come from the same one, so
        # the pieces fit together (the ETag changes with each new snapshot).
        if not later_block(request) or not self._body:
            doc = self._server.snapshot()
            self._body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        return content(request, self._body)


class _InResources(resource.Resource, resource.PathCapable):  # type: ignore[misc]
    """``/ps/<p>/in/{device}/{stream}``: POST input."""

    def __init__(self, server: CoapServer) -> None:
        super().__init__()
        self._server = server

    async def render_to_pipe(self, pipe: Any) -> None:
        # Refuse oversized, misaddressed or surplus uploads on their first block,
        # before aiocoap's Block1 spool holds any of it.
        refusal = self._server.check_upload(pipe.request)
        if refusal is not None:
            pipe.add_response(refusal, is_last=True)
            return
        try:
            await super().render_to_pipe(pipe)
        except ValueError:
            # aiocoap's spool found a gap or overlap: two uploads from one endpoint to
            # one stream interleaved (no Request-Tag), or blocks were lost.
            pipe.add_response(self._server.broken_upload(pipe.request), is_last=True)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return await self._server.ingest(request)

    def get_resources_as_linkheader(self) -> Any:
        from aiocoap.util.linkformat import Link, LinkFormat

        return LinkFormat([Link("/{device}/{stream}", rt="streamedge.in")])


class CoapServer:
    """Serves the gateway's topic tree over CoAP; an async context manager."""

    name = "coap"

    def __init__(
        self,
        cfg: CoapConfig,
        *,
        topics: TopicScheme,
        stats: Stats,
        deliver: Deliver,
        has_rule: Callable[[StreamKey], bool],
        accepting: Callable[[], bool],
        max_payload_bytes: int,
        stats_interval_s: float,
        clock: Clock,
    ) -> None:
        self.cfg = cfg
        self._topics = topics
        self._stats = stats
        self._deliver = deliver
        self._has_rule = has_rule
        self._accepting = accepting
        self._max_payload = max_payload_bytes
        self._stats_interval = max(stats_interval_s, cfg.min_notify_interval_s)
        self._clock = clock
        self._out_root = f"{topics.prefix}/out/"
        self._ctx: aiocoap.Context | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._uploads: dict[Any, float] = {}
        self.out = _OutResources(self)
        self.stats_resource = _StatsResource(self)
        self.site = resource.Site()
        root = coap_path(topics.prefix)
        self.site.add_resource((*root, "in"), _InResources(self))
        self.site.add_resource((*root, "out"), self.out)
        self.site.add_resource((*root, "stats"), self.stats_resource)
        self.site.add_resource(
            (".well-known", "core"),
            resource.WKCResource(self.site.get_resources_as_linkheader, impl_info=None),
        )
        self.port: int | None = None
        self.inflight = 0
        self.observer_count = 0
        self.responses: Counter[str] = Counter()
        self.notifications = 0
        self.coalesced = 0
        self.evicted = 0
        self.not_found = 0
        self.refused_observers = 0
        self.block_uploads = 0

    # -- lifecycle ---------------------------------------------------------------
    async def __aenter__(self) -> CoapServer:
        self._ctx = await aiocoap.Context.create_server_context(
            self.site, bind=(self.cfg.bind, self.cfg.port), transports=["udp6"]
        )
        self.port = self.cfg.port
        self._ticker = asyncio.create_task(self._tick_stats(), name="streamedge.coap-stats")
        logger.info("CoAP server on udp %s:%d", self.cfg.bind, self.cfg.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None

    async def _tick_stats(self) -> None:
        while True:
            await asyncio.sleep(self._stats_interval)
            self.stats_resource.notifier.changed()

    # -- answers -----------------------------------------------------------------
    def answer(self, message: OutboundMessage) -> None:
        """Mirror an answer published on ``<p>/out/{device}/{stream}`` to its resource."""
        if not message.topic.startswith(self._out_root):
            return
        parts = tuple(message.topic[len(self._out_root) :].split("/"))
        if len(parts) == 2 and all(valid_segment(p) for p in parts):
            self.out.update(parts, message.payload)

    def snapshot(self) -> JSON:
        """The stats snapshot served on ``/ps/<p>/stats``."""
        return self._stats.snapshot()

    # -- ingest ------------------------------------------------------------------
    def _refuse(
        self,
        code: Code,
        reason: str,
        key: StreamKey | None,
        nbytes: int,
        detail: str,
    ) -> aiocoap.Message:
        """Count a refused POST as received and dropped, log it (throttled), answer it."""
        skey = str(key) if key is not None else None
        self._stats.received(skey, nbytes)
        self._stats.dropped(reason, skey)
        # One template per reason: the log throttle then lets each reason through once.
        logger.warning(f"CoAP POST refused ({reason}): %s", detail)  # noqa: G004
        return self._respond(aiocoap.Message(code=code, payload=detail.encode()))

    def _respond(self, msg: aiocoap.Message) -> aiocoap.Message:
        if msg.code == Code.SERVICE_UNAVAILABLE:
            msg.opt.max_age = self.cfg.retry_after_s
        self.responses[msg.code.dotted] += 1
        return msg

    def broken_upload(self, request: aiocoap.Message) -> aiocoap.Message:
        """Answer a block-wise upload that could not be reassembled (4.08)."""
        key = self._key(request)
        self._uploads.pop((request.remote.blockwise_key, key), None)
        return self._refuse(
            Code.REQUEST_ENTITY_INCOMPLETE,
            "incomplete_upload",
            key,
            len(request.payload),
            "block-wise upload has gaps (concurrent uploads to one stream need a Request-Tag)",
        )

    @staticmethod
    def _key(request: aiocoap.Message) -> StreamKey | None:
        path = request.opt.uri_path
        if len(path) != 2 or not all(valid_segment(p) for p in path):
            return None
        return StreamKey(path[0], path[1])

    def check_upload(self, request: aiocoap.Message) -> aiocoap.Message | None:
        """A refusal for a POST (or one block of it) that cannot be taken, else None."""
        if request.code != Code.POST:
            return None
        key = self._key(request)
        if key is None:
            return self._refuse(
                Code.NOT_FOUND,
                "unknown_topic",
                None,
                len(request.payload),
                "POST to /ps/<prefix>/in/{device}/{stream}",
            )
        block1 = request.opt.block1
        declared = request.opt.size1 or 0
        end = len(request.payload) + (block1.start if block1 is not None else 0)
        if max(end, declared) > self._max_payload:
            refusal = self._refuse(
                Code.REQUEST_ENTITY_TOO_LARGE,
                "too_large",
                key,
                max(end, declared),
                f"payload over {self._max_payload} bytes",
            )
            refusal.opt.size1 = self._max_payload
            return refusal
        if block1 is None:
            return None
        # Bound the partial uploads aiocoap's Block1 spool holds for us.
        upload = (request.remote.blockwise_key, key)
        now = self._clock()
        if block1.block_number == 0 and upload not in self._uploads:
            for old in [u for u, t in self._uploads.items() if now - t > _UPLOAD_TTL_S]:
                del self._uploads[old]
            if len(self._uploads) >= self.cfg.max_uploads:
                return self._refuse(
                    Code.SERVICE_UNAVAILABLE,
                    "coap_overloaded",
                    key,
                    declared or end,
                    "too many block-wise uploads at once",
                )
        if block1.more:
            self._uploads[upload] = now
        else:
            self._uploads.pop(upload, None)
            self.block_uploads += 1
        return None

    async def ingest(self, request: aiocoap.Message) -> aiocoap.Message:
        """Hand a complete POST to the pipeline and answer with its outcome."""
        key = self._key(request)
        n = len(request.payload)
        if key is None:  # check_upload refused it already; kept for direct calls
            return self._respond(aiocoap.Message(code=Code.NOT_FOUND))
        if not self._accepting():
            return self._refuse(Code.SERVICE_UNAVAILABLE, "shutdown", key, n, "not accepting")
        if not self._has_rule(key):
            return self._refuse(
                Code.NOT_FOUND, "no_stream_rule", key, n, f"no stream rule matches {key}"
            )
        if self.inflight >= self.cfg.max_inflight:
            return self._refuse(
                Code.SERVICE_UNAVAILABLE, "coap_overloaded", key, n, "too many requests in flight"
            )
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[tuple[str, str | None]] = loop.create_future()

        def told(kind: str, reason: str | None) -> None:
            if not outcome.done():
                outcome.set_result((kind, reason))

        cf = request.opt.content_format
        media_type = cf.media_type if isinstance(cf, ContentFormat) and cf.is_known() else None
        inbound = Inbound(
            topic=self._topics.input(key),
            payload=request.payload,
            received_at=self._clock(),
            content_type=media_type,
            qos=1 if request.mtype == aiocoap.CON else 0,
            transport=self.name,
            on_outcome=told,
        )
        self.inflight += 1
        try:
            try:
                async with asyncio.timeout(self.cfg.admit_timeout_s):
                    await self._deliver(inbound)
            except TimeoutError:
                # A blocking stream queue stayed full: the message was not queued.
                self._stats.dropped("queue_full", str(key))
                logger.warning("CoAP POST refused (queue_full): %s queue stayed full", key)
                return self._respond(aiocoap.Message(code=Code.SERVICE_UNAVAILABLE))
            try:
                async with asyncio.timeout(self.cfg.response_timeout_s):
                    kind, reason = await outcome
            except TimeoutError:
                return self._respond(aiocoap.Message(code=Code.CHANGED))
        finally:
            self.inflight -= 1
        code = response_code(kind, reason)
        if code == Code.CHANGED:
            body = self.out.latest(key) if kind == "answered" else None
            if body is not None:
                return self._respond(
                    aiocoap.Message(code=Code.CHANGED, payload=body, content_format=_JSON_CF)
                )
            return self._respond(aiocoap.Message(code=Code.CHANGED))
        # The pipeline logged (throttled) and counted the drop already.
        logger.debug("CoAP POST from %s answered %s (%s)", key, code.dotted, reason)
        return self._respond(aiocoap.Message(code=code, payload=(reason or "").encode()))

    # -- stats -------------------------------------------------------------------
    def gauge(self) -> JSON:
        """The ``coap`` section of the stats snapshot."""
        return {
            "port": self.port,
            "inflight": self.inflight,
            "uploads": len(self._uploads),
            "block_uploads": self.block_uploads,
            "responses": dict(sorted(self.responses.items())),
            "out_resources": len(self.out.entries),
            "out_bytes": self.out.nbytes,
            "observers": self.observer_count,
            "refused_observers": self.refused_observers,
            "notifications": self.notifications,
            "coalesced": self.coalesced,
            "evicted": self.evicted,
            "not_found": self.not_found,
        }
