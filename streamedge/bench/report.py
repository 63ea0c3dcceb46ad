"""An evaluation as a terminal table, a JSON file and a PNG plot.

The plot needs matplotlib, an optional dependency (``pip install
'streamedge[plot]'``; the ``dev`` extra includes it), imported only here and
only when a plot is asked for.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from streamedge.bench.baselines import BaselinePoint
from streamedge.bench.evaluate import ConfigResult, Evaluation
from streamedge.errors import MissingDependencyError


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _levels(result: ConfigResult) -> str:
    fractions = result.level_fractions()
    short = {"filter": "F", "cache": "C", "local": "L", "edge": "E", "cloud": "D", "dropped": "X"}
    return " ".join(f"{short[k]}{100 * v:.0f}" for k, v in fractions.items())


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _config_row(result: ConfigResult) -> list[str]:
    acc = result.accuracy
    uniform = result.uniform
    uniform_text = (
        "-" if uniform is None else f"k={uniform.k} ({100 * uniform.inference_fraction:.1f}%)"
    )
    return [
        result.name,
        _pct(result.inference_fraction),
        _pct(acc.agreement),
        _pct(acc.count_agreement),
        _pct(acc.windowed.accuracy),
        _pct(acc.windowed.false_negative_rate),
        _levels(result),
        _ratio(result.infer_s_ratio),
        f"{_ratio(result.throughput_ratio)} / {_ratio(result.cpu_ratio)}",
        uniform_text,
    ]


def _baseline_row(point: BaselinePoint, name: str) -> list[str]:
    acc = point.accuracy
    return [
        name,
        _pct(point.inference_fraction),
        _pct(acc.agreement),
        _pct(acc.count_agreement),
        _pct(acc.windowed.accuracy),
        _pct(acc.windowed.false_negative_rate),
        "",
        "",
        "",
        "",
    ]


HEADER = (
    "configuration",
    "model runs",
    "agreement",
    "count agr.",
    "windowed",
    "win. FN",
    "stopped at %",
    "infer-s",
    "speed wall / cpu",
    "uniform, same agr.",
)


def format_table(evaluation: Evaluation) -> str:
    """The evaluation as a plain-text table with a short legend."""
    ref = evaluation.reference_summary()
    streams = ", ".join(s.key for s in evaluation.streams)
    model_ms = ref["model_ms_mean"]
    lines = [
        f"model {evaluation.model} (app {evaluation.app}) on {streams}: "
        f"{ref['frames']} frames, {ref['positive_frames']} with a detection, "
        f"full model {model_ms:.1f} ms/frame (mean, reference run)"
        if model_ms is not None
        else f"model {evaluation.model} on {streams}: {ref['frames']} frames",
    ]
    rows = [_config_row(evaluation.every_frame)]
    rows += [_config_row(c) for c in evaluation.configs]
    rows.append(_baseline_row(evaluation.oracle, "oracle (answer changes)"))
    rows.append(_baseline_row(evaluation.oracle_count, "oracle (count changes)"))
    lines.append(_table(HEADER, rows))
    lines.append(
        "model runs: frames sent to the model; agreement: boxes matched at IoU >= 0.5 "
        "both ways; windowed: NoScope 30-frame windows (>= 28 positive); "
        "stopped at: F filter, C cache, L local model; infer-s: inference seconds "
        "relative to infer-every-frame (same run); speed: frames per second of "
        "processor wall time and of process CPU time relative to infer-every-frame "
        "(CPU time is not inflated by other processes on a shared machine); "
        "uniform: every k-th frame at the same agreement."
    )
    lines.append("")
    lines.append(format_stages(evaluation))
    lines.extend(f"note: {n}" for n in evaluation.notes)
    return "\n".join(lines)


STAGES = ("decode", "filter", "embed", "lookup", "infer")  # as answers carry them


def format_stages(evaluation: Evaluation) -> str:
    """Mean cost of each pipeline stage per configuration, ms, over the frames it ran on."""
    results = [evaluation.every_frame, *evaluation.configs]
    rows = []
    for result in results:
        means = result.replay.stage_means_ms()
        cpu_ms = 1e3 * result.replay.cpu_s / result.frames if result.frames else 0.0
        wall_ms = 1e3 * result.replay.wall_s / result.frames if result.frames else 0.0
        cells = [f"{means[s]:.3f}" if s in means else "-" for s in STAGES]
        rows.append([result.name, *cells, f"{wall_ms:.1f}", f"{cpu_ms:.1f}"])
    header = ["stage ms (mean where run)", *STAGES, "wall/frame", "cpu/frame"]
    return _table(header, rows)


def write_json(evaluation: Evaluation, path: Path | str, *, frames: bool = False) -> Path:
    """Write the evaluation's JSON atomically (``frames``: with per-frame records)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(evaluation.to_json(frames=frames), fh, indent=1)
        fh.write("\n")
    Path(tmp).replace(path)
    return path


def plot(evaluation: Evaluation, path: Path | str, *, title: str | None = None) -> Path:
    """Plot agreement against the fraction of inference saved, for each configuration.

    Two panels: per-frame box agreement and count agreement. Each configuration
    is a labelled point; uniform sampling is a curve (every k-th frame), the
    oracle is the limit, infer-every-frame sits at (0, 100 %).

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    try:
        import matplotlib as mpl
    except ImportError as exc:
        raise MissingDependencyError("bench plot", "matplotlib") from exc
    mpl.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=False)
    panels = [
        ("agreement", "per-frame agreement (boxes, IoU >= 0.5)"),
        ("count_agreement", "per-frame count agreement"),
    ]
    curve = evaluation.uniform_curve
    for ax, (metric, label) in zip(axes, panels, strict=True):
        xs = [100 * (1 - p.inference_fraction) for p in curve]
        ys = [100 * getattr(p.accuracy, metric) for p in curve]
        ax.plot(xs, ys, "-", color="0.6", marker=".", label="uniform: every k-th frame")
        for p, x, y in zip(curve, xs, ys, strict=True):
            if p.k in (2, 5, 10, 30, 100):
                ax.annotate(
                    f"k={p.k}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(3, -10),
                    fontsize=7,
                    color="0.4",
                )
        for point, marker, text in (
            (evaluation.oracle, "*", "oracle (answer changes)"),
            (evaluation.oracle_count, "P", "oracle (count changes)"),
        ):
            ax.plot(
                100 * (1 - point.inference_fraction),
                100 * getattr(point.accuracy, metric),
                marker,
                color="black",
                markersize=10,
                linestyle="none",
                label=text,
            )
        placed: list[tuple[float, float]] = []
        for result in [evaluation.every_frame, *evaluation.configs]:
            x = 100 * result.inference_saved
            y = 100 * getattr(result.accuracy, metric)
            ax.plot(x, y, "o", markersize=8, linestyle="none", label=result.name)
            # Stack the labels of points that (nearly) coincide instead of overprinting.
            near = sum(1 for px, py in placed if abs(px - x) < 25 and abs(py - y) < 2)
            placed.append((x, y))
            ax.annotate(
                result.name,
                (x, y),
                textcoords="offset points",
                xytext=(5, 4 - 10 * near),
                fontsize=8,
            )
        ax.set_xlabel("inference saved (% of frames not sent to the model)")
        ax.set_ylabel(f"{label} (%)")
        ax.set_xlim(-2, 102)
        ax.grid(visible=True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    streams = ", ".join(s.key for s in evaluation.streams)
    fig.suptitle(
        title
        or f"{evaluation.model} on {evaluation.streams[0].video.name} ({streams}): "
        "agreement with the full model vs inference saved"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
