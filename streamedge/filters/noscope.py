"""NoScope's difference detector (Kang et al., "NoScope", VLDB 2017).

What NoScope does, and what this filter does with it:

* **Distance.** Mean squared error between 50×50×3 thumbnails (NoScope's
  ``RESOL 50`` CPU kernel), or the blocked variant: each channel split into a
  10×10 grid and the largest block MSE taken (``BlockedFilter`` with
  ``use_max``). Pixel values are 0-255, so thresholds read like NoScope's
  (``--diff_thresh`` ≈ 1.4-6.9 in its published runs). NoScope's other
  blocked variant, per-block distances fed to a logistic regression, is not
  implemented.
* **t_skip.** NoScope runs its cascade on every ``t_skip``-th frame only; a
  skipped frame inherits the previous frame's label (``noscope_accuracy.py``
  fills skipped frames with the previous decision). Here a skipped frame is
  dropped, and the pipeline repeats the last answer for it.
* **Earlier-frame detector** (``mode: earlier``). The checked frame is
  compared with the newest checked frame at least ``t_diff`` frames back; if
  the distance is small NoScope copies that frame's label. Dropping repeats
  the *last* answer instead, which is the same thing only if the answer has
  not changed since that frame, so the filter also requires the stream's last
  answer to equal the answer that frame had.
* **Reference-image detector** (``mode: reference``). NoScope averages frames
  its reference model labelled "no object" and labels a frame negative when
  it is close to that average. Here the average is learned online from the
  frames whose answer (given to ``observe``) is empty, and a close frame is
  dropped only when the stream's last answer was empty too: otherwise the
  repeated answer would still show the object that just left, so the frame
  passes and the model confirms the empty scene.

Thresholds, ``t_skip`` and ``t_diff`` are set offline by NoScope's optimizer;
here they come from the configuration (the calibration phase sets them).
Cost: one 640×480 → 50×50 INTER_LINEAR resize and a 7,500-value MSE per
checked frame; skipped frames cost a shape check.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from streamedge.filters._answers import UNKNOWN, AnswerSemantics, is_authoritative
from streamedge.filters._distance import distance
from streamedge.filters._frames import thumbnail, validate
from streamedge.filters._state import ItemKey, StreamTable, item_key
from streamedge.filters.config import NoScopeFilterConfig
from streamedge.records import Frame, Image, InferenceResult, Item, StreamKey, Verdict

logger = logging.getLogger(__name__)

_PENDING = 4
"""Passed frames remembered until their answer arrives (frames in flight)."""


@dataclass(slots=True)
class _Checked:
    """A checked frame kept for ``mode: earlier``."""

    index: int
    thumb: Image
    key: Hashable
    """The answer this frame has: the repeated one if dropped, its own once observed."""


@dataclass(slots=True)
class _Pending:
    key: ItemKey
    thumb: Image
    entry: _Checked | None


@dataclass(slots=True)
class _State:
    shape: tuple[int, int] | None = None
    seen: int = 0
    last_pass_at: float | None = None
    has_answer: bool = False
    last_key: Hashable = UNKNOWN
    last_empty: bool = False
    history: deque[_Checked] = field(default_factory=deque)
    pending: deque[_Pending] = field(default_factory=lambda: deque(maxlen=_PENDING))
    reference: npt.NDArray[np.float32] | None = None
    reference_count: int = 0
    threshold: float | None = None


class NoScopeFilter:
    """NoScope's difference detector as a streamedge :class:`~streamedge.protocols.Filter`.

    Args:
        cfg: The filter's configuration.
        max_streams: Streams tracked at once; the least recently used is forgotten.

    Attributes:
        decisions: How many frames were passed or dropped, by reason (``skip``,
            ``unchanged``, ``empty`` drop; ``first``, ``changed``, ``no_history``,
            ``no_reference``, ``answer_changed``, ``object``, ``leaving``,
            ``stale``, ``resolution`` pass; ``not_a_frame``).
        last_distance: The distance computed for the last checked frame (any
            stream), ``None`` before the first; for logging and calibration.
    """

    name = "noscope"

    def __init__(self, cfg: NoScopeFilterConfig, *, max_streams: int = 10_000) -> None:
        self.cfg = cfg
        self.semantics = AnswerSemantics(cfg.answer)
        self.decisions: Counter[str] = Counter()
        self.last_distance: float | None = None
        # Checked frames are t_skip apart; this many cover t_diff frames back.
        self._history_len = -(-cfg.t_diff // cfg.t_skip) + 1
        self._states: StreamTable[_State] = StreamTable(
            lambda: _State(history=deque(maxlen=self._history_len)),
            max_streams=max_streams,
        )

    def __len__(self) -> int:
        """Number of streams with state."""
        return len(self._states)

    def _distance(self, a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> float:
        self.last_distance = distance(a, b, self.cfg.metric, self.cfg.blocks)
        return self.last_distance

    def threshold(self, stream: StreamKey) -> float:
        """The distance threshold in force for ``stream`` (its own, else the configured)."""
        st = self._states.peek(stream)
        if st is not None and st.threshold is not None:
            return st.threshold
        return self.cfg.threshold

    def set_threshold(self, stream: StreamKey, threshold: float | None) -> None:
        """Give ``stream`` its own threshold (``None``: back to the configured one).

        Raises:
            ValueError: a negative or NaN threshold.
        """
        if threshold is not None and not threshold >= 0:
            msg = f"threshold must be non-negative, got {threshold}"
            raise ValueError(msg)
        self._states.get(stream).threshold = threshold

    def _decide(self, reason: str, verdict: Verdict) -> Verdict:
        self.decisions[reason] += 1
        return verdict

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """Return DROP for a skipped frame or an unchanged / empty checked frame.

        Raises:
            UnsupportedFrameError: the image cannot be read (the pipeline then
                lets the frame pass).
        """
        if not isinstance(item, Frame):
            return self._decide("not_a_frame", Verdict.PASS)
        shape = validate(item.image)
        st = self._states.get(stream)
        if st.shape != shape:
            if st.shape is not None:
                logger.info("%s: resolution %s -> %s, state reset", stream, st.shape, shape)
                own = st.threshold
                self._states.pop(stream)
                st = self._states.get(stream)
                st.threshold = own  # a calibrated threshold survives a resize
                self.decisions["resolution"] += 1
            st.shape = shape
        index = st.seen
        st.seen += 1

        if st.last_pass_at is None:
            return self._pass(st, item, index, now, "first")
        if self.cfg.max_age_s is not None and now - st.last_pass_at >= self.cfg.max_age_s:
            return self._pass(st, item, index, now, "stale")
        if index % self.cfg.t_skip:
            return self._decide("skip", Verdict.DROP)

        thumb = thumbnail(item.image, self.cfg.size)
        if self.cfg.mode == "earlier":
            return self._check_earlier(st, item, index, thumb, now)
        return self._check_reference(st, item, index, thumb, now)

    def _check_earlier(
        self, st: _State, item: Frame, index: int, thumb: Image, now: float
    ) -> Verdict:
        target = index - self.cfg.t_diff
        earlier = next((c for c in reversed(st.history) if c.index <= target), None)
        if earlier is None:
            return self._pass(st, item, index, now, "no_history", thumb)
        threshold = self.cfg.threshold if st.threshold is None else st.threshold
        if self._distance(thumb, earlier.thumb) >= threshold:
            return self._pass(st, item, index, now, "changed", thumb)
        if earlier.key != st.last_key:
            return self._pass(st, item, index, now, "answer_changed", thumb)
        st.history.append(_Checked(index, thumb, st.last_key))
        return self._decide("unchanged", Verdict.DROP)

    def _check_reference(
        self, st: _State, item: Frame, index: int, thumb: Image, now: float
    ) -> Verdict:
        if st.reference is None or st.reference_count < self.cfg.reference_min_frames:
            return self._pass(st, item, index, now, "no_reference", thumb)
        threshold = self.cfg.threshold if st.threshold is None else st.threshold
        if self._distance(thumb, st.reference) >= threshold:
            return self._pass(st, item, index, now, "object", thumb)
        if not (st.has_answer and st.last_empty):
            return self._pass(st, item, index, now, "leaving", thumb)
        return self._decide("empty", Verdict.DROP)

    def _pass(
        self,
        st: _State,
        item: Frame,
        index: int,
        now: float,
        reason: str,
        thumb: Image | None = None,
    ) -> Verdict:
        if thumb is None:
            thumb = thumbnail(item.image, self.cfg.size)
        entry: _Checked | None = None
        if self.cfg.mode == "earlier":
            entry = _Checked(index, thumb, UNKNOWN)  # its answer arrives in observe
            st.history.append(entry)
        st.pending.append(_Pending(item_key(item), thumb, entry))
        st.last_pass_at = now
        return self._decide(reason, Verdict.PASS)

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        """Record the answer a passed frame got; learn the empty-scene reference."""
        st = self._states.peek(stream)
        if st is None or not isinstance(item, Frame):
            return
        answer = result.answer
        st.has_answer = True
        st.last_key = self.semantics.key(answer)
        st.last_empty = self.semantics.is_empty(answer)
        wanted = item_key(item)
        pending = next((p for p in reversed(st.pending) if p.key == wanted), None)
        if pending is not None and pending.entry is not None:
            pending.entry.key = st.last_key
        if (
            self.cfg.mode == "reference"
            and st.last_empty
            and is_authoritative(result, trust_cache=self.cfg.trust_cache)
        ):
            if pending is not None:
                thumb = pending.thumb
            elif item.image.shape[:2] == st.shape:
                thumb = thumbnail(item.image, self.cfg.size)
            else:
                return  # a frame from before a resolution change
            self._learn_reference(st, thumb)

    def _learn_reference(self, st: _State, thumb: Image) -> None:
        frame = thumb.astype(np.float32)
        if st.reference is None:
            st.reference = frame
            st.reference_count = 1
            return
        st.reference_count += 1
        # Plain mean of the first reference_max_frames frames (NoScope's
        # average), then an exponential average of the same weight, so the
        # reference follows slow lighting changes instead of freezing.
        weight = 1.0 / min(st.reference_count, self.cfg.reference_max_frames)
        st.reference += np.float32(weight) * (frame - st.reference)

    def reference(self, stream: StreamKey) -> npt.NDArray[np.float32] | None:
        """The stream's learned empty-scene reference thumbnail (float32 BGR), if any."""
        st = self._states.peek(stream)
        return None if st is None or st.reference is None else st.reference.copy()

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream: history, reference and last answer."""
        self._states.pop(stream)
