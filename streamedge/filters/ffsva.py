"""FFS-VA's filter cascade (Zhang et al., "FFS-VA", ICPP 2018 / IEEE TC 2020).

FFS-VA puts three stream-specialised filters in front of the full detector;
each drops what it is sure of and hands the rest on:

1. **SDD**, stream-specialised difference detector: distance of a downscaled
   frame to that stream's background. Here: MSE (or max block MSE) of the
   50×50 thumbnail against a per-stream background that is an approximate
   running median (each pixel steps ``background_step`` grey levels towards
   every frame, so people walking through do not stay in it) or an
   exponential mean. Below ``sdd_threshold``: empty scene.
2. **SNM**, stream-specialised network model: a small per-stream classifier
   trained on the full model's own labels. Here: logistic regression on a
   16×16 thumbnail, ONNX, trained offline with :func:`train_snm` or online
   from the answers ``observe`` sees (:meth:`FfsvaFilter.train_stream`).
   ``p < snm_low``: empty; ``p > snm_high``: pass to the full model; else on.
3. **T-YOLO**, a tiny detector that drops frames not meeting the query's
   object-count condition. A tiny detector costs milliseconds, too much
   here, so the count is estimated instead (``count_source``): the SNM's
   count regression (a ridge regression on the same input, trained on the
   full model's counts), or connected foreground blobs of the thumbnail's
   difference to the background (for objects that are blobs at 50×50, e.g.
   people; useless for small faces). Estimate (rounded) below ``min_count``:
   the frame fails the query.

A dropped frame repeats the stream's last answer. "Empty" drops are
therefore made only when the last answer was empty, and count drops only
when the last answer's count was below ``min_count`` as well; otherwise the
frame passes and the full model gives the new answer. With ``min_count`` 1
this is presence; above 1 the repeated answer agrees with the truth on the
query's condition (at least ``min_count`` objects), not necessarily on the
exact count. FFS-VA's feedback queues and batching belong to the pipeline,
not to a filter, and are not here.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamedge.errors import ConfigError
from streamedge.filters._answers import AnswerSemantics, is_authoritative
from streamedge.filters._distance import distance
from streamedge.filters._frames import thumbnail, validate
from streamedge.filters._snm import SnmModel, fit_snm, snm_input, train_snm
from streamedge.filters._state import ItemKey, StreamTable, item_key
from streamedge.filters.config import FfsvaFilterConfig
from streamedge.records import Frame, Image, InferenceResult, Item, StreamKey, Verdict

__all__ = ["FfsvaFilter", "SnmModel", "TrainingSet", "fit_snm", "snm_input", "train_snm"]

logger = logging.getLogger(__name__)

_PENDING = 4


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """A stream's observed frames as SNM training data (uint8 inputs)."""

    x: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.bool_]
    counts: npt.NDArray[np.float32]


@dataclass(slots=True)
class _Pending:
    key: ItemKey
    thumb: Image


@dataclass(slots=True)
class _State:
    shape: tuple[int, int] | None = None
    background: npt.NDArray[np.float32] | None = None
    last_pass_at: float | None = None
    has_answer: bool = False
    last_empty: bool = False
    last_count: int | None = None
    model: SnmModel | None = None
    pending: deque[_Pending] = field(default_factory=lambda: deque(maxlen=_PENDING))
    positives: deque[tuple[npt.NDArray[np.uint8], float]] = field(default_factory=deque)
    negatives: deque[npt.NDArray[np.uint8]] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thresholds: dict[str, float] = field(default_factory=dict)


class FfsvaFilter:
    """The FFS-VA cascade (SDD → SNM → count) as a streamedge filter.

    Args:
        cfg: The filter's configuration. Its SNM files are loaded here.
        max_streams: Streams tracked at once; the least recently used is forgotten.

    Raises:
        ConfigError: a configured SNM file cannot be read or is not an SNM.

    Attributes:
        decisions: Frames passed or dropped, by reason: drops ``sdd``,
            ``snm_low``, ``count``; passes ``first``, ``stale``, ``resolution``,
            ``sdd_leaving``, ``snm_low_leaving``, ``count_leaving``, ``snm_high``,
            ``no_snm``, ``snm_unsure``, ``count_ok``, ``not_a_frame``.
        last_scores: What the stages computed for the last frame checked (any
            stream): ``sdd``, and ``p_object``, ``count`` when they ran; for
            logging and calibration.
    """

    name = "ffsva"

    def __init__(self, cfg: FfsvaFilterConfig, *, max_streams: int = 10_000) -> None:
        self.cfg = cfg
        self.semantics = AnswerSemantics(cfg.answer)
        self.decisions: Counter[str] = Counter()
        self.last_scores: dict[str, float] = {}
        self._configured: dict[str, SnmModel] = {}
        for key, path in cfg.snm_models.items():
            try:
                self._configured[key] = SnmModel.from_path(path)
            except (OSError, ValueError) as exc:
                msg = f"ffsva: SNM for {key!r} at {path}: {exc}"
                raise ConfigError(msg) from exc
        buffer = cfg.train_buffer
        self._states: StreamTable[_State] = StreamTable(
            lambda: _State(positives=deque(maxlen=buffer), negatives=deque(maxlen=buffer)),
            max_streams=max_streams,
        )

    def __len__(self) -> int:
        """Number of streams with state."""
        return len(self._states)

    # ------------------------------------------------------------------ models

    def model(self, stream: StreamKey) -> SnmModel | None:
        """The SNM used for ``stream``: its own, else the configured one, else ``None``."""
        st = self._states.peek(stream)
        if st is not None and st.model is not None:
            return st.model
        return self._configured.get(str(stream), self._configured.get("*"))

    def set_model(self, stream: StreamKey, model: SnmModel | bytes | None) -> None:
        """Give ``stream`` its own SNM (``None``: back to the configured one).

        Raises:
            ValueError: bytes that are not an SNM model.
        """
        loaded = SnmModel(model) if isinstance(model, bytes) else model
        self._states.get(stream).model = loaded

    def training_set(self, stream: StreamKey) -> TrainingSet | None:
        """The stream's buffered observations as training data, or ``None`` if none."""
        st = self._states.peek(stream)
        if st is None:
            return None
        with st.lock:  # observe appends from the event loop; training runs in a thread
            positives = list(st.positives)
            negatives = list(st.negatives)
        if not positives and not negatives:
            return None
        x = np.stack([p[0] for p in positives] + negatives)
        labels = np.array([True] * len(positives) + [False] * len(negatives))
        counts = np.array([p[1] for p in positives] + [0.0] * len(negatives), np.float32)
        return TrainingSet(x, labels, counts)

    def train_stream(self, stream: StreamKey) -> bytes | None:
        """Train the stream's SNM on its buffered observations and start using it.

        Takes about a second for 2,000 frames at 768 inputs: run it in a worker
        thread (``await asyncio.to_thread(flt.train_stream, stream)``).

        Returns:
            The model's ONNX bytes (to persist), or ``None`` when either class
            has fewer than ``train_min_per_class`` frames.
        """
        data = self.training_set(stream)
        need = self.cfg.train_min_per_class
        if data is None or int(data.labels.sum()) < need or int((~data.labels).sum()) < need:
            return None
        onnx_bytes = fit_snm(
            data.x,
            data.labels,
            data.counts,
            thumb=self.cfg.size,
            size=self.cfg.snm_size,
            grayscale=self.cfg.snm_grayscale,
            l2=self.cfg.snm_l2,
        )
        self.set_model(stream, onnx_bytes)
        logger.info(
            "%s: SNM trained on %d frames (%d non-empty)",
            stream,
            len(data.labels),
            int(data.labels.sum()),
        )
        return onnx_bytes

    # ------------------------------------------------------------------ thresholds

    def thresholds(self, stream: StreamKey) -> dict[str, float]:
        """``sdd``, ``snm_low`` and ``snm_high`` in force for ``stream``."""
        st = self._states.peek(stream)
        own = {} if st is None else st.thresholds
        cfg = self.cfg
        return {
            "sdd": own.get("sdd", cfg.sdd_threshold),
            "snm_low": own.get("snm_low", cfg.snm_low),
            "snm_high": own.get("snm_high", cfg.snm_high),
        }

    def set_thresholds(
        self,
        stream: StreamKey,
        *,
        sdd: float | None = None,
        snm_low: float | None = None,
        snm_high: float | None = None,
    ) -> None:
        """Give ``stream`` its own thresholds; ``None`` keeps the configured value.

        Raises:
            ValueError: a negative SDD threshold, SNM thresholds outside 0-1,
                or ``snm_low`` above ``snm_high``.
        """
        own = {
            name: value
            for name, value in (("sdd", sdd), ("snm_low", snm_low), ("snm_high", snm_high))
            if value is not None
        }
        if "sdd" in own and not own["sdd"] >= 0:
            msg = f"sdd threshold must be non-negative, got {own['sdd']}"
            raise ValueError(msg)
        for name in ("snm_low", "snm_high"):
            if name in own and not 0.0 <= own[name] <= 1.0:
                msg = f"{name} must be within 0-1, got {own[name]}"
                raise ValueError(msg)
        low = own.get("snm_low", self.cfg.snm_low)
        high = own.get("snm_high", self.cfg.snm_high)
        if low > high:
            msg = f"snm_low ({low}) must not exceed snm_high ({high})"
            raise ValueError(msg)
        self._states.get(stream).thresholds = own

    # ------------------------------------------------------------------ filter

    def _decide(self, reason: str, verdict: Verdict) -> Verdict:
        self.decisions[reason] += 1
        return verdict

    def _pass(self, st: _State, item: Frame, thumb: Image, now: float, reason: str) -> Verdict:
        st.pending.append(_Pending(item_key(item), thumb))
        st.last_pass_at = now
        return self._decide(reason, Verdict.PASS)

    def _drop_if_empty(
        self, st: _State, item: Frame, thumb: Image, now: float, reason: str
    ) -> Verdict:
        if st.has_answer and st.last_empty:
            return self._decide(reason, Verdict.DROP)
        return self._pass(st, item, thumb, now, reason + "_leaving")

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """Run the cascade on one frame.

        Raises:
            UnsupportedFrameError: the image cannot be read (the pipeline then
                lets the frame pass).
        """
        if not isinstance(item, Frame):
            return self._decide("not_a_frame", Verdict.PASS)
        cfg = self.cfg
        shape = validate(item.image)
        st = self._states.get(stream)
        if st.shape != shape:
            if st.shape is not None:
                # New camera geometry: background and training data describe
                # another picture. A stream's own SNM is kept: it still runs
                # on the thumbnail, and its thresholds guard its decisions.
                logger.info("%s: resolution %s -> %s, state reset", stream, st.shape, shape)
                model, own = st.model, st.thresholds
                self._states.pop(stream)
                st = self._states.get(stream)
                st.model, st.thresholds = model, own
                self.decisions["resolution"] += 1
            st.shape = shape
        thumb = thumbnail(item.image, cfg.size)

        background = st.background
        if background is None:
            st.background = thumb.astype(np.float32)
            return self._pass(st, item, thumb, now, "first")
        sdd = distance(thumb, background, cfg.sdd_metric, cfg.sdd_blocks)
        self.last_scores = {"sdd": sdd}
        try:
            return self._stages(stream, st, item, thumb, background, sdd, now)
        finally:
            # Every frame updates the background, whichever stage decided.
            self._update_background(st, background, thumb)

    def _stages(
        self,
        stream: StreamKey,
        st: _State,
        item: Frame,
        thumb: Image,
        background: npt.NDArray[np.float32],
        sdd: float,
        now: float,
    ) -> Verdict:
        cfg = self.cfg
        own = st.thresholds
        max_age = cfg.max_age_s
        if max_age is not None and st.last_pass_at is not None and now - st.last_pass_at >= max_age:
            return self._pass(st, item, thumb, now, "stale")
        if sdd < own.get("sdd", cfg.sdd_threshold):
            return self._drop_if_empty(st, item, thumb, now, "sdd")

        model = st.model or self._configured.get(str(stream), self._configured.get("*"))
        snm_count: float | None = None
        if model is not None:
            p_object, snm_count = self._predict(model, thumb, item.image)
            self.last_scores.update(p_object=p_object, count=snm_count)
            if p_object < own.get("snm_low", cfg.snm_low):
                return self._drop_if_empty(st, item, thumb, now, "snm_low")
            if p_object > own.get("snm_high", cfg.snm_high):
                return self._pass(st, item, thumb, now, "snm_high")

        if cfg.count_source == "none":
            return self._pass(st, item, thumb, now, "snm_unsure")
        if cfg.count_source == "snm":
            if snm_count is None:
                return self._pass(st, item, thumb, now, "no_snm")
            estimate = round(snm_count)
        else:
            estimate = self._blobs(thumb, background)  # before this frame updates it
            self.last_scores["blobs"] = estimate
        if estimate >= cfg.min_count:
            return self._pass(st, item, thumb, now, "count_ok")
        if st.has_answer and st.last_count is not None and st.last_count < cfg.min_count:
            return self._decide("count", Verdict.DROP)
        return self._pass(st, item, thumb, now, "count_leaving")

    def _predict(self, model: SnmModel, thumb: Image, image: Image) -> tuple[float, float]:
        if model.thumb == self.cfg.size:
            return model.predict_thumb(thumb)
        return model.predict_frame(image)  # trained on another thumbnail size

    def _update_background(
        self, st: _State, background: npt.NDArray[np.float32], thumb: Image
    ) -> None:
        frame = thumb.astype(np.float32)
        if self.cfg.background == "median":
            # McFarlane & Schofield's approximate median: a fixed step towards
            # each frame converges on the per-pixel median, and a passer-by
            # moves the background by at most a few steps.
            background += np.float32(self.cfg.background_step) * np.sign(frame - background)
        else:
            background += np.float32(self.cfg.background_alpha) * (frame - background)
        st.background = background

    def _blobs(self, thumb: Image, background: npt.NDArray[np.float32]) -> int:
        import cv2  # lazy: only video pipelines need OpenCV

        diff = cv2.absdiff(thumb.astype(np.float32), background)
        blue, green, red = cv2.split(diff)
        # Channel maximum with cv2: numpy's max over a last axis of 3 costs 5x more.
        largest = cv2.max(cv2.max(blue, green), red)
        mask = (largest > self.cfg.blob_level).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas = stats[1:n, cv2.CC_STAT_AREA]  # label 0 is the background
        return int(np.count_nonzero(areas >= self.cfg.blob_min_pixels))

    def background(self, stream: StreamKey) -> npt.NDArray[np.float32] | None:
        """A copy of the stream's background thumbnail (float32 BGR), if any."""
        st = self._states.peek(stream)
        return None if st is None or st.background is None else st.background.copy()

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        """Record the stream's last answer and keep the frame for SNM training."""
        st = self._states.peek(stream)
        if st is None or not isinstance(item, Frame):
            return
        answer = result.answer
        st.has_answer = True
        st.last_empty = self.semantics.is_empty(answer)
        st.last_count = self.semantics.count(answer)
        if self.cfg.train_buffer == 0 or not is_authoritative(
            result, trust_cache=self.cfg.trust_cache
        ):
            return
        if st.last_count is None and not st.last_empty and self.semantics.cfg.by != "label":
            return  # an answer without a count says nothing to learn from
        wanted = item_key(item)
        pending = next((p for p in reversed(st.pending) if p.key == wanted), None)
        if pending is not None:
            thumb = pending.thumb
        elif item.image.shape[:2] == st.shape:
            thumb = thumbnail(item.image, self.cfg.size)
        else:
            return  # a frame from before a resolution change
        x = snm_input(thumb, size=self.cfg.snm_size, grayscale=self.cfg.snm_grayscale)
        with st.lock:
            if st.last_empty:
                st.negatives.append(x)
            else:
                count = st.last_count if st.last_count is not None else 1
                st.positives.append((x, float(count)))

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream: background, last answer, training data and own SNM."""
        self._states.pop(stream)
