"""Input filters at an accuracy target: frames to the full model, cost, speed-up.

For each filter (NoScope against an earlier frame, NoScope against the empty
scene, Reducto, FFS-VA) and for the cascade (NoScope's difference detector,
then FFS-VA's specialised model, then the full model), on each video:

1. the thresholds are chosen by ``streamedge calibrate``'s search
   (:func:`streamedge.filters.calibration.calibrate`) on the **calibration
   split** (the first half of the frames), for each target: NoScope's
   windowed accuracy ≥ 99 % and per-frame agreement ≥ 98 %; the model's cost
   is measured first, the filters' costs during the search;
2. the calibrated configuration is replayed through the gateway's own
   pipeline (:func:`streamedge.bench.replay.replay`, MTCNN on the frames
   that pass) on the **evaluation split** (the rest of the frames, never
   seen by the calibration; the filters start cold there), and scored
   against MTCNN's own answer to every frame (the harness's cached
   reference answers);
3. next to it, from the same reference answers: uniform sampling at the
   largest interval that reaches the same target on the evaluation split,
   and the oracle (a model run exactly when the answer changes); and the
   infer-every-frame replay of the evaluation split in the same process,
   for the speed-up of the whole stream (processor wall time and CPU time).

The filter cost per frame is the chain's ``filter`` stage in the replay
(frames at the video's own size), and the calibrated chain timed again on
the evaluation frames resized to 640×480.

By default each video is cut to its first 300 frames (``--frames``);
``--full`` uses every frame.

Usage::

    python benchmarks/filters.py --video vtest --video megamind --json bench-results/filters.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2

from streamedge.bench.baselines import oracle, uniform_for_target
from streamedge.bench.evaluate import no_progress, progress_lines, references_for
from streamedge.bench.metrics import pooled_accuracy
from streamedge.bench.progress import NoProgress, ProgressLine
from streamedge.bench.reference import ReferenceStore
from streamedge.bench.replay import replay
from streamedge.bench.workloads import Derivation, StreamSpec
from streamedge.commands.calibrate import measure_model
from streamedge.config import StreamedgeConfig, parse_config
from streamedge.datasets import find_video
from streamedge.filters.calibration import (
    CalibrationMetric,
    CalibrationWindow,
    calibrate,
    metric_of,
    search_size,
    simulate,
)
from streamedge.filters.config import (
    FfsvaFilterConfig,
    FilterConfig,
    NoScopeFilterConfig,
    ReductoFilterConfig,
)
from streamedge.records import StreamKey

KEY = StreamKey("cam1", "camera")
TARGETS: tuple[tuple[CalibrationMetric, float], ...] = (("windowed", 0.99), ("agreement", 0.98))


def chains() -> list[tuple[str, list[FilterConfig]]]:
    """The filters evaluated, at their default settings (the search's starting point)."""
    return [
        ("noscope-earlier", [NoScopeFilterConfig(mode="earlier", t_diff=10)]),
        ("noscope-reference", [NoScopeFilterConfig(mode="reference", metric="blocked")]),
        ("reducto", [ReductoFilterConfig()]),
        ("ffsva", [FfsvaFilterConfig()]),
        ("cascade", [NoScopeFilterConfig(mode="earlier", t_diff=10), FfsvaFilterConfig()]),
    ]


@dataclass(slots=True, kw_only=True)
class Row:
    """One filter at one target on one video, on the evaluation split."""

    video: str
    filters: str
    metric: str
    target: float
    settings: list[dict[str, Any]]
    calib_score: float
    calib_model_fraction: float
    eval_score: float
    eval_agreement: float
    eval_windowed: float | None
    met: bool
    model_fraction: float
    oracle_fraction: float
    x_oracle: float | None
    uniform_fraction: float
    uniform_k: int
    filter_ms: float
    filter_ms_640: float
    throughput_ratio: float | None
    cpu_ratio: float | None


def base_config(filters: Sequence[FilterConfig], snm_dir: Path, tag: str) -> StreamedgeConfig:
    """A gateway configuration: the filters in front of MTCNN (SNMs written to snm_dir)."""
    dumped = [f.model_dump(mode="json") for f in filters]
    data = {
        "models": [{"type": "mtcnn"}],
        "streams": [
            {
                "match": "*/camera*",
                "kind": "frame",
                "filters": dumped,
                "apps": [{"name": "faces", "model": "mtcnn"}],
            }
        ],
    }
    return parse_config(data, base_dir=snm_dir, source=tag)


def resized(frames: Sequence[Any], width: int = 640, height: int = 480) -> list[Any]:
    """Frames resized to width×height (the filter-cost target's frame size)."""
    return [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames]


def run_video(
    args: argparse.Namespace, name: str, out_dir: Path
) -> tuple[list[Row], dict[str, Any]]:
    """Calibrate, replay and score every filter on one video."""
    video = find_video(name) if not Path(name).is_file() else Path(name)
    frames_limit = None if args.full else args.frames
    spec = StreamSpec(video=video, device=KEY.device, stream=KEY.stream, max_frames=frames_limit)
    progress = no_progress if args.no_progress else progress_lines
    any_cfg = base_config([], out_dir, "reference")
    ref = references_for(any_cfg, [spec], ReferenceStore(args.reference_dir), progress=progress)[0]
    n = ref.frames
    n_calib = max(2, int(n * args.calib_fraction))
    n_eval = n - n_calib
    calib_frames = [f.image for f in spec.frames() if f.index < n_calib]
    window = CalibrationWindow(KEY, calib_frames, ref.ts[:n_calib], ref.answers[:n_calib])
    eval_ref = ref.answers[n_calib:]
    eval_spec = StreamSpec(
        video=video,
        device=KEY.device,
        stream=KEY.stream,
        derivation=Derivation(start=n_calib),
        max_frames=n_eval,
    )
    eval_frames_640 = resized([f.image for f in eval_spec.frames()][: args.cost_frames])
    cost_window = CalibrationWindow(
        KEY,
        eval_frames_640,
        ref.ts[n_calib : n_calib + len(eval_frames_640)],
        eval_ref[: len(eval_frames_640)],
    )
    model_s = measure_model(
        any_cfg.models[0], any_cfg.gateway.data_dir, calib_frames[:10], str(KEY)
    )

    every = asyncio.run(_replay(args, "every-frame", base_config([], out_dir, "every"), eval_spec))
    every_answers = every.answers(0)
    assert len(every_answers) == n_eval, (len(every_answers), n_eval)
    orc = oracle([eval_ref])
    rows: list[Row] = []
    for label, chain in chains():
        if args.only and label not in args.only:
            continue
        for metric, target in TARGETS:
            tag = f"{video.stem}-{label}-{metric}"
            shown = (
                NoProgress()
                if args.no_progress
                else ProgressLine(f"calibrate {tag}", search_size(chain, window), unit="settings")
            )
            try:
                result = calibrate(
                    chain, window, target=target, model_s=model_s, metric=metric, progress=shown
                )
            finally:
                if isinstance(shown, ProgressLine):
                    shown.close()
            chosen = list(result.filters)
            for index, data in result.snm.items():
                path = (out_dir / f"{tag}.snm.onnx").resolve()
                path.write_bytes(data)
                cfg_i = chosen[index]
                assert isinstance(cfg_i, FfsvaFilterConfig)
                chosen[index] = cfg_i.model_copy(update={"snm_models": {"*": path}})
            cfg = base_config(chosen, out_dir, tag)
            replayed = asyncio.run(_replay(args, tag, cfg, eval_spec))
            acc = pooled_accuracy([(eval_ref, replayed.answers(0))])
            score = metric_of(acc, metric)
            uni = uniform_for_target([eval_ref], target, metric=metric)
            fraction = replayed.inferences / n_eval
            sim = simulate(chosen, cost_window)
            rows.append(
                Row(
                    video=video.name,
                    filters=label,
                    metric=metric,
                    target=target,
                    settings=[{k: _plain(v) for k, v in c.items()} for c in result.chosen],
                    calib_score=result.final.score if result.final else 1.0,
                    calib_model_fraction=result.final.pass_fraction if result.final else 1.0,
                    eval_score=score,
                    eval_agreement=acc.agreement,
                    eval_windowed=acc.windowed.accuracy,
                    met=score >= target - 1e-12,
                    model_fraction=fraction,
                    oracle_fraction=orc.inference_fraction,
                    x_oracle=fraction / orc.inference_fraction if orc.inference_fraction else None,
                    uniform_fraction=uni.inference_fraction,
                    uniform_k=uni.k or 1,
                    filter_ms=replayed.stage_means_ms().get("filter", 0.0),
                    filter_ms_640=1e3 * sum(sim.stage_s.values()) / len(eval_frames_640),
                    throughput_ratio=every.wall_s / replayed.wall_s if replayed.wall_s else None,
                    cpu_ratio=every.cpu_s / replayed.cpu_s if replayed.cpu_s else None,
                )
            )
    summary = {
        "video": video.name,
        "frames": n,
        "calibration_frames": n_calib,
        "evaluation_frames": n_eval,
        "positive_eval_frames": sum(1 for a in eval_ref if a.get("count")),
        "model_ms_measured": 1e3 * model_s,
        "every_frame_wall_s": every.wall_s,
        "every_frame_cpu_s": every.cpu_s,
        "oracle_fraction": orc.inference_fraction,
        "oracle_agreement": orc.accuracy.agreement,
    }
    return rows, summary


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value


async def _replay(
    args: argparse.Namespace, label: str, cfg: StreamedgeConfig, spec: StreamSpec
) -> Any:
    shown = NoProgress() if args.no_progress else ProgressLine(f"replay {label}", spec.max_frames)
    try:
        return await replay(cfg, [spec], name=label, progress=shown)
    finally:
        if isinstance(shown, ProgressLine):
            shown.close()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_table(rows: Sequence[Row], summaries: Sequence[dict[str, Any]]) -> str:
    """The comparison, one line per filter and target."""
    out = [
        f"{s['video']}: {s['frames']} frames; thresholds calibrated on the first "
        f"{s['calibration_frames']}, evaluated on the other {s['evaluation_frames']} "
        f"({s['positive_eval_frames']} with a face); MTCNN {s['model_ms_measured']:.1f} ms "
        f"per frame (measured); oracle sends {_pct(s['oracle_fraction'])} % of frames"
        for s in summaries
    ]
    head = (
        f"{'video':<14} {'filter':<18} {'target':<15} {'eval':>6} {'met':>4} {'model%':>7} "
        f"{'xoracle':>7} {'uniform%':>8} {'k':>3} {'filt ms':>7} {'@640':>6} {'speedup':>7} "
        f"{'cpu x':>6}"
    )
    out += ["", head, "-" * len(head)]
    for r in rows:
        target = f"{r.metric[:8]}>={100 * r.target:.0f}%"
        out.append(
            f"{r.video[:14]:<14} {r.filters:<18} {target:<15} {_pct(r.eval_score):>6} "
            f"{'yes' if r.met else 'NO':>4} {_pct(r.model_fraction):>7} "
            f"{(f'{r.x_oracle:.2f}' if r.x_oracle is not None else '-'):>7} "
            f"{_pct(r.uniform_fraction):>8} {r.uniform_k:>3} {r.filter_ms:>7.3f} "
            f"{r.filter_ms_640:>6.3f} "
            f"{(f'{r.throughput_ratio:.1f}x' if r.throughput_ratio else '-'):>7} "
            f"{(f'{r.cpu_ratio:.1f}x' if r.cpu_ratio else '-'):>6}"
        )
    out.append("")
    out.append(
        "eval: the target's metric on the evaluation split; model%: frames that reached MTCNN; "
        "xoracle: model% over the oracle's; uniform%: every k-th frame, largest k reaching the "
        "same target on the evaluation split; filt ms: filter stage per frame in the replay "
        "(video size), @640: the calibrated chain on 640x480 frames; speedup / cpu x: "
        "infer-every-frame wall / CPU time over this configuration's, same split, same process."
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--video", action="append", default=None, help="video file or sample name (repeat)"
    )
    parser.add_argument("--frames", type=int, default=300, help="first N frames of each video")
    parser.add_argument("--full", action="store_true", help="every frame of each video")
    parser.add_argument(
        "--calib-fraction", type=float, default=0.5, help="share of frames calibrated on"
    )
    parser.add_argument(
        "--cost-frames", type=int, default=100, help="640x480 frames the filter cost is timed on"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=None,
        choices=[label for label, _ in chains()],
        help="evaluate only this filter (repeat; default: all)",
    )
    parser.add_argument("--reference-dir", type=Path, default=None)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results") / "filters")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not 0.0 < args.calib_fraction < 1.0:
        parser.error("--calib-fraction must be within (0, 1)")
    cv2.setNumThreads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    summaries = []
    start = time.perf_counter()
    for name in args.video or ["vtest"]:
        video_rows, summary = run_video(args, name, args.out_dir)
        rows += video_rows
        summaries.append(summary)
    print(format_table(rows, summaries))
    if args.json is not None:
        doc = {
            "benchmark": "filters",
            "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seconds": time.perf_counter() - start,
            "videos": summaries,
            "rows": [asdict(r) for r in rows],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
