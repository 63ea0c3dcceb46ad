"""Reuse opportunities captured, wrong hits, inference saved and speedup, on real video.

Two workloads from the harness (:mod:`streamedge.bench.workloads`):

* ``single``: one camera, the committed vtest excerpt (60 frames), the
  full video with ``--full`` (795 frames; fetched by scripts/fetch_data.sh),
  or any ``--video``;
* ``multicam``: three cameras derived from the same video (``--preset``,
  default ``jitter``: the recorded view and two copies shifted a few
  pixels with other exposures), interleaved in time order and sharing one
  cache, as devices of one gateway would.

Reference answers are MTCNN's on every frame (:mod:`streamedge.bench.reference`,
cached on disk, the same files ``streamedge bench eval`` uses). For each
embedder, policy (NN = nearest neighbour under a threshold; H-kNN = k = 5
nearest within 2.5 x the threshold vote by face count, θ = 0.8, the nearest
within the threshold) and threshold, the workload is played through a real
cache (see :mod:`streamedge.bench.reuse` for the definitions) and the curve
is printed as a table; the summary line per embedder and policy is the point
capturing the most opportunities with at most ``--max-wrong`` wrong hits.

Usage::

    python benchmarks/reuse.py --json bench-results/reuse.json            # excerpt
    python benchmarks/reuse.py --full --max-frames 300 --json out.json    # bounded window
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamedge.bench.reference import Reference, ReferenceStore, reference_for
from streamedge.bench.reuse import (
    ReuseInput,
    ReusePoint,
    opportunities,
    previous_answer_wrong_rate,
    simulate,
)
from streamedge.bench.workloads import PRESETS, StreamSpec, derived_cameras, interleave
from streamedge.caches.cache import build_embedder
from streamedge.caches.config import CacheConfig
from streamedge.datasets import find_video
from streamedge.models.config import MtcnnModelConfig
from streamedge.models.factory import build_model, model_info
from streamedge.protocols import Embedder, Model
from streamedge.records import Frame, StreamKey, Vector

EMBEDDERS: dict[str, dict[str, Any]] = {
    "downscale": {"type": "downscale", "size": 16},
    "histogram": {"type": "histogram", "space": "hsv", "bins": 8},
    "phash": {"type": "phash", "hash_size": 8},
    "pnet": {"type": "pnet", "width": 128, "grid": 4},
}
THRESHOLDS: dict[str, list[float]] = {
    "downscale": [0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.035, 0.04, 0.05, 0.06],
    "histogram": [0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.06, 0.08],
    # pHash distances are sqrt(bits / 64): 0, 1, 2, ... 8 differing bits, then 10.
    "phash": [0.0, 0.125, 0.18, 0.22, 0.25, 0.28, 0.31, 0.34, 0.36, 0.4],
    "pnet": [0.005, 0.01, 0.015, 0.02, 0.03, 0.045, 0.06, 0.075, 0.09],
}
STORE: dict[str, Any] = {
    "max_bytes": 32 * 2**20,
    "ttl_s": 600,
    "eviction": "lru",
}  # caches/frames-downscale.yaml


def cache_config(
    embedder: dict[str, Any],
    policy: str,
    threshold: float,
    accuracy: dict[str, Any] | None = None,
) -> CacheConfig:
    """The cache profile of one sweep point."""
    if policy == "nn":
        pol: dict[str, Any] = {"type": "threshold", "max_distance": threshold}
    else:
        pol = {
            "type": "hknn",
            "k": 5,
            "max_distance": 2.5 * threshold,
            "nearest_max_distance": threshold,
            "min_homogeneity": 0.8,
        }
    return CacheConfig.model_validate(
        {
            "embedder": embedder,
            "policy": pol,
            "store": STORE,
            "answer_key": "count",
            "accuracy": accuracy or {},
        }
    )


def load_references(
    streams: Sequence[StreamSpec], store: ReferenceStore, mcfg: MtcnnModelConfig
) -> list[Reference]:
    """MTCNN's answers to every frame of each stream (from the store when there)."""
    loaded: list[Model] = []

    def load() -> Model:
        if not loaded:
            loaded.append(build_model(mcfg, data_dir=Path()))
        return loaded[0]

    refs = []
    for spec in streams:
        start = time.perf_counter()
        ref = reference_for(
            spec,
            load,
            store,
            model_name=str(model_info(mcfg).ref),
            model_config=mcfg.model_dump(mode="json"),
        )
        took = time.perf_counter() - start
        print(f"reference {spec.key}: {ref.frames} frames ({took:.1f} s)", file=sys.stderr)
        refs.append(ref)
    return refs


def embed_workload(
    streams: Sequence[StreamSpec], refs: Sequence[Reference], embedders: dict[str, Embedder]
) -> tuple[list[ReuseInput], dict[str, list[Vector]], dict[str, list[float]]]:
    """Inputs in time order, and every embedder's vector and seconds per input."""
    inputs: list[ReuseInput] = []
    vectors: dict[str, list[Vector]] = {name: [] for name in embedders}
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    for pos, sf in interleave(streams):
        ref = refs[pos]
        if sf.index >= ref.frames:
            break
        spec = streams[pos]
        inputs.append(
            ReuseInput(
                stream=pos, ts=sf.ts, answer=ref.answers[sf.index], infer_s=ref.infer_s[sf.index]
            )
        )
        frame = Frame(stream=StreamKey(spec.device, spec.stream), ts=sf.ts, image=sf.image)
        for name, emb in embedders.items():
            start = time.perf_counter()
            vec = np.ascontiguousarray(emb.embed(frame), dtype=np.float32)
            seconds[name].append(time.perf_counter() - start)
            vectors[name].append(vec)
    return inputs, vectors, seconds


def run_workload(
    label: str,
    streams: Sequence[StreamSpec],
    args: argparse.Namespace,
    store: ReferenceStore,
    mcfg: MtcnnModelConfig,
) -> dict[str, Any]:
    """The sweep on one workload; prints its table; returns its JSON."""
    refs = load_references(streams, store, mcfg)
    embedders = {
        name: build_embedder(
            CacheConfig.model_validate({"embedder": EMBEDDERS[name]}),
            window_fields=None,
            window_size=None,
        )
        for name in args.embedders
    }
    inputs, vectors, seconds = embed_workload(streams, refs, embedders)
    opp = opportunities(inputs, ttl_s=float(STORE["ttl_s"]), match=args.match)
    n_opp = sum(opp)
    every_s = sum(i.infer_s for i in inputs)
    flicker = previous_answer_wrong_rate(inputs, match=args.match)
    print()
    print(
        f"== {label}: {len(streams)} stream(s), {len(inputs)} inputs, {n_opp} reuse "
        f"opportunities ({n_opp / max(1, len(inputs)):.1%}), MTCNN {every_s:.1f} s "
        f"({1000 * every_s / max(1, len(inputs)):.0f} ms/input); the answer differs from "
        f"the stream's previous frame on {flicker:.1%} of inputs"
    )
    header = (
        f"{'embedder':<10} {'policy':<6} {'threshold':>9} {'captured':>9} {'wrong hits':>10} "
        f"{'hits':>5} {'wrong':>5} {'inference saved':>15} {'speedup':>8} {'embed ms':>8}"
    )
    print(header)
    rows: list[dict[str, Any]] = []
    for name in args.embedders:
        emb_ms = 1000 * float(np.mean(seconds[name])) if seconds[name] else 0.0
        for policy in args.policies:
            for threshold in args.thresholds or THRESHOLDS[name]:
                cfg = cache_config(EMBEDDERS[name], policy, threshold)
                point: ReusePoint = asyncio.run(
                    simulate(
                        inputs,
                        vectors[name],
                        seconds[name],
                        cfg,
                        embedder=embedders[name],
                        model=model_info(mcfg).ref,
                        opportunity=opp,
                        match=args.match,
                    )
                )
                print(
                    f"{name:<10} {policy:<6} {threshold:>9.4g} {point.captured:>9.1%} "
                    f"{point.wrong_hit_rate:>10.2%} {point.hits:>5} {point.wrong_hits:>5} "
                    f"{point.inference_saved:>15.1%} {point.speedup:>7.2f}x {emb_ms:>8.2f}"
                )
                rows.append(
                    {
                        "embedder": name,
                        "embedder_config": EMBEDDERS[name],
                        "policy": policy,
                        "threshold": threshold,
                        "embed_ms_mean": round(emb_ms, 4),
                        **point.to_json(),
                    }
                )
    print(f"-- best per embedder and policy with wrong hits <= {args.max_wrong:.0%}:")
    best: list[dict[str, Any]] = []
    for name in args.embedders:
        for policy in args.policies:
            ok = [
                r
                for r in rows
                if r["embedder"] == name
                and r["policy"] == policy
                and r["wrong_hit_rate"] <= args.max_wrong
            ]
            if not ok:
                print(f"{name:<10} {policy:<6} no threshold meets it")
                continue
            r = max(ok, key=lambda r: (r["captured"], r["threshold"]))
            best.append(r)
            print(
                f"{name:<10} {policy:<6} {r['threshold']:>9.4g} {r['captured']:>9.1%} "
                f"{r['wrong_hit_rate']:>10.2%} {r['hits']:>5} {r['wrong_hits']:>5} "
                f"{r['inference_saved']:>15.1%} {r['speedup']:>7.2f}x"
            )
    guarded: list[dict[str, Any]] = []
    if args.guard_fraction > 0:
        accuracy = {
            "target": 0.98,
            "recheck_fraction": args.guard_fraction,
            "min_samples": 20,
            "window": 100,
        }
        print(
            f"-- with the accuracy guard (target 98 % by face count, {args.guard_fraction:.0%} "
            "of hits re-checked, min_samples 20, window 100), from the loosest threshold:"
        )
        print(
            f"{'embedder':<10} {'policy':<6} {'start':>9} {'end':>9} {'rechecks':>8} "
            f"{'captured':>9} {'wrong hits':>10} {'inference saved':>15} {'speedup':>8}"
        )
        for name in args.embedders:
            for policy in args.policies:
                start = max(args.thresholds or THRESHOLDS[name])
                cfg = cache_config(EMBEDDERS[name], policy, start, accuracy)
                point = asyncio.run(
                    simulate(
                        inputs,
                        vectors[name],
                        seconds[name],
                        cfg,
                        embedder=embedders[name],
                        model=model_info(mcfg).ref,
                        opportunity=opp,
                        match=args.match,
                        guard=True,
                    )
                )
                end = point.final_distance or 0.0
                print(
                    f"{name:<10} {policy:<6} {start:>9.4g} {end:>9.4g} {point.rechecks:>8} "
                    f"{point.captured:>9.1%} {point.wrong_hit_rate:>10.2%} "
                    f"{point.inference_saved:>15.1%} {point.speedup:>7.2f}x"
                )
                guarded.append(
                    {
                        "embedder": name,
                        "policy": policy,
                        "start_threshold": start,
                        "accuracy": accuracy,
                        **point.to_json(),
                    }
                )
    return {
        "workload": label,
        "streams": [s.describe() for s in streams],
        "inputs": len(inputs),
        "opportunities": n_opp,
        "every_frame_infer_s": round(every_s, 3),
        "previous_answer_wrong_rate": round(flicker, 4),
        "curve": rows,
        "best": best,
        "guarded": guarded,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep on both workloads; print the tables; write ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, help="video (default: the vtest excerpt)")
    parser.add_argument("--full", action="store_true", help="the full vtest.avi (data/videos)")
    parser.add_argument("--max-frames", type=int, help="frames per stream (a bounded window)")
    parser.add_argument("--preset", default="jitter", choices=PRESETS, help="multicam cameras")
    parser.add_argument(
        "--workloads", nargs="+", default=["single", "multicam"], choices=["single", "multicam"]
    )
    parser.add_argument(
        "--match",
        default="boxes",
        choices=["boxes", "count"],
        help="answers agree when their boxes match (IoU >= 0.5), or their face counts",
    )
    parser.add_argument("--embedders", nargs="+", default=list(EMBEDDERS), choices=list(EMBEDDERS))
    parser.add_argument("--policies", nargs="+", default=["nn", "hknn"], choices=["nn", "hknn"])
    parser.add_argument(
        "--thresholds", nargs="+", type=float, help="override every embedder's threshold grid"
    )
    parser.add_argument("--max-wrong", type=float, default=0.02, help="wrong-hit budget")
    parser.add_argument(
        "--guard-fraction",
        type=float,
        default=0.1,
        help="share of hits the accuracy guard re-checks in the guarded runs (0: skip them)",
    )
    parser.add_argument("--reference-dir", type=Path, help="reference answer store")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    video = args.video or find_video("vtest", excerpt_only=not args.full)
    if args.full and "excerpt" in video.name:
        print("the full vtest.avi is not there; run scripts/fetch_data.sh", file=sys.stderr)
        return 2
    store = ReferenceStore(args.reference_dir)
    mcfg = MtcnnModelConfig()
    started = time.perf_counter()
    results = []
    for workload in args.workloads:
        if workload == "single":
            streams = [StreamSpec(video=video, max_frames=args.max_frames)]
        else:
            streams = derived_cameras(video, args.preset, max_frames=args.max_frames)
        label = f"{workload} ({video.name}{f', {args.preset}' if workload == 'multicam' else ''})"
        label += f", {args.match} agreement"
        results.append(run_workload(label, streams, args, store, mcfg))
    took = time.perf_counter() - started
    print(
        f"\n({took:.0f} s; speedup = MTCNN s of every input / (embed + cache + MTCNN s of misses))"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "video": video.name,
            "max_frames": args.max_frames,
            "preset": args.preset,
            "match": args.match,
            "max_wrong": args.max_wrong,
            "machine": platform.machine(),
            "python": platform.python_version(),
            "workloads": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
