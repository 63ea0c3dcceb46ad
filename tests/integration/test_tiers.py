"""Tiers against real servers on loopback: workers over MQTT, OIP v2 over HTTP, and faults."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from streamedge.errors import AllTiersFailedError
from streamedge.inference.config import BuiltinModelConfig
from streamedge.models.factory import build_model
from streamedge.protocols import Model
from streamedge.records import InferenceRequest, ModelRef, StreamKey, Tier, Window
from tests.conftest import BrokerInfo
from tests.integration.helpers import wait_until
from tests.integration.tiers_helpers import (
    PRESENCE,
    presence_request,
    router,
    serving,
    start_worker_process,
    worker_config,
    write_worker_yaml,
)

pytestmark = pytest.mark.integration

ANOMALY = ModelRef("sensor_anomaly", "1")


@pytest.fixture(scope="module")
def local_models(models_dir: Path) -> dict[ModelRef, Model]:
    return {
        PRESENCE: build_model(BuiltinModelConfig(name="tiny_presence"), data_dir=models_dir),
        ANOMALY: build_model(BuiltinModelConfig(name="sensor_anomaly"), data_dir=models_dir),
    }


def need_mqtt5(broker: BrokerInfo) -> None:
    if not broker.mqtt5:
        pytest.skip(f"the {broker.kind} broker speaks MQTT 3.1.1 only")


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_edge_tier_answers_like_the_local_model(
    mqtt_broker: BrokerInfo,
    prefix: str,
    models_dir: Path,
    local_models: dict[ModelRef, Model],
    protocol: str,
) -> None:
    if protocol == "5":
        need_mqtt5(mqtt_broker)
    cfg = worker_config(mqtt_broker, prefix, models_dir, mqtt={"protocol": protocol})
    tiers = [{"type": "edge", "protocol": protocol}]
    async with serving(cfg) as worker, router(tiers, broker=mqtt_broker, prefix=prefix) as r:
        for seed in range(3):
            for encoded in (True, False):  # the device's JPEG, or raw pixels
                req = presence_request(seed, encoded=encoded)
                result = await r.infer(req)
                assert result.tier is Tier.EDGE
                assert result.backend == f"edge:{worker.name}"
                assert result.answer == local_models[PRESENCE].predict(req.input).answer
        assert r.backends[0].rpc.protocol == protocol  # type: ignore[attr-defined]
        assert worker.mqtt is not None and worker.mqtt.protocol == protocol
        wrong = InferenceRequest(model=ModelRef("tiny_presence", "9"), input=req.input)
        with pytest.raises(AllTiersFailedError, match="version_mismatch"):
            await r.infer(wrong)


async def test_a_second_worker_takes_half_the_requests_with_no_config_change(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    need_mqtt5(mqtt_broker)
    one = worker_config(mqtt_broker, prefix, models_dir, worker={"name": "w1"})
    two = worker_config(mqtt_broker, prefix, models_dir, worker={"name": "w2"})
    tiers = [{"type": "edge", "timeout_s": 10}]
    async with (
        serving(one) as w1,
        serving(two) as w2,
        router(tiers, broker=mqtt_broker, prefix=prefix) as r,
    ):
        edge: Any = r.backends[0]
        await wait_until(lambda: edge.rpc.workers_for("tiny_presence") == 2)
        results = await asyncio.gather(*(r.infer(presence_request(i)) for i in range(20)))
    assert {res.backend for res in results} == {"edge:w1", "edge:w2"}
    assert w1.mqtt is not None and w2.mqtt is not None
    assert w1.mqtt.served + w2.mqtt.served == 20  # each request went to exactly one worker


async def test_on_mqtt_311_every_worker_answers_and_the_first_reply_wins(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    mqtt = {"protocol": "3.1.1"}
    one = worker_config(mqtt_broker, prefix, models_dir, worker={"name": "v1"}, mqtt=mqtt)
    two = worker_config(mqtt_broker, prefix, models_dir, worker={"name": "v2"}, mqtt=mqtt)
    tiers = [{"type": "edge", "protocol": "3.1.1", "timeout_s": 10}]
    async with (
        serving(one) as w1,
        serving(two) as w2,
        router(tiers, broker=mqtt_broker, prefix=prefix) as r,
    ):
        edge: Any = r.backends[0]
        await wait_until(lambda: edge.rpc.workers_for("tiny_presence") == 2)
        for i in range(4):
            assert (await r.infer(presence_request(i))).tier is Tier.EDGE
        await wait_until(lambda: edge.rpc.late_replies == 4)
    assert w1.mqtt is not None and w2.mqtt is not None
    assert (w1.mqtt.served, w2.mqtt.served) == (4, 4)


@pytest.mark.parametrize(("binary", "anomaly_payload"), [("auto", "tensor"), ("never", "frame")])
async def test_cloud_tier_against_streamedge_worker(
    prefix: str,
    models_dir: Path,
    local_models: dict[ModelRef, Model],
    binary: str,
    anomaly_payload: str,
) -> None:
    cfg = worker_config(None, prefix, models_dir)
    async with serving(cfg) as worker:
        url = f"http://127.0.0.1:{worker.http_port}"
        tiers = [
            {
                "type": "cloud",
                "url": url,
                "binary": binary,
                "remote_models": [{"name": "sensor_anomaly", "payload": anomaly_payload}],
            }
        ]
        async with router(tiers, local_models) as r:
            cloud: Any = r.backends[0]
            assert cloud.binary is (binary == "auto")  # the worker lists the extension
            for seed, encoded in ((1, True), (2, False)):
                req = presence_request(seed, encoded=encoded)
                result = await r.infer(req)
                assert result.tier is Tier.CLOUD
                assert result.answer == local_models[PRESENCE].predict(req.input).answer
            values = np.linspace(20, 30, 32, dtype=np.float32).reshape(16, 2)
            window = Window(stream=StreamKey("env", "t"), ts=0.0, fields=("t", "h"), values=values)
            result = await r.infer(InferenceRequest(model=ANOMALY, input=window))
            assert result.answer == local_models[ANOMALY].predict(window).answer


async def test_worker_http_health_metadata_and_errors(prefix: str, models_dir: Path) -> None:
    async with serving(worker_config(None, prefix, models_dir)) as worker:
        base = f"http://127.0.0.1:{worker.http_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/v2/health/live")).status_code == 200
            assert (await http.get("/v2/health/ready")).status_code == 200
            assert (await http.get("/v2/models/tiny_presence/ready")).status_code == 200
            meta = (await http.get("/v2/models/tiny_presence")).json()
            assert meta["versions"] == ["1"]
            assert {i["name"] for i in meta["inputs"]} >= {"frame", "frame_encoded"}
            assert (await http.get("/v2/models/nope")).status_code == 404
            assert (await http.get("/v2/models/tiny_presence/versions/7")).status_code == 404
            bad = await http.post("/v2/models/tiny_presence/infer", content=b'{"inputs": 1}')
            assert bad.status_code == 400 and "inputs" in bad.json()["error"]


class Faults:
    """Injects HTTP 500s or stalls into a worker's inference endpoint."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        self.release = asyncio.Event()

    def middleware(self) -> Any:
        @web.middleware
        async def inject(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.endswith("/infer"):
                self.hits += 1
                if self.mode == "500":
                    return web.json_response({"error": "injected failure"}, status=500)
                if self.mode == "stall":
                    await self.release.wait()  # far past the tier's deadline
            response: web.StreamResponse = await handler(request)
            return response

        return inject


async def _until_tier(r: Any, req: InferenceRequest, tier: Tier) -> None:
    async with asyncio.timeout(20):
        while (await r.infer(req)).tier is not tier:  # noqa: ASYNC110  # polls the router
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("fault", ["500", "stall"])
async def test_failing_cloud_opens_its_breaker_moves_traffic_and_recovers(
    prefix: str, models_dir: Path, local_models: dict[ModelRef, Model], fault: str
) -> None:
    faults = Faults()
    async with serving(worker_config(None, prefix, models_dir), [faults.middleware()]) as w:
        tiers: list[dict[str, Any]] = [
            {
                "type": "cloud",
                "url": f"http://127.0.0.1:{w.http_port}",
                "timeout_s": 0.5,
                "breaker": {"failures": 2, "reset_s": 1.0},
            },
            {"type": "local"},
        ]
        async with router(tiers, local_models) as r:
            req = presence_request(3)
            assert (await r.infer(req)).tier is Tier.CLOUD
            faults.mode = fault
            before = faults.hits
            answered = [(await r.infer(req)).tier for _ in range(8)]
            assert answered == [Tier.LOCAL] * 8  # every request still answered
            assert r.tiers[0].breaker.opens == 1
            assert faults.hits - before < 8  # the open breaker kept traffic off the cloud
            faults.mode = "ok"
            faults.release.set()
            await _until_tier(r, req, Tier.CLOUD)  # a half-open probe succeeded
            assert str(r.tiers[0].breaker.state) == "closed"


async def test_worker_killed_mid_stream_fails_over_without_hanging(
    mqtt_broker: BrokerInfo,
    prefix: str,
    models_dir: Path,
    local_models: dict[ModelRef, Model],
    tmp_path: Path,
) -> None:
    path = write_worker_yaml(tmp_path / "worker.yaml", mqtt_broker, prefix, models_dir)
    proc = start_worker_process(path, name=f"k-{prefix[-6:]}")
    timeout_s = 2.0
    try:
        tiers: list[dict[str, Any]] = [
            {"type": "edge", "timeout_s": timeout_s, "breaker": {"failures": 3, "reset_s": 60}},
            {"type": "local"},
        ]
        async with router(tiers, local_models, mqtt_broker, prefix) as r:
            edge: Any = r.backends[0]
            await wait_until(lambda: edge.rpc.workers_for("tiny_presence") == 1, timeout=60)
            done: list[tuple[int, Tier, float]] = []

            async def one(i: int) -> None:
                start = time.monotonic()
                result = await r.infer(presence_request(i))
                done.append((i, result.tier, time.monotonic() - start))

            tasks = []
            for i in range(30):
                if i == 10:
                    proc.kill()  # SIGKILL: no goodbye; the broker sends its Last Will
                tasks.append(asyncio.create_task(one(i)))
                await asyncio.sleep(0.02)
            await asyncio.gather(*tasks)
            assert len(done) == 30
            assert any(tier is Tier.EDGE for i, tier, _ in done if i < 10)
            # None hangs: at most the edge deadline, then a local run.
            assert max(latency for _, _, latency in done) < timeout_s + 10
            await wait_until(lambda: edge.rpc.workers_for("tiny_presence") == 0)
            start = time.monotonic()
            assert (await r.infer(presence_request(99))).tier is Tier.LOCAL
            assert time.monotonic() - start < timeout_s  # failed over at once, no timeout
    finally:
        proc.kill()
        proc.wait(10)


async def test_all_tiers_down_urgent_get_errors_non_urgent_wait_for_recovery(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, tmp_path: Path
) -> None:
    from streamedge.pipeline.gateway import Gateway
    from tests.integration.helpers import client, collect, gateway_config, running

    store_dir = tmp_path / "deferred"
    cfg = gateway_config(
        mqtt_broker,
        prefix,
        models_dir,
        inference={
            "tiers": [
                {"type": "edge", "timeout_s": 2.0, "breaker": {"failures": 1, "reset_s": 0.3}}
            ],
            "store_and_forward": {
                "enabled": True,
                "streams": ["*/backlog"],
                "retry_s": 0.2,
                "path": str(store_dir),
            },
        },
        streams=[
            {
                "match": "*/*",
                "kind": "frame",
                "apps": [{"name": "presence", "model": "tiny_presence"}],
            }
        ],
    )
    gw = Gateway(cfg)
    _, jpg = presence_request(4).input, presence_request(4).encoded
    assert jpg is not None
    async with running(gw), client(mqtt_broker) as c:
        assert not gw.models  # edge-only: the gateway never loads the model itself
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/cam1/backlog", jpg, qos=1)
        await wait_until(lambda: gw.stats.deferred == 1)
        assert len(list(store_dir.glob("*.req"))) == 1
        await c.publish(f"{prefix}/in/cam1/camera", jpg, qos=1)
        ((topic, doc),) = await collect(c, 1)
        assert topic == f"{prefix}/out/cam1/camera"
        assert doc["tier"] == "error" and doc["answer"] is None
        assert doc["error"]["reason"] == "all_tiers_failed"
        assert "edge" in doc["error"]["detail"]
        async with serving(worker_config(mqtt_broker, prefix, models_dir)) as worker:
            ((topic, doc),) = await collect(c, 1, timeout=30)
            assert topic == f"{prefix}/out/cam1/backlog"
            assert doc["tier"] == "edge" and doc["deferred"] is True
            assert doc["app"] == "presence"
            await c.publish(f"{prefix}/in/cam2/camera", jpg, qos=1)  # recovered: answered now
            ((topic, doc),) = await collect(c, 1, timeout=30)
            assert topic == f"{prefix}/out/cam2/camera"
            assert doc["tier"] == "edge" and "deferred" not in doc
        assert worker.mqtt is not None and worker.mqtt.served == 2
    snap = gw.stats.snapshot()
    assert snap["messages"]["deferred"] == 1
    assert snap["answers_by_tier"] == {"edge": 1}
    assert snap["inference"]["edge"]["calls"] >= 3  # failed attempts count too
    assert snap["drops"] == {"inference_failed": 1}
    assert snap["tiers"]["store_and_forward"]["answered"] == 1
    assert snap["messages"]["pending"] == 0
    assert not list(store_dir.glob("*.req"))


async def test_bad_requests_get_error_replies_and_the_worker_keeps_serving(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from streamedge.inference.wire import pack, unpack
    from tests.integration.helpers import client

    need_mqtt5(mqtt_broker)
    bodies = [
        b"\x00garbage",
        pack({"model": "tiny_presence@1", "kind": "window", "data": b"x", "shape": ["a", 1]}),
        pack({"model": "tiny_presence@1", "kind": "frame", "data": b"\xff\xd8\xffbroken"}),
        pack({"model": "nope@1", "kind": "frame", "data": b"x"}),
    ]
    async with (
        serving(worker_config(mqtt_broker, prefix, models_dir)) as worker,
        client(mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as c,
    ):
        await c.subscribe(f"{prefix}/replies/t", qos=0)
        for i, body in enumerate(bodies):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = f"{prefix}/replies/t"
            props.CorrelationData = bytes([i])
            await c.publish(f"{prefix}/infer/tiny_presence", body, properties=props)
        replies = {}
        async with asyncio.timeout(15):
            async for message in c.messages:
                assert isinstance(message.payload, bytes)
                doc = unpack(message.payload)
                replies[doc["correlation"]] = doc
                if len(replies) == len(bodies):
                    break
        assert all(not doc["ok"] for doc in replies.values())
        assert replies[b"\x00"]["reason"] == "bad_payload"
        assert replies[b"\x03"]["reason"] == "not_served"
        async with router([{"type": "edge"}], broker=mqtt_broker, prefix=prefix) as r:
            assert (await r.infer(presence_request(1))).tier is Tier.EDGE
        assert worker.mqtt is not None and worker.mqtt.bad_requests >= 1
