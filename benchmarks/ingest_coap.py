"""CoAP ingest throughput and latency, side by side with MQTT and a bare aiocoap server.

One process runs a real gateway (CoAP server on loopback, Mosquitto on
loopback, or the embedded amqtt broker when Mosquitto is not installed) and
the clients. Each client is one device in a closed loop: it sends a message,
waits for its answer, sends the next. Scenarios, in the same run:

- ``aiocoap echo``: a bare aiocoap server answering 2.04: the floor of what
  aiocoap costs per request here (the ratio to it is the gateway's own cost);
- ``coap readings``: POST /ps/<p>/in/devN/env, answered 2.04 with the answer
  once the pipeline forwarded it (latency = request to response);
- ``mqtt readings``: publish QoS 1 on <p>/in/devN/env, latency until the
  answer arrives on <p>/out/devN/env;
- ``coap 60 KB frames`` / ``mqtt 60 KB frames``: a noisy 60 KB JPEG per
  message, block-wise over CoAP (1 KiB blocks), through a tiny ONNX presence
  model, fewer messages.

RSS is the process's resident set (VmRSS) after each scenario and its peak
(VmHWM). Clients share the process and its event loop with the gateway, so
absolute rates understate a dedicated box; read the ratios.

Usage::

    python benchmarks/ingest_coap.py --messages 2000 --clients 8 --frames 60 \\
        --json bench-results/ingest_coap.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiocoap
import aiomqtt
import cv2
import numpy as np
from aiocoap import resource
from aiocoap.numbers.codes import Code

from streamedge.config import parse_config
from streamedge.pipeline.gateway import Gateway

PREFIX = "bench"
Send = Callable[[int, int], Awaitable[None]]  # (client, sequence number)


def _port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


def jpeg_60kb() -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (260, 260, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(buf)


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and Path("/usr/sbin/mosquitto").exists():
        found = "/usr/sbin/mosquitto"  # Debian installs it outside a user's PATH
    return found


@contextlib.contextmanager
def mosquitto(port: int, workdir: Path) -> Any:
    binary = mosquitto_binary() or "mosquitto"
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def gateway_cfg(broker_port: int, coap_port: int, data_dir: Path, embedded: bool) -> Any:
    return parse_config(
        {
            "gateway": {"name": "bench", "data_dir": str(data_dir)},
            "mqtt": {
                "host": None if embedded else "127.0.0.1",
                "port": broker_port,
                "topic_prefix": PREFIX,
                "qos_out": 0,
            },
            "coap": {"enabled": True, "port": coap_port, "max_inflight": 256},
            "models": [{"type": "builtin", "name": "tiny_presence"}],
            "streams": [
                {
                    "match": "*/camera",
                    "kind": "frame",
                    "queue": {"size": 16, "on_full": "block"},
                    "apps": [{"name": "presence", "model": "tiny_presence"}],
                },
                {"match": "*/env", "kind": "reading", "queue": {"size": 64, "on_full": "block"}},
            ],
            "limits": {"max_payload_bytes": 200_000},
            "stats": {"interval_s": 60},
            "logging": {"level": "warning"},
        }
    )


async def closed_loop(clients: int, per_client: int, send: Send) -> dict[str, Any]:
    """Run `clients` devices, each sending `per_client` messages one after another."""
    latencies: list[float] = []

    async def device(c: int) -> None:
        for i in range(per_client):
            start = time.perf_counter()
            await send(c, i)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(device(c) for c in range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()
    rss, hwm = rss_mb()
    return {
        "messages": len(latencies),
        "seconds": round(wall, 3),
        "msgs_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1e3 * statistics.median(latencies), 3),
        "p99_ms": round(1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(hwm, 1),
    }


@contextlib.asynccontextmanager
async def coap_clients(n: int) -> AsyncIterator[list[aiocoap.Context]]:
    # One context per device: aiocoap holds CON requests to one server to NSTART = 1.
    ctxs = [await aiocoap.Context.create_client_context(transports=["udp6"]) for _ in range(n)]
    try:
        yield ctxs
    finally:
        for ctx in ctxs:
            await ctx.shutdown()


def coap_sender(
    ctxs: list[aiocoap.Context], uri: Callable[[int], str], body: Callable[[int], bytes], cf: int
) -> Send:
    async def send(c: int, i: int) -> None:
        msg = aiocoap.Message(code=Code.POST, uri=uri(c), payload=body(i), content_format=cf)
        resp = await ctxs[c].request(msg).response
        if resp.code != Code.CHANGED:
            raise RuntimeError(f"unexpected {resp.code} {resp.payload[:80]!r}")

    return send


class _Echo(resource.Resource):  # type: ignore[misc]
    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(code=Code.CHANGED, payload=b'{"ok":true}')


@contextlib.asynccontextmanager
async def mqtt_sender(
    port: int, clients: int, topic: Callable[[int], str], body: Callable[[int], bytes]
) -> AsyncIterator[Send]:
    waiting: dict[str, asyncio.Future[None]] = {}
    async with contextlib.AsyncExitStack() as stack:
        sub = await stack.enter_async_context(
            aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{uuid.uuid4().hex[:6]}")
        )
        await sub.subscribe(f"{PREFIX}/out/#", qos=0)
        pubs = [
            await stack.enter_async_context(
                aiomqtt.Client("127.0.0.1", port, identifier=f"bench-pub{c}-{uuid.uuid4().hex[:6]}")
            )
            for c in range(clients)
        ]

        async def route() -> None:
            async for message in sub.messages:
                fut = waiting.pop(message.topic.value, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)

        router = asyncio.create_task(route())

        async def send(c: int, i: int) -> None:
            out = topic(c).replace("/in/", "/out/", 1)
            fut = waiting[out] = asyncio.get_running_loop().create_future()
            await pubs[c].publish(topic(c), body(i), qos=1)
            await asyncio.wait_for(fut, 30)

        try:
            yield send
        finally:
            router.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await router


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    frame = jpeg_60kb()
    per_client = max(1, args.messages // args.clients)
    frames_per_client = max(1, args.frames // args.frame_clients)

    def reading(i: int) -> bytes:
        return json.dumps({"seq": i, "t": 21.5 + (i % 7)}).encode()

    def a_frame(_i: int) -> bytes:
        return frame

    # The floor: a bare aiocoap server, same clients, same loop.
    echo_port = _port(socket.SOCK_DGRAM)
    site = resource.Site()
    site.add_resource(["echo"], _Echo())
    server = await aiocoap.Context.create_server_context(
        site, bind=("127.0.0.1", echo_port), transports=["udp6"]
    )
    async with coap_clients(args.clients) as ctxs:
        send = coap_sender(ctxs, lambda _c: f"coap://127.0.0.1:{echo_port}/echo", reading, 50)
        await closed_loop(args.clients, 5, send)  # warm-up
        results["aiocoap echo"] = await closed_loop(args.clients, per_client, send)
    await server.shutdown()

    embedded = mosquitto_binary() is None
    broker_port = _port(socket.SOCK_STREAM)
    coap_port = _port(socket.SOCK_DGRAM)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as broker:
        if not embedded:
            broker.enter_context(mosquitto(broker_port, Path(tmp)))
        gw = Gateway(gateway_cfg(broker_port, coap_port, Path(tmp), embedded))
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.wait_for(gw.ready.wait(), 60)
        base = f"coap://127.0.0.1:{coap_port}/ps/{PREFIX}/in"
        try:
            async with coap_clients(max(args.clients, args.frame_clients)) as ctxs:
                send = coap_sender(ctxs, lambda c: f"{base}/dev{c}/env", reading, 50)
                await closed_loop(args.clients, 5, send)
                results["coap readings"] = await closed_loop(args.clients, per_client, send)
            async with mqtt_sender(
                broker_port, args.clients, lambda c: f"{PREFIX}/in/mdev{c}/env", reading
            ) as send:
                await closed_loop(args.clients, 5, send)
                results["mqtt readings"] = await closed_loop(args.clients, per_client, send)
            async with coap_clients(args.frame_clients) as ctxs:
                send = coap_sender(ctxs, lambda c: f"{base}/cam{c}/camera", a_frame, 22)
                await closed_loop(args.frame_clients, 2, send)
                results["coap 60 KB frames"] = await closed_loop(
                    args.frame_clients, frames_per_client, send
                )
            async with mqtt_sender(
                broker_port, args.frame_clients, lambda c: f"{PREFIX}/in/mcam{c}/camera", a_frame
            ) as send:
                await closed_loop(args.frame_clients, 2, send)
                results["mqtt 60 KB frames"] = await closed_loop(
                    args.frame_clients, frames_per_client, send
                )
            snap = gw.stats.snapshot()
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    return {
        "scenarios": results,
        "gateway": {
            "messages_in": snap["messages"]["in"],
            "drops": snap["drops"],
            "coap": snap["coap"],
        },
        "config": {
            "messages": args.messages,
            "clients": args.clients,
            "frames": args.frames,
            "frame_clients": args.frame_clients,
            "frame_bytes": len(frame),
            "broker": "amqtt (embedded)" if embedded else "mosquitto",
        },
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or "?"},
    }


def table(doc: dict[str, Any]) -> str:
    rows = doc["scenarios"]
    echo = rows["aiocoap echo"]["msgs_per_s"]
    lines = [
        f"{'scenario':<20} {'msgs':>6} {'msg/s':>8} {'vs echo':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'RSS MiB':>8} {'peak':>7}",
    ]
    for name, r in rows.items():
        lines.append(
            f"{name:<20} {r['messages']:>6} {r['msgs_per_s']:>8.1f} "
            f"{r['msgs_per_s'] / echo:>8.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['rss_mb']:>8.1f} {r['peak_rss_mb']:>7.1f}"
        )
    cfg = doc["config"]
    lines.append(
        f"clients: {cfg['clients']} (frames: {cfg['frame_clients']}), closed loop; "
        f"frame {cfg['frame_bytes']} bytes; broker {cfg['broker']}; "
        f"gateway drops {doc['gateway']['drops'] or 'none'}; "
        f"block-wise uploads {doc['gateway']['coap']['block_uploads']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="readings per scenario")
    parser.add_argument("--clients", type=int, default=8, help="devices sending readings")
    parser.add_argument("--frames", type=int, default=60, help="60 KB frames per scenario")
    parser.add_argument("--frame-clients", type=int, default=2, help="devices sending frames")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    doc = asyncio.run(run(args))
    print(table(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
