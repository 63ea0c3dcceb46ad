"""Drawing the published history (``streamedge stats --plot``).

:func:`series` turns a history document (``<prefix>/stats/history``) into
the plotted series; :func:`plot_history` draws them with matplotlib (the
``plot`` extra, imported only here and only when called): throughput, hit
ratio per cache level and overall reuse, drops by reason, and latency per
tier, against minutes before the newest point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamedge.errors import MissingDependencyError, StreamedgeError

LEVELS = ("layer", "application", "device")


@dataclass(slots=True)
class Series:
    """What one plot shows, each list aligned with ``minutes``."""

    minutes: list[float]
    rates: dict[str, list[float]] = field(default_factory=dict)
    hit_ratio: dict[str, list[float | None]] = field(default_factory=dict)
    drops: dict[str, list[float]] = field(default_factory=dict)
    latency_ms: dict[str, list[float | None]] = field(default_factory=dict)


def _div(num: float, den: float) -> float | None:
    return num / den if den else None


def series(doc: dict[str, Any]) -> Series:
    """The plotted series of a history document.

    Raises:
        StreamedgeError: the document is not a history (no points, or wrong shape).
    """
    try:
        t = [float(x) for x in doc["t"]]
        dt = [float(x) for x in doc["dt"]]
        counts: dict[str, list[float]] = {
            k: [float(v) for v in vs] for k, vs in doc["counts"].items()
        }
        latency: dict[str, Any] = doc["latency_ms"]
    except (KeyError, TypeError, ValueError) as exc:
        raise StreamedgeError(f"not a streamedge stats history document: {exc}") from exc
    if not t:
        raise StreamedgeError("the history has no points yet (one per stats.history.interval_s)")
    n = len(t)
    zeros = [0.0] * n

    def col(name: str) -> list[float]:
        return counts.get(name, zeros)

    out = Series(minutes=[(x - t[-1]) / 60.0 for x in t])
    for name in ("in", "answered", "filtered", "dropped"):
        out.rates[name] = [c / d if d > 0 else 0.0 for c, d in zip(col(name), dt, strict=True)]
    for level in LEVELS:
        hits, misses = col(f"cache.{level}.hits"), col(f"cache.{level}.misses")
        if any(hits) or any(misses):
            out.hit_ratio[level] = [_div(h, h + m) for h, m in zip(hits, misses, strict=True)]
    reused = [a + b for a, b in zip(col("answers.cache"), col("answers.filter"), strict=True)]
    if any(col("answered")):
        out.hit_ratio["reused answers"] = [
            _div(r, a) for r, a in zip(reused, col("answered"), strict=True)
        ]
    for name, values in sorted(counts.items()):
        if name.startswith("drops.") and any(values):
            out.drops[name.removeprefix("drops.")] = values
    for name, per in sorted(latency.items()):
        label = name.removeprefix("inference.")
        for q in ("p50", "p95"):
            found = per.get(q) if isinstance(per, dict) else None
            if isinstance(found, list) and any(v is not None for v in found):
                out.latency_ms[f"{label} {q}"] = [None if v is None else float(v) for v in found]
    return out


def plot_history(doc: dict[str, Any], path: Path) -> Path:
    """Draw the history into ``path`` (PNG, SVG or PDF by its suffix).

    Raises:
        MissingDependencyError: matplotlib is not installed (the ``plot`` extra).
        StreamedgeError: the document is not a usable history.
    """
    data = series(doc)
    try:
        import matplotlib as mpl

        mpl.use("Agg")  # files only; no display on a Pi or in CI
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("streamedge stats --plot", "streamedge[plot]") from exc

    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    title = f"streamedge {doc.get('gateway', '?')}: last {len(data.minutes)} points"
    title += f", one per {doc.get('interval_s', '?')} s"
    fig.suptitle(title)
    ax = axes[0]
    for name, values in data.rates.items():
        ax.plot(data.minutes, values, label=name)
    ax.set_ylabel("messages / s")
    ax.legend(loc="upper left", fontsize="small")
    ax = axes[1]
    for name, ratios in data.hit_ratio.items():
        ax.plot(data.minutes, [float("nan") if v is None else v for v in ratios], label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("hit ratio")
    if data.hit_ratio:
        ax.legend(loc="lower left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no cache lookups", ha="center", transform=ax.transAxes)
    ax = axes[2]
    bottom = [0.0] * len(data.minutes)
    width = (data.minutes[1] - data.minutes[0]) * 0.8 if len(data.minutes) > 1 else 0.1
    for reason, values in data.drops.items():
        ax.bar(data.minutes, values, width=width, bottom=bottom, label=reason)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylabel("drops / point")
    if data.drops:
        ax.legend(loc="upper left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no drops", ha="center", transform=ax.transAxes)
    ax = axes[3]
    colors: dict[str, str] = {}
    for name, lat in data.latency_ms.items():
        base = name.rsplit(" ", 1)[0]  # p50 and p95 of one tier share a colour
        color = colors.setdefault(base, f"C{len(colors) % 10}")
        ax.plot(
            data.minutes,
            [float("nan") if v is None else v for v in lat],
            label=name,
            color=color,
            linestyle="--" if name.endswith("p95") else "-",
        )
    ax.set_ylabel("latency (ms)")
    if data.latency_ms:
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize="small", ncol=2)
    ax.set_xlabel("minutes before the newest point")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
