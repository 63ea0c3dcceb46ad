"""Tier benchmark: what forwarding a miss costs, and what a second edge worker buys.

All on loopback, in one run, side by side:

1. **Per-request latency** of one frame-sized input (a real ``vtest.avi``
   frame, 768x576) through the same model and the same router, by path:
   in-process (the ``local`` tier), an edge worker over MQTT 5 (msgpack; the
   device's JPEG bytes, and raw BGR bytes), and OIP v2 over HTTP against the
   same worker (JSON, and the binary tensor extension). The model is the
   small ``tiny_presence`` CNN, so the table shows the forwarding overhead
   (path p50 minus in-process p50) rather than the model. A window of 16x2
   readings through the anomaly model gives the messaging floor (no image
   to move or decode).
2. **Throughput** of MTCNN (the model dominates: ~100+ ms per frame) through
   the edge tier with 1 and then 2 ``streamedge worker`` processes on one
   shared subscription ($share), 8 requests in flight. Each worker runs one
   inference at a time with one onnxruntime thread, so a worker is one core's
   worth of capacity; the ratio is the scaling the second worker gives.

Workers are separate processes (``python -m streamedge worker``) and the
broker is Mosquitto (MQTT 5); without Mosquitto the benchmark stops.

Targets (issue 9): forwarding overhead (edge minus in-process) < 5 ms p50;
2 workers >= 1.7x one worker's throughput when the model dominates.

Usage::

    python benchmarks/tiers.py --json bench-results/tiers.json
    python benchmarks/tiers.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from streamedge.datasets import find_video, iter_frames
from streamedge.inference import oip
from streamedge.inference.cloud import frame_inputs
from streamedge.inference.config import BuiltinModelConfig, InferenceConfig
from streamedge.inference.factory import EdgeDefaults, build_router
from streamedge.inference.router import TierRouter
from streamedge.inference.wire import encode_input, pack
from streamedge.models.config import MtcnnModelConfig
from streamedge.models.factory import build_model
from streamedge.models.mtcnn import build_mtcnn
from streamedge.models.onnx_runtime import SessionSettings
from streamedge.records import Frame, InferenceRequest, ModelRef, StreamKey, Window

PRESENCE = ModelRef("tiny_presence", "1")
MTCNN = ModelRef("mtcnn", "1")
ANOMALY = ModelRef("sensor_anomaly", "1")
TARGET_OVERHEAD_MS = 5.0
TARGET_SCALING = 1.7


@dataclass
class LatencyRow:
    """One path of part 1."""

    path: str
    request_bytes: int
    p50_ms: float
    p95_ms: float
    mean_ms: float
    overhead_p50_ms: float | None
    answers_match: bool


@dataclass
class ThroughputRow:
    """One worker count of part 2."""

    workers: int
    requests: int
    seconds: float
    per_s: float
    ratio: float | None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("this benchmark needs Mosquitto (MQTT 5, shared subscriptions)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "per_listener_settings false\nallow_anonymous true\npersistence false\n"
        f"log_dest none\nlistener {port} 127.0.0.1\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_worker(cfg: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "streamedge", "worker", str(cfg), "--name", name],
            stdout=subprocess.DEVNULL,
            stderr=fh,
        )


def worker_yaml(path: Path, *, mqtt_port: int, http_port: int, data_dir: Path) -> None:
    doc = {
        "worker": {"data_dir": str(data_dir)},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "topic_prefix": "bench"},
        "http": {"port": http_port, "reuse_port": True},
        "models": [
            {"type": "builtin", "name": "tiny_presence"},
            {"type": "builtin", "name": "sensor_anomaly"},
            {"type": "mtcnn"},
        ],
        "runtime": {"max_concurrency": 1, "max_batch": 1, "intra_op_threads": 1},
        "logging": {"level": "warning"},
    }
    path.write_text(yaml.safe_dump(doc))


async def timed(router: TierRouter, requests: Sequence[InferenceRequest]) -> list[float]:
    out = []
    for req in requests:
        start = time.perf_counter()
        await router.infer(req)
        out.append(time.perf_counter() - start)
    return out


async def part1(
    args: argparse.Namespace,
    frame: Frame,
    jpg: bytes,
    mqtt_port: int,
    http_port: int,
    data_dir: Path,
) -> list[LatencyRow]:
    settings = SessionSettings(intra_op_threads=1)
    presence = build_model(
        BuiltinModelConfig(name="tiny_presence"), data_dir=data_dir, settings=settings
    )
    anomaly = build_model(
        BuiltinModelConfig(name="sensor_anomaly"), data_dir=data_dir, settings=settings
    )
    models = {PRESENCE: presence, ANOMALY: anomaly}
    edge = EdgeDefaults(port=mqtt_port, topic_prefix="bench", client_id="bench-gw")
    url = f"http://127.0.0.1:{http_port}"
    cloud = {"type": "cloud", "url": url, "timeout_s": 30}
    local = {"type": "local", "max_concurrency": 1}
    window = Window(
        stream=StreamKey("bench", "env"),
        ts=0.0,
        fields=("temperature", "humidity"),
        values=np.linspace(20, 40, 32, dtype=np.float32).reshape(16, 2),
    )
    frame_req = InferenceRequest(model=PRESENCE, input=frame, encoded=jpg)
    raw_req = InferenceRequest(model=PRESENCE, input=frame)
    window_req = InferenceRequest(model=ANOMALY, input=window)
    paths: list[tuple[str, dict[str, Any], InferenceRequest]] = [
        ("in-process (local tier)", local, frame_req),
        ("edge MQTT, JPEG bytes", {"type": "edge", "timeout_s": 30}, frame_req),
        ("edge MQTT, raw BGR", {"type": "edge", "timeout_s": 30, "encoding": "raw"}, raw_req),
        ("OIP v2 JSON (raw UINT8)", {**cloud, "binary": "never"}, frame_req),
        (
            "OIP v2 binary (raw UINT8)",
            {**cloud, "binary": "always", "frames_as_jpeg": False},
            frame_req,
        ),
        ("OIP v2 binary (JPEG BYTES)", {**cloud, "binary": "always"}, frame_req),
        ("window, in-process", local, window_req),
        ("window, edge MQTT (messaging)", {"type": "edge", "timeout_s": 30}, window_req),
        ("window, OIP v2 binary", {**cloud, "binary": "always"}, window_req),
    ]
    rows: list[LatencyRow] = []
    base_p50: dict[str, float] = {}
    for label, tier, req in paths:
        cfg = InferenceConfig.model_validate({"tiers": [tier]})
        router = build_router(cfg, models, edge=edge)
        expected = models[req.model].predict(req.input).answer
        async with router:
            for _ in range(5):
                result = await router.infer(req)
            match = result.answer == expected
            lat = await timed(router, [req] * args.samples)
        p50 = pct(lat, 50) * 1e3
        kind = req.model.name
        base_p50.setdefault(kind, p50)  # the in-process path of each input comes first
        rows.append(
            LatencyRow(
                path=label,
                request_bytes=request_bytes(tier, req),
                p50_ms=round(p50, 3),
                p95_ms=round(pct(lat, 95) * 1e3, 3),
                mean_ms=round(float(np.mean(lat)) * 1e3, 3),
                overhead_p50_ms=None if tier["type"] == "local" else round(p50 - base_p50[kind], 3),
                answers_match=match,
            )
        )
        print(f"  measured {label}: p50 {p50:.2f} ms", flush=True)
    return rows


def request_bytes(tier: dict[str, Any], req: InferenceRequest) -> int:
    """Bytes of one request body on the wire (application payload)."""
    if tier["type"] == "local":
        return 0
    if tier["type"] == "edge":
        doc = encode_input(req.input, encoded=req.encoded, encoding=tier.get("encoding", "auto"))
        return len(
            pack(
                {
                    **doc,
                    "v": 1,
                    "model": str(req.model),
                    "reply_to": "x" * 40,
                    "correlation": b"x" * 16,
                }
            )
        )
    binary = tier["binary"] == "always"
    jpeg = binary and tier.get("frames_as_jpeg", True)
    body, _ = oip.encode_request(
        frame_inputs(req, jpeg=jpeg), outputs=["answer", "confidence"], binary=binary
    )
    return len(body)


async def part2(
    args: argparse.Namespace, jpgs: list[tuple[Frame, bytes]], mqtt_port: int, start_second: Any
) -> list[ThroughputRow]:
    edge = EdgeDefaults(port=mqtt_port, topic_prefix="bench", client_id="bench-tp")
    cfg = InferenceConfig.model_validate({"tiers": [{"type": "edge", "timeout_s": 120}]})
    router = build_router(cfg, {}, edge=edge)
    rows: list[ThroughputRow] = []
    async with router:
        backend: Any = router.backends[0]
        for workers in (1, 2):
            if workers == 2:
                start_second()
            async with asyncio.timeout(120):
                while backend.rpc.workers_for("mtcnn") < workers:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            reqs = [
                InferenceRequest(model=MTCNN, input=f, encoded=b)
                for f, b in (jpgs * (args.requests // len(jpgs) + 1))[: args.requests]
            ]
            for r in reqs[: 2 * workers]:  # warm every worker
                await router.infer(r)
            sem = asyncio.Semaphore(args.in_flight)

            async def one(r: InferenceRequest, sem: asyncio.Semaphore = sem) -> None:
                async with sem:
                    await router.infer(r)

            start = time.perf_counter()
            await asyncio.gather(*(one(r) for r in reqs))
            seconds = time.perf_counter() - start
            rows.append(
                ThroughputRow(
                    workers=workers,
                    requests=len(reqs),
                    seconds=round(seconds, 3),
                    per_s=round(len(reqs) / seconds, 3),
                    ratio=None,
                )
            )
            print(f"  {workers} worker(s): {len(reqs) / seconds:.2f} frames/s", flush=True)
    rows[1].ratio = round(rows[1].per_s / rows[0].per_s, 3)
    return rows


async def batching(args: argparse.Namespace, frames: list[Frame], data_dir: Path) -> list[float]:
    """Local tier throughput (requests/s) for waves of 8 concurrent misses, unbatched and
    batched (max_batch 8), with the presence CNN (its ONNX input has a free batch dim)."""
    model = build_model(
        BuiltinModelConfig(name="tiny_presence"),
        data_dir=data_dir,
        settings=SessionSettings(intra_op_threads=1),
    )
    out = []
    for max_batch in (1, 8):
        tier = {"type": "local", "max_concurrency": 1, "max_batch": max_batch}
        router = build_router(InferenceConfig.model_validate({"tiers": [tier]}), {PRESENCE: model})
        reqs = [InferenceRequest(model=PRESENCE, input=f) for f in frames[:8]]
        async with router:
            await asyncio.gather(*(router.infer(r) for r in reqs))
            waves = max(10, args.samples // 4)
            start = time.perf_counter()
            for _ in range(waves):
                await asyncio.gather(*(router.infer(r) for r in reqs))
            out.append(waves * len(reqs) / (time.perf_counter() - start))
    return out


def _mtcnn_rate(frames: list[np.ndarray], n: int, barrier: Any) -> float:
    """Frames per second of one process running MTCNN (after all processes are ready)."""
    det = build_mtcnn(MtcnnModelConfig(), SessionSettings(intra_op_threads=1))
    det.detect(frames[0])
    barrier.wait()
    start = time.perf_counter()
    for i in range(n):
        det.detect(frames[i % len(frames)])
    return n / (time.perf_counter() - start)


def plain_processes(jpgs: list[tuple[Frame, bytes]], n: int, processes: int) -> float:
    """MTCNN frames per second of ``processes`` plain processes (no MQTT): the control for
    part 2, i.e. how far this shared machine lets a second core scale right now."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    frames = [f.image for f, _ in jpgs]
    with ctx.Manager() as manager:
        barrier = manager.Barrier(processes)
        with ctx.Pool(processes) as pool:
            rates = pool.starmap(_mtcnn_rate, [(frames, n, barrier)] * processes)
    return float(sum(rates))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="video (default: vtest via streamedge.datasets)")
    parser.add_argument("--samples", type=int, default=200, help="requests per latency path")
    parser.add_argument("--requests", type=int, default=48, help="MTCNN frames per throughput run")
    parser.add_argument("--in-flight", type=int, default=8, help="concurrent throughput requests")
    parser.add_argument("--quick", action="store_true", help="fewer samples (smoke run)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.requests = 30, 12
    video = args.video or find_video("vtest")
    frames = list(iter_frames(video, step=10, max_frames=12))
    jpgs: list[tuple[Frame, bytes]] = []
    for img in frames:
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        decoded = np.asarray(cv2.imdecode(buf, cv2.IMREAD_COLOR), dtype=np.uint8)
        jpgs.append((Frame(stream=StreamKey("bench", "cam"), ts=0.0, image=decoded), bytes(buf)))
    frame, jpg = jpgs[0]
    h, w = frame.image.shape[:2]
    print(f"frame {w}x{h} from {video}: JPEG {len(jpg)} B, raw {frame.image.nbytes} B")

    work = Path(tempfile.mkdtemp(prefix="bench-tiers-"))
    data_dir = work / "data"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        broker, mqtt_port = start_mosquitto(work)
        procs.append(broker)
        http_port = free_port()
        cfg = work / "worker.yaml"
        worker_yaml(cfg, mqtt_port=mqtt_port, http_port=http_port, data_dir=data_dir)
        procs.append(start_worker(cfg, "w1", work / "w1.log"))
        wait_port(http_port, timeout=120)
        print("part 1: per-request latency, tiny_presence, one frame", flush=True)
        latency = asyncio.run(part1(args, frame, jpg, mqtt_port, http_port, data_dir))
        small = [
            Frame(stream=f.stream, ts=0.0, image=np.asarray(cv2.resize(f.image, (160, 120))))
            for f, _ in jpgs
        ]
        batched = asyncio.run(batching(args, small, data_dir))
        print("part 2: MTCNN throughput through the edge tier", flush=True)
        control = [plain_processes(jpgs, max(6, args.requests // 4), k) for k in (1, 2)]

        def second() -> None:
            procs.append(start_worker(cfg, "w2", work / "w2.log"))

        throughput = asyncio.run(part2(args, jpgs, mqtt_port, second))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    print()
    head = f"{'path':30} {'bytes/req':>10} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}"
    print(f"{head} {'overhead':>9} same")
    for r in latency:
        over = "" if r.overhead_p50_ms is None else f"{r.overhead_p50_ms:+.2f}"
        cols = f"{r.path:30} {r.request_bytes:>10} {r.p50_ms:>8.2f} {r.p95_ms:>8.2f}"
        print(f"{cols} {r.mean_ms:>8.2f} {over:>9} {'yes' if r.answers_match else 'NO'}")
    print()
    print(
        f"local tier, waves of 8 misses (160x120 frames): unbatched {batched[0]:.0f}/s, "
        f"max_batch 8 {batched[1]:.0f}/s ({batched[1] / batched[0]:.2f}x)"
    )
    thread_ratio = control[1] / control[0]
    print(
        f"control, MTCNN in plain processes: 1 {control[0]:.2f} frames/s, 2 {control[1]:.2f} "
        f"frames/s ({thread_ratio:.2f}x: what the machine gives a second core now)"
    )
    print(f"{'workers':>8} {'frames':>7} {'seconds':>8} {'frames/s':>9} {'ratio':>6}")
    for t in throughput:
        cols = f"{t.workers:>8} {t.requests:>7} {t.seconds:>8.2f} {t.per_s:>9.2f}"
        print(f"{cols} {t.ratio or 1.0:>6.2f}")
    edge_jpeg = next(r for r in latency if r.path.startswith("edge MQTT, JPEG"))
    scaling = throughput[1].ratio or 0.0
    print()
    print(
        f"target: edge overhead p50 < {TARGET_OVERHEAD_MS} ms: {edge_jpeg.overhead_p50_ms:+.2f} ms "
        f"({'met' if (edge_jpeg.overhead_p50_ms or 0) < TARGET_OVERHEAD_MS else 'MISSED'})"
    )
    print(
        f"target: 2 workers >= {TARGET_SCALING}x: {scaling:.2f}x "
        f"({'met' if scaling >= TARGET_SCALING else 'MISSED'}; {os.cpu_count()} cores, shared; "
        f"2 plain processes got {thread_ratio:.2f}x, so the workers reach "
        f"{scaling / thread_ratio:.0%} of what the machine allowed)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "tiers",
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "frame": {"shape": list(frame.image.shape), "jpeg_bytes": len(jpg)},
                    "latency": [asdict(r) for r in latency],
                    "control_processes_per_s": [round(c, 3) for c in control],
                    "local_batching_per_s": [round(b, 1) for b in batched],
                    "throughput": [asdict(t) for t in throughput],
                    "targets": {
                        "overhead_p50_ms": TARGET_OVERHEAD_MS,
                        "scaling": TARGET_SCALING,
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
