"""``streamedge bench eval``: replay a video through gateway configurations and score them.

Each ``--config`` is an ordinary gateway configuration file (models, caches,
stream rules); the evaluated application is the first app of the rule that
matches the replayed stream (``--device``/``--stream``, default
``cam1/camera``), or ``--app``. The full model's answer to every frame is
computed once and kept in ``--reference-dir``. Prints a table; ``--json`` and
``--plot`` write the figures and the agreement-vs-savings plot.

``--quick`` runs on the committed 60-frame excerpt of vtest.avi; without
``--config`` it uses the configurations in ``benchmarks/configs/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamedge.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from streamedge.errors import ConfigError, MissingDependencyError, StreamedgeError

NAME = "eval"
HELP = "score configurations against the full model on a video (table, JSON, plot)"

CONFIG_DIR = Path("benchmarks") / "configs"
"""Where the default configurations live, under the current directory or the checkout."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``bench eval``."""
    parser.add_argument(
        "--video",
        default="vtest",
        help="video file, or a sample name (vtest, megamind: the full video when "
        "scripts/fetch_data.sh fetched it, else the committed excerpt)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="[LABEL=]FILE",
        help="gateway configuration to evaluate (repeat; label defaults to the file name)",
    )
    parser.add_argument("--quick", action="store_true", help="the committed excerpt, 60 frames")
    parser.add_argument("--frames", type=int, default=None, help="replay at most N frames")
    parser.add_argument(
        "--cameras",
        default=None,
        metavar="PRESET",
        help="replay derived cameras interleaved (overlap, jitter, mixed) instead of one",
    )
    parser.add_argument("--device", default="cam1", help="device name of the replayed stream")
    parser.add_argument("--stream", default="camera", help="stream name of the replayed stream")
    parser.add_argument("--app", default=None, help="application to evaluate (default: first)")
    parser.add_argument(
        "--uniform-metric",
        default="agreement",
        choices=["agreement", "count_agreement", "presence_agreement", "windowed"],
        help="what uniform sampling must match for the 'same agreement' column",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--records", action="store_true", help="include every frame's record in the JSON"
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument(
        "--reference-dir",
        type=Path,
        default=None,
        help="where reference answers are kept (default ~/.cache/streamedge/reference)",
    )
    parser.add_argument(
        "--recompute-reference", action="store_true", help="ignore stored reference answers"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")


def _default_configs() -> list[Path]:
    from streamedge.datasets import REPO_ROOT

    for root in (Path.cwd(), REPO_ROOT):
        found = sorted((root / CONFIG_DIR).glob("*.yaml"))
        if found:
            return found
    return []


def _labelled(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or "/" in label:
            path, label = item, Path(item).stem
        out.append((label, Path(path)))
    return out


def run(args: argparse.Namespace) -> int:
    """Evaluate; print the table; write JSON and plot when asked."""
    from streamedge.bench.evaluate import evaluate, no_progress, progress_lines
    from streamedge.bench.reference import ReferenceStore
    from streamedge.bench.report import format_table, plot, write_json
    from streamedge.bench.workloads import StreamSpec, derived_cameras
    from streamedge.config import load_config
    from streamedge.datasets import find_video
    from streamedge.log import setup_logging

    setup_logging(None, verbose=args.verbose, quiet=not args.verbose)
    if args.frames is not None and args.frames < 1:
        print("streamedge bench eval: --frames must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    video = Path(args.video)
    try:
        if not video.is_file():
            video = find_video(args.video, excerpt_only=args.quick)
    except FileNotFoundError as exc:
        print(f"streamedge bench eval: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    frames = args.frames if args.frames is not None else (60 if args.quick else None)
    if args.cameras:
        try:
            streams = derived_cameras(
                video, args.cameras, stream=args.stream, prefix=args.device, max_frames=frames
            )
        except ValueError as exc:
            print(f"streamedge bench eval: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    else:
        streams = [
            StreamSpec(video=video, device=args.device, stream=args.stream, max_frames=frames)
        ]
    pairs = _labelled(args.config) if args.config else [(p.stem, p) for p in _default_configs()]
    if not pairs:
        print(
            "streamedge bench eval: give --config FILE (or run it in the checkout, whose "
            f"{CONFIG_DIR} has the default configurations)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configs = [(label, load_config(path)) for label, path in pairs]  # ConfigError: exit 2
    try:
        evaluation = evaluate(
            configs,
            streams,
            store=ReferenceStore(args.reference_dir),
            app=args.app,
            progress=no_progress if args.no_progress else progress_lines,
            recompute_reference=args.recompute_reference,
            uniform_metric=args.uniform_metric,
        )
    except StreamedgeError as exc:
        print(f"streamedge bench eval: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_FAILURE
    print(format_table(evaluation))
    if args.json is not None:
        print(f"figures: {write_json(evaluation, args.json, frames=args.records)}")
    if args.plot is not None:
        try:
            print(f"plot: {plot(evaluation, args.plot)}")
        except MissingDependencyError as exc:
            print(f"streamedge bench eval: no plot: {exc} (or 'streamedge[plot]')", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK
