#!/usr/bin/env python3
"""Measure the MTCNN detector on the sample videos (the numbers of DATA.md).

For each video, every ``--step``-th frame goes through
``MtcnnDetector.predict`` (BGR frame in, answer out: the full pipeline) and
the script prints the share of frames with at least one face, the mean face
count, how often the count changes between evaluated frames, and the median
and 90th-percentile latency per frame. Run ``scripts/fetch_data.sh`` first
for the full videos; without them the committed excerpts are used (and the
script says so).

Usage::

    .venv/bin/python scripts/measure_mtcnn.py [--step 2] [--threads 1] [vtest megamind]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time

from streamedge.datasets import find_video, iter_frames
from streamedge.models.mtcnn import MtcnnDetector
from streamedge.records import Frame, StreamKey


def main() -> None:
    """Run the detector over the videos and print one line per video."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", default=["vtest", "megamind"])
    parser.add_argument("--step", type=int, default=2, help="evaluate every n-th frame")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    args = parser.parse_args()
    detector = MtcnnDetector(intra_op_threads=args.threads)
    stream = StreamKey("bench", "video")
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name in args.videos:
        path = find_video(name)
        counts: list[int] = []
        latencies: list[float] = []
        cpu: list[float] = []
        for image in iter_frames(path, step=args.step):
            start, start_cpu = time.perf_counter(), time.thread_time()
            pred = detector.predict(Frame(stream=stream, ts=0.0, image=image))
            latencies.append(time.perf_counter() - start)
            # With one intra-op thread onnxruntime runs on this thread, so
            # its CPU time is the cost even when other jobs share the cores.
            cpu.append(time.thread_time() - start_cpu)
            counts.append(int(pred.answer["count"]))
        changes = sum(a != b for a, b in itertools.pairwise(counts))
        deciles = statistics.quantiles(latencies, n=10)
        print(
            f"{path.name}: {len(counts)} frames (every {args.step}), "
            f"with >=1 face {100 * sum(c > 0 for c in counts) / len(counts):.1f} %, "
            f"mean faces {statistics.fmean(counts):.2f}, "
            f"count changes {changes} of {len(counts) - 1}, "
            f"latency median {1000 * statistics.median(latencies):.1f} ms, "
            f"p90 {1000 * deciles[-1]:.1f} ms, "
            f"CPU median {1000 * statistics.median(cpu):.1f} ms"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
