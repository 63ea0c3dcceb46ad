"""``streamedge calibrate``: choose a stream rule's filter thresholds for an accuracy target.

Runs the full model (the evaluated app's) on a calibration window of a video
(the harness's reference answers, cached in ``--reference-dir``), measures
the model's cost on this machine, grid-searches the settings of the rule's
filters with NoScope's cost model (:mod:`streamedge.filters.calibration`) and
writes the chosen settings into the configuration, keeping everything else
in the file (comments, order, other rules) as it was: to ``--out FILE``, or
into the file itself with ``--write``. Without either it only prints them.

An FFS-VA filter's SNM is trained on the window's full-model answers and
saved beside the written file (``<config stem>.<device>_<stream>.snm.onnx``),
referenced under ``snm_models`` for the calibrated stream.

``--stream DIR`` calibrates on a recorded stream instead of a video: a
directory of frame images (JPEG/PNG, in name order, ``--fps`` frames a
second); it is turned into a lossless video (FFV1) in the reference
directory first, so the harness can key its reference answers by the
recording's content.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamedge.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from streamedge.errors import ConfigError, StreamedgeError

if TYPE_CHECKING:
    from streamedge.filters.calibration import CalibrationResult

NAME = "calibrate"
HELP = "choose filter thresholds for an accuracy target on a video (writes the config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``calibrate``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--video", help="video file, or a sample name (vtest, megamind) to calibrate on"
    )
    source.add_argument(
        "--stream",
        type=Path,
        metavar="DIR",
        help="a recorded stream: a directory of frame images (JPEG/PNG, name order)",
    )
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of --stream frames")
    parser.add_argument("--config", type=Path, required=True, help="gateway configuration file")
    parser.add_argument(
        "--target", type=float, default=0.99, help="accuracy to reach on the window (0-1)"
    )
    parser.add_argument(
        "--metric",
        default="windowed",
        choices=["windowed", "agreement", "count_agreement", "presence_agreement"],
        help="what the target applies to: NoScope's windowed accuracy, or per-frame agreement",
    )
    parser.add_argument(
        "--window", type=int, default=300, metavar="N", help="calibrate on the first N frames"
    )
    parser.add_argument("--start", type=int, default=0, help="skip this many frames first")
    parser.add_argument("--key", default="cam1/camera", help="device/stream the window stands for")
    parser.add_argument("--app", default=None, help="application whose model is the full model")
    parser.add_argument(
        "--cost-frames",
        type=int,
        default=10,
        help="frames the full model is timed on to measure its cost",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", type=Path, default=None, help="write the calibrated config here")
    out.add_argument("--write", action="store_true", help="write into --config itself")
    parser.add_argument("--json", type=Path, default=None, help="write every trial here")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="where reference answers are kept (default ~/.cache/streamedge/reference)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Calibrate; print the choice; write the config when asked."""
    from streamedge.log import setup_logging

    setup_logging(None, verbose=args.verbose, quiet=not args.verbose)
    if not 0.0 < args.target <= 1.0:
        print("streamedge calibrate: --target must be within (0, 1]", file=sys.stderr)
        return EXIT_CONFIG
    if args.window < 2 or args.cost_frames < 1 or args.start < 0:
        print(
            "streamedge calibrate: --window must be at least 2, --cost-frames at least 1",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"streamedge calibrate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (StreamedgeError, OSError, ValueError) as exc:
        print(f"streamedge calibrate: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _source(args: argparse.Namespace) -> Path:
    from streamedge.datasets import find_video

    if args.stream is not None:
        from streamedge.bench.reference import default_reference_dir

        cache = args.reference_dir or default_reference_dir()
        return recording_video(args.stream, fps=args.fps, out_dir=cache / "recordings")
    video = Path(args.video)
    if video.is_file():
        return video
    try:
        return find_video(args.video)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc


def recording_video(directory: Path, *, fps: float, out_dir: Path) -> Path:
    """Turn a directory of frame images into a lossless video in ``out_dir``.

    The video is named by a digest of the images, so the same recording
    always maps to the same file (and the same cached reference answers).

    Raises:
        ConfigError: not a directory, no readable images, or mixed frame sizes.
    """
    import hashlib

    import cv2
    import numpy as np

    if not directory.is_dir():
        raise ConfigError(f"--stream {directory}: not a directory")
    paths = sorted(
        p for p in directory.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"}
    )
    if not paths:
        raise ConfigError(f"--stream {directory}: no JPEG/PNG/BMP frames")
    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.name.encode())
        digest.update(p.read_bytes())
    digest.update(repr(fps).encode())
    out = out_dir / f"{digest.hexdigest()[:16]}.avi"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.avi")
    writer = None
    try:
        for p in paths:
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if image is None:
                raise ConfigError(f"--stream: cannot read {p}")
            if writer is None:
                size = (image.shape[1], image.shape[0])
                # Lossless (FFV1) so the model sees the recorded pixels.
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"FFV1"), fps, size)
            elif (image.shape[1], image.shape[0]) != size:
                raise ConfigError(f"--stream: {p} is {image.shape[1]}x{image.shape[0]}, not {size}")
            writer.write(np.ascontiguousarray(image))
    finally:
        if writer is not None:
            writer.release()
    tmp.replace(out)
    return out


def _run(args: argparse.Namespace) -> int:
    from streamedge.bench.evaluate import no_progress, progress_lines, references_for
    from streamedge.bench.progress import NoProgress, ProgressLine
    from streamedge.bench.reference import ReferenceStore
    from streamedge.bench.replay import evaluated_app, model_config_of
    from streamedge.bench.workloads import Derivation, StreamSpec
    from streamedge.config import load_config
    from streamedge.filters.calibration import CalibrationWindow, calibrate, search_size
    from streamedge.records import StreamKey

    cfg = load_config(args.config)
    key = str(args.key)
    if "/" not in key:
        raise ConfigError(f"--key {key!r}: expected device/stream")
    device, stream = key.split("/", 1)
    rule = cfg.stream_for(key)
    if rule is None:
        raise ConfigError(f"{args.config}: no stream rule matches {key!r}")
    if not rule.filters:
        raise ConfigError(f"{args.config}: the rule for {key!r} ({rule.match!r}) has no filters")
    rule_index = cfg.streams.index(rule)
    app = evaluated_app(cfg, key, args.app)
    mcfg = model_config_of(cfg, app)

    video = _source(args)
    spec = StreamSpec(
        video=video,
        device=device,
        stream=stream,
        derivation=Derivation(start=args.start),
        max_frames=args.window,
    )
    progress = no_progress if args.no_progress else progress_lines
    ref = references_for(
        cfg, [spec], ReferenceStore(args.reference_dir), app=args.app, progress=progress
    )[0]
    frames = [f.image for f in spec.frames()]
    if len(frames) != ref.frames or len(frames) < 2:
        raise ConfigError(f"{video}: {len(frames)} frames decoded, {ref.frames} answers")
    model_s = measure_model(mcfg, cfg.gateway.data_dir, frames[: args.cost_frames], key)
    window = CalibrationWindow(StreamKey(device, stream), frames, ref.ts, ref.answers)
    total = search_size(rule.filters, window)
    shown = NoProgress() if args.no_progress else ProgressLine("calibrate", total, unit="settings")
    start = time.perf_counter()
    try:
        result = calibrate(
            rule.filters,
            window,
            target=args.target,
            model_s=model_s,
            metric=args.metric,
            progress=shown,
        )
    finally:
        if isinstance(shown, ProgressLine):
            shown.close()
    elapsed = time.perf_counter() - start
    print(format_result(result, video=video, key=key, elapsed_s=elapsed))
    target_path = args.config if args.write else args.out
    if target_path is not None:
        snm_files = write_snms(result, target_path, key)
        write_config(args.config, target_path, rule_index, result, snm_files, key=key)
        print(f"written: {target_path}")
        for path in snm_files.values():
            print(f"SNM: {path}")
    else:
        print("(nothing written: give --out FILE or --write)")
    if args.json is not None:
        doc = {**result.to_json(), "trials": [t.to_json() for t in result.trials]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        print(f"trials: {args.json}")
    return EXIT_OK if result.met else EXIT_FAILURE


def measure_model(mcfg: Any, data_dir: Path, frames: list[Any], key: str) -> float:
    """Seconds per full-model run, timed on this machine (median of ``frames``; one warm-up)."""
    import statistics

    from streamedge.models.factory import build_model
    from streamedge.records import Frame, StreamKey

    device, stream = key.split("/", 1)
    model = build_model(mcfg, data_dir=data_dir)
    items = [Frame(stream=StreamKey(device, stream), ts=0.0, image=f) for f in frames]
    model.predict(items[0])  # first run: allocations, lazy session set-up
    times = []
    for item in items:
        start = time.perf_counter()
        model.predict(item)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_result(result: CalibrationResult, *, video: Path, key: str, elapsed_s: float) -> str:
    """The chosen settings and what they achieve on the window, as text."""
    lines = [
        f"calibrated {key} on {result.frames} frames of {video.name} in {elapsed_s:.1f} s "
        f"({len(result.trials)} settings tried)",
        f"target: {result.metric} >= {result.target:.4f}; full model {result.model_ms:.1f} ms "
        "per frame (measured now)",
    ]
    for index, (cfg, chosen) in enumerate(zip(result.filters, result.chosen, strict=True)):
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in chosen.items()) or "(not tuned)"
        lines.append(f"  filters[{index}] {cfg.type}: {shown}")
    final = result.final
    if final is not None:
        lines.append(
            f"on the window: agreement {final.accuracy.agreement:.4f}, windowed "
            f"{_fmt(final.accuracy.windowed.accuracy)}, {100 * final.pass_fraction:.1f} % to "
            f"the model, filters {final.filter_ms:.3f} ms per frame, expected "
            f"{final.cost_ms:.2f} ms per frame (every frame: {result.model_ms:.2f} ms)"
        )
    if not result.met:
        lines.append("TARGET NOT MET on the window: the most accurate setting was chosen")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def snm_path(target: Path, key: str) -> Path:
    """Where the SNM of ``key`` is saved beside the config written to ``target``."""
    safe = key.replace("/", "_")
    return target.with_name(f"{target.stem}.{safe}.snm.onnx")


def write_snms(result: CalibrationResult, target: Path, key: str) -> dict[int, Path]:
    """Save each trained SNM beside ``target``; return filter index -> path."""
    out: dict[int, Path] = {}
    for index, data in result.snm.items():
        path = snm_path(target, key if len(result.snm) == 1 else f"{key}.{index}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[index] = path
    return out


def write_config(
    source: Path,
    target: Path,
    rule_index: int,
    result: CalibrationResult,
    snm_files: dict[int, Path],
    *,
    key: str,
) -> None:
    """Write ``source`` to ``target`` with the chosen filter settings of one rule.

    YAML files are edited round-trip (comments, key order and flow style are
    kept); JSON files are rewritten from their data. Only the chosen keys of
    ``streams[rule_index].filters[i]`` change (and ``snm_models`` of a
    calibrated FFS-VA filter).

    Raises:
        ConfigError: a TOML file, or a file whose ``streams`` do not hold the rule.
    """
    suffix = source.suffix.lower()
    text = source.read_text(encoding="utf-8")
    if suffix in {".yaml", ".yml"}:
        from ruamel.yaml import YAML

        yaml = YAML()  # round-trip mode
        yaml.preserve_quotes = True
        yaml.width = 4096  # keep flow mappings on the line they were written on
        yaml.indent(mapping=2, sequence=4, offset=2)  # the project's config style
        yaml.brace_single_entry_mapping_in_flow_sequence = True  # [{type: mtcnn}] stays so
        data = yaml.load(text)
    elif suffix == ".json":
        data = json.loads(text)
    else:
        raise ConfigError(f"{source}: calibrate writes YAML or JSON configs, not {suffix}")
    try:
        entries = data["streams"][rule_index]["filters"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ConfigError(f"{source}: streams[{rule_index}].filters not found") from exc
    for index, chosen in enumerate(result.chosen):
        entry = entries[index]
        for name, value in chosen.items():
            existing = entry.get(name)
            if isinstance(value, dict) and isinstance(existing, dict):
                existing.clear()  # in place: a flow mapping stays a flow mapping
                existing.update(value)
            else:
                entry[name] = dict(value) if isinstance(value, dict) else value
        if index in snm_files:
            relative = _relative(snm_files[index], target.parent)
            models = entry.get("snm_models") or {}
            models[key] = relative
            entry["snm_models"] = models
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        if suffix == ".json":
            json.dump(data, fh, indent=2)
            fh.write("\n")
        else:
            yaml.dump(data, fh)
    tmp.replace(target)


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
