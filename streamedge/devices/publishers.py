"""Sample device publishers: cameras and environmental sensors over MQTT.

They publish exactly what a real device would (JPEG bytes, JSON readings) on
``<prefix>/in/{device}/{stream}``, to any broker. The demo runs them inside
its own process; ``samples/*.py`` run them standalone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import numpy as np

from streamedge.devices.scenes import SceneGenerator
from streamedge.devices.sensors import SensorSimulator
from streamedge.records import Image

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class PublisherStats:
    """What a publisher sent."""

    messages: int = 0
    bytes: int = 0
    errors: int = 0
    by_device: dict[str, int] = field(default_factory=dict)


async def _send(
    client: aiomqtt.Client,
    topic: str,
    payload: bytes,
    qos: int,
    stats: PublisherStats,
    device: str,
) -> None:
    """Publish one message and count it (a failure is counted, not raised)."""
    try:
        await client.publish(topic, payload, qos=qos)
    except aiomqtt.MqttError:
        stats.errors += 1
        return
    stats.messages += 1
    stats.bytes += len(payload)
    stats.by_device[device] = stats.by_device.get(device, 0) + 1


def video_frames(path: Path, *, loop: bool = True) -> Iterator[Image]:
    """Frames of a video file (BGR), looping forever when ``loop``."""
    import cv2

    while True:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            msg = f"cannot open video {path}"
            raise OSError(msg)
        got = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                got += 1
                yield np.ascontiguousarray(frame)
        finally:
            cap.release()
        if not loop or got == 0:
            return


def encode_jpeg(image: Image, quality: int = 80) -> bytes:
    """JPEG-encode a BGR image."""
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        msg = "JPEG encoding failed"
        raise ValueError(msg)
    return bytes(buf)


async def run_cameras(
    *,
    host: str,
    port: int,
    prefix: str = "streamedge",
    devices: int = 3,
    fps: float = 5.0,
    duration: float | None = None,
    video: Path | None = None,
    width: int = 320,
    height: int = 240,
    seed: int = 1,
    device_prefix: str = "cam",
    stats: PublisherStats | None = None,
) -> PublisherStats:
    """Publish JPEG frames from ``devices`` cameras watching the same scene.

    The cameras share one view (same background, same visitors) with their
    own sensor noise, like overlapping cameras: what one camera's frame was
    answered with can answer the others' (device-level reuse).
    """
    stats = stats or PublisherStats()
    scene = SceneGenerator(width=width, height=height, seed=seed)
    noise = np.random.default_rng(seed + 99)
    frames = video_frames(video) if video is not None else None
    names = [f"{device_prefix}{i + 1}" for i in range(devices)]
    period = 1.0 / fps
    deadline = None if duration is None else time.monotonic() + duration
    ident = f"sample-{device_prefix}-{seed}"
    async with aiomqtt.Client(host, port, identifier=ident) as client:
        next_at = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            if frames is not None:
                base = next(frames)
            else:
                base, _count = scene.step()
            for name in names:
                jitter = noise.integers(-2, 3, base.shape, dtype=np.int16)
                image = np.clip(base.astype(np.int16) + jitter, 0, 255).astype(np.uint8)
                payload = await asyncio.to_thread(encode_jpeg, image)
                await _send(client, f"{prefix}/in/{name}/camera", payload, 0, stats, name)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return stats


async def run_sensors(
    *,
    host: str,
    port: int,
    prefix: str = "streamedge",
    devices: int = 6,
    hz: float = 5.0,
    duration: float | None = None,
    seed: int = 1,
    anomaly_p: float = 0.01,
    stats: PublisherStats | None = None,
) -> PublisherStats:
    """Publish JSON temperature/humidity readings (QoS 1) and a power meter (QoS 0)."""
    stats = stats or PublisherStats()
    sims = [SensorSimulator(seed=seed + i, anomaly_p=anomaly_p) for i in range(devices)]
    names = [f"env{i + 1}" for i in range(devices)]
    rng = np.random.default_rng(seed)
    watts = [float(rng.uniform(50, 400)) for _ in range(devices)]
    period = 1.0 / hz
    deadline = None if duration is None else time.monotonic() + duration
    async with aiomqtt.Client(host, port, identifier=f"sample-sensors-{seed}") as client:
        next_at = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            now = time.time()
            for i, (name, sim) in enumerate(zip(names, sims, strict=True)):
                sample = sim.step()
                watts[i] = max(0.0, watts[i] + float(rng.normal(0, 2)))
                readings = [
                    (f"{prefix}/in/{name}/env", {"ts": now, **sample.values}, 1),
                    (f"{prefix}/in/{name}/power", {"ts": now, "watts": round(watts[i])}, 0),
                ]
                for topic, doc, qos in readings:
                    await _send(client, topic, json.dumps(doc).encode(), qos, stats, name)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return stats
