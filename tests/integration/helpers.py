"""Helpers for tests that run a real gateway against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from streamedge.config import StreamedgeConfig, parse_config
from streamedge.pipeline.gateway import Gateway
from tests.conftest import BrokerInfo


def gateway_config(
    broker: BrokerInfo | tuple[str, int], prefix: str, data_dir: Path, **overrides: Any
) -> StreamedgeConfig:
    host, port = (broker.host, broker.port) if isinstance(broker, BrokerInfo) else broker
    cfg: dict[str, Any] = {
        "gateway": {"name": f"gw-{prefix[-6:]}", "data_dir": str(data_dir)},
        "mqtt": {
            "host": host,
            "port": port,
            "topic_prefix": prefix,
            "reconnect": {"min_s": 0.2, "max_s": 1.0},
        },
        "models": [{"type": "builtin", "name": "tiny_presence"}],
        "caches": [
            {
                "name": "frames",
                "embedder": {"type": "downscale", "size": 16},
                "policy": {"type": "threshold", "max_distance": 0.03},
                # data_dir is the session's shared models_dir: a snapshot left by one
                # test would answer the next one's first frame. Tests that check
                # snapshots turn this on with a data_dir of their own.
                "snapshot": {"enabled": False},
            },
        ],
        "streams": [
            {
                "match": "*/camera",
                "kind": "frame",
                "apps": [{"name": "presence", "model": "tiny_presence", "cache": "frames"}],
            },
            {"match": "*/env", "kind": "reading", "queue": {"size": 8, "on_full": "block"}},
            {
                "match": "*/power",
                "kind": "reading",
                "filters": [{"type": "deadband", "epsilon": 5.0}],
            },
        ],
        "limits": {"max_payload_bytes": 200_000},
        "stats": {"interval_s": 0.5},
        "pipeline": {"drain_s": 5.0},
    }
    cfg.update(overrides)
    return parse_config(cfg)


@contextlib.asynccontextmanager
async def running(gateway: Gateway, timeout: float = 60.0) -> AsyncIterator[Gateway]:
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    ready = asyncio.create_task(gateway.ready.wait())
    done, _ = await asyncio.wait(
        [task, ready], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if task in done:
        ready.cancel()
        task.result()  # raises the gateway's failure
    if ready not in done:
        task.cancel()
        raise TimeoutError("gateway did not become ready")
    try:
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def client(broker: BrokerInfo | tuple[str, int], **kwargs: Any) -> aiomqtt.Client:
    host, port = (broker.host, broker.port) if isinstance(broker, BrokerInfo) else broker
    return aiomqtt.Client(host, port, identifier=f"test-{uuid.uuid4().hex[:8]}", **kwargs)


async def collect(
    c: aiomqtt.Client, n: int, timeout: float = 15.0, topic_prefix: str | None = None
) -> list[tuple[str, Any]]:
    """Gather n JSON messages (topic, document)."""
    out: list[tuple[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            async for message in c.messages:
                topic = message.topic.value
                if topic_prefix is not None and not topic.startswith(topic_prefix):
                    continue
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                try:
                    doc: Any = json.loads(payload)
                except ValueError:
                    doc = bytes(payload).decode(errors="replace")
                out.append((topic, doc))
                if len(out) >= n:
                    break
    return out


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110  # polling test state is fine here
            await asyncio.sleep(0.05)
