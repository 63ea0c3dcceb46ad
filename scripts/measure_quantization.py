"""Measure int8 variants of MTCNN against fp32 on real video before recommending them.

For each variant (fp32; int8 *dynamic*: weights int8, activations quantised at
run time, what ``local.quantize`` makes; int8 *static* QDQ: weights and
activations int8, calibrated on real frames), on real recorded frames
(``vtest.avi`` and ``Megamind.avi``; calibration frames are disjoint from the
evaluated ones), it prints:

* milliseconds per frame (wall clock and this thread's CPU time, one
  onnxruntime thread);
* how often the face count equals fp32's, the share of fp32's faces found
  again (IoU >= 0.5) and their mean IoU.

Usage::

    .venv/bin/python scripts/measure_quantization.py --json bench-results/quantization.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamedge.datasets import find_video, iter_frames
from streamedge.models import mtcnn as M  # noqa: N812  # short: used on every line


class _Recorder:
    """Wraps an onnxruntime session and keeps every feed (calibration data)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        self.feeds.append({k: v.copy() for k, v in feed.items()})
        return self.session.run(names, feed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def calibration_feeds(frames: list[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Each network's inputs while fp32 MTCNN runs on the calibration frames."""
    det = M.MtcnnDetector()
    rec = {n: _Recorder(getattr(det, f"{n}_session")) for n in ("pnet", "rnet", "onet")}
    det.pnet_session, det.rnet_session, det.onet_session = rec["pnet"], rec["rnet"], rec["onet"]
    det.pnet_runner = M.OnnxPNetRunner(rec["pnet"])
    for frame in frames:
        det.detect(frame)
    return {n: r.feeds for n, r in rec.items()}


def quantise(
    out: Path, feeds: dict[str, list[dict[str, np.ndarray]]]
) -> dict[str, dict[str, Path]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, items: list[dict[str, np.ndarray]]) -> None:
            self._it = iter(items)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    paths: dict[str, dict[str, Path]] = {"int8 dynamic": {}, "int8 static (QDQ)": {}}
    for net in ("pnet", "rnet", "onet"):
        src = M.DATA_DIR / f"{net}.onnx"
        dyn, qdq = out / f"{net}-dyn.onnx", out / f"{net}-qdq.onnx"
        quantize_dynamic(src, dyn, weight_type=QuantType.QInt8)
        quantize_static(
            src,
            qdq,
            Reader(feeds[net][:: 3 if net == "pnet" else 1]),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
        paths["int8 dynamic"][net] = dyn
        paths["int8 static (QDQ)"][net] = qdq
    return paths


def agreement(ref: list[M.Detections], got: list[M.Detections]) -> dict[str, float]:
    same = sum(a.count == b.count for a, b in zip(ref, got, strict=True))
    ious: list[float] = []
    for a, b in zip(ref, got, strict=True):
        ious.extend(float(M.iou(box, b.boxes).max()) if b.count else 0.0 for box in a.boxes)
    faces = sum(a.count for a in ref)
    return {
        "count_agreement": round(same / len(ref), 4),
        "faces_fp32": faces,
        "recall_iou50": round(sum(i >= 0.5 for i in ious) / faces, 4) if faces else 1.0,
        "mean_iou": round(float(np.mean(ious)), 4) if ious else 1.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60, help="evaluated frames per video")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    videos = [find_video("vtest"), find_video("Megamind")]
    evaluated: list[np.ndarray] = []
    calibration: list[np.ndarray] = []
    for video in videos:
        frames = list(iter_frames(video, step=4, max_frames=args.frames + 12))
        evaluated += frames[: args.frames]
        calibration += frames[args.frames :]  # later frames: never evaluated
    print(f"{len(evaluated)} evaluated frames, {len(calibration)} calibration frames")
    with tempfile.TemporaryDirectory() as tmp:
        variants = quantise(Path(tmp), calibration_feeds(calibration))
        detectors = {"fp32": M.MtcnnDetector()}
        for name, p in variants.items():
            detectors[name] = M.MtcnnDetector(
                pnet_path=p["pnet"], rnet_path=p["rnet"], onet_path=p["onet"]
            )
        results: dict[str, list[M.Detections]] = {}
        rows = []
        for name, det in detectors.items():
            det.detect(evaluated[0])
            wall, cpu = time.perf_counter(), time.thread_time()
            results[name] = [det.detect(f) for f in evaluated]
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            row = {
                "variant": name,
                "ms_per_frame": round(wall / len(evaluated) * 1e3, 1),
                "cpu_ms_per_frame": round(cpu / len(evaluated) * 1e3, 1),
                **agreement(results["fp32"], results[name]),
            }
            rows.append(row)
    base = float(rows[0]["cpu_ms_per_frame"])
    head = f"{'variant':20} {'ms/frame':>9} {'cpu ms':>7} {'speed':>6}"
    print(f"{head} {'same count':>11} {'recall':>7} {'IoU':>6}")
    for r in rows:
        print(
            f"{r['variant']:20} {r['ms_per_frame']:>9} {r['cpu_ms_per_frame']:>7} "
            f"{base / float(r['cpu_ms_per_frame']):>5.2f}x {r['count_agreement']:>11.1%} "
            f"{r['recall_iou50']:>7.1%} {r['mean_iou']:>6.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"frames": len(evaluated), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
