"""Nothing is lost: persistent sessions across broker restarts and gateway restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from streamedge.pipeline.gateway import Gateway
from tests.conftest import BrokerInfo, BrokerProcess
from tests.integration.helpers import client, collect, gateway_config, running, wait_until

pytestmark = pytest.mark.integration

N_READINGS = 10_000


def _sensor_config(where: BrokerInfo | tuple[str, int], prefix: str, models_dir: Path) -> Any:
    """Every reading is answered (forwarded): no filter, no model; answers at QoS 1."""
    host, port = (where.host, where.port) if isinstance(where, BrokerInfo) else where
    return gateway_config(
        where,
        prefix,
        models_dir,
        mqtt={
            "host": host,
            "port": port,
            "topic_prefix": prefix,
            "keepalive_s": 5,
            "qos_out": 1,
            "publish_timeout_s": 3,
            "reconnect": {"min_s": 0.1, "max_s": 0.5},
        },
        models=[],
        caches=[],
        streams=[{"match": "*/env", "kind": "reading", "queue": {"size": 256, "on_full": "block"}}],
    )


class Collector:
    """An app with a persistent session that gathers answers across broker restarts."""

    def __init__(self, where: tuple[str, int], topic: str) -> None:
        self.where = where
        self.topic = topic
        self.ident = f"collector-{uuid.uuid4().hex[:8]}"
        self.seen: set[int] = set()
        self.received = 0
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    *self.where, identifier=self.ident, clean_session=False, keepalive=5
                ) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in c.messages:
                        assert isinstance(message.payload, bytes)
                        self.seen.add(int(json.loads(message.payload)["values"]["seq"]))
                        self.received += 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)


async def _publish_all(where: tuple[str, int], topic: str, n: int, on_sent: Any) -> int:
    """Publish seq 0..n-1 at QoS 1 in windows of 50; a window that fails is sent again
    (at least once). Returns the number of reconnects."""
    reconnects = 0
    i = 0
    while i < n:
        try:
            async with aiomqtt.Client(*where, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
                while i < n:
                    window = range(i, min(n, i + 50))
                    await asyncio.gather(
                        *(
                            c.publish(topic, json.dumps({"seq": s}).encode(), qos=1, timeout=5)
                            for s in window
                        )
                    )
                    i = window.stop
                    await on_sent(i)
        except aiomqtt.MqttError:
            reconnects += 1
            await asyncio.sleep(0.1)
    return reconnects


async def test_no_reading_is_lost_when_the_broker_restarts_mid_stream(
    restartable_broker: BrokerProcess, prefix: str, models_dir: Path
) -> None:
    if not restartable_broker.persistent:
        pytest.skip("amqtt keeps no sessions across a restart; Mosquitto does (CI installs it)")
    where = ("127.0.0.1", restartable_broker.port)
    gw = Gateway(_sensor_config(where, prefix, models_dir))
    collector = Collector(where, f"{prefix}/out/#")
    restarted = asyncio.Event()

    async def restart_once(sent: int) -> None:
        if sent >= N_READINGS // 3 and not restarted.is_set():
            restarted.set()
            await asyncio.to_thread(restartable_broker.stop)
            await asyncio.to_thread(restartable_broker.start)

    async with running(gw):
        collecting = asyncio.create_task(collector.run())
        try:
            async with asyncio.timeout(5):
                await collector.subscribed.wait()
            pub_reconnects = -1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(45):
                    pub_reconnects = await _publish_all(
                        where, f"{prefix}/in/s1/env", N_READINGS, restart_once
                    )
                    while len(collector.seen) < N_READINGS:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
            progress = (
                f"restarted {restarted.is_set()}, publisher reconnects: {pub_reconnects}, "
                f"answers: {len(collector.seen)} distinct of {collector.received}, "
                f"gateway: {gw.stats.snapshot()['messages']}, "
                f"{gw._transport_gauge()}, redelivery {gw.transport.redelivery_reconnects}"
            )
        finally:
            collecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
    missing = sorted(set(range(N_READINGS)) - collector.seen)
    assert not missing, f"{len(missing)} got no answer, first {missing[:10]}; {progress}"
    assert restarted.is_set() and pub_reconnects >= 1
    # The gateway reconnected: to the restarted broker, or (if it was between connections
    # when the broker restarted) to have its unacknowledged backlog resent.
    assert gw.transport.reconnects + gw.transport.redelivery_reconnects >= 1
    snap = gw.stats.snapshot()["messages"]
    # At least once: a reading in flight at the restart may arrive twice, none is dropped.
    assert snap["in"] >= N_READINGS
    assert snap["dropped"] == 0 and snap["filtered"] == 0
    assert snap["answered"] == snap["in"]


async def test_qos1_input_sent_while_the_gateway_is_stopped_is_answered_after_restart(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    if mqtt_broker.kind == "amqtt":
        pytest.skip("amqtt 0.12 does not deliver what it queued for an offline session")
    cfg = _sensor_config(mqtt_broker, prefix, models_dir)
    async with running(Gateway(cfg)):
        pass  # the broker now holds the gateway's persistent session
    async with client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/available", qos=1)
        available = await collect(c, 1, timeout=5)
        assert available == [(f"{prefix}/available", "stopped")]  # retained
        await c.subscribe(f"{prefix}/out/#", qos=1)
        for i in range(50):
            await c.publish(f"{prefix}/in/s{i % 5}/env", json.dumps({"seq": i}).encode(), qos=1)
        await asyncio.sleep(0.3)
        gw = Gateway(cfg)
        async with running(gw):
            got = await collect(c, 50, timeout=20, topic_prefix=f"{prefix}/out/")
            await wait_until(lambda: gw.stats.outcomes["answered"] >= len(got))
    assert sorted(doc["values"]["seq"] for _, doc in got) == list(range(50))
    assert gw.stats.messages_in == 50


async def test_a_clean_start_gateway_does_not_get_what_was_sent_while_it_was_away(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    """The control for the test above: the persistent session is what delivers."""
    cfg = _sensor_config(mqtt_broker, prefix, models_dir)
    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"clean_start": True})})
    async with running(Gateway(cfg)):
        pass
    async with client(mqtt_broker) as c:
        for i in range(5):
            await c.publish(f"{prefix}/in/s1/env", json.dumps({"seq": i}).encode(), qos=1)
        gw = Gateway(cfg)
        async with running(gw):
            await asyncio.sleep(1.0)
    assert gw.stats.messages_in == 0


async def test_input_arriving_while_the_gateway_shuts_down_is_answered_after_restart(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    """What reaches a stopping gateway is left unacknowledged, so the broker keeps it."""
    if mqtt_broker.kind == "amqtt":
        pytest.skip("amqtt 0.12 does not deliver what it queued for an offline session")
    where = (mqtt_broker.host, mqtt_broker.port)
    cfg = _sensor_config(mqtt_broker, prefix, models_dir)
    n = 3000
    collector = Collector(where, f"{prefix}/out/#")
    collecting = asyncio.create_task(collector.run())
    try:
        async with asyncio.timeout(5):
            await collector.subscribed.wait()
        first = Gateway(cfg)
        async with running(first):
            stopping = asyncio.Event()

            async def stop_midway(sent: int) -> None:
                if sent >= n // 4:
                    stopping.set()

            publishing = asyncio.create_task(
                _publish_all(where, f"{prefix}/in/s1/env", n, stop_midway)
            )
            await stopping.wait()
        # 'first' stopped while readings kept coming; the rest queue in the broker.
        await asyncio.wait_for(publishing, 30)
        second = Gateway(cfg)
        async with running(second):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(collector.seen) < n:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
    finally:
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
    missing = sorted(set(range(n)) - collector.seen)
    assert not missing, f"{len(missing)} got no answer, first {missing[:10]}"
    assert first.stats.messages_in < n  # the restart really was mid-stream
    assert second.stats.messages_in > 0
    assert second.stats.snapshot()["messages"]["dropped"] == 0
