"""Choosing filter thresholds from the full model's own answers (NoScope's optimizer).

A calibration window is a run of consecutive frames of one stream with the
full model's answer to every frame. :func:`calibrate` replays the stream's
configured filter chain over the window at many candidate settings, exactly
as the pipeline would run it (the real filter classes, in chain order, first
drop wins, a dropped frame repeats the last answer, passed frames are
observed with their full-model answer), scores each replay against the full
model's answers, and keeps the cheapest setting that reaches the accuracy
target.

**Cost model** (NoScope, Kang et al. VLDB 2017, §5): the expected cost of a
frame is the sum over stages of (fraction of frames reaching the stage) ×
(the stage's cost per frame), the full model being the last stage. The
filter stages' costs are measured while replaying each candidate on this
machine, and the model's cost is measured by the caller (``model_s``) at
calibration time, so nothing is hard-coded. Among the candidates whose
accuracy reaches the target the one with the least expected cost wins;
when none does, the most accurate one (then the cheapest) is chosen and
:attr:`CalibrationResult.met` is False.

**Search.** Each filter has a grid of its tunable settings (NoScope:
distance threshold × ``t_skip``; Reducto: the configured features'
thresholds at common quantiles of their differences; FFS-VA: SDD threshold
× SNM low × SNM high × count stage, with the SNM first trained on the
window's full-model answers; frame_diff: threshold). The SNM's thresholds
are chosen by cross-fitting: each half of the window is replayed with an
SNM trained on the other half, so they are not fitted to scores the SNM
gives the frames it learned from (the SNM written out is trained on the
whole window). Threshold candidates
are quantiles of the distances the filter itself computes on the window, so
the grid adapts to the scene. With several filters in a chain, the filters
are tuned one after the other in chain order (one coordinate pass), each
with the whole chain replayed, so the accuracy constraint always holds for
the chain as a whole.

Accuracy is measured by the evaluation harness's metrics
(:mod:`streamedge.bench.metrics`): ``windowed`` (NoScope's 30-frame windows)
or ``agreement`` (per frame, boxes matched at IoU ≥ 0.5).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from streamedge.bench.metrics import Accuracy, accuracy
from streamedge.bench.progress import NoProgress, Progress
from streamedge.filters._answers import AnswerSemantics
from streamedge.filters._distance import distance
from streamedge.filters._frames import thumbnail
from streamedge.filters.config import (
    FfsvaFilterConfig,
    FilterConfig,
    FrameDiffFilterConfig,
    NoScopeFilterConfig,
    ReductoFilterConfig,
)
from streamedge.records import (
    JSON,
    Frame,
    Image,
    InferenceResult,
    ModelRef,
    StreamKey,
    Tier,
    Verdict,
)

logger = logging.getLogger(__name__)

CalibrationMetric = Literal["windowed", "agreement", "count_agreement", "presence_agreement"]

QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
"""Quantiles of a filter's own (non-zero) distances tried as thresholds; 0 and half the
smallest non-zero distance are always tried too."""
T_SKIPS = (1, 2, 3, 5, 10, 15, 30)
"""NoScope's t_skip candidates (its optimizer tries 10 and 30; small ones keep accuracy)."""
SNM_LOWS = (0.0, 0.05, 0.2, 0.5)
SNM_HIGHS = (0.5, 0.9, 1.0)
TUNABLE = frozenset({"frame_diff", "noscope", "reducto", "ffsva"})
"""Filter types :func:`calibrate` has a grid for; others keep their settings."""
ONLINE_SETTINGS: Mapping[str, frozenset[str]] = {
    "noscope": frozenset({"threshold"}),
    "reducto": frozenset({"thresholds"}),
    "ffsva": frozenset({"sdd_threshold", "snm_low", "snm_high"}),
}
"""Settings a running filter can take per stream (its ``set_threshold(s)``), by type."""

_REF = ModelRef("reference", "calibration")


@dataclass(frozen=True, slots=True)
class CalibrationWindow:
    """Consecutive frames of one stream with the full model's answer to each."""

    stream: StreamKey
    frames: Sequence[Image]
    ts: Sequence[float]
    answers: Sequence[JSON]

    def __post_init__(self) -> None:
        """Check lengths.

        Raises:
            ValueError: frames, times and answers differ in length, or are empty.
        """
        if not (len(self.frames) == len(self.ts) == len(self.answers)) or not self.frames:
            msg = (
                "a calibration window needs one time and one answer per frame, and a frame: "
                f"{len(self.frames)} frames, {len(self.ts)} times, {len(self.answers)} answers"
            )
            raise ValueError(msg)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, slots=True, kw_only=True)
class Simulation:
    """One replay of a filter chain over a calibration window."""

    given: list[JSON | None]
    """The answer the application holds after each frame (None: none yet)."""
    passed: int
    """Frames that reached the full model."""
    reached: dict[str, int]
    """Frames that reached each filter stage (by position and name, ``0:noscope``)."""
    stage_s: dict[str, float]
    """Seconds spent in each filter stage."""
    errors: int = 0
    """Filter calls that raised (the frame passed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Trial:
    """A candidate setting of one filter, replayed with the whole chain, and its score."""

    filter_index: int
    filter_type: str
    settings: dict[str, Any]
    accuracy: Accuracy
    score: float
    """The calibration metric's value."""
    pass_fraction: float
    """Fraction of frames that reached the full model."""
    filter_ms: float
    """Measured filter cost per frame (all stages, weighted by the frames reaching them)."""
    cost_ms: float
    """Expected cost per frame: filter_ms + pass_fraction × model cost."""
    meets: bool

    def to_json(self) -> JSON:
        """A JSON-serialisable dict."""
        return {
            "filter": f"{self.filter_index}:{self.filter_type}",
            "settings": _jsonable(self.settings),
            "score": self.score,
            "agreement": self.accuracy.agreement,
            "windowed": self.accuracy.windowed.accuracy,
            "pass_fraction": self.pass_fraction,
            "filter_ms": self.filter_ms,
            "cost_ms": self.cost_ms,
            "meets": self.meets,
        }


@dataclass(slots=True, kw_only=True)
class CalibrationResult:
    """What :func:`calibrate` chose, and everything it tried."""

    filters: list[FilterConfig]
    """The chain with the chosen settings (an FFS-VA SNM is referenced by ``snm_paths``)."""
    chosen: list[dict[str, Any]]
    """Per filter, the settings that were changed (empty for untuned filters)."""
    final: Trial | None
    """The chain at the chosen settings (None when no filter is tunable)."""
    trials: list[Trial]
    model_ms: float
    target: float
    metric: CalibrationMetric
    frames: int
    snm: dict[int, bytes] = field(default_factory=dict)
    """Per FFS-VA position, the SNM trained on the window (ONNX bytes)."""

    @property
    def met(self) -> bool:
        """Whether the chosen chain reaches the target on the window."""
        return self.final is None or self.final.meets

    def to_json(self) -> JSON:
        """A JSON-serialisable summary."""
        return {
            "target": self.target,
            "metric": self.metric,
            "frames": self.frames,
            "model_ms": self.model_ms,
            "met": self.met,
            "chosen": [_jsonable(c) for c in self.chosen],
            "final": self.final.to_json() if self.final else None,
            "trials": len(self.trials),
        }


def _jsonable(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in settings.items()}


# ---------------------------------------------------------------------------- replay


def simulate(filters: Sequence[FilterConfig], window: CalibrationWindow) -> Simulation:
    """Replay a filter chain over a window as the pipeline runs it, timing each stage."""
    from streamedge.filters.chain import build_filter  # the chain module imports filters lazily

    built = [build_filter(cfg, max_streams=4) for cfg in filters]
    names = [f"{i}:{flt.name}" for i, flt in enumerate(built)]
    reached = dict.fromkeys(names, 0)
    stage_s = dict.fromkeys(names, 0.0)
    given: list[JSON | None] = []
    last: JSON | None = None
    passed = errors = 0
    stream = window.stream
    for image, ts, answer in zip(window.frames, window.ts, window.answers, strict=True):
        item = Frame(stream=stream, ts=ts, image=image)
        dropped = False
        for name, flt in zip(names, built, strict=True):
            reached[name] += 1
            start = time.perf_counter()
            try:
                verdict = flt.check(stream, item, ts)
            except Exception:  # noqa: BLE001  # fail open, as the pipeline's chain
                verdict = Verdict.PASS
                errors += 1
            stage_s[name] += time.perf_counter() - start
            if verdict is Verdict.DROP:
                dropped = True
                break
        if dropped:
            given.append(last)
            continue
        passed += 1
        last = answer
        given.append(answer)
        result = InferenceResult(
            model=_REF, answer=answer, tier=Tier.LOCAL, backend="calibration", latency_s=0.0
        )
        for flt in built:
            with contextlib.suppress(Exception):  # as the chain: an observe bug loses nothing
                flt.observe(stream, item, result)
    return Simulation(given=given, passed=passed, reached=reached, stage_s=stage_s, errors=errors)


def metric_of(acc: Accuracy, metric: CalibrationMetric) -> float:
    """The calibration metric's value (windowed: 1.0 when no window is complete)."""
    if metric == "windowed":
        value = acc.windowed.accuracy
        return 1.0 if value is None else value
    result: float = getattr(acc, metric)
    return result


Fold = tuple[CalibrationWindow, Sequence[FilterConfig]]
"""A part of the window and the chain replayed on it."""


def _trial(
    index: int,
    ftype: str,
    settings: dict[str, Any],
    folds: Sequence[Fold],
    *,
    target: float,
    metric: CalibrationMetric,
    model_s: float,
) -> Trial:
    reference: list[JSON] = []
    given: list[JSON | None] = []
    passed = 0
    filter_s = 0.0
    for part, chain in folds:
        sim = simulate(chain, part)
        reference.extend(part.answers)
        given.extend(sim.given)
        passed += sim.passed
        filter_s += sum(sim.stage_s.values())
    n = len(reference)
    acc = accuracy(reference, given)
    score = metric_of(acc, metric)
    pass_fraction = passed / n
    return Trial(
        filter_index=index,
        filter_type=ftype,
        settings=settings,
        accuracy=acc,
        score=score,
        pass_fraction=pass_fraction,
        filter_ms=1e3 * filter_s / n,
        cost_ms=1e3 * (filter_s / n + pass_fraction * model_s),
        meets=score >= target - 1e-12,
    )


def _halves(window: CalibrationWindow) -> tuple[CalibrationWindow, CalibrationWindow]:
    mid = len(window) // 2
    return (
        CalibrationWindow(
            window.stream, window.frames[:mid], window.ts[:mid], window.answers[:mid]
        ),
        CalibrationWindow(
            window.stream, window.frames[mid:], window.ts[mid:], window.answers[mid:]
        ),
    )


def choose(trials: Sequence[Trial]) -> Trial:
    """The cheapest trial that meets the target; else the most accurate, then cheapest.

    Ties in cost (within 1 %) go to the more accurate trial.

    Raises:
        ValueError: no trials.
    """
    if not trials:
        raise ValueError("no trials to choose from")
    ok = [t for t in trials if t.meets]
    if ok:
        cheapest = min(t.cost_ms for t in ok)
        close = [t for t in ok if t.cost_ms <= cheapest * 1.01 + 1e-9]
        return max(close, key=lambda t: (t.score, -t.cost_ms))
    return max(trials, key=lambda t: (t.score, -t.cost_ms))


# ---------------------------------------------------------------------------- grids


def _quantile_levels(values: Sequence[float], *, zero: bool = True) -> list[float]:
    """Thresholds at :data:`QUANTILES` of ``values`` (rounded, unique, ascending)."""
    levels = {0.0} if zero else set()
    arr = np.asarray(values, dtype=np.float64)
    positive = arr[arr > 0]
    if positive.size:
        # Identical frames (distance 0) are common on static scenes: a threshold
        # just above 0 drops exactly those, so it is always a candidate.
        levels.add(float(positive.min()) / 2)
        for q in QUANTILES:
            levels.add(float(np.format_float_positional(np.quantile(positive, q), precision=4)))
    return sorted(levels)


def _thumbs(window: CalibrationWindow, size: int) -> list[Image]:
    return [thumbnail(f, size) for f in window.frames]


def _frame_diff_grid(cfg: FrameDiffFilterConfig, window: CalibrationWindow) -> list[dict[str, Any]]:
    thumbs = _thumbs(window, cfg.size)
    dists = [distance(a, b, "global", 1) for a, b in itertools.pairwise(thumbs)]
    return [{"threshold": t} for t in _quantile_levels(dists)]


def _noscope_grid(
    cfg: NoScopeFilterConfig, window: CalibrationWindow, *, online: bool
) -> list[dict[str, Any]]:
    thumbs = _thumbs(window, cfg.size)
    sem = AnswerSemantics(cfg.answer)
    if cfg.mode == "earlier":
        lag = min(cfg.t_diff, max(1, len(thumbs) - 1))
        dists = [
            distance(thumbs[i], thumbs[i - lag], cfg.metric, cfg.blocks)
            for i in range(lag, len(thumbs))
        ]
    else:
        empty = [t for t, a in zip(thumbs, window.answers, strict=True) if sem.is_empty(a)]
        if empty:
            ref = np.mean(np.stack(empty).astype(np.float32), axis=0)
            dists = [distance(t, ref, cfg.metric, cfg.blocks) for t in thumbs]
        else:
            dists = []
    thresholds = _quantile_levels(dists)
    if online:
        return [{"threshold": t} for t in thresholds]
    skips = sorted({s for s in T_SKIPS if s <= max(1, len(window) // 4)} | {1})
    return [{"threshold": t, "t_skip": s} for s in skips for t in thresholds]


def _reducto_grid(cfg: ReductoFilterConfig, window: CalibrationWindow) -> list[dict[str, Any]]:
    from streamedge.filters.reducto import difference_series

    series = {f: difference_series(window.frames, feature=f, cfg=cfg) for f in cfg.thresholds}
    grid: list[dict[str, Any]] = [{"thresholds": dict.fromkeys(cfg.thresholds, 0.0)}]
    for q in QUANTILES:
        thresholds = {
            f: float(np.format_float_positional(np.quantile(v, q), precision=5)) if v else 0.0
            for f, v in series.items()
        }
        if thresholds not in [g["thresholds"] for g in grid]:
            grid.append({"thresholds": thresholds})
    return grid


def _ffsva_grid(
    cfg: FfsvaFilterConfig, window: CalibrationWindow, *, online: bool
) -> list[dict[str, Any]]:
    thumbs = _thumbs(window, cfg.size)
    background = np.median(np.stack(thumbs).astype(np.float32), axis=0)
    dists = [distance(t, background, cfg.sdd_metric, cfg.sdd_blocks) for t in thumbs]
    sdds = _quantile_levels(dists)
    has_snm = bool(cfg.snm_models)
    lows = SNM_LOWS if has_snm else (cfg.snm_low,)
    counts = [cfg.count_source]
    if not online and cfg.count_source != "none":
        counts.append("none")  # FFS-VA's count stage may cost more than it saves
    grid: list[dict[str, Any]] = []
    for sdd, low, count in itertools.product(sdds, lows, counts):
        # snm_high only matters when a count stage follows the SNM.
        highs = SNM_HIGHS if has_snm and count != "none" else (max(cfg.snm_high, low),)
        for high in highs:
            if low > high:
                continue
            setting: dict[str, Any] = {"sdd_threshold": sdd, "snm_low": low, "snm_high": high}
            if not online:
                setting["count_source"] = count
            grid.append(setting)
    return grid


def grid_for(
    cfg: FilterConfig, window: CalibrationWindow, *, online: bool = False
) -> list[dict[str, Any]]:
    """The candidate settings of one filter on this window (empty: not tunable).

    ``online`` keeps to settings a running filter can take per stream
    (:data:`ONLINE_SETTINGS`).
    """
    if isinstance(cfg, FrameDiffFilterConfig):
        return [] if online else _frame_diff_grid(cfg, window)
    if isinstance(cfg, NoScopeFilterConfig):
        return _noscope_grid(cfg, window, online=online)
    if isinstance(cfg, ReductoFilterConfig):
        return _reducto_grid(cfg, window)
    if isinstance(cfg, FfsvaFilterConfig):
        return _ffsva_grid(cfg, window, online=online)
    return []


# ---------------------------------------------------------------------------- SNM


def train_window_snm(
    cfg: FfsvaFilterConfig, window: CalibrationWindow, *, min_per_class: int = 5
) -> bytes | None:
    """Train FFS-VA's SNM on the window's frames and full-model answers (None: too few).

    Needs ``min_per_class`` empty and non-empty frames.
    """
    from streamedge.filters._snm import fit_snm, snm_input

    sem = AnswerSemantics(cfg.answer)
    labels = np.array([not sem.is_empty(a) for a in window.answers], dtype=bool)
    positives = int(labels.sum())
    if positives < min_per_class or len(labels) - positives < min_per_class:
        return None
    counts = np.array(
        [
            float(sem.count(a) or 0) if lab else 0.0
            for a, lab in zip(window.answers, labels, strict=True)
        ],
        dtype=np.float32,
    )
    x = np.stack(
        [
            snm_input(thumbnail(f, cfg.size), size=cfg.snm_size, grayscale=cfg.snm_grayscale)
            for f in window.frames
        ]
    )
    return fit_snm(
        x,
        labels,
        counts,
        thumb=cfg.size,
        size=cfg.snm_size,
        grayscale=cfg.snm_grayscale,
        l2=cfg.snm_l2,
    )


# ---------------------------------------------------------------------------- search


def search_size(filters: Sequence[FilterConfig], window: CalibrationWindow) -> int:
    """How many replays :func:`calibrate` will run (for a progress total); an estimate
    for FFS-VA, whose grid depends on whether an SNM can be trained."""
    total = 1
    for cfg in filters:
        if isinstance(cfg, FfsvaFilterConfig) and not cfg.snm_models:
            cfg = cfg.model_copy(update={"snm_models": {"*": Path("snm.onnx")}})
        total += len(grid_for(cfg, window))
    return total


def calibrate(
    filters: Sequence[FilterConfig],
    window: CalibrationWindow,
    *,
    target: float,
    model_s: float,
    metric: CalibrationMetric = "windowed",
    online: bool = False,
    train_snm: bool = True,
    progress: Progress | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> CalibrationResult:
    """Choose the chain's settings on a window (see the module docstring).

    Args:
        filters: The stream rule's filter chain, in order.
        window: Frames with the full model's answers.
        target: Accuracy to reach, e.g. 0.99.
        model_s: Measured seconds per full-model run on this machine.
        metric: Which accuracy the target applies to.
        online: Tune only settings a running filter takes per stream.
        train_snm: Train an FFS-VA filter's SNM on the window first.
        progress: Advanced once per replay.
        on_trial: Called with every trial (for logging).

    Raises:
        ValueError: ``target`` outside 0-1 or a negative ``model_s``.
    """
    if not 0.0 <= target <= 1.0:
        msg = f"target must be within 0-1, got {target}"
        raise ValueError(msg)
    if model_s < 0:
        msg = f"model cost must be non-negative, got {model_s}"
        raise ValueError(msg)
    progress = progress or NoProgress()
    current: list[FilterConfig] = list(filters)
    chosen: list[dict[str, Any]] = [{} for _ in current]
    trials: list[Trial] = []
    snm: dict[int, bytes] = {}
    # Per FFS-VA position, SNM files trained on each half of the window: a
    # half is replayed with the SNM of the other half (cross-fitting), so the
    # thresholds are chosen on scores of frames the SNM did not learn from.
    crossed: dict[int, tuple[Path, Path]] = {}
    kwargs: dict[str, Any] = {"target": target, "metric": metric, "model_s": model_s}
    first, second = _halves(window)

    def folds(chain: Sequence[FilterConfig]) -> list[Fold]:
        if not crossed:
            return [(window, chain)]
        parts: list[Fold] = []
        for part, use in ((first, 1), (second, 0)):
            variant = list(chain)
            for i, paths in crossed.items():
                cfg_i = variant[i]
                if isinstance(cfg_i, FfsvaFilterConfig):
                    variant[i] = cfg_i.model_copy(update={"snm_models": {"*": paths[use]}})
            parts.append((part, variant))
        return parts

    with tempfile.TemporaryDirectory(prefix="streamedge-calibrate-") as tmp:
        for index, cfg in enumerate(current):
            if isinstance(cfg, FfsvaFilterConfig) and train_snm:
                onnx_bytes = train_window_snm(cfg, window)
                if onnx_bytes is not None:
                    path = Path(tmp) / f"snm-{index}.onnx"
                    path.write_bytes(onnx_bytes)
                    snm[index] = onnx_bytes
                    cfg = cfg.model_copy(update={"snm_models": {"*": path}})
                    current[index] = cfg
                    halves = [train_window_snm(cfg, half) for half in (first, second)]
                    if halves[0] is not None and halves[1] is not None:
                        pair = (
                            Path(tmp) / f"snm-{index}-a.onnx",
                            Path(tmp) / f"snm-{index}-b.onnx",
                        )
                        pair[0].write_bytes(halves[0])
                        pair[1].write_bytes(halves[1])
                        crossed[index] = pair
                else:
                    logger.warning(
                        "ffsva: too few empty or non-empty frames in the window to train an SNM"
                    )
            grid = grid_for(cfg, window, online=online)
            if not grid:
                continue
            own: list[Trial] = []
            for setting in grid:
                candidate = cfg.model_copy(update=setting)
                chain = [*current[:index], candidate, *current[index + 1 :]]
                trial = _trial(index, cfg.type, setting, folds(chain), **kwargs)
                own.append(trial)
                if on_trial is not None:
                    on_trial(trial)
                progress.advance()
            best = choose(own)
            trials.extend(own)
            current[index] = cfg.model_copy(update=best.settings)
            chosen[index] = dict(best.settings)
            logger.info(
                "%s: %s -> %s %.4f, %.1f %% to the model, %.2f ms per frame",
                window.stream,
                cfg.type,
                best.settings,
                best.score,
                100 * best.pass_fraction,
                best.cost_ms,
            )
        final = None
        if any(chosen):
            final = _trial(-1, "chain", {}, folds(current), **kwargs)
            progress.advance()
    # The SNM files lived in the temporary directory: the caller persists snm.
    for index in snm:
        original = filters[index]
        models = dict(original.snm_models) if isinstance(original, FfsvaFilterConfig) else {}
        current[index] = current[index].model_copy(update={"snm_models": models})
    return CalibrationResult(
        filters=current,
        chosen=chosen,
        final=final,
        trials=trials,
        model_ms=1e3 * model_s,
        target=target,
        metric=metric,
        frames=len(window),
        snm=snm,
    )
