"""Helpers for tier tests: workers in-process or as processes, frames, routers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from streamedge.inference.config import InferenceConfig
from streamedge.inference.factory import EdgeDefaults, build_router
from streamedge.inference.router import TierRouter
from streamedge.protocols import Model
from streamedge.records import Frame, InferenceRequest, ModelRef, StreamKey
from streamedge.worker.config import WorkerConfig, parse_worker_config
from streamedge.worker.service import Worker
from tests.conftest import BrokerInfo

PRESENCE = ModelRef("tiny_presence", "1")


def worker_config(
    broker: BrokerInfo | None, prefix: str, data_dir: Path, **overrides: Any
) -> WorkerConfig:
    doc: dict[str, Any] = {
        "worker": {"name": f"w-{prefix[-6:]}", "data_dir": str(data_dir)},
        "http": {"port": 0, "reuse_port": False},
        "models": [
            {"type": "builtin", "name": "tiny_presence"},
            {"type": "builtin", "name": "sensor_anomaly"},
        ],
        "runtime": {"max_concurrency": 2},
    }
    if broker is not None:
        doc["mqtt"] = {"host": broker.host, "port": broker.port, "topic_prefix": prefix}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return parse_worker_config(doc)


@contextlib.asynccontextmanager
async def serving(cfg: WorkerConfig, middlewares: list[Any] | None = None) -> AsyncIterator[Worker]:
    """A worker running in this event loop until the block ends."""
    worker = Worker(cfg, http_middlewares=middlewares)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait([task, ready], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        ready.cancel()
        task.result()
    assert ready in done, "worker did not become ready"
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def start_worker_process(cfg_path: Path, *, name: str) -> subprocess.Popen[bytes]:
    """``streamedge worker`` as a child process (the caller kills it); logs beside the config."""
    with (cfg_path.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streamedge", "worker", str(cfg_path), "--name", name],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def write_worker_yaml(path: Path, broker: BrokerInfo, prefix: str, data_dir: Path) -> Path:
    doc = {
        "worker": {"data_dir": str(data_dir)},
        "mqtt": {"host": broker.host, "port": broker.port, "topic_prefix": prefix},
        "http": {"enabled": False},
        "models": [{"type": "builtin", "name": "tiny_presence"}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def router(
    tiers: list[dict[str, Any]],
    models: dict[ModelRef, Model] | None = None,
    broker: BrokerInfo | None = None,
    prefix: str = "streamedge",
    **cfg: Any,
) -> TierRouter:
    icfg = InferenceConfig.model_validate({"tiers": tiers, **cfg})
    edge = EdgeDefaults(
        host=broker.host if broker else "127.0.0.1",
        port=broker.port if broker else 1,
        topic_prefix=prefix,
        client_id=f"gw-{prefix[-6:]}",
    )
    return build_router(icfg, models or {}, edge=edge)


def scene(seed: int, size: tuple[int, int] = (96, 128)) -> tuple[Frame, bytes]:
    """A frame with a bright blob somewhere, and its JPEG bytes."""
    rng = np.random.default_rng(seed)
    image = np.full((*size, 3), 60, dtype=np.uint8)
    y, x = int(rng.integers(0, size[0] - 30)), int(rng.integers(0, size[1] - 30))
    image[y : y + 30, x : x + 20] = rng.integers(120, 255, 3, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    decoded = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
    return Frame(stream=StreamKey("cam", "camera"), ts=1.0, image=decoded), bytes(buf)


def presence_request(seed: int, *, encoded: bool = True) -> InferenceRequest:
    frame, jpg = scene(seed)
    return InferenceRequest(model=PRESENCE, input=frame, encoded=jpg if encoded else None)
