"""The gateway daemon: owns the transport, the shards, the models and the stats.

Lifecycle (one TaskGroup, named tasks)::

    start embedded broker (if mqtt.host is empty)
    load models (threads) → warm up tiers → connect transport → start workers
    ... run until ``stop`` is set ...
    stop accepting → drain queues (pipeline.drain_s) → cancel workers
    → publish final stats → flush answers → publish ``available = stopped``
    → disconnect → stop the embedded broker

Cache snapshots (profiles with ``snapshot.enabled``): restored after
``build`` and before input is taken, written every ``snapshot.interval_s``
and once more at shutdown after the queues drained (atomic writes; a torn
snapshot is discarded with a warning at restore). With ``sharing.enabled``
the gateway also subscribes to ``<sharing.topic_prefix>/cache/#`` and
merges its neighbours' entries (:mod:`streamedge.caches.sharing`).

Every message a transport delivers ends as exactly one of answered,
filtered or dropped (with a counted reason); ``messages.pending`` in the
stats is what is still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

from streamedge import __version__
from streamedge.brokers.embedded import EmbeddedBroker
from streamedge.caches.cache import ApproximateCache, build_cache, build_embedder, recheck_gauge
from streamedge.caches.config import CacheConfig
from streamedge.caches.layer.wiring import layer_cache_report, layer_runners
from streamedge.caches.sharing import CacheSharing, shared_namespaces
from streamedge.config import StreamedgeConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import CacheError, ConfigError
from streamedge.filters.chain import FilterChain, build_filter
from streamedge.filters.recalibration import Recalibrator
from streamedge.gateways.coap import CoapServer
from streamedge.gateways.mqtt import MqttTransport, Subscription
from streamedge.gateways.requests import reply_fields
from streamedge.inference.factory import EdgeDefaults, build_options, build_router, needs_model
from streamedge.inference.router import TierRouter
from streamedge.models.factory import ModelInfo, build_model, model_info
from streamedge.pipeline.late import LateAnswers
from streamedge.pipeline.processor import AppRuntime, Outcome, Processor, RuleRuntime
from streamedge.pipeline.shards import Shard, ShardSet
from streamedge.protocols import Model
from streamedge.records import (
    JSON,
    Clock,
    Inbound,
    ModelRef,
    OutboundMessage,
    RawMessage,
    StreamKey,
)
from streamedge.stats.http import StatsHttpServer
from streamedge.stats.metrics import Stats
from streamedge.stats.publisher import StatsPublisher
from streamedge.topics import TopicScheme

logger = logging.getLogger(__name__)


class Gateway:
    """One streamedge daemon."""

    def __init__(
        self,
        cfg: StreamedgeConfig,
        *,
        broker_host: str | None = None,
        broker_port: int | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.gateway.name
        self._clock = clock
        self._wall = wall_clock
        self.topics = TopicScheme(cfg.mqtt.topic_prefix)
        self.embedded = cfg.mqtt.embedded_broker and broker_host is None
        self.broker_host = broker_host or cfg.mqtt.host or cfg.mqtt.embedded.bind
        self.broker_port = broker_port if broker_port is not None else cfg.mqtt.port
        self.stats = Stats(
            gateway=self.name,
            version=__version__,
            clock=clock,
            wall_clock=wall_clock,
            window_s=cfg.stats.window_s,
            max_streams=cfg.limits.max_streams,
            per_stream=cfg.stats.per_stream,
        )
        self.transport = MqttTransport(
            cfg.mqtt,
            client_id=cfg.mqtt.client_id or f"streamedge-{self.name}",
            available_topic=self.topics.available,
            subscriptions=[
                Subscription(self.topics.inputs, cfg.mqtt.qos_in, shared=True),
                Subscription(self.topics.requests, cfg.mqtt.qos_in, shared=True),
                Subscription(self.topics.stats_get, 0),
                *(
                    [Subscription(f"{cfg.sharing.topic_prefix}/cache/#", cfg.sharing.qos)]
                    if cfg.sharing.enabled
                    else []
                ),
            ],
            host=self.broker_host,
            port=self.broker_port,
            clock=clock,
            on_lost=self._lost_before_delivery,
            mqtt311_only=self.embedded,  # amqtt 0.12 speaks 3.1.1 only
        )
        self.stats_publisher = StatsPublisher(
            self.stats, cfg.stats, transport=self.transport, topics=self.topics
        )
        self.http = (
            StatsHttpServer(
                cfg.stats.http, stats=self.stats, readiness=self.readiness, name=self.name
            )
            if cfg.stats.http.port is not None
            else None
        )
        self.shards = ShardSet(
            cfg.pipeline.shards, max_bytes=cfg.pipeline.max_queued_bytes, on_drop=self._queue_drop
        )
        self._decoder = PayloadDecoder(max_frame_pixels=cfg.limits.max_frame_pixels)
        self.rules: list[RuleRuntime] = []
        self.caches: dict[str, ApproximateCache] = {}
        self.restored_entries = 0
        """Cache entries restored from snapshots at the last start."""
        self.cache_profiles: dict[str, CacheConfig] = {}
        self.sharing: CacheSharing | None = None
        self.models: dict[ModelRef, Model] = {}
        self.router: TierRouter | None = None
        self.processor: Processor | None = None
        self._rule_of: OrderedDict[StreamKey, RuleRuntime | None] = OrderedDict()
        self._accepting = False
        self.strays = 0
        self.ready = asyncio.Event()
        self.stats.gauges["queues"] = self._queue_gauge
        self.stats.gauges["caches"] = self._cache_gauge
        self.stats.gauges["transport"] = self._transport_gauge
        self.coap = (
            CoapServer(
                cfg.coap,
                topics=self.topics,
                stats=self.stats,
                deliver=self._deliver,
                has_rule=lambda key: self.rule_for(key) is not None,
                accepting=lambda: self._accepting,
                max_payload_bytes=cfg.limits.max_payload_bytes,
                stats_interval_s=cfg.stats.interval_s,
                clock=clock,
            )
            if cfg.coap.enabled
            else None
        )
        if self.coap is not None:
            self.stats.gauges["coap"] = self.coap.gauge

    # -- building ----------------------------------------------------------------
    def _data_dir(self) -> Path:
        return Path(self.cfg.gateway.data_dir)

    async def build(self) -> None:
        """Load models (in threads), then build rules, caches and the processor."""
        cfg = self.cfg
        infos: dict[str, ModelInfo] = {m.name: model_info(m) for m in cfg.models}
        used = {app.model for rule in cfg.streams for app in rule.apps}
        for mcfg in cfg.models:
            if mcfg.name not in used or not needs_model(cfg.inference, mcfg.name):
                continue  # unused, or answered only by edge/cloud tiers
            start = time.perf_counter()
            settings, quantize = build_options(cfg.inference, mcfg.name)
            model = await asyncio.to_thread(
                build_model, mcfg, data_dir=self._data_dir(), settings=settings, quantize=quantize
            )
            self.models[model.ref] = model
            logger.info("loaded model %s in %.2f s", model.ref, time.perf_counter() - start)
        self.router = build_router(
            cfg.inference,
            self.models,
            stats=self.stats,
            edge=EdgeDefaults(
                host=self.broker_host,
                port=self.broker_port,
                topic_prefix=cfg.mqtt.topic_prefix,
                client_id=cfg.mqtt.client_id or f"streamedge-{self.name}",
                username=cfg.mqtt.username,
                password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None,
            ),
            data_dir=self._data_dir(),
        )
        self.router.on_late = LateAnswers(
            topics=self.topics,
            publish=self._publish,
            stats=self.stats,
            qos=cfg.mqtt.qos_out,
            wall_clock=self._wall,
        )
        self.stats.gauges["tiers"] = self.router.gauge
        if runners := layer_runners(self.models.values()):
            self.stats.cache_gauges["layer"] = functools.partial(layer_cache_report, runners)
        caches_by_name = {c.name: c for c in cfg.caches}
        for index, rule in enumerate(cfg.streams):
            window_fields = (
                tuple(rule.window.fields) if rule.window and rule.window.fields else None
            )
            window_size = rule.window.size if rule.window else 0
            apps: list[AppRuntime] = []
            for app in rule.apps:
                info = infos[app.model]
                if info.input_kind == "window":
                    if rule.window is None:
                        raise ConfigError(
                            f"streams[{index}]: model {info.ref} takes windows of readings; "
                            "set 'window' on the stream"
                        )
                    window_fields = window_fields or info.window_fields or None
                    if info.window_size and window_size != info.window_size:
                        raise ConfigError(
                            f"streams[{index}].window.size is {window_size}, model {info.ref} "
                            f"takes {info.window_size}"
                        )
                cache: ApproximateCache | None = None
                if app.cache is not None:
                    ccfg = caches_by_name[app.cache]
                    embedder = build_embedder(
                        ccfg, window_fields=window_fields, window_size=window_size or None
                    )
                    namespace = f"{info.ref}/{embedder.name}@{embedder.version}"
                    cache = self.caches.get(namespace)
                    if cache is None:
                        cache = build_cache(
                            ccfg, model=info.ref, embedder=embedder, clock=self._clock
                        )
                        self.caches[namespace] = cache
                        self.cache_profiles[namespace] = ccfg
                apps.append(AppRuntime(name=app.name, info=info, cache=cache))
            chain = FilterChain(
                [build_filter(f, max_streams=cfg.limits.max_streams) for f in rule.filters]
            )
            recalibrator = (
                Recalibrator(rule.recalibrate, chain.filters, max_streams=cfg.limits.max_streams)
                if rule.recalibrate is not None and rule.filters
                else None
            )
            self.rules.append(
                RuleRuntime(
                    index=index,
                    cfg=rule,
                    chain=chain,
                    apps=apps,
                    window_fields=window_fields,
                    window_size=window_size,
                    recalibrator=recalibrator,
                )
            )
        self._build_sharing()
        if any(r.recalibrator is not None for r in self.rules):
            self.stats.gauges["recalibration"] = self._recalibration_gauge
        self.processor = Processor(
            topics=self.topics,
            decoder=self._decoder,
            infer=self.router.infer,
            publish=self._publish,
            stats=self.stats,
            clock=self._clock,
            wall_clock=self._wall,
            max_streams=cfg.limits.max_streams,
            qos_out=cfg.mqtt.qos_out,
            error_answers=cfg.inference.error_answers,
        )

    # -- running -----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down cleanly."""
        async with AsyncExitStack() as stack:
            if self.embedded:
                await stack.enter_async_context(
                    EmbeddedBroker(
                        self.broker_host,
                        self.broker_port,
                        start_timeout_s=self.cfg.mqtt.embedded.start_timeout_s,
                    )
                )
            if self.http is not None:
                await stack.enter_async_context(self.http)  # bind now: a taken port fails fast
            if self.coap is not None:
                await stack.enter_async_context(self.coap)  # closed after the drain below
            if self.processor is None:
                await self.build()
            assert self.router is not None  # noqa: S101  # set by build()
            await stack.enter_async_context(self.router)
            self.restored_entries = await self.restore_caches()
            async with asyncio.TaskGroup() as tg:
                transport_ready = asyncio.Event()
                transport_task = tg.create_task(
                    self.transport.run(self._deliver, transport_ready),
                    name=f"streamedge[{self.name}].mqtt",
                )
                workers = [
                    tg.create_task(self._work(shard), name=f"streamedge[{self.name}].{shard.name}")
                    for shard in self.shards.shards
                ]
                stats_task = tg.create_task(
                    self.stats_publisher.run(), name=f"streamedge[{self.name}].stats"
                )
                snapshot_task = tg.create_task(
                    self._snapshot_loop(), name=f"streamedge[{self.name}].snapshots"
                )
                http_task = (
                    tg.create_task(self.http.serve(), name=f"streamedge[{self.name}].http")
                    if self.http is not None
                    else None
                )
                self._accepting = True
                waiter = tg.create_task(
                    transport_ready.wait(), name=f"streamedge[{self.name}].wait"
                )
                stopper = tg.create_task(stop.wait(), name=f"streamedge[{self.name}].stop")
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                if transport_ready.is_set():
                    self.ready.set()
                    logger.info(
                        "gateway %s ready: %d rule(s), %d model(s), %d cache namespace(s)",
                        self.name,
                        len(self.rules),
                        len(self.models),
                        len(self.caches),
                    )
                await stopper
                waiter.cancel()
                snapshot_task.cancel()
                await self._shutdown(workers)
                stats_task.cancel()
                if http_task is not None:
                    http_task.cancel()
                transport_task.cancel()

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        self._accepting = False
        self.transport.stop_acking()  # what arrives now stays in the broker's session
        logger.info("stopping: draining %d queued message(s)", self.shards.depth)
        deadline = self._clock() + self.cfg.pipeline.drain_s
        # Polling a condition derived from every shard; 20 ms is nothing at shutdown.
        while not self.shards.idle and self._clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        for task in workers:
            task.cancel()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for shard in self.shards.shards:
            for raw in shard.drain_all():
                self.stats.dropped("shutdown", str(raw.stream))
                if raw.on_outcome is not None:
                    raw.on_outcome("dropped", "shutdown")
        if self.processor is not None:
            # Re-checks only measure accuracy: give them what is left of the drain time.
            await self.processor.drain_rechecks(max(0.0, deadline - self._clock()))
        await self.snapshot_caches()
        await self.stats_publisher.publish()
        await self.transport.close(graceful=True)
        logger.info(
            "stopped: %d in, %d answered, %d filtered, %d dropped",
            self.stats.messages_in,
            self.stats.outcomes["answered"],
            self.stats.outcomes["filtered"],
            self.stats.outcomes["dropped"],
        )

    # -- cache sharing and snapshots ---------------------------------------------
    def _build_sharing(self) -> None:
        scfg = self.cfg.sharing
        if not scfg.enabled:
            return
        self.sharing = CacheSharing(
            scfg,
            gateway=self.name,
            caches=self.caches,
            shared=shared_namespaces(self.cache_profiles),
            publish=self.transport.publish,
            connected=lambda: self.transport.connected,
            clock=self._clock,
            wall_clock=self._wall,
        )
        n = self.sharing.attach()
        self.stats.cache_gauges["device"] = self.sharing.gauge
        logger.info(
            "sharing %d of %d cache namespace(s) on %s",
            n,
            len(self.caches),
            self.sharing.topic_filter,
        )

    def _snapshotted(self) -> list[ApproximateCache]:
        return [
            c for ns, c in sorted(self.caches.items()) if self.cache_profiles[ns].snapshot.enabled
        ]

    async def restore_caches(self) -> int:
        """Load each snapshotted cache from its file; return the entries restored."""
        total = 0
        for cache in self._snapshotted():
            total += await cache.restore(cache.snapshot_file(self._data_dir()))
        return total

    async def snapshot_caches(self) -> int:
        """Write every snapshotted cache to disk now; return the entries written."""
        total = 0
        for cache in self._snapshotted():
            try:
                total += await cache.snapshot(cache.snapshot_file(self._data_dir()))
            except CacheError as exc:  # the previous snapshot stays intact
                logger.warning("cache %s: snapshot failed: %s", cache.namespace, exc)
                self.stats.error("snapshot")
        return total

    async def _snapshot_loop(self) -> None:
        caches = self._snapshotted()
        if not caches:
            return
        interval = min(self.cache_profiles[c.namespace].snapshot.interval_s for c in caches)
        while True:
            await asyncio.sleep(interval)
            await self.snapshot_caches()

    # -- ingest ------------------------------------------------------------------
    def _lost_before_delivery(self, reason: str) -> None:
        self.stats.received(None, 0)
        self.stats.dropped(reason)
        logger.warning("inbound MQTT message lost before delivery: %s", reason)

    async def _publish(self, message: OutboundMessage) -> None:
        """Answers go to CoAP observers (if serving) and to MQTT."""
        if self.coap is not None:
            self.coap.answer(message)
        await self.transport.publish(message)

    def _queue_drop(self, raw: RawMessage, reason: str) -> None:
        self.stats.dropped(reason, str(raw.stream))
        if raw.on_outcome is not None:
            raw.on_outcome("dropped", reason)
        logger.warning("dropping input from %s: %s", raw.stream, reason)

    def rule_for(self, key: StreamKey) -> RuleRuntime | None:
        """The first rule matching a stream (cached, bounded)."""
        if key in self._rule_of:
            self._rule_of.move_to_end(key)
            return self._rule_of[key]
        text = str(key)
        rule = next((r for r in self.rules if r.cfg.matches(text)), None)
        self._rule_of[key] = rule
        while len(self._rule_of) > self.cfg.limits.max_streams:
            self._rule_of.popitem(last=False)
        return rule

    async def _deliver(self, msg: Inbound) -> None:
        """Route one inbound message: device input, stats request, or unknown."""
        if msg.topic == self.topics.stats_get:
            await self.stats_publisher.answer(msg)
            return
        if self.sharing is not None and self.sharing.handles(msg.topic):
            try:
                await self.sharing.receive(msg.topic, msg.payload)
            except Exception:  # a neighbour's entry must never stop the transport loop
                logger.exception("unexpected error merging a shared cache entry")
                self.stats.error("sharing")
            return
        request = msg.topic.startswith(self.topics.request_root)
        if not request and not msg.topic.startswith(self.topics.input_root):
            # Not device input: a broker sent something we did not subscribe to
            # (amqtt 0.12 replays retained messages of *other* clients'
            # subscriptions on connect). Count it apart from device traffic.
            self.strays += 1
            logger.debug("ignoring message on %r (not subscribed)", msg.topic[:200])
            return
        key = self.topics.parse_input(msg.topic, "req" if request else "in")
        self.stats.received(str(key) if key else None, len(msg.payload))
        if key is None:
            self.stats.dropped("unknown_topic")
            logger.warning("dropping message on unknown topic %r", msg.topic[:200])
            return
        skey = str(key)
        if not self._accepting:
            self.stats.dropped("shutdown", skey)
            return
        if len(msg.payload) > self.cfg.limits.max_payload_bytes:
            self.stats.dropped("too_large", skey)
            logger.warning(
                "dropping %d-byte payload from %s: over the limit", len(msg.payload), key
            )
            return
        rule = self.rule_for(key)
        if rule is None:
            self.stats.dropped("no_stream_rule", skey)
            logger.warning("dropping input from %s: no stream rule matches", key)
            return
        reply_to, correlation = msg.reply_to, msg.correlation
        if request and reply_to is None:
            # MQTT 3.1.1 has no Response Topic: the request names it in its payload.
            reply_to, correlation = reply_fields(msg.payload)
            if reply_to is None:
                self.stats.dropped("no_reply_to", skey)
                logger.warning("dropping a request from %s: no Response Topic or reply_to", key)
                return
        raw = RawMessage(
            stream=key,
            payload=msg.payload,
            received_at=msg.received_at,
            content_type=msg.content_type,
            qos=msg.qos,
            reply_to=reply_to,
            correlation=correlation,
            transport=msg.transport,
            request=request,
            on_outcome=msg.on_outcome,
        )
        await self.shards.shard_for(key).put(raw, rule.cfg.queue)

    async def _work(self, shard: Shard) -> None:
        assert self.processor is not None  # noqa: S101  # built before workers start
        while True:
            raw = await shard.get()
            shard.busy = True
            rule = self.rule_for(raw.stream)
            try:
                if rule is None:  # the rule cache forgot it; recompute failed
                    outcome = Outcome("dropped", "no_stream_rule")
                else:
                    outcome = await self.processor.handle(raw, rule)
            except asyncio.CancelledError:
                self.stats.dropped("shutdown", str(raw.stream))
                if raw.on_outcome is not None:
                    raw.on_outcome("dropped", "shutdown")
                raise
            except Exception:  # the one per-message boundary: contain, count, go on
                logger.exception("unexpected error handling a message from %s", raw.stream)
                self.stats.error("handle")
                outcome = Outcome("dropped", "error")
            finally:
                shard.busy = False
            self._account(raw, outcome)

    def _account(self, raw: RawMessage, outcome: Outcome) -> None:
        skey = str(raw.stream)
        if outcome.kind == "answered":
            self.stats.answered(skey, outcome.tier or "?", self._clock() - raw.received_at)
        elif outcome.kind == "filtered":
            self.stats.filtered(skey)
        elif outcome.kind == "deferred":
            self.stats.deferred_to_store(skey)
        else:
            self.stats.dropped(outcome.reason or "unknown", skey)
        if raw.on_outcome is not None:
            raw.on_outcome(outcome.kind, outcome.reason)

    # -- stats -------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """Whether the gateway takes input now, and why not (``/readyz``)."""
        if not self.ready.is_set():
            return False, "starting"
        if not self._accepting:
            return False, "stopping"
        if not self.transport.connected:
            return False, "broker disconnected"
        return True, "ok"

    def _queue_gauge(self) -> JSON:
        return {
            "depth": self.shards.depth,
            "bytes": self.shards.budget.used,
            "max_bytes": self.shards.budget.max_bytes,
            "shards": {s.name: s.depth for s in self.shards.shards},
        }

    def _recalibration_gauge(self) -> JSON:
        """Per stream rule with online recalibration: checks, windows, runs (by match)."""
        return {
            f"{r.index}:{r.cfg.match}": r.recalibrator.as_json()
            for r in self.rules
            if r.recalibrator is not None
        }

    def _cache_gauge(self) -> JSON:
        return {
            ns: {
                "entries": c.entries,
                "bytes": c.nbytes,
                "shared_misses": c.shared_misses,
                "recheck": recheck_gauge(c),
            }
            for ns, c in sorted(self.caches.items())
        }

    def _transport_gauge(self) -> JSON:
        t = self.transport
        return {
            "connected": t.connected,
            "protocol": t.protocol,
            "out_queue": t.out_depth,
            "reconnects": t.reconnects,
            "redelivery_reconnects": t.redelivery_reconnects,
            "lost_incoming": t.lost_incoming,
            "lost_outgoing": t.lost_outgoing,
            "stray_messages": self.strays,
        }
