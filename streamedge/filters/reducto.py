"""Reducto's on-camera frame filter (Li et al., "Reducto", SIGCOMM 2020).

What Reducto does, and what this module does with it:

* **Features** (Reducto's ``differencer/diff_processor.py`` and
  ``config/diff_config.ini``), each a fraction of the frame's pixels:

  - ``pixel``: absolute BGR difference, converted to grey, thresholded at 21;
    the fraction of pixels above.
  - ``area``: grey, Gaussian blur, absolute difference, threshold at 21,
    dilate (3×3); the largest external contour's area.
  - ``edge``: grey, Gaussian blur, Canny(101, 255); the fraction of pixels
    whose edge state differs (``absdiff`` of two edge maps thresholded at 21
    is exactly their XOR).

  Reducto computes them at native resolution with 11×11 blurs. Here the
  frame is first subsampled (nearest neighbour, ``width``, default 160 px) and
  blurred 3×3, about the same support relative to the frame: a 640×480 frame
  would cost about 2 ms otherwise. ``width: null`` with 11×11 blurs gives
  Reducto's exact definitions.
* **Reference frame.** Each frame is compared with the last frame that was
  *sent* (passed), not with the previous frame, as Reducto's live mode
  (``process_video``: ``prev_feat`` changes only when a frame is sent), so
  slow drift accumulates until it passes.
* **Decision.** A frame is sent when its difference exceeds the threshold
  (``dis > thresh``). With several features configured, it is sent when any
  exceeds its own threshold.
* **Thresholds from an accuracy target.** Reducto's server profiles segments
  and picks, per segment, the largest threshold whose accuracy stays above the
  target (``hash_builder._get_optimal_thresh``), then maps a segment's 30-bin
  histogram of frame differences to a threshold with a distance-weighted
  5-nearest-neighbour table. This module offers the same pieces for the
  calibration phase: :func:`replay_thresholds` (replay a recorded segment at
  candidate thresholds), :func:`best_threshold`, :class:`ThresholdMap` (the
  kNN table), and :func:`thresholds_for_target` over (feature value, answer
  changed?) pairs the filter records online through ``observe``.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, get_args

import numpy as np
import numpy.typing as npt

from streamedge.filters._answers import UNKNOWN, AnswerSemantics, is_authoritative
from streamedge.filters._frames import validate, working_bgr
from streamedge.filters._state import ItemKey, StreamTable, item_key
from streamedge.filters.config import ReductoFeature, ReductoFilterConfig
from streamedge.records import (
    JSON,
    Frame,
    Image,
    InferenceResult,
    Item,
    StreamKey,
    Verdict,
)

logger = logging.getLogger(__name__)

FEATURES: Final[tuple[ReductoFeature, ...]] = get_args(ReductoFeature)
"""The implemented Reducto features, in a fixed order."""

_EDGE_LEVEL: Final = 21  # Reducto's EDGE_THRESH_LOW_BOUND (edge maps are 0/255)
_PENDING: Final = 8


@dataclass(frozen=True, slots=True)
class Prepared:
    """The per-frame part of the features, computed once and kept while sent."""

    bgr: Image | None
    blurred: Image | None
    edges: Image | None


class ReductoFeatures:
    """Computes Reducto's pixel, area and edge differences between two frames.

    Args:
        cfg: Levels, blurs, Canny thresholds and working width.
        features: Which features to compute (default: those with a threshold).
    """

    def __init__(
        self, cfg: ReductoFilterConfig, features: Iterable[ReductoFeature] | None = None
    ) -> None:
        self.cfg = cfg
        self.features: tuple[ReductoFeature, ...] = tuple(
            f for f in FEATURES if f in set(features if features is not None else cfg.thresholds)
        )
        self._kernel = np.ones((3, 3), dtype=np.uint8)

    def prepare(self, image: Image) -> Prepared:
        """Subsample and precompute what each feature compares.

        Raises:
            UnsupportedFrameError: the image cannot be read.
        """
        import cv2  # lazy: only video pipelines need OpenCV

        cfg = self.cfg
        bgr = working_bgr(image, cfg.width)
        blurred = edges = None
        if "area" in self.features or "edge" in self.features:
            gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
            if "area" in self.features:
                blurred = cv2.GaussianBlur(gray, (cfg.area_blur, cfg.area_blur), 0)
            if "edge" in self.features:
                edge_in = (
                    blurred
                    if blurred is not None and cfg.edge_blur == cfg.area_blur
                    else cv2.GaussianBlur(gray, (cfg.edge_blur, cfg.edge_blur), 0)
                )
                edges = cv2.Canny(edge_in, cfg.canny_low, cfg.canny_high)
        return Prepared(
            bgr if "pixel" in self.features else None,
            None if blurred is None else np.asarray(blurred, dtype=np.uint8),
            None if edges is None else np.asarray(edges, dtype=np.uint8),
        )

    def diff(self, cur: Prepared, ref: Prepared) -> dict[str, float]:
        """Return each configured feature's difference (0-1) between two frames."""
        import cv2

        out: dict[str, float] = {}
        if cur.bgr is not None and ref.bgr is not None:
            delta = cv2.cvtColor(cv2.absdiff(cur.bgr, ref.bgr), cv2.COLOR_BGR2GRAY)
            _, mask = cv2.threshold(delta, self.cfg.pixel_level, 255, cv2.THRESH_BINARY)
            out["pixel"] = cv2.countNonZero(mask) / mask.size
        if cur.blurred is not None and ref.blurred is not None:
            delta = cv2.absdiff(cur.blurred, ref.blurred)
            _, mask = cv2.threshold(delta, self.cfg.area_level, 255, cv2.THRESH_BINARY)
            mask = cv2.dilate(mask, self._kernel)  # OpenCV's default 3×3, as Reducto
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            largest = max((cv2.contourArea(c) for c in contours), default=0.0)
            out["area"] = float(largest) / mask.size
        if cur.edges is not None and ref.edges is not None:
            delta = cv2.absdiff(cur.edges, ref.edges)
            _, mask = cv2.threshold(delta, _EDGE_LEVEL, 255, cv2.THRESH_BINARY)
            out["edge"] = cv2.countNonZero(mask) / mask.size
        return out


@dataclass(frozen=True, slots=True)
class ReductoSample:
    """One labelled difference: what the features said and whether the answer changed.

    ``changed`` compares the frame's answer with the answer of the frame it
    was compared against (the last sent frame). ``dropped`` marks a frame
    the filter dropped whose answer the pipeline obtained anyway (a
    verification sample); ``weight`` lets calibration undo sampling rates.
    """

    values: Mapping[str, float]
    changed: bool
    dropped: bool = False
    weight: float = 1.0


@dataclass(slots=True)
class _Pending:
    key: ItemKey
    values: dict[str, float] | None
    base_key: Hashable
    dropped: bool


@dataclass(slots=True)
class _State:
    shape: tuple[int, int] | None = None
    sent: Prepared | None = None
    sent_item: ItemKey | None = None
    sent_key: Hashable = UNKNOWN
    last_pass_at: float | None = None
    thresholds: dict[ReductoFeature, float] | None = None
    pending: deque[_Pending] = field(default_factory=lambda: deque(maxlen=_PENDING))
    samples: deque[ReductoSample] = field(default_factory=deque)


class ReductoFilter:
    """Reducto's filter: drop a frame too similar to the last frame sent.

    Args:
        cfg: The filter's configuration.
        max_streams: Streams tracked at once; the least recently used is forgotten.

    Attributes:
        decisions: Frames passed or dropped, by reason (``unchanged`` drop;
            ``first``, ``changed``, ``stale``, ``resolution``, ``not_a_frame`` pass).
        last_values: The feature values of the last frame checked (any stream),
            for logging and tests.
    """

    name = "reducto"

    def __init__(self, cfg: ReductoFilterConfig, *, max_streams: int = 10_000) -> None:
        self.cfg = cfg
        self.semantics = AnswerSemantics(cfg.answer)
        self.features = ReductoFeatures(cfg)
        self.decisions: Counter[str] = Counter()
        self.last_values: dict[str, float] = {}
        self._states: StreamTable[_State] = StreamTable(
            lambda: _State(samples=deque(maxlen=cfg.samples)), max_streams=max_streams
        )

    def __len__(self) -> int:
        """Number of streams with state."""
        return len(self._states)

    def thresholds(self, stream: StreamKey) -> dict[ReductoFeature, float]:
        """The thresholds in force for ``stream`` (its own, else the configured ones)."""
        st = self._states.peek(stream)
        if st is not None and st.thresholds is not None:
            return dict(st.thresholds)
        return dict(self.cfg.thresholds)

    def set_thresholds(
        self, stream: StreamKey, thresholds: Mapping[ReductoFeature, float] | None
    ) -> None:
        """Give ``stream`` its own thresholds (``None``: back to the configured ones).

        Only configured features can be given a threshold: the others are not
        computed.

        Raises:
            ValueError: an unconfigured feature or a negative threshold.
        """
        if thresholds is not None:
            unknown = set(thresholds) - set(self.features.features)
            if unknown:
                msg = f"features {sorted(unknown)} are not configured for this filter"
                raise ValueError(msg)
            if any(not value >= 0 for value in thresholds.values()):
                msg = f"thresholds must be non-negative, got {dict(thresholds)}"
                raise ValueError(msg)
        self._states.get(stream).thresholds = None if thresholds is None else dict(thresholds)

    def samples(self, stream: StreamKey) -> list[ReductoSample]:
        """The (feature values, answer changed?) pairs recorded for ``stream``."""
        st = self._states.peek(stream)
        return [] if st is None else list(st.samples)

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """PASS when a feature's difference to the last sent frame exceeds its threshold.

        Raises:
            UnsupportedFrameError: the image cannot be read (the pipeline then
                lets the frame pass).
        """
        if not isinstance(item, Frame):
            self.decisions["not_a_frame"] += 1
            return Verdict.PASS
        shape = validate(item.image)
        st = self._states.get(stream)
        if st.shape != shape:
            if st.shape is not None:
                logger.info("%s: resolution %s -> %s, state reset", stream, st.shape, shape)
                own = st.thresholds
                self._states.pop(stream)
                st = self._states.get(stream)
                st.thresholds = own  # calibrated thresholds survive a resize
                self.decisions["resolution"] += 1
            st.shape = shape
        prepared = self.features.prepare(item.image)
        if st.sent is None:
            return self._send(st, item, prepared, None, now, "first")
        values = self.features.diff(prepared, st.sent)
        self.last_values = values
        max_age = self.cfg.max_age_s
        if max_age is not None and st.last_pass_at is not None and now - st.last_pass_at >= max_age:
            return self._send(st, item, prepared, values, now, "stale")
        thresholds = st.thresholds if st.thresholds is not None else self.cfg.thresholds
        if any(values[f] > t for f, t in thresholds.items()):
            return self._send(st, item, prepared, values, now, "changed")
        st.pending.append(_Pending(item_key(item), values, st.sent_key, dropped=True))
        self.decisions["unchanged"] += 1
        return Verdict.DROP

    def _send(
        self,
        st: _State,
        item: Frame,
        prepared: Prepared,
        values: dict[str, float] | None,
        now: float,
        reason: str,
    ) -> Verdict:
        st.pending.append(_Pending(item_key(item), values, st.sent_key, dropped=False))
        st.sent = prepared
        st.sent_item = item_key(item)
        st.sent_key = UNKNOWN  # until observe brings this frame's answer
        st.last_pass_at = now
        self.decisions[reason] += 1
        return Verdict.PASS

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        """Learn the answer of the last sent frame and record a calibration sample.

        A frame the filter dropped may be observed too, when the pipeline ran
        the model on it to verify the filter; it is recorded with
        ``dropped=True`` and does not become the reference frame.
        """
        st = self._states.peek(stream)
        if st is None or not isinstance(item, Frame):
            return
        key = self.semantics.key(result.answer)
        wanted = item_key(item)
        if wanted == st.sent_item:
            st.sent_key = key
        pending = next((p for p in reversed(st.pending) if p.key == wanted), None)
        if (
            pending is None
            or pending.values is None
            or pending.base_key is UNKNOWN
            or key is UNKNOWN
            or st.samples.maxlen == 0
            or not is_authoritative(result)
        ):
            return
        st.pending.remove(pending)
        st.samples.append(
            ReductoSample(
                values=dict(pending.values),
                changed=bool(key != pending.base_key),
                dropped=pending.dropped,
            )
        )

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream: last sent frame, its answer, samples, own thresholds."""
        self._states.pop(stream)


# --------------------------------------------------------------------------
# Thresholds from an accuracy target (the calibration phase drives these).


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """A threshold and what it achieved on the data it was chosen from."""

    threshold: float
    accuracy: float
    """Fraction of frames whose answer is right (weighted)."""
    filtered: float
    """Fraction of frames dropped (weighted)."""
    n: int
    """Samples (or frames) it was chosen from."""


def thresholds_for_target(
    samples: Iterable[ReductoSample],
    target: float,
    *,
    features: Iterable[str] | None = None,
    safe_zone: float = 0.0,
) -> dict[str, ThresholdChoice]:
    """Choose, per feature, the largest threshold that keeps accuracy at the target.

    With threshold ``t`` a frame is dropped when its value is at most ``t``,
    and a dropped frame is wrong when its answer ``changed`` relative to the
    frame it was compared with. Accuracy is the weighted fraction of frames
    that are right; the choice is the largest sample value ``t`` with
    ``accuracy >= target + safe_zone`` (Reducto's ``_get_optimal_thresh``
    with its safe zone), so the threshold sits on an observed value. When
    no value qualifies the threshold is ``-1`` (nothing is dropped, not even
    identical frames).

    The pairs are taken as independent, which they are not quite: dropping
    frames changes which frame later frames are compared with. Where whole
    recorded segments exist, :func:`replay_thresholds` is exact.

    Args:
        samples: Recorded pairs, e.g. from :meth:`ReductoFilter.samples`.
        target: Wanted per-frame accuracy, e.g. 0.9.
        features: Features to choose for (default: all present in samples).
        safe_zone: Added to the target (Reducto uses about 0.02-0.045).

    Returns:
        Feature name -> choice; features without samples are left out.
    """
    rows = list(samples)
    names = (
        sorted({name for s in rows for name in s.values}) if features is None else list(features)
    )
    goal = target + safe_zone
    out: dict[str, ThresholdChoice] = {}
    for name in names:
        pairs = [(s.values[name], s.changed, s.weight) for s in rows if name in s.values]
        if not pairs:
            continue
        values = np.array([p[0] for p in pairs], dtype=np.float64)
        wrong = np.array([p[2] if p[1] else 0.0 for p in pairs], dtype=np.float64)
        weights = np.array([p[2] for p in pairs], dtype=np.float64)
        order = np.argsort(values, kind="stable")
        values, wrong, weights = values[order], wrong[order], weights[order]
        total = float(weights.sum())
        cum_wrong = np.cumsum(wrong)
        cum_weight = np.cumsum(weights)
        # Only the last index of each run of equal values is a valid cut:
        # "value <= t" drops the whole run.
        last_of_run = np.append(values[1:] != values[:-1], True)
        accuracy = 1.0 - cum_wrong / total
        ok = np.flatnonzero(last_of_run & (accuracy >= goal))
        if ok.size == 0:
            out[name] = ThresholdChoice(-1.0, 1.0, 0.0, len(pairs))
            continue
        i = int(ok[-1])
        out[name] = ThresholdChoice(
            float(values[i]), float(accuracy[i]), float(cum_weight[i] / total), len(pairs)
        )
    return out


def replay_thresholds(
    frames: Sequence[Image],
    answers: Sequence[JSON],
    candidates: Iterable[float],
    *,
    feature: ReductoFeature,
    cfg: ReductoFilterConfig | None = None,
    semantics: AnswerSemantics | None = None,
) -> list[ThresholdChoice]:
    """Replay the live filter over a recorded segment at each candidate threshold.

    This is how Reducto profiles a segment: the first frame is sent; each
    later frame is compared with the last sent frame and sent when the
    difference exceeds the threshold; a dropped frame gets the last sent
    frame's answer, and is right when that answer is the same as its own.

    Args:
        frames: The segment's frames, in order.
        answers: The full model's answer for every frame.
        candidates: Thresholds to try.
        feature: The feature to threshold.
        cfg: Feature parameters (levels, blurs, width); default configuration.
        semantics: What counts as the same answer (default: presence).

    Returns:
        One choice per candidate, in the candidates' order.

    Raises:
        ValueError: ``frames`` and ``answers`` differ in length, or are empty.
    """
    if len(frames) != len(answers) or not frames:
        msg = f"need one answer per frame and at least one frame: {len(frames)}, {len(answers)}"
        raise ValueError(msg)
    cfg = cfg or ReductoFilterConfig(thresholds={feature: 0.0})
    sem = semantics or AnswerSemantics(cfg.answer)
    features = ReductoFeatures(cfg, [feature])
    prepared = [features.prepare(f) for f in frames]
    keys = [sem.key(a) for a in answers]
    n = len(frames)
    out: list[ThresholdChoice] = []
    for threshold in candidates:
        sent = 0
        right = 1
        dropped = 0
        for i in range(1, n):
            value = features.diff(prepared[i], prepared[sent])[feature]
            if value > threshold:
                sent = i
                right += 1
            else:
                dropped += 1
                right += int(keys[i] == keys[sent])
        out.append(ThresholdChoice(float(threshold), right / n, dropped / n, n))
    return out


def best_threshold(choices: Iterable[ThresholdChoice], target: float) -> ThresholdChoice | None:
    """The largest threshold whose accuracy meets ``target``, or ``None``."""
    ok = [c for c in choices if c.accuracy >= target]
    return max(ok, key=lambda c: c.threshold) if ok else None


def difference_series(
    frames: Sequence[Image], *, feature: ReductoFeature, cfg: ReductoFilterConfig | None = None
) -> list[float]:
    """Consecutive-frame differences of a segment: what Reducto's histograms summarise."""
    cfg = cfg or ReductoFilterConfig(thresholds={feature: 0.0})
    features = ReductoFeatures(cfg, [feature])
    prepared = [features.prepare(f) for f in frames]
    return [features.diff(b, a)[feature] for a, b in itertools.pairwise(prepared)]


class ThresholdMap:
    """Reducto's threshold "hash table": segment histogram -> best threshold by kNN.

    Each profiled segment is summarised as a ``bins``-bin histogram (fractions)
    of its consecutive-frame differences over a common value range, labelled
    with its best threshold. A new segment gets the threshold that wins a
    distance-weighted vote of its ``k`` nearest profiled segments (Reducto:
    30 bins, k = 5, ``weights="distance"``), plus the distance to the nearest
    one, which says when the table no longer fits the scene (re-profile).

    Args:
        histograms: ``(segments, bins)`` histograms.
        thresholds: The best threshold of each segment.
        value_range: ``(low, high)`` range the histograms cover.
        k: Neighbours that vote.
    """

    def __init__(
        self,
        histograms: npt.ArrayLike,
        thresholds: Sequence[float],
        value_range: tuple[float, float],
        *,
        k: int = 5,
    ) -> None:
        self.histograms = np.asarray(histograms, dtype=np.float64)
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        if self.histograms.ndim != 2 or len(self.histograms) != len(self.thresholds):
            msg = "need one histogram row per threshold"
            raise ValueError(msg)
        if len(self.thresholds) == 0:
            msg = "a threshold map needs at least one segment"
            raise ValueError(msg)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.bins = int(self.histograms.shape[1])
        self.k = max(1, min(k, len(self.thresholds)))

    @classmethod
    def build(
        cls,
        segments: Sequence[tuple[Sequence[float], float]],
        *,
        bins: int = 30,
        k: int = 5,
    ) -> ThresholdMap:
        """Build from ``(consecutive differences, best threshold)`` per segment."""
        every = [v for diffs, _ in segments for v in diffs]
        if not every:
            msg = "segments hold no difference values"
            raise ValueError(msg)
        low, high = float(min(every)), float(max(every))
        if high <= low:
            high = low + 1e-12
        hists = [_histogram(diffs, bins, (low, high)) for diffs, _ in segments]
        return cls(hists, [t for _, t in segments], (low, high), k=k)

    def lookup(self, diffs: Sequence[float]) -> tuple[float, float]:
        """Return ``(threshold, distance to the nearest profiled segment)``."""
        hist = _histogram(diffs, self.bins, self.value_range)
        dist = np.sqrt(((self.histograms - hist) ** 2).sum(axis=1))
        nearest = np.argsort(dist, kind="stable")[: self.k]
        d = dist[nearest]
        # sklearn's distance weighting: exact matches take the whole vote.
        weights = (d == 0).astype(np.float64) if np.any(d == 0) else 1.0 / d
        votes: dict[float, float] = {}
        for idx, w in zip(nearest, weights, strict=True):
            t = float(self.thresholds[idx])
            votes[t] = votes.get(t, 0.0) + float(w)
        best = max(sorted(votes), key=lambda t: votes[t])
        return best, float(d[0])


def _histogram(values: Sequence[float], bins: int, value_range: tuple[float, float]) -> Any:
    if not values:
        return np.zeros(bins)
    # As Reducto: values outside the profiled range fall out of every bin, so
    # an unfamiliar segment is also far from every profiled one.
    hist, _ = np.histogram(np.asarray(values, dtype=np.float64), bins, range=value_range)
    return hist / len(values)
