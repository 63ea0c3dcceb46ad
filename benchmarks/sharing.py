"""Cache sharing between gateways: wire cost, and what gateway B gains.

Two parts, in one process:

**Wire cost** (synthetic entries shaped like the shipped fixed-camera profile:
a 768-d thumbnail vector and a detector answer with one box): microseconds
per entry to publish (msgpack encoding, HMAC-SHA256, token bucket) and to
receive (HMAC check, decoding, replay check, merge into a cache with a numpy
index), and bytes per entry on the wire.

**Hit ratio of gateway B with vs without sharing.** Gateway A sees camera
``a`` (the recorded video), gateway B a derived neighbour camera (see
:mod:`streamedge.bench.workloads`: derived, not recorded). Frames are replayed
interleaved in time order through each gateway's own ApproximateCache (the
profile of ``benchmarks/configs/cache-downscale.yaml``: 16×16 thumbnails,
threshold 0.02); a miss runs the real model (MTCNN, answers precomputed once
per frame and reused by both runs) and stores the answer, which, with
sharing, goes through CacheSharing's real encode → HMAC → decode → merge path
to the other gateway (in memory: the broker hop is not timed). Per scenario
(and once more under a tight cap, ``--capped-bytes-per-s``)
it reports B's hit ratio without and with sharing, the hits on A's entries
(the ``device`` level), B's model runs, and the share of B's hits whose face
count matches what the model says for B's own frame (reuse agreement).
Time runs on the video clock (vtest: 10 fps, so 300 frames are 30 s), so the
token bucket caps what A can send as it would live.

Usage::

    python benchmarks/sharing.py --max-frames 300 --video data/videos/vtest.avi
    python benchmarks/sharing.py --json bench-results/sharing.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from streamedge.caches.cache import ApproximateCache
    from streamedge.caches.sharing import CacheSharing
    from streamedge.records import JSON, OutboundMessage

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "cache-downscale.yaml"
SECRET = "benchmark-group-secret-0123456789"
EPOCH = 1.7e9  # wall clock = video time + this


@dataclass
class WireRow:
    """Per-entry cost of sharing."""

    entries: int
    dim: int
    bytes_per_entry: float
    vector_bytes: int
    publish_us_p50: float
    publish_us_mean: float
    receive_us_p50: float
    receive_us_mean: float


@dataclass
class HitRow:
    """Gateway B on one scenario, without or with sharing."""

    scenario: str
    sharing: str
    """off, on (the cap of --bytes-per-s), or capped (--capped-bytes-per-s)."""
    frames: int
    hits: int
    hit_ratio: float
    device_hits: int
    model_runs: int
    agreement: float | None
    a_hit_ratio: float
    sent_a: int
    skipped_a: int
    merged_b: int
    bytes_a_to_b: int


SCENARIOS: dict[str, dict[str, Any]] = {
    # A neighbour camera on the same mount, three pixels to the side.
    "near (shift 3,2)": {"shift": (3, 2)},
    # The harness's 'jitter' camera b: shifted 6,4 and 10 % darker.
    "jitter-b (shift 6,4, gain 0.9)": {"shift": (6, 4), "gain": 0.9},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--video", type=Path, default=None, help="video (default: vtest, full or excerpt)"
    )
    p.add_argument("--max-frames", type=int, default=300, help="frames per camera")
    p.add_argument("--wire-entries", type=int, default=2000, help="entries in the wire-cost part")
    p.add_argument(
        "--bytes-per-s", type=float, default=None, help="sharing bandwidth cap (default: config's)"
    )
    p.add_argument(
        "--capped-bytes-per-s",
        type=float,
        default=8192,
        help="a tight cap (burst: 2 s of it), run on the first scenario",
    )
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


class SimClock:
    """Video time in seconds (the monotonic clock of both gateways)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sharing(
    name: str,
    cache: ApproximateCache,
    clock: SimClock,
    outbox: list[OutboundMessage],
    bytes_per_s: float | None,
    burst_bytes: int | None = None,
) -> CacheSharing:
    from streamedge.caches.config import SharingConfig
    from streamedge.caches.sharing import CacheSharing

    extra: dict[str, Any] = {} if bytes_per_s is None else {"bytes_per_s": bytes_per_s}
    if burst_bytes is not None:
        extra["burst_bytes"] = burst_bytes
    cfg = SharingConfig.model_validate({"enabled": True, "secret": SECRET, **extra})

    async def publish(message: OutboundMessage) -> None:
        outbox.append(message)

    sharing = CacheSharing(
        cfg,
        gateway=name,
        caches={cache.namespace: cache},
        shared={cache.namespace},
        publish=publish,
        clock=clock,
        wall_clock=lambda: clock() + EPOCH,
    )
    sharing.attach()
    return sharing


def _new_cache(clock: SimClock) -> ApproximateCache:
    from streamedge.caches.cache import build_cache, build_embedder
    from streamedge.config import load_config
    from streamedge.records import ModelRef

    cfg = load_config(CONFIG)
    ccfg = cfg.caches[0]
    embedder = build_embedder(ccfg, window_fields=None, window_size=None)
    return build_cache(
        ccfg, model=ModelRef("mtcnn", "1"), embedder=embedder, clock=clock, wall_clock=clock
    )


# ---------------------------------------------------------------------- wire cost


async def wire_cost(n: int) -> WireRow:
    """Publish n entries from A and merge them into B, timing each side."""
    import numpy as np

    from streamedge.records import InferenceResult, Tier

    clock = SimClock()
    outbox: list[OutboundMessage] = []
    cache_a, cache_b = _new_cache(clock), _new_cache(clock)
    # No bandwidth cap here: this part measures cost, not the cap.
    a = _sharing("gw-a", cache_a, clock, outbox, 1e12, 2**40)
    b = _sharing("gw-b", cache_b, clock, [], 1e12, 2**40)
    cache_a.on_put = None  # publish explicitly, to time it alone
    rng = np.random.default_rng(0)
    dim = cache_a.embedder.dim
    publish_us: list[float] = []
    for i in range(n):
        vec = rng.random(dim, dtype=np.float32)
        result = InferenceResult(
            model=cache_a.model,
            answer={"boxes": [[637.2, 20.1, 668.1, 56.7, 0.9068]], "count": 1},
            tier=Tier.LOCAL,
            backend="bench",
            latency_s=0.05,
        )
        query = cache_a.query_for(None, vector=vec)  # type: ignore[arg-type]
        await cache_a.put(query, result, origin=f"cam{i % 4}/camera")
    entries = [s.entry for s in cache_a.store.entries()]
    for entry in entries:
        start = time.perf_counter()
        await a.publish_entry(cache_a, entry)
        publish_us.append((time.perf_counter() - start) * 1e6)
    receive_us: list[float] = []
    for msg in outbox:
        start = time.perf_counter()
        outcome = await b.receive(msg.topic, msg.payload)
        receive_us.append((time.perf_counter() - start) * 1e6)
        assert outcome == "merged", outcome  # a benchmark of the success path
    sizes = [len(m.payload) for m in outbox]
    return WireRow(
        entries=len(outbox),
        dim=dim,
        bytes_per_entry=statistics.fmean(sizes),
        vector_bytes=4 * dim,
        publish_us_p50=statistics.median(publish_us),
        publish_us_mean=statistics.fmean(publish_us),
        receive_us_p50=statistics.median(receive_us),
        receive_us_mean=statistics.fmean(receive_us),
    )


# ---------------------------------------------------------------------- hit ratio


def reference_answers(
    video: Path, scenarios: dict[str, Any], max_frames: int
) -> tuple[dict[str, list[tuple[float, Any, JSON]]], float]:
    """Every frame of camera a and of each scenario's camera b, with the model's answer."""
    from streamedge.bench.workloads import Derivation, StreamSpec
    from streamedge.config import load_config
    from streamedge.models.factory import build_model
    from streamedge.records import Frame, StreamKey

    cfg = load_config(CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(cfg.models[0], data_dir=Path(tmp))
    specs = {"a": StreamSpec(video=video, device="cam-a", max_frames=max_frames)}
    for name, kw in scenarios.items():
        specs[name] = StreamSpec(
            video=video, device="cam-b", derivation=Derivation(**kw), max_frames=max_frames
        )
    out: dict[str, list[tuple[float, Any, JSON]]] = {}
    start = time.perf_counter()
    calls = 0
    for name, spec in specs.items():
        rows = []
        key = StreamKey(spec.device, spec.stream)
        for f in spec.frames():
            frame = Frame(stream=key, ts=f.ts, image=f.image)
            rows.append((f.ts, frame, model.predict(frame).answer))
            calls += 1
        out[name] = rows
    return out, (time.perf_counter() - start) / max(1, calls)


async def replay(
    name: str,
    frames_a: list[tuple[float, Any, JSON]],
    frames_b: list[tuple[float, Any, JSON]],
    *,
    share: bool,
    bytes_per_s: float | None,
    burst_bytes: int | None = None,
    mode: str = "",
) -> HitRow:
    """Gateways A and B, frames interleaved by time (A first on ties)."""
    from streamedge.caches.answers import answers_agree
    from streamedge.caches.store import is_peer_origin
    from streamedge.records import InferenceResult, Tier

    clock = SimClock()
    cache_a, cache_b = _new_cache(clock), _new_cache(clock)
    a_out: list[OutboundMessage] = []
    b_out: list[OutboundMessage] = []
    sa = _sharing("gw-a", cache_a, clock, a_out, bytes_per_s, burst_bytes) if share else None
    sb = _sharing("gw-b", cache_b, clock, b_out, bytes_per_s, burst_bytes) if share else None
    events = sorted(
        [(ts, 0, i) for i, (ts, _, _) in enumerate(frames_a)]
        + [(ts, 1, i) for i, (ts, _, _) in enumerate(frames_b)]
    )
    hits = {0: 0, 1: 0}
    device_hits = agreed = runs_b = 0
    for ts, side, i in events:
        clock.now = ts
        cache = cache_a if side == 0 else cache_b
        _, frame, truth = (frames_a if side == 0 else frames_b)[i]
        query = cache.query_for(frame)
        hit = await cache.get(query)
        if hit is not None:
            hits[side] += 1
            if side == 1:
                device_hits += int(is_peer_origin(hit.entry.origin))
                agreed += int(answers_agree(hit.entry.answer, truth, "count"))
        else:
            if side == 1:
                runs_b += 1
            result = InferenceResult(
                model=cache.model, answer=truth, tier=Tier.LOCAL, backend="mtcnn", latency_s=0.05
            )
            await cache.put(query, result, origin=f"{frame.stream.device}/camera")
        # Deliver what was published (the broker hop is instantaneous here).
        if sa is not None and sb is not None:
            while a_out:
                msg = a_out.pop(0)
                await sb.receive(msg.topic, msg.payload)
            while b_out:
                msg = b_out.pop(0)
                await sa.receive(msg.topic, msg.payload)
    n_b = len(frames_b)
    return HitRow(
        scenario=name,
        sharing=mode or ("on" if share else "off"),
        frames=n_b,
        hits=hits[1],
        hit_ratio=hits[1] / n_b if n_b else 0.0,
        device_hits=device_hits,
        model_runs=runs_b,
        agreement=agreed / hits[1] if hits[1] else None,
        a_hit_ratio=hits[0] / len(frames_a) if frames_a else 0.0,
        sent_a=sa.sent if sa else 0,
        skipped_a=sum(sa.skipped.values()) if sa else 0,
        merged_b=sb.merged if sb else 0,
        bytes_a_to_b=sa.bytes_sent if sa else 0,
    )


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run both parts; print the tables; write --json."""
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from streamedge.datasets import find_video

    video = args.video or find_video("vtest")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cpus: {os.cpu_count()})")

    wire = asyncio.run(wire_cost(args.wire_entries))
    print(f"\n== wire cost ({wire.entries} entries, {wire.dim}-d float32 vector, 1-box answer)")
    print(
        f"{'bytes/entry':>12}{'vector B':>10}{'publish p50 us':>16}{'mean':>8}"
        f"{'receive+merge p50 us':>22}{'mean':>8}"
    )
    print(
        f"{wire.bytes_per_entry:>12.0f}{wire.vector_bytes:>10d}{wire.publish_us_p50:>16.1f}"
        f"{wire.publish_us_mean:>8.1f}{wire.receive_us_p50:>22.1f}{wire.receive_us_mean:>8.1f}"
    )

    print(f"\nreference answers (MTCNN) for {video.name}, {args.max_frames} frames per camera ...")
    answers, per_call = reference_answers(video, SCENARIOS, args.max_frames)
    print(f"model: {per_call * 1e3:.1f} ms per frame")
    rows: list[HitRow] = []
    for i, name in enumerate(SCENARIOS):
        a, b = answers["a"], answers[name]
        rows.append(asyncio.run(replay(name, a, b, share=False, bytes_per_s=None)))
        rows.append(asyncio.run(replay(name, a, b, share=True, bytes_per_s=args.bytes_per_s)))
        if i == 0:  # what a tight bandwidth cap leaves of the gain
            cap = args.capped_bytes_per_s
            rows.append(
                asyncio.run(
                    replay(
                        name,
                        a,
                        b,
                        share=True,
                        bytes_per_s=cap,
                        burst_bytes=max(1024, int(2 * cap)),
                        mode=f"{cap / 1024:g}KiB/s",
                    )
                )
            )
    print(f"\n== gateway B with vs without sharing ({video.name}, camera b derived from a)")
    print(
        f"{'scenario':<32}{'sharing':>8}{'B hit%':>8}{'dev hits':>9}{'B runs':>8}"
        f"{'agree%':>8}{'A hit%':>8}{'A sent':>8}{'A skip':>8}{'B merged':>9}{'A→B KiB':>9}"
    )
    for r in rows:
        agree = "-" if r.agreement is None else f"{100 * r.agreement:.1f}"
        print(
            f"{r.scenario:<32}{r.sharing:>8}{100 * r.hit_ratio:>8.1f}"
            f"{r.device_hits:>9d}{r.model_runs:>8d}{agree:>8}{100 * r.a_hit_ratio:>8.1f}"
            f"{r.sent_a:>8d}{r.skipped_a:>8d}{r.merged_b:>9d}{r.bytes_a_to_b / 1024:>9.1f}"
        )
    print(
        "\nagree%: B's hits whose face count equals the model's on B's own frame. "
        "A skip: entries over the bandwidth cap."
    )
    if args.json is not None:
        doc = {
            "video": video.name,
            "max_frames": args.max_frames,
            "model_ms_per_frame": per_call * 1e3,
            "wire": asdict(wire),
            "hit_ratio": [asdict(r) for r in rows],
            "platform": platform.platform(),
            "python": platform.python_version(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
