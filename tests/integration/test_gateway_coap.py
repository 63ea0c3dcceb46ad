"""A real gateway serving CoAP on loopback, driven by real aiocoap clients and libcoap's CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiocoap
import cv2
import jsonschema
import numpy as np
import pytest
from aiocoap.numbers.codes import Code

from streamedge.pipeline.gateway import Gateway
from streamedge.stats.schema import snapshot_schema
from tests.conftest import BrokerInfo
from tests.integration.helpers import client, collect, gateway_config, running, wait_until

pytestmark = pytest.mark.integration

NON = aiocoap.Unreliable  # concurrent requests: aiocoap holds CONs to one server to NSTART = 1
JSON_CF = 50
JPEG_CF = 22


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def coap_gateway(
    broker: BrokerInfo,
    prefix: str,
    data_dir: Path,
    *,
    coap: dict[str, Any] | None = None,
    **kw: Any,
) -> Gateway:
    settings = {"enabled": True, "port": udp_port(), **(coap or {})}
    return Gateway(gateway_config(broker, prefix, data_dir, coap=settings, **kw))


@pytest.fixture
async def coap_client() -> AsyncIterator[aiocoap.Context]:
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        yield ctx
    finally:
        await ctx.shutdown()


def base(gw: Gateway) -> str:
    return f"coap://127.0.0.1:{gw.cfg.coap.port}/ps/{gw.cfg.mqtt.topic_prefix}"


async def request(
    ctx: aiocoap.Context, code: Code, uri: str, payload: bytes = b"", **opts: Any
) -> aiocoap.Message:
    async with asyncio.timeout(30):
        response: aiocoap.Message = await ctx.request(
            aiocoap.Message(code=code, uri=uri, payload=payload, **opts)
        ).response
    return response


def noisy_jpeg(side: int, seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf)


def flat_jpeg(value: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((48, 64, 3), value * 9, dtype=np.uint8))
    assert ok
    assert len(buf) < 1024
    return bytes(buf)


async def test_post_reading_is_answered_observable_and_published_on_mqtt(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        resp = await request(
            coap_client,
            Code.POST,
            f"{base(gw)}/in/meter1/power",
            b'{"ts": 10, "watts": 120}',
            content_format=JSON_CF,
        )
        got = await collect(c, 1)
        out = await request(coap_client, Code.GET, f"{base(gw)}/out/meter1/power")
    assert resp.code == Code.CHANGED
    answer = json.loads(resp.payload)
    assert answer["tier"] == "forward"
    assert answer["values"] == {"watts": 120.0}
    assert out.code == Code.CONTENT
    assert out.opt.content_format == JSON_CF
    assert json.loads(out.payload) == answer
    assert got == [(f"{prefix}/out/meter1/power", answer)]
    snap = gw.stats.snapshot()
    assert snap["messages"]["in"] == 1
    assert snap["coap"]["responses"] == {"2.04": 1}


async def test_content_format_selects_the_decoder(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    # A msgpack reading is sniffed; the Content-Format image/jpeg sends a frame to
    # the image decoder, which refuses a JSON body as a bad image.
    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    async with running(gw):
        import msgpack

        ok = await request(
            coap_client, Code.POST, f"{base(gw)}/in/m2/power", msgpack.packb({"watts": 7})
        )
        bad = await request(
            coap_client,
            Code.POST,
            f"{base(gw)}/in/cam9/camera",
            b'{"watts": 7}',
            content_format=JPEG_CF,
        )
    assert ok.code == Code.CHANGED
    assert json.loads(ok.payload)["values"] == {"watts": 7.0}
    assert bad.code == Code.BAD_REQUEST
    assert gw.stats.drops == {"bad_image": 1}


async def test_a_60kb_frame_arrives_blockwise_and_its_answer_comes_back(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    frame = noisy_jpeg(260)
    assert len(frame) >= 60_000
    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    async with running(gw), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        resp = await request(
            coap_client, Code.POST, f"{base(gw)}/in/cam1/camera", frame, content_format=JPEG_CF
        )
        got = await collect(c, 1)
    assert resp.code == Code.CHANGED
    answer = json.loads(resp.payload)
    assert answer["tier"] == "local"
    assert answer["answer"]["label"] in ("empty", "visitor")
    assert got[0] == (f"{prefix}/out/cam1/camera", answer)
    snap = gw.stats.snapshot()
    assert snap["coap"]["block_uploads"] == 1  # it came in blocks, reassembled by aiocoap
    assert snap["coap"]["uploads"] == 0
    assert gw.stats.bytes_in == len(frame)


async def test_observe_notifications_respect_the_minimum_interval(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    interval = 0.6
    gw = coap_gateway(mqtt_broker, prefix, models_dir, coap={"min_notify_interval_s": interval})
    uri = f"{base(gw)}/in/probe/env"
    async with running(gw):
        first = await request(coap_client, Code.POST, uri, b'{"t": 0}')
        assert first.code == Code.CHANGED
        obs = coap_client.request(
            aiocoap.Message(code=Code.GET, uri=f"{base(gw)}/out/probe/env", observe=0)
        )
        initial = await asyncio.wait_for(obs.response, 10)
        assert json.loads(initial.payload)["values"] == {"t": 0.0}
        loop = asyncio.get_running_loop()
        seen: list[tuple[float, float]] = []

        async def watch() -> None:
            async for note in obs.observation:
                # Runs until cancelled; the test reads the list meanwhile.
                seen.append((loop.time(), json.loads(note.payload)["values"]["t"]))  # noqa: PERF401

        watcher = asyncio.create_task(watch())
        # 12 answers within ~1.2 s: at most a few notifications may go out.
        for i in range(1, 13):
            resp = await request(coap_client, Code.POST, uri, json.dumps({"t": i}).encode())
            assert resp.code == Code.CHANGED
            await asyncio.sleep(0.1)
        await wait_until(lambda: bool(seen) and seen[-1][1] == 12.0, timeout=10)
        watcher.cancel()
        obs.observation.cancel()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    assert 2 <= len(seen) < 12, seen
    # Unlimited, the gaps would be ~0.1 s (one per POST); the slack is client-side jitter.
    assert all(g >= interval - 0.15 for g in gaps), gaps
    assert seen[-1][1] == 12.0  # coalesced to the latest value
    assert gw.coap is not None
    assert gw.coap.coalesced >= 12 - len(seen) - 1


async def test_stats_resource_get_and_observe(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    gw = coap_gateway(mqtt_broker, prefix, models_dir)  # stats.interval_s is 0.5
    async with running(gw):
        await request(coap_client, Code.POST, f"{base(gw)}/in/m1/power", b'{"watts": 1}')
        snap = await request(coap_client, Code.GET, f"{base(gw)}/stats")
        obs = coap_client.request(
            aiocoap.Message(code=Code.GET, uri=f"{base(gw)}/stats", observe=0)
        )
        await asyncio.wait_for(obs.response, 10)
        notes: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            async for note in obs.observation:
                notes.append(json.loads(note.payload))
                if len(notes) == 2:
                    break
        obs.observation.cancel()
    doc = json.loads(snap.payload)
    assert snap.code == Code.CONTENT
    schema = snapshot_schema()
    jsonschema.Draft202012Validator(schema).validate(doc)
    assert set(doc["coap"]) == set(schema["properties"]["coap"]["properties"])
    assert doc["gateway"] == gw.name
    assert doc["messages"]["in"] == 1
    assert doc["coap"]["responses"]["2.04"] == 1
    assert notes[1]["uptime_s"] > notes[0]["uptime_s"]


async def test_error_codes_are_answered_and_counted(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    gw = coap_gateway(
        mqtt_broker,
        prefix,
        models_dir,
        coap={"retry_after_s": 7},
        limits={"max_payload_bytes": 50_000},
    )
    b = base(gw)
    async with running(gw):
        bad = await request(coap_client, Code.POST, f"{b}/in/m1/power", b"not a reading")
        short_path = await request(coap_client, Code.POST, f"{b}/in/m1", b'{"watts": 1}')
        no_rule = await request(coap_client, Code.POST, f"{b}/in/m1/nothing", b'{"watts": 1}')
        no_answer = await request(coap_client, Code.GET, f"{b}/out/m1/power")
        no_answer_observed = await request(coap_client, Code.GET, f"{b}/out/m1/power", observe=0)
        nowhere = await request(coap_client, Code.GET, f"{b}/elsewhere")
        huge = await request(coap_client, Code.POST, f"{b}/in/cam1/camera", noisy_jpeg(260))
        unblocked = await request(coap_client, Code.POST, f"{b}/in/m1/power", b'{"watts": 2}')
    assert bad.code == Code.BAD_REQUEST
    assert short_path.code == Code.NOT_FOUND
    assert no_rule.code == Code.NOT_FOUND
    assert no_answer.code == Code.NOT_FOUND
    assert no_answer_observed.code == Code.NOT_FOUND
    assert no_answer_observed.opt.observe is None
    assert nowhere.code == Code.NOT_FOUND
    assert huge.code == Code.REQUEST_ENTITY_TOO_LARGE
    assert huge.opt.size1 == 50_000
    assert unblocked.code == Code.CHANGED  # the gateway kept going
    assert gw.stats.drops == {
        "bad_payload": 1,
        "unknown_topic": 1,
        "no_stream_rule": 1,
        "too_large": 1,
    }
    assert gw.stats.messages_in == 5
    assert gw.coap is not None
    assert gw.coap.block_uploads == 0  # refused on its first block, never reassembled
    assert gw.coap.responses == {"2.04": 1, "4.00": 1, "4.04": 2, "4.13": 1}


async def test_full_queue_answers_503_with_max_age(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    streams = [
        {
            "match": "*/camera",
            "kind": "frame",
            "queue": {"size": 1, "on_full": "drop_newest"},
            "apps": [{"name": "presence", "model": "tiny_presence"}],
        }
    ]
    gw = coap_gateway(mqtt_broker, prefix, models_dir, coap={"retry_after_s": 7}, streams=streams)
    # Single-datagram frames: concurrent block-wise uploads from one endpoint to one
    # resource would interleave (aiocoap's client sends no Request-Tag).
    frames = [flat_jpeg(seed) for seed in range(24)]  # concurrent (NON), small
    async with running(gw):
        responses = await asyncio.gather(
            *(
                request(
                    coap_client, Code.POST, f"{base(gw)}/in/cam1/camera", f, transport_tuning=NON
                )
                for f in frames
            )
        )
    codes = [r.code for r in responses]
    unavailable = [r for r in responses if r.code == Code.SERVICE_UNAVAILABLE]
    assert set(codes) <= {Code.CHANGED, Code.SERVICE_UNAVAILABLE}
    assert unavailable, codes
    assert all(r.opt.max_age == 7 for r in unavailable)
    assert gw.stats.drops == {"queue_full": len(unavailable)}
    assert codes.count(Code.CHANGED) == gw.stats.outcomes["answered"]


async def test_blocking_queue_that_stays_full_answers_503(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    streams = [
        {
            "match": "*/camera",
            "kind": "frame",
            "queue": {"size": 1, "on_full": "block"},
            "apps": [{"name": "presence", "model": "tiny_presence"}],
        }
    ]
    gw = coap_gateway(
        mqtt_broker,
        prefix,
        models_dir,
        coap={"admit_timeout_s": 0.05, "max_inflight": 4},
        streams=streams,
    )
    frames = [flat_jpeg(seed) for seed in range(16)]
    async with running(gw):
        responses = await asyncio.gather(
            *(
                request(
                    coap_client, Code.POST, f"{base(gw)}/in/cam1/camera", f, transport_tuning=NON
                )
                for f in frames
            )
        )
    codes = [r.code for r in responses]
    assert set(codes) <= {Code.CHANGED, Code.SERVICE_UNAVAILABLE}
    assert Code.SERVICE_UNAVAILABLE in codes
    assert Code.CHANGED in codes
    refused = codes.count(Code.SERVICE_UNAVAILABLE)
    drops = gw.stats.drops
    assert set(drops) <= {"queue_full", "coap_overloaded"}
    assert sum(drops.values()) == refused
    assert gw.stats.messages_in == len(frames)


async def test_well_known_core_lists_the_resources(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    async with running(gw):
        await request(coap_client, Code.POST, f"{base(gw)}/in/meter1/power", b'{"watts": 1}')
        wkc = await request(
            coap_client, Code.GET, f"coap://127.0.0.1:{gw.cfg.coap.port}/.well-known/core"
        )
    assert wkc.code == Code.CONTENT
    assert wkc.opt.content_format == 40  # application/link-format
    links = wkc.payload.decode().split(",")
    assert f'</ps/{prefix}/stats>;ct="50";rt="streamedge.stats";obs' in links
    assert f'</ps/{prefix}/out/meter1/power>;ct="50";obs' in links
    assert f'</ps/{prefix}/in/{{device}}/{{stream}}>;rt="streamedge.in"' in links


COAP_CLIENT = shutil.which("coap-client-notls")


def json_documents(text: str) -> list[Any]:
    """The JSON documents libcoap printed back to back."""
    decoder = json.JSONDecoder()
    docs: list[Any] = []
    i = 0
    text = text.strip()
    while i < len(text):
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
        while i < len(text) and text[i].isspace():
            i += 1
    return docs


@pytest.mark.skipif(COAP_CLIENT is None, reason="libcoap's coap-client-notls is not installed")
async def test_libcoap_client_posts_a_reading_and_reads_out_and_stats(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, tmp_path: Path
) -> None:
    assert COAP_CLIENT is not None

    async def coap_client_cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            COAP_CLIENT,
            "-B",
            "10",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        return out.decode() + err.decode()  # libcoap reports error codes on stderr

    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    async with running(gw):
        posted = await coap_client_cli(
            "-m", "post", "-t", "50", "-e", '{"watts": 42}', f"{base(gw)}/in/meter7/power"
        )
        out = await coap_client_cli("-m", "get", f"{base(gw)}/out/meter7/power")
        stats = await coap_client_cli("-m", "get", f"{base(gw)}/stats")
        bad = await coap_client_cli("-m", "post", "-e", "nonsense", f"{base(gw)}/in/meter7/power")
        frame = tmp_path / "frame.jpg"
        frame.write_bytes(noisy_jpeg(260))
        framed = await coap_client_cli(
            "-m", "post", "-t", "22", "-f", str(frame), f"{base(gw)}/in/cam1/camera"
        )
        # Observe the stats for 2 s: each notification is larger than a block, so
        # it must leave block-wise (libcoap drops a datagram over its block size).
        observed = await coap_client_cli("-m", "get", "-s", "2", f"{base(gw)}/stats")
    assert json.loads(posted)["values"] == {"watts": 42.0}
    assert json.loads(out) == json.loads(posted)
    doc = json.loads(stats)  # larger than one block: libcoap fetches it block-wise
    assert len(stats) > 1024
    assert doc["messages"]["in"] == 1
    assert "4.00" in bad
    assert gw.stats.drops == {"bad_payload": 1}
    assert json.loads(framed)["tier"] == "local"
    notes = json_documents(observed)
    assert len(notes) >= 3  # the first response and notifications (stats.interval_s 0.5)
    assert all(n["gateway"] == gw.name for n in notes)
    assert notes[-1]["uptime_s"] > notes[0]["uptime_s"]
    assert gw.coap is not None
    assert gw.coap.block_uploads == 1  # libcoap sent the 60 KB frame block-wise


async def test_block_wise_uploads_at_once_are_bounded(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    gw = coap_gateway(mqtt_broker, prefix, models_dir, coap={"max_uploads": 1})
    frame = noisy_jpeg(260)
    uri = f"{base(gw)}/in/cam1/camera"
    async with running(gw):
        other = await aiocoap.Context.create_client_context(transports=["udp6"])
        try:
            # Two endpoints at once, room for one upload: the second is told to retry.
            first, second = await asyncio.gather(
                request(coap_client, Code.POST, uri, frame, content_format=JPEG_CF),
                request(other, Code.POST, f"{base(gw)}/in/cam2/camera", frame),
            )
        finally:
            await other.shutdown()
    assert {first.code, second.code} == {Code.CHANGED, Code.SERVICE_UNAVAILABLE}
    assert (first if first.code != Code.CHANGED else second).opt.max_age == 2
    assert gw.stats.drops == {"coap_overloaded": 1}


async def test_interleaved_uploads_to_one_stream_are_answered_408(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, coap_client: aiocoap.Context
) -> None:
    # One endpoint, two uploads to one stream at once (no Request-Tag): the blocks
    # interleave, and what cannot be reassembled is answered 4.08, not a crash.
    gw = coap_gateway(mqtt_broker, prefix, models_dir)
    frame = noisy_jpeg(260)
    uri = f"{base(gw)}/in/cam1/camera"
    async with running(gw):
        both = await asyncio.gather(
            request(coap_client, Code.POST, uri, frame),
            request(coap_client, Code.POST, uri, noisy_jpeg(260, seed=1)),
        )
        after = await request(coap_client, Code.POST, uri, frame)
    codes = {r.code for r in both}
    assert Code.REQUEST_ENTITY_INCOMPLETE in codes, codes
    assert gw.stats.drops["incomplete_upload"] >= 1
    assert after.code == Code.CHANGED
