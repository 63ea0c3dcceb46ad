"""A real gateway against a real broker on loopback (Mosquitto, or amqtt)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import cv2
import numpy as np
import pytest

from streamedge.pipeline.gateway import Gateway
from streamedge.stats.metrics import Stats
from tests.conftest import BrokerInfo, BrokerProcess
from tests.integration.helpers import client, collect, gateway_config, running, wait_until

pytestmark = pytest.mark.integration


def jpeg(value: int, noise_seed: int = 0) -> bytes:
    rng = np.random.default_rng(noise_seed)
    img = np.full((120, 160, 3), value, dtype=np.int16) + rng.integers(-1, 2, (120, 160, 3))
    ok, buf = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8))
    assert ok
    return bytes(buf)


async def test_reading_in_answer_out(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/meter1/power", b'{"ts": 10, "watts": 120}', qos=1)
        got = await collect(c, 1)
    assert got[0][0] == f"{prefix}/out/meter1/power"
    doc = got[0][1]
    assert doc["tier"] == "forward"
    assert doc["values"] == {"watts": 120.0}
    assert doc["ts"] == 10


async def test_frames_from_two_cameras_share_one_inference(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/cam1/camera", jpeg(90, 1), qos=1)
        first = await collect(c, 1)
        await c.publish(f"{prefix}/in/cam2/camera", jpeg(90, 2), qos=1)
        second = await collect(c, 1)
    assert first[0][1]["tier"] == "local"
    assert second[0][1]["tier"] == "cache"
    assert second[0][1]["answer"] == first[0][1]["answer"]
    assert second[0][0] == f"{prefix}/out/cam2/camera"
    snap = gw.stats.snapshot()
    assert snap["inference"]["local"]["calls"] == 1
    assert snap["cache"]["application"]["hits"] == 1


async def test_stats_snapshot_is_retained_and_answers_requests(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker) as c:
        for i in range(5):
            await c.publish(f"{prefix}/in/m{i}/power", b'{"watts": 1}', qos=1)
        await wait_until(lambda: gw.stats.outcomes["answered"] == 5)
        await asyncio.sleep(1.2)  # one stats interval
        # A client that connects later still gets the retained snapshot.
        async with client(mqtt_broker) as late:
            await late.subscribe(f"{prefix}/stats", qos=0)
            retained = await collect(late, 1, topic_prefix=f"{prefix}/stats")
            await late.subscribe(f"{prefix}/replies/x", qos=0)
            await late.publish(
                f"{prefix}/stats/get",
                json.dumps({"reply_to": f"{prefix}/replies/x", "device": "m1", "correlation": 7}),
            )
            replies = await collect(late, 1, topic_prefix=f"{prefix}/replies")
    snap = retained[0][1]
    assert snap["messages"]["in"] == 5
    assert snap["messages"]["answered"] == 5
    assert snap["schema_version"] == Stats.SCHEMA_VERSION
    reply = replies[0][1]
    assert reply["correlation"] == 7
    assert list(reply["streams"]) == ["m1/power"]


async def test_stats_request_with_mqtt5_response_topic(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    if not mqtt_broker.mqtt5:
        pytest.skip("this broker speaks MQTT 3.1.1 only; the reply_to path is tested above")
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as c:
        assert gw.transport.protocol == "5"
        await c.subscribe(f"{prefix}/resp/1", qos=0)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = f"{prefix}/resp/1"
        props.CorrelationData = b"abc"
        await c.publish(f"{prefix}/stats/get", b"", properties=props)
        async with asyncio.timeout(10):
            message = await anext(aiter(c.messages))
    assert message.topic.value == f"{prefix}/resp/1"
    assert message.properties is not None
    assert getattr(message.properties, "CorrelationData", None) == b"abc"
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["gateway"] == gw.name


async def test_bad_input_is_counted_and_the_gateway_keeps_going(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/s1/env", b"{not json", qos=1)
        await c.publish(f"{prefix}/in/cam1/camera", b"this is no image", qos=1)
        await c.publish(f"{prefix}/in/s1/env", b"x" * 300_000, qos=1)
        await c.publish(f"{prefix}/in/s1/unmatched", b'{"a": 1}', qos=1)
        await c.publish(f"{prefix}/in/s1/env", b'{"t": 1}', qos=1)
        got = await collect(c, 1)
        await wait_until(lambda: gw.stats.messages_in == 5 and gw.stats.pending == 0)
    assert got[0][1]["values"] == {"t": 1.0}
    assert gw.stats.drops == {
        "bad_payload": 1,
        "bad_image": 1,
        "too_large": 1,
        "no_stream_rule": 1,
    }


async def test_qos1_burst_into_a_blocking_queue_loses_nothing(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    n = 400
    async with running(gw), client(mqtt_broker) as c:
        for i in range(n):
            await c.publish(f"{prefix}/in/s{i % 4}/env", json.dumps({"seq": i}).encode(), qos=1)
        await wait_until(lambda: gw.stats.outcomes["answered"] == n, timeout=30)
    snap = gw.stats.snapshot()["messages"]
    assert snap["in"] == n
    assert snap["answered"] + snap["filtered"] + snap["dropped"] + snap["pending"] == n
    assert snap["dropped"] == 0


async def test_gateway_reconnects_after_a_broker_restart(
    restartable_broker: BrokerProcess, prefix: str, models_dir: Path
) -> None:
    where = ("127.0.0.1", restartable_broker.port)
    gw = Gateway(gateway_config(where, prefix, models_dir))
    async with running(gw):
        restartable_broker.stop()
        await wait_until(lambda: not gw.transport.connected, timeout=20)
        restartable_broker.start()
        await wait_until(lambda: gw.transport.connected, timeout=30)
        async with client(where) as c:
            await c.subscribe(f"{prefix}/out/#", qos=1)
            await c.publish(f"{prefix}/in/m1/power", b'{"watts": 3}', qos=1)
            got = await collect(c, 1)
    assert got and got[0][1]["values"] == {"watts": 3.0}
    assert gw.transport.reconnects >= 1


def _write_config(tmp_path: Path, broker: BrokerInfo, prefix: str, models_dir: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(
        json.dumps(
            {
                "gateway": {"name": "sub", "data_dir": str(models_dir)},
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "topic_prefix": prefix,
                    "keepalive_s": 5,
                },
                "stats": {"interval_s": 1},
            }
        )
    )
    return path


async def _next_availability(messages: AsyncIterator[aiomqtt.Message], topic: str) -> str:
    async for message in messages:
        if message.topic.value == topic:
            assert isinstance(message.payload, bytes)
            return message.payload.decode()
    raise AssertionError("subscription ended")


@pytest.mark.parametrize(
    ("signal_name", "expected"), [("SIGKILL", "offline"), ("SIGTERM", "stopped")]
)
async def test_availability_online_then_offline_or_stopped(
    mqtt_broker: BrokerInfo,
    prefix: str,
    models_dir: Path,
    tmp_path: Path,
    signal_name: str,
    expected: str,
) -> None:
    import signal
    import sys

    config = _write_config(tmp_path, mqtt_broker, prefix, models_dir)
    topic = f"{prefix}/available"
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamedge",
            "-v",
            "run",
            str(config),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    seen: list[str] = []
    try:
        async with client(mqtt_broker) as c:
            await c.subscribe(topic, qos=1)
            messages = aiter(c.messages)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    # Seeing "online" proves the subscription is live before the signal.
                    while not seen or seen[-1] != "online":
                        seen.append(await _next_availability(messages, topic))
                    proc.send_signal(getattr(signal, signal_name))
                    while seen[-1] == "online":
                        seen.append(await _next_availability(messages, topic))
        assert seen and seen[-1] == expected, (seen, log.read_text())
        code = await asyncio.wait_for(proc.wait(), 20)
        if signal_name == "SIGTERM":
            assert code == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_plain_mosquitto_sub_reads_the_stats(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        pytest.skip("mosquitto_sub is not installed (.ci/run installs mosquitto-clients)")
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw):
        await asyncio.sleep(1.2)
        proc = await asyncio.create_subprocess_exec(
            tool,
            "-h",
            mqtt_broker.host,
            "-p",
            str(mqtt_broker.port),
            "-t",
            f"{prefix}/stats",
            "-C",
            "1",
            "-W",
            "10",
            stdout=subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    doc = json.loads(out)
    assert doc["gateway"] == gw.name
    assert "messages" in doc and "cache" in doc
