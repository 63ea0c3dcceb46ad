"""Statistics of a real gateway on a real broker: snapshot, schema, plain MQTT clients,
Prometheus, history, device topics and the CLI, after a mixed run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streamedge.pipeline.gateway import Gateway
from streamedge.stats.schema import history_schema, snapshot_schema
from tests.conftest import BrokerInfo
from tests.integration.helpers import client, collect, gateway_config, running, wait_until
from tests.integration.test_gateway_mqtt import jpeg
from tests.unit.test_stats_outputs import families, http_get, sample

pytestmark = pytest.mark.integration

SNAPSHOT = jsonschema.Draft202012Validator(snapshot_schema())
HISTORY = jsonschema.Draft202012Validator(history_schema())


def stats_config(broker: BrokerInfo, prefix: str, models_dir: Path, **stats: Any) -> Any:
    return gateway_config(
        broker,
        prefix,
        models_dir,
        stats={
            "interval_s": 0.5,
            "history": {"interval_s": 1, "points": 50},
            "http": {"port": 0},
            "device_topics": {"max_devices": 2},
            **stats,
        },
    )


async def mixed_run(gw: Gateway, broker: BrokerInfo, prefix: str) -> dict[str, int]:
    """Good, filtered, cached and bad inputs; returns what was sent, by expected outcome."""
    async with client(broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        for i in range(3):
            await c.publish(f"{prefix}/in/s1/env", json.dumps({"t": i}).encode(), qos=1)
        for watts in (100, 101, 102):  # the deadband passes the first only
            await c.publish(f"{prefix}/in/m1/power", json.dumps({"watts": watts}).encode(), qos=1)
        await c.publish(f"{prefix}/in/cam1/camera", jpeg(90, 1), qos=1)
        got = await collect(c, 5)
        assert sorted(doc["tier"] for _, doc in got) == ["forward"] * 4 + ["local"]
        await c.publish(f"{prefix}/in/cam2/camera", jpeg(90, 2), qos=1)  # a cache hit
        await c.publish(f"{prefix}/in/s1/env", b"{not json", qos=1)
        await c.publish(f"{prefix}/in/cam3/camera", b"this is no image", qos=1)
        await c.publish(f"{prefix}/in/s1/env", b"x" * 300_000, qos=1)
        await c.publish(f"{prefix}/in/s1/unmatched", b'{"a": 1}', qos=1)
        await wait_until(lambda: gw.stats.messages_in == 12 and gw.stats.pending == 0)
    return {"in": 12, "answered": 6, "filtered": 2, "dropped": 4}


async def request(broker: BrokerInfo, prefix: str, **fields: Any) -> dict[str, Any]:
    async with client(broker) as c:
        reply = f"{prefix}/replies/{len(fields)}"
        await c.subscribe(reply, qos=0)
        await c.publish(f"{prefix}/stats/get", json.dumps({"reply_to": reply, **fields}))
        got = await collect(c, 1, topic_prefix=reply)
    assert got, "no answer to stats/get"
    doc: dict[str, Any] = got[0][1]
    return doc


async def retained(broker: BrokerInfo, topic: str, predicate: Any) -> dict[str, Any]:
    """The retained document on ``topic`` once it satisfies ``predicate``."""
    async with asyncio.timeout(20):
        while True:
            async with client(broker) as c:
                await c.subscribe(topic, qos=0)
                got = await collect(c, 1, timeout=5, topic_prefix=topic)
            if got and predicate(got[0][1]):
                doc: dict[str, Any] = got[0][1]
                return doc
            await asyncio.sleep(0.3)


async def test_counters_add_up_and_every_output_agrees_after_a_mixed_run(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(stats_config(mqtt_broker, prefix, models_dir))
    async with running(gw):
        sent = await mixed_run(gw, mqtt_broker, prefix)
        snap = await request(mqtt_broker, prefix, device="cam2", correlation="c1")
        kept = await retained(mqtt_broker, f"{prefix}/stats", lambda d: d["messages"]["in"] == 12)
        history = await retained(
            mqtt_broker,
            f"{prefix}/stats/history",
            lambda d: sum(d["counts"].get("in", [])) == 12,
        )
        assert gw.http is not None
        status, _, body = await http_get(gw.http.port, "/metrics")
        ready = await http_get(gw.http.port, "/readyz")
    for doc in (snap, kept):
        SNAPSHOT.validate(doc)
        m = doc["messages"]
        assert {k: m[k] for k in sent} == sent
        assert m["in"] == m["answered"] + m["filtered"] + m["dropped"] + m["pending"]
        assert doc["drops"] == {
            "bad_payload": 1,
            "bad_image": 1,
            "too_large": 1,
            "no_stream_rule": 1,
        }
        assert doc["filters"]["deadband"] == {"pass": 1, "drop": 2, "error": 0}
        app = doc["cache"]["application"]
        assert (app["hits"], app["misses"]) == (1, 1)
        assert doc["cache"]["device"]["hits"] == doc["cache"]["layer"]["hits"] == 0
        assert doc["inference"]["local"]["calls"] == 1
        assert doc["answers_by_tier"] == {"forward": 4, "local": 1, "cache": 1}
        assert doc["saved"]["bytes_not_sent"] == len(jpeg(90, 2))
        assert doc["latency_ms"]["end_to_end"]["count"] == 6
        assert doc["queues"]["depth"] == 0 and set(doc["queues"]["shards"]) == {
            s.name for s in gw.shards.shards
        }
    assert snap["correlation"] == "c1"
    assert list(snap["streams"]) == ["cam2/camera"]
    assert snap["streams"]["cam2/camera"]["hits"] == 1
    HISTORY.validate(history)
    assert sum(history["counts"]["drops.bad_payload"]) == 1
    assert sum(history["counts"]["cache.application.hits"]) == 1
    # Prometheus agrees with the snapshot.
    assert status == 200 and ready[0] == 200
    fams = families(body.decode())
    assert sample(fams, "streamedge_messages_received", "streamedge_messages_received_total") == 12
    for outcome, n in (("answered", 6), ("filtered", 2), ("dropped", 4)):
        got = sample(
            fams,
            "streamedge_messages_handled",
            "streamedge_messages_handled_total",
            outcome=outcome,
        )
        assert got == n
    assert sample(fams, "streamedge_drops", "streamedge_drops_total", reason="too_large") == 1
    hist = "streamedge_end_to_end_latency_seconds"
    assert sample(fams, hist, f"{hist}_count") == 6
    assert sample(fams, "streamedge_transport_connected", "streamedge_transport_connected") == 1


async def run_tool(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


async def first_on(sub: str, where: tuple[str, ...], topic: str, *opts: str) -> Any:
    """Run mosquitto_sub -v until a message on ``topic`` arrives; return its JSON.

    amqtt replays retained messages of other clients' subscriptions on connect,
    so the first message a plain subscriber sees may be on another topic.
    """
    proc = await asyncio.create_subprocess_exec(
        sub, *where, *opts, "-v", "-t", topic, "-W", "20", stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            while line := await proc.stdout.readline():
                got, _, payload = line.decode().partition(" ")
                if got == topic:
                    return json.loads(payload)
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    raise AssertionError(f"nothing on {topic}")


async def test_plain_mosquitto_clients_read_and_request_the_stats(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    sub, pub = shutil.which("mosquitto_sub"), shutil.which("mosquitto_pub")
    if sub is None or pub is None:
        pytest.skip("mosquitto_sub/pub are not installed (.ci/run installs mosquitto-clients)")
    where = ("-h", mqtt_broker.host, "-p", str(mqtt_broker.port))
    gw = Gateway(stats_config(mqtt_broker, prefix, models_dir))
    async with running(gw):
        await mixed_run(gw, mqtt_broker, prefix)
        kept = json.loads(
            await run_tool(sub, *where, "-t", f"{prefix}/stats", "-C", "1", "-W", "10")
        )
        # A 3.1.1 request: reply_to in the payload. Repeat the request until the
        # subscriber (started first) has its answer, so no sleep guesses when it is ready.
        reply = f"{prefix}/plain/reply"
        listener = asyncio.create_task(first_on(sub, where, reply, "-V", "311"))
        async with asyncio.timeout(15):
            while not listener.done():
                await run_tool(
                    pub,
                    *where,
                    "-V",
                    "311",
                    "-t",
                    f"{prefix}/stats/get",
                    "-m",
                    json.dumps({"reply_to": reply, "stream": "power"}),
                )
                await asyncio.sleep(0.3)
        answered = await listener
        rr = shutil.which("mosquitto_rr")
        mqtt5 = None
        if rr is not None and mqtt_broker.mqtt5:
            # MQTT 5: Response Topic and Correlation Data, no reply_to in the payload.
            mqtt5 = json.loads(
                await run_tool(
                    rr,
                    *where,
                    "-t",
                    f"{prefix}/stats/get",
                    "-e",
                    f"{prefix}/rr/answer",
                    "-m",
                    json.dumps({"device": "m1", "window_s": 60}),
                    "-W",
                    "15",
                )
            )
    for doc in (kept, answered, mqtt5):
        if doc is None:
            continue
        SNAPSHOT.validate(doc)
        assert doc["gateway"] == gw.name
        assert doc["messages"]["in"] == 12
    assert list(answered["streams"]) == ["m1/power"]
    assert answered["streams"]["m1/power"] == {
        **answered["streams"]["m1/power"],
        "received": 3,
        "answered": 1,
        "filtered": 2,
    }
    if mqtt5 is not None:
        assert mqtt5["selection"]["window_s"] == 60
        assert list(mqtt5["streams"]) == ["m1/power"]


async def test_device_topics_only_on_request_bounded_and_stoppable(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    gw = Gateway(stats_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/stats/+", qos=0)
        await c.publish(f"{prefix}/in/m1/power", b'{"watts": 1}', qos=1)
        await wait_until(lambda: gw.stats.outcomes["answered"] == 1)
        # Nothing per device is published until asked for.
        before = await collect(c, 1, timeout=1.5, topic_prefix=f"{prefix}/stats/m1")
        assert before == []
        first = await request(mqtt_broker, prefix, device="m1", follow_s=60)
        assert first["follow"] == {"topic": f"{prefix}/stats/m1", "expires_in_s": 60}
        got = await collect(c, 2, topic_prefix=f"{prefix}/stats/m1")
        assert len(got) == 2  # the first at once, then one per interval
        for _, doc in got:
            SNAPSHOT.validate(doc)
            assert list(doc["streams"]) == ["m1/power"]
        # Bounded: max_devices is 2 here.
        assert "topic" in (await request(mqtt_broker, prefix, device="m2", follow_s=5))["follow"]
        third = await request(mqtt_broker, prefix, device="m3", follow_s=5)
        assert "already following 2" in third["follow"]["error"]
        assert gw.stats.snapshot()["device_topics"] == {"followed": ["m1", "m2"]}
        # A follow request needs no reply_to; follow_s 0 stops.
        await c.publish(f"{prefix}/stats/get", json.dumps({"device": "m1", "follow_s": 0}))
        await wait_until(lambda: gw.stats.snapshot()["device_topics"]["followed"] == ["m2"])
        # Garbage is answered with an error when it says where, and counted either way.
        bad = await request(mqtt_broker, prefix, window_s="soon")
        assert "window_s" in bad["error"]
        await c.publish(f"{prefix}/stats/get", b"\xff not json")
        await wait_until(lambda: gw.stats.requests["invalid"] == 2)


def cli(*argv: str) -> Any:
    from streamedge.cli import main

    return asyncio.to_thread(main, list(argv))


async def test_the_stats_cli_against_a_live_gateway(
    mqtt_broker: BrokerInfo,
    prefix: str,
    models_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw = Gateway(stats_config(mqtt_broker, prefix, models_dir))
    where = ["--host", mqtt_broker.host, "--port", str(mqtt_broker.port), "--prefix", prefix]
    async with running(gw):
        await mixed_run(gw, mqtt_broker, prefix)
        capsys.readouterr()
        assert await cli("stats", *where, "--json", "--device", "cam1") == 0
        doc = json.loads(capsys.readouterr().out)
        SNAPSHOT.validate(doc)
        assert doc["messages"]["in"] == 12 and list(doc["streams"]) == ["cam1/camera"]
        assert await cli("stats", *where) == 0
        table = capsys.readouterr().out
        assert "cache application" in table and "hit ratio 50.0%" in table
        assert await cli("stats", *where, "--watch", "--count", "2", "--interval", "0.2") == 0
        live = capsys.readouterr().out
        assert live.count("input rate") == 2
        await wait_until(lambda: len(gw.stats_publisher.history) >= 2, timeout=20)
        await asyncio.sleep(0.6)  # one publication interval: the retained history has the points
        out = tmp_path / "history.png"
        assert await cli("stats", *where, "--plot", str(out)) == 0
        assert out.read_bytes()[:4] == b"\x89PNG"
        assert "wrote" in capsys.readouterr().out
        assert await cli("stats", *where, "--follow", "30", "--device", "cam1") == 0
        assert f"{prefix}/stats/cam1 for 30.0 s" in capsys.readouterr().out
    with contextlib.suppress(Exception):
        capsys.readouterr()
    other = ["--host", mqtt_broker.host, "--port", str(mqtt_broker.port), "--prefix", prefix + "x"]
    assert await cli("stats", *other, "--timeout", "1") == 1
    assert "no answer from a gateway" in capsys.readouterr().err


async def test_a_taken_metrics_port_stops_the_gateway_at_start(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    import socket

    from streamedge.errors import TransportError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = Gateway(stats_config(mqtt_broker, prefix, models_dir, http={"port": port}))
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(gw.run(asyncio.Event()), 30)
    assert gw.readiness() == (False, "starting")
