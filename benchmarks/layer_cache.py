"""Layer cache benchmark: a model with and without the layer cache, side by side.

Both paths run in the same process on the same frames, interleaved frame by
frame (the order alternates), so that machine noise hits both alike and their
ratio is stable. Per frame it records the latency of each path and the largest
absolute difference between their outputs.

The default workload is MTCNN's PNet on an image pyramid of real video frames:
each frame is resized to each scale, normalised like facenet-pytorch
(``(x - 127.5) / 128``, RGB) and run once per scale, one cache key per scale.
``--model`` takes the real PNet export; without it a PNet-shaped network with
random weights is built (same layers, so the same cost; its outputs mean
nothing). Any other full-model workload plugs in through ``--workload
module:factory``, where ``factory(args)`` returns a :class:`Workload`.

Examples::

    python benchmarks/layer_cache.py --video samples/video/vtest.avi --frames 100
    python benchmarks/layer_cache.py --model pnet.onnx --video vtest.avi \\
        --scales 0.6 0.3 --json /tmp/layer_cache.json
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamedge.bench.workloads import StreamFrame, StreamSpec
from streamedge.caches.layer import Decision, LayerCacheConfig, LayerCachedRunner

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

Outputs = list[npt.NDArray[Any]]
PNET_THRESHOLD = 0.6
"""MTCNN's first-stage face probability threshold."""
Image = npt.NDArray[np.uint8]
TARGET_REDUCTION_PCT = 25.0
"""Issue 8's target: mean latency of the whole local model down by at least this ..."""
TARGET_DISAGREEMENT_PCT = 2.0
"""... with at most this share of frames whose final answer differs from the plain model's."""


@dataclass
class Workload:
    """Two ways to answer one frame: through the layer cache and without it.

    Attributes:
        name: what is measured (shown in the table).
        cached: ``cached(prepared) -> outputs`` (uses the cache).
        uncached: ``uncached(prepared) -> outputs`` (the plain model).
        prepare: ``prepare(frame) -> prepared``, untimed and shared by both paths
            (PNet: the pyramid of normalised inputs; a whole pipeline: identity).
        compare: optional ``compare(cached_out, plain_out) -> {metric: value}``
            for one frame (answer-level agreement); values are averaged.
        stats: optional callable returning the cache's statistics as a dict.
        warm: optional ``warm(prepared_first_frame)`` run before timing starts.
    """

    name: str
    cached: Callable[[Any], Outputs]
    uncached: Callable[[Any], Outputs]
    prepare: Callable[[Image], Any] = field(default=lambda img: img)
    compare: Callable[[Outputs, Outputs], dict[str, float]] | None = None
    stats: Callable[[], dict[str, Any]] = field(default=dict)
    warm: Callable[[Any], None] | None = None


# --------------------------------------------------------------------------- frames


def video_frames(path: Path, count: int, start: int = 0) -> Iterator[Image]:
    """Consecutive BGR frames of a video file."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        msg = f"cannot open video {path}"
        raise SystemExit(msg)
    try:
        for _ in range(start):
            cap.grab()
        for _ in range(count):
            ok, img = cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(img)
    finally:
        cap.release()


def synthetic_frames(count: int, height: int = 576, width: int = 768) -> Iterator[Image]:
    """A fixed noisy background with a few moving squares (no video at hand)."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for t in range(count):
        img = background.copy()
        for k in range(3):
            y = (40 + 60 * k + 3 * t) % (height - 40)
            x = (100 + 150 * k + 5 * t) % (width - 40)
            img[y : y + 40, x : x + 30] = 60 * k + 40
        yield img


# --------------------------------------------------------------------------- PNet


def pnet_shaped_model(seed: int = 0) -> Any:
    """MTCNN PNet's layers (facenet-pytorch layout) with random weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes: list[Any] = []
    inits: list[Any] = []

    def conv(x: str, name: str, cin: int, cout: int, k: int) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.bias"))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}.weight", f"{name}.bias"],
                [name],
                kernel_shape=[k, k],
            )
        )
        return name

    def prelu(x: str, c: int) -> str:
        inits.append(numpy_helper.from_array(np.full((c, 1, 1), 0.25, np.float32), f"{x}.slope"))
        nodes.append(helper.make_node("PRelu", [x, f"{x}.slope"], [f"{x}.act"]))
        return f"{x}.act"

    h = prelu(conv("input", "conv1", 3, 10, 3), 10)
    nodes.append(
        helper.make_node(
            "MaxPool", [h], ["pool1"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1
        )
    )
    h = prelu(conv("pool1", "conv2", 10, 16, 3), 16)
    h = prelu(conv(h, "conv3", 16, 32, 3), 32)
    nodes.append(helper.make_node("Softmax", [conv(h, "conv4_1", 32, 2, 1)], ["prob"], axis=1))
    nodes.append(helper.make_node("Identity", [conv(h, "conv4_2", 32, 4, 1)], ["reg"]))
    graph = helper.make_graph(
        nodes,
        "pnet_shaped",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [
            helper.make_tensor_value_info("reg", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, None),
        ],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def mtcnn_scales(height: int, width: int, min_face: float = 20.0) -> list[float]:
    """MTCNN's pyramid: 12/min_face, times 0.709 while the short side is >= 12 px."""
    scales = []
    scale = 12.0 / min_face
    while min(height, width) * scale >= 12.0:
        scales.append(scale)
        scale *= 0.709
    return scales


def pnet_input(img: Image, scale: float) -> npt.NDArray[np.float32]:
    """facenet-pytorch's PNet input: resized, RGB, ``(x - 127.5) / 128``, NCHW."""
    import cv2

    h, w = img.shape[:2]
    size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)[:, :, ::-1]
    x = (small.astype(np.float32) - 127.5) * 0.0078125
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def pnet_workload(args: argparse.Namespace) -> Workload:
    """PNet over a pyramid, one cache key per scale."""
    import onnxruntime

    model: Any = str(args.model) if args.model else pnet_shaped_model()
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    cfg = LayerCacheConfig(
        block_size=args.block,
        psnr_db=args.psnr[0],
        input_range=2.0,  # (x - 127.5) / 128 spans about 2
        refresh_every=args.refresh_every[0],
        recheck_margin=args.recheck_margin[0],
        diamond_search=args.diamond,
        max_crops=args.max_crops,
    )
    decision = Decision("prob", 1, PNET_THRESHOLD) if "prob" in args.outputs else None
    runner = LayerCachedRunner(
        model, cfg, outputs=args.outputs, session_options=opts, decision=decision
    )
    prob_index = runner.output_names.index("prob")
    scales = list(args.scales)

    def prepare(img: Image) -> list[npt.NDArray[np.float32]]:
        return [pnet_input(img, scale) for scale in scales]

    def cached(pyramid: list[npt.NDArray[np.float32]]) -> Outputs:
        out: Outputs = []
        for s, x in enumerate(pyramid):
            out += runner.run(("bench", s), x)
        return out

    def uncached(pyramid: list[npt.NDArray[np.float32]]) -> Outputs:
        out: Outputs = []
        for x in pyramid:
            out += runner.run_plain(x)
        return out

    n_out = len(runner.output_names)

    previous: list[Outputs] = []

    def compare(a: Outputs, b: Outputs) -> dict[str, float]:
        """PNet's answer: the cells whose face probability passes 0.6.

        ``flicker_cells`` counts the cells the plain model itself flips between
        two consecutive frames: the scale against which ``flipped_cells`` (the
        cache's flips) should be read.
        """
        flipped = candidates = flicker = 0
        for s in range(len(scales)):
            pa, pb = a[s * n_out + prob_index], b[s * n_out + prob_index]
            ca, cb = pa[0, 1] > PNET_THRESHOLD, pb[0, 1] > PNET_THRESHOLD
            flipped += int((ca != cb).sum())
            candidates += int(cb.sum())
            if previous:
                before = previous[0][s * n_out + prob_index][0, 1] > PNET_THRESHOLD
                flicker += int((before != cb).sum())
        out = {
            "same_candidates": float(flipped == 0),
            "flipped_cells": float(flipped),
            "candidate_cells": float(candidates),
        }
        if previous:
            out["flicker_cells"] = float(flicker)
        previous[:] = [b]
        return out

    def warm(pyramid: list[npt.NDArray[np.float32]]) -> None:
        for x in pyramid:
            runner.warmup(x)  # builds the plan and measures the crop cost model
            runner.run_plain(x)

    what = "PNet" if args.model else "PNet-shaped net, random weights,"
    name = f"{what} scales {[round(s, 3) for s in scales]}, {cfg.psnr_db} dB"
    return Workload(
        name, cached, uncached, prepare, compare, lambda: runner.stats().as_dict(), warm
    )


# --------------------------------------------------------------------------- detector


@dataclass(frozen=True, slots=True, kw_only=True)
class JitteredStream(StreamSpec):
    """A camera with jitter, **derived** from a recorded video.

    Each frame is a crop of the recorded frame, ``2 * jitter`` pixels smaller
    per axis, whose window is moved by an independent random integer offset in
    ``[-jitter, jitter]`` per axis from the centre on every frame (seeded): a
    fixed camera whose mount shakes by a few pixels. It is a derivation of one
    recording, not a recording of a shaking camera (no motion blur, no
    rolling shutter, no parallax).
    """

    jitter: int = 4
    seed: int = 0

    def frames(self) -> Iterator[StreamFrame]:
        """The recorded frames, cropped by a window that moves every frame."""
        rng = np.random.default_rng(self.seed)
        j = self.jitter
        for frame in StreamSpec.frames(self):
            h, w = frame.image.shape[:2]
            dy, dx = (int(v) for v in rng.integers(-j, j + 1, size=2))
            crop = frame.image[j + dy : h - j + dy, j + dx : w - j + dx]
            yield StreamFrame(frame.index, frame.source_index, frame.ts, np.ascontiguousarray(crop))

    def describe(self) -> dict[str, Any]:
        """What the stream is; the jitter goes into ``derivation``, which the
        harness's reference cache key includes."""
        doc = StreamSpec.describe(self)
        doc["derivation"] = {**doc["derivation"], "jitter": self.jitter, "seed": self.seed}
        return doc


@dataclass(frozen=True, slots=True)
class Variant:
    """One layer-cache configuration of the whole detector."""

    label: str
    cfg: LayerCacheConfig


def variants_from(args: argparse.Namespace) -> list[Variant]:
    """Every combination of the swept settings."""
    out = []
    for psnr, refresh, margin in itertools.product(
        args.psnr, args.refresh_every, args.recheck_margin
    ):
        cfg = LayerCacheConfig(
            block_size=args.block,
            psnr_db=psnr,
            refresh_every=refresh,
            recheck_margin=margin,
            diamond_search=args.diamond,
            max_crops=args.max_crops,
        )
        label = f"{psnr:g}dB r{refresh} m{'-' if margin is None else f'{margin:g}'}"
        out.append(Variant(label + (" ds" if args.diamond else ""), cfg))
    return out


def detector_streams(args: argparse.Namespace) -> list[StreamSpec]:
    """The recorded videos, then the jittered derivation of the first one."""
    streams: list[StreamSpec] = [
        StreamSpec(video=v, device=f"cam{i}", max_frames=args.frames)
        for i, v in enumerate(args.video)
    ]
    if args.jitter:
        streams.append(
            JitteredStream(
                video=args.video[0],
                device="jitter",
                max_frames=args.frames,
                jitter=args.jitter,
                seed=args.seed,
            )
        )
    return streams


def stream_label(spec: StreamSpec) -> str:
    """``vtest.avi`` or ``vtest.avi +jitter 4 px (derived)``."""
    if isinstance(spec, JitteredStream):
        return f"{spec.video.name} +jitter {spec.jitter} px (derived)"
    return spec.video.name


def _stats_delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out = {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if isinstance(v, int | float) and k not in {"streams", "cached_bytes", "reused_fraction"}
    }
    out["reused_fraction"] = out["reused_positions"] / out["positions"] if out["positions"] else 0.0
    out["cached_bytes"] = after["cached_bytes"]
    return out


def warm_detectors(plain: Any, cached: Sequence[Any], image: Image) -> None:
    """Build every layer-cache plan (and its cost model) for this frame size, untimed."""
    import cv2

    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    plain.detect(image)
    for det in cached:
        for x, _ in det.scaled_inputs(rgb):
            det.layer_cache.warmup(x)
        det.detect(image)  # sessions' first runs at each size allocate


def measure_detector(
    spec: StreamSpec, variants: Sequence[Variant], threads: int, rotate: bool = True
) -> dict[str, Any]:
    """Whole MTCNN per frame: plain and every variant, interleaved, answers compared.

    The plain detector's answer to each frame is the reference; a variant's
    answer agrees when every box matches one of the reference's at IoU >= 0.5
    both ways (the harness's :func:`~streamedge.bench.answers.answers_agree`).
    """
    from streamedge.bench.answers import answers_agree, counts_agree, match_boxes
    from streamedge.models.mtcnn import MtcnnDetector
    from streamedge.records import Frame, StreamKey

    plain = MtcnnDetector(intra_op_threads=threads)
    cached = [MtcnnDetector(intra_op_threads=threads, layer_cache=v.cfg) for v in variants]
    key = StreamKey(spec.device, spec.stream)
    before = [d.layer_cache.stats().as_dict() if d.layer_cache else {} for d in cached]
    n = len(variants)
    times: list[list[float]] = [[] for _ in range(n + 1)]  # 0: plain
    disagree = [0] * n
    count_off = [0] * n
    ref_boxes = 0
    matched = [0] * n
    got_boxes = [0] * n
    flicker = 0
    previous: dict[str, Any] | None = None
    frames = 0
    for frame in spec.frames():
        if not frames:
            warm_detectors(plain, cached, frame.image)
        item = Frame(stream=key, ts=frame.ts, image=frame.image)
        order = list(range(n + 1))
        if rotate:
            shift = frame.index % (n + 1)
            order = order[shift:] + order[:shift]
        answers: dict[int, dict[str, Any]] = {}
        for which in order:
            model = plain if which == 0 else cached[which - 1]
            start = time.perf_counter()
            answers[which] = model.predict(item).answer
            times[which].append(time.perf_counter() - start)
        ref = answers[0]
        ref_boxes += len(ref["boxes"])
        for i in range(n):
            got = answers[i + 1]
            disagree[i] += not answers_agree(ref, got)
            count_off[i] += not counts_agree(ref, got)
            matched[i] += len(match_boxes(ref["boxes"], got["boxes"]))
            got_boxes[i] += len(got["boxes"])
        if previous is not None:
            flicker += not answers_agree(previous, ref)
        previous = ref
        frames += 1

    def ms(ts: list[float]) -> dict[str, float]:
        v = [t * 1e3 for t in ts]
        return {
            "mean_ms": statistics.fmean(v),
            "p50_ms": percentile(v, 50),
            "p95_ms": percentile(v, 95),
        }

    base = ms(times[0])
    plain_t = np.asarray(times[0])
    results = []
    for i, v in enumerate(variants):
        lat = ms(times[i + 1])
        per_frame = 1 - np.asarray(times[i + 1]) / plain_t
        runner = cached[i].layer_cache
        stats = _stats_delta(runner.stats().as_dict(), before[i]) if runner else {}
        reduction = 100 * (1 - lat["mean_ms"] / base["mean_ms"])
        dis = 100 * disagree[i] / max(frames, 1)
        results.append(
            {
                "label": v.label,
                "config": v.cfg.model_dump(mode="json"),
                "cached": lat,
                "mean_reduction_pct": reduction,
                "median_reduction_pct": 100 * (1 - lat["p50_ms"] / base["p50_ms"]),
                "frame_reduction_p90_pct": 100 * float(np.percentile(per_frame, 90)),
                "disagreement_pct": dis,
                "count_mismatch_pct": 100 * count_off[i] / max(frames, 1),
                "box_recall": matched[i] / ref_boxes if ref_boxes else None,
                "box_precision": matched[i] / got_boxes[i] if got_boxes[i] else None,
                "meets_target": reduction >= TARGET_REDUCTION_PCT
                and dis <= TARGET_DISAGREEMENT_PCT,
                "cache": stats,
            }
        )
    return {
        "stream": stream_label(spec),
        "derived": isinstance(spec, JitteredStream) or not spec.derivation.identity,
        "frames": frames,
        "faces_per_frame": ref_boxes / max(frames, 1),
        "plain_flicker_pct": 100 * flicker / max(frames - 1, 1),
        "uncached": base,
        "variants": results,
    }


def print_detector_table(res: dict[str, Any]) -> None:
    """One row per variant: latency against the plain detector and answer agreement."""
    base = res["uncached"]
    print(
        f"MTCNN (whole detector) on {res['stream']}: {res['frames']} frames, "
        f"{res['faces_per_frame']:.2f} faces/frame; plain: mean {base['mean_ms']:.1f} ms, "
        f"p50 {base['p50_ms']:.1f} ms; the plain model's own answer changes between "
        f"consecutive frames in {res['plain_flicker_pct']:.1f} % of frames"
    )
    print(
        f"{'variant':>20} {'mean ms':>8} {'reduct %':>8} {'p50 red':>8} {'disagree %':>10} "
        f"{'count %':>8} {'reuse %':>8} {'partial/full':>13} {'target':>6}"
    )
    for v in res["variants"]:
        c = v["cache"]
        print(
            f"{v['label']:>20} {v['cached']['mean_ms']:>8.1f} {v['mean_reduction_pct']:>8.1f} "
            f"{v['median_reduction_pct']:>8.1f} {v['disagreement_pct']:>10.2f} "
            f"{v['count_mismatch_pct']:>8.2f} {100 * c.get('reused_fraction', 0):>8.1f} "
            f"{c.get('partial_runs', 0):>6}/{c.get('full_runs', 0):<6} "
            f"{'yes' if v['meets_target'] else 'no':>6}"
        )


# --------------------------------------------------------------------------- harness


def gateway_config(layer: LayerCacheConfig | None, threads: int) -> Any:
    """A gateway with one app running MTCNN on every frame, with or without the layer cache."""
    from streamedge.config import parse_config

    model: dict[str, Any] = {"type": "mtcnn", "intra_op_threads": threads}
    if layer is not None:
        model["layer_cache"] = layer.model_dump(mode="json", exclude_unset=True)
    return parse_config(
        {
            "gateway": {"name": "layer-bench"},
            "models": [model],
            "streams": [
                {"match": "*", "kind": "frame", "apps": [{"name": "faces", "model": "mtcnn"}]}
            ],
        }
    )


def run_harness(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant through the evaluation harness (``streamedge.bench``), per stream.

    The harness replays each configuration through the gateway's own pipeline
    and scores its answers against the plain model's reference answers (cached
    on disk); its latency figure is the ratio of inference seconds of runs made
    one after the other, less stable on a busy machine than the side-by-side
    timing of ``--detector``.
    """
    from streamedge.bench.evaluate import evaluate

    variants = variants_from(args)
    plain = gateway_config(None, args.threads)
    configs = [(v.label, gateway_config(v.cfg, args.threads)) for v in variants]
    out: dict[str, Any] = {"mode": "harness", "streams": []}
    for spec in detector_streams(args):
        ev = evaluate(configs, [spec], baseline=plain, reference_model=plain.models[0], app="faces")
        doc = ev.to_json()
        doc["stream"] = stream_label(spec)
        out["streams"].append(doc)
        ref = doc["reference"]
        print(
            f"harness: MTCNN on {doc['stream']}: {ref['frames']} frames, "
            f"{ref['positive_frames']} with faces; every-frame agreement "
            f"{100 * ev.every_frame.accuracy.agreement:.1f} %"
        )
        print(f"{'variant':>20} {'agree %':>8} {'count %':>8} {'infer s ratio':>14}")
        for c in ev.configs:
            ratio = c.infer_s_ratio
            print(
                f"{c.name:>20} {100 * c.accuracy.agreement:>8.2f} "
                f"{100 * c.accuracy.count_agreement:>8.2f} "
                f"{'-' if ratio is None else f'{ratio:.3f}':>14}"
            )
        print()
    return out


# --------------------------------------------------------------------------- measure


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation)."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def measure(workload: Workload, frames: Sequence[Image]) -> dict[str, Any]:
    """Run both paths on every frame, interleaved; return the figures."""
    prepared = [workload.prepare(img) for img in frames]
    if workload.warm is not None:
        workload.warm(prepared[0])
    t_cached: list[float] = []
    t_plain: list[float] = []
    max_diff = 0.0
    abs_sum = 0.0
    abs_count = 0
    answers: dict[str, list[float]] = {}
    for i, inputs in enumerate(prepared):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        outs: dict[int, Outputs] = {}
        for which in order:
            fn = workload.cached if which == 0 else workload.uncached
            start = time.perf_counter()
            outs[which] = fn(inputs)
            (t_cached if which == 0 else t_plain).append(time.perf_counter() - start)
        for a, b in zip(outs[0], outs[1], strict=True):
            diff = np.abs(a - b)
            max_diff = max(max_diff, float(diff.max()))
            abs_sum += float(diff.sum(dtype=np.float64))
            abs_count += diff.size
        if workload.compare is not None:
            for key, value in workload.compare(outs[0], outs[1]).items():
                answers.setdefault(key, []).append(value)

    def summary(ts: list[float]) -> dict[str, float]:
        ms = [t * 1e3 for t in ts]
        return {
            "mean_ms": statistics.fmean(ms),
            "p50_ms": percentile(ms, 50),
            "p95_ms": percentile(ms, 95),
        }

    plain, cached = summary(t_plain), summary(t_cached)
    return {
        "workload": workload.name,
        "frames": len(frames),
        "uncached": plain,
        "cached": cached,
        "mean_reduction_pct": 100 * (1 - cached["mean_ms"] / plain["mean_ms"]),
        "median_reduction_pct": 100 * (1 - cached["p50_ms"] / plain["p50_ms"]),
        "max_abs_diff": max_diff,
        "mean_abs_diff": abs_sum / max(abs_count, 1),
        "answers": {k: statistics.fmean(v) for k, v in answers.items()},
        "cache": workload.stats(),
    }


def print_table(res: dict[str, Any]) -> None:
    """A side-by-side table of the two paths."""
    print(f"{res['workload']}: {res['frames']} frames")
    print(f"{'':>14} {'uncached':>10} {'cached':>10}")
    for key, label in (
        ("mean_ms", "mean ms"),
        ("p50_ms", "p50 ms"),
        ("p95_ms", "p95 ms"),
    ):
        print(f"{label:>14} {res['uncached'][key]:>10.2f} {res['cached'][key]:>10.2f}")
    mean, median = res["mean_reduction_pct"], res["median_reduction_pct"]
    print(f"{'reduction':>14} mean {mean:.1f} %, median {median:.1f} %")
    cache = res["cache"]
    if cache:
        print(
            f"{'cache':>14} reuse {cache['reused_fraction']:.1%} of prefix outputs, "
            f"{cache['partial_runs']} partial / {cache['full_runs']} full "
            f"({cache['refreshes']} refreshes, {cache['cost_full_runs']} by cost), "
            f"{cache['crops']} crops"
        )
    print(f"{'|diff|':>14} max {res['max_abs_diff']:.3g}, mean {res['mean_abs_diff']:.3g}")
    for key, value in res["answers"].items():
        print(f"{key:>14} {value:.3g} (mean per frame)")


def _margin(text: str) -> float | None:
    return None if text.lower() in {"none", "off", "-"} else float(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--video",
        type=Path,
        nargs="+",
        default=[],
        help="video file(s) (PNet mode uses the first; default: synthetic frames)",
    )
    p.add_argument(
        "--detector",
        action="store_true",
        help="time the whole MTCNN detector and compare its final answers (needs --video)",
    )
    p.add_argument(
        "--jitter",
        type=int,
        default=0,
        help="--detector: add a stream derived from the first video with the crop window "
        "moved by up to this many pixels per frame",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the jitter")
    p.add_argument(
        "--harness",
        action="store_true",
        help="--detector: also score every variant through the evaluation harness",
    )
    p.add_argument(
        "--harness-only",
        action="store_true",
        help="--detector: only the harness, no side-by-side timing",
    )
    p.add_argument("--model", type=Path, help="PNet ONNX (default: PNet-shaped random weights)")
    p.add_argument("--workload", help="module:factory returning a Workload (instead of PNet)")
    p.add_argument("--frames", type=int, default=100, help="consecutive frames to run")
    p.add_argument("--start", type=int, default=0, help="frames to skip first")
    p.add_argument("--scales", type=float, nargs="+", default=[0.6, 0.3], help="PNet scales")
    p.add_argument(
        "--pyramid",
        action="store_true",
        help="all of MTCNN's scales (min face 20 px, factor 0.709) instead of --scales",
    )
    p.add_argument("--outputs", nargs="+", default=["reg", "prob"], help="model outputs to keep")
    p.add_argument("--block", type=int, default=10, help="change-detection block size")
    p.add_argument(
        "--psnr", type=float, nargs="+", default=[20.0], help="PSNR threshold(s) in dB (inf ok)"
    )
    p.add_argument(
        "--refresh-every", type=int, nargs="+", default=[10], help="full refresh period(s)"
    )
    p.add_argument(
        "--recheck-margin",
        type=_margin,
        nargs="+",
        default=[0.0],
        help="recompute cells whose cached face probability is within this of PNet's "
        "threshold or above ('none' disables); several values are swept",
    )
    p.add_argument("--max-crops", type=int, default=8, help="most crops per frame")
    p.add_argument("--diamond", action="store_true", help="diamond search for motion")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("-v", "--verbose", action="store_true", help="log the cache's decisions")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    workload: Workload | None = None
    if args.workload:
        module, _, attr = args.workload.partition(":")
        workload = getattr(importlib.import_module(module), attr)(args)
    if args.detector:
        if not args.video:
            print("--detector needs --video", file=sys.stderr)
            return 1
        return run_detector(args)
    if args.video:
        frames = list(video_frames(args.video[0], args.frames, args.start))
    else:
        frames = list(synthetic_frames(args.frames))
    if not frames:
        print("no frames", file=sys.stderr)
        return 1
    if args.pyramid:
        args.scales = mtcnn_scales(*frames[0].shape[:2])
    if not args.workload:
        workload = pnet_workload(args)
    assert workload is not None
    res = measure(workload, frames)
    res["args"] = args_json(args)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


def args_json(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line options as JSON values (paths as strings)."""

    def conv(v: Any) -> Any:
        if isinstance(v, list):
            return [conv(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    return {k: conv(v) for k, v in vars(args).items()}


def run_detector(args: argparse.Namespace) -> int:
    """``--detector``: every stream, every variant; table and JSON."""
    variants = variants_from(args)
    out: dict[str, Any] = {
        "mode": "detector",
        "target": {
            "mean_reduction_pct": TARGET_REDUCTION_PCT,
            "disagreement_pct": TARGET_DISAGREEMENT_PCT,
        },
        "streams": [],
    }
    for spec in detector_streams(args) if not args.harness_only else []:
        res = measure_detector(spec, variants, args.threads)
        print_detector_table(res)
        print()
        out["streams"].append(res)
    if args.harness or args.harness_only:
        out["harness"] = run_harness(args)
    out["args"] = args_json(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
