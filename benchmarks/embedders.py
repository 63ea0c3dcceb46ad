"""Cost of every cache embedder per 640×480 frame, side by side, next to one MTCNN run.

Embeds the same real frames (vtest, resized to ``--width``×``--height``) with
each frame embedder in one process, on one OpenCV / onnxruntime thread, and
prints mean, p50 and p99 in microseconds, the vector size, and the mean RMS
distance between consecutive frames and between frames 1 s apart (what a
threshold has to separate). The baseline is one full MTCNN detection on the
same frames: the cost a cache hit avoids.

Usage::

    python benchmarks/embedders.py --json bench-results/embedders.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from streamedge.caches.cache import build_embedder
from streamedge.caches.config import CacheConfig
from streamedge.datasets import find_video, iter_frames
from streamedge.records import Frame, Image, StreamKey

EMBEDDERS: dict[str, dict[str, Any]] = {
    "downscale 16 colour": {"type": "downscale", "size": 16},
    "downscale 32 grey": {"type": "downscale", "size": 32, "grayscale": True},
    "histogram hsv 8": {"type": "histogram", "space": "hsv", "bins": 8},
    "histogram bgr 6": {"type": "histogram", "space": "bgr", "bins": 6},
    "phash 8": {"type": "phash", "hash_size": 8},
    "pnet w128 g4": {"type": "pnet", "width": 128, "grid": 4},
    "pnet w64 g2": {"type": "pnet", "width": 64, "grid": 2},
}


@dataclass(frozen=True, slots=True)
class Row:
    """One embedder's figures."""

    name: str
    config: dict[str, Any]
    dim: int
    mean_us: float
    p50_us: float
    p99_us: float
    next_frame_rms: float
    one_second_rms: float


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def time_calls(fn: Callable[[Frame], Any], frames: Sequence[Frame], n: int) -> list[float]:
    """Microseconds of ``n`` calls cycling over the frames (after 3 untimed ones)."""
    for f in frames[:3]:
        fn(f)
    out = []
    for i in range(n):
        f = frames[i % len(frames)]
        start = time.perf_counter()
        fn(f)
        out.append((time.perf_counter() - start) * 1e6)
    return out


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """RMS distance per dimension (the cache's unit)."""
    return float(np.sqrt(np.mean((a - b) ** 2)))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="video file (default: vtest, else its excerpt)")
    parser.add_argument("--frames", type=int, default=60, help="distinct frames to load")
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per embedder")
    parser.add_argument("--mtcnn-iterations", type=int, default=20, help="timed MTCNN runs")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    video = args.video or find_video("vtest")
    images: list[Image] = [
        np.ascontiguousarray(
            cv2.resize(img, (args.width, args.height), interpolation=cv2.INTER_AREA)
        )
        for img in iter_frames(video, max_frames=args.frames)
    ]
    if len(images) < 11:
        print(f"need at least 11 frames, {video} gave {len(images)}", file=sys.stderr)
        return 2
    frames = [
        Frame(stream=StreamKey("bench", "cam"), ts=i / 10, image=im) for i, im in enumerate(images)
    ]
    step = min(10, len(frames) - 1)  # vtest is 10 fps: 10 frames = 1 s
    rows: list[Row] = []
    for name, doc in EMBEDDERS.items():
        emb = build_embedder(
            CacheConfig.model_validate({"embedder": doc}), window_fields=None, window_size=None
        )
        samples = time_calls(emb.embed, frames, args.iterations)
        vecs = [emb.embed(f) for f in frames]
        rows.append(
            Row(
                name=name,
                config=doc,
                dim=emb.dim,
                mean_us=statistics.fmean(samples),
                p50_us=percentile(samples, 50),
                p99_us=percentile(samples, 99),
                next_frame_rms=statistics.fmean(
                    rms(vecs[i], vecs[i + 1]) for i in range(len(vecs) - 1)
                ),
                one_second_rms=statistics.fmean(
                    rms(vecs[i], vecs[i + step]) for i in range(len(vecs) - step)
                ),
            )
        )
    from streamedge.models.config import MtcnnModelConfig
    from streamedge.models.mtcnn import build_mtcnn

    detector = build_mtcnn(MtcnnModelConfig())
    mtcnn = time_calls(detector.predict, frames, args.mtcnn_iterations)
    mtcnn_mean = statistics.fmean(mtcnn)

    print(f"embedders on {len(frames)} frames of {video.name} at {args.width}x{args.height}")
    print(
        f"{'embedder':<22} {'dim':>5} {'mean µs':>9} {'p50 µs':>9} {'p99 µs':>9} "
        f"{'% of MTCNN':>10} {'next-frame RMS':>15} {'1 s RMS':>9}"
    )
    for r in rows:
        print(
            f"{r.name:<22} {r.dim:>5} {r.mean_us:>9.0f} {r.p50_us:>9.0f} {r.p99_us:>9.0f} "
            f"{100 * r.mean_us / mtcnn_mean:>9.1f}% {r.next_frame_rms:>15.4f} "
            f"{r.one_second_rms:>9.4f}"
        )
    print(
        f"{'MTCNN predict':<22} {'':>5} {mtcnn_mean:>9.0f} {percentile(mtcnn, 50):>9.0f} "
        f"{percentile(mtcnn, 99):>9.0f} {100.0:>9.1f}%"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "video": video.name,
            "frames": len(frames),
            "size": [args.width, args.height],
            "iterations": args.iterations,
            "machine": platform.machine(),
            "python": platform.python_version(),
            "embedders": [asdict(r) for r in rows],
            "mtcnn": {
                "mean_us": mtcnn_mean,
                "p50_us": percentile(mtcnn, 50),
                "p99_us": percentile(mtcnn, 99),
                "iterations": args.mtcnn_iterations,
            },
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
