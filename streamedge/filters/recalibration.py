"""Online recalibration: the gateway re-chooses a stream's filter thresholds as it runs.

Scenes change (light, season, camera moved), so thresholds chosen once drift
off their accuracy target. Per stream, a :class:`Recalibrator`:

* **checks** a sample (``check_fraction``) of the frames the filters drop:
  the frame goes to the full model anyway, and its answer is compared with
  the answer the stream would have repeated (boxes matched at IoU ≥ 0.5, as
  the evaluation harness does). The agreement of the last ``check_window``
  checks is tracked;
* **collects a calibration window** at the stream's start, every
  ``interval_s``, and as soon as the tracked agreement falls below
  ``min_agreement`` (after ``min_checks`` checks): the next ``window_frames``
  frames all go to the full model, and are kept (downscaled to
  ``frame_width``) with its answers;
* **re-chooses the thresholds** on a full window with
  :func:`~streamedge.filters.calibration.calibrate` (online: only the
  settings a running filter takes per stream: NoScope's threshold, Reducto's
  thresholds, FFS-VA's SDD / SNM thresholds and a retrained SNM), in a
  worker thread, and applies them to that stream alone. The model's cost
  in the cost model is the mean latency of the window's model answers.

Memory is bounded: frames are kept only while a window is collected, at
``frame_width`` pixels wide, and all streams' windows together stay under
``max_bytes`` (a window that would not fit waits until another stream's
window is done, counted once per wait as ``skipped_memory``).
Everything is counted in the stats snapshot under ``recalibration``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from streamedge.filters._state import StreamTable
from streamedge.filters.config import RecalibrationConfig
from streamedge.records import JSON, Frame, Image, StreamKey

logger = logging.getLogger(__name__)

Decision = Literal["collect", "check"]


@dataclass(slots=True)
class _Window:
    frames: list[Image] = field(default_factory=list)
    ts: list[float] = field(default_factory=list)
    answers: list[JSON] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    reserved: int = 0


@dataclass(slots=True)
class _Stream:
    checks: deque[bool]
    window: _Window | None = None
    started_at: float | None = None
    last_run_at: float | None = None
    running: bool = False
    settings: list[dict[str, Any]] = field(default_factory=list)
    seen_at: float = 0.0
    waiting: bool = False
    """A window is due but does not fit under max_bytes yet (counted once per wait)."""


@dataclass(slots=True)
class Counts:
    """What the recalibrator did, for the stats snapshot."""

    checked: int = 0
    agreed: int = 0
    windows: int = 0
    collected: int = 0
    runs: int = 0
    met: int = 0
    failed: int = 0
    skipped_memory: int = 0
    last: JSON | None = None


class Recalibrator:
    """Checks, collects and recalibrates one stream rule's filter chain, per stream.

    Args:
        cfg: The rule's recalibration settings.
        filters: The rule's filter chain's filters (each with its ``cfg``).
        max_streams: Streams tracked at once (LRU).
        clock: The stream clock (for ``interval_s``).
    """

    def __init__(
        self,
        cfg: RecalibrationConfig,
        filters: Sequence[Any],
        *,
        max_streams: int = 10_000,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.cfg = cfg
        self.filters = list(filters)
        self.counts = Counts()
        self._rng = random.Random(cfg.seed)
        self._bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._states: StreamTable[_Stream] = StreamTable(
            lambda: _Stream(checks=deque(maxlen=cfg.check_window)), max_streams=max_streams
        )
        self._clock = clock
        configs = [getattr(f, "cfg", None) for f in self.filters]
        self.tunable = all(c is not None for c in configs) and bool(configs)
        self._configs = configs
        if not self.tunable:
            # The search replays the whole chain, so it needs every filter's settings.
            logger.warning(
                "recalibrate: filters %s do not expose their settings; recalibration is off",
                [
                    getattr(f, "name", "?")
                    for f, c in zip(self.filters, configs, strict=True)
                    if c is None
                ],
            )

    @property
    def bytes_kept(self) -> int:
        """Bytes reserved for the windows being collected."""
        return self._bytes

    def agreement(self, stream: StreamKey) -> float | None:
        """The stream's agreement over its recent checks (None before any)."""
        st = self._states.peek(stream)
        if st is None or not st.checks:
            return None
        return sum(st.checks) / len(st.checks)

    def collecting(self, stream: StreamKey) -> bool:
        """Whether a calibration window is being collected for ``stream``."""
        st = self._states.peek(stream)
        return st is not None and st.window is not None

    # ------------------------------------------------------------------ decisions

    def decide(
        self, stream: StreamKey, item: Frame, *, dropped: bool, now: float
    ) -> Decision | None:
        """Before the model: whether this frame is collected into a window or checked.

        ``collect``: every frame goes to the model while a window is collected.
        ``check``: a dropped frame sampled to be checked. None: as the filters said.
        """
        if not self.tunable:
            return None
        st = self._states.get(stream)
        st.seen_at = now
        if st.window is None and not st.running and (st.waiting or self._due(st, now)):
            self._start(stream, st, item, now)
        if st.window is not None:
            return "collect"
        if dropped and self.cfg.check_fraction > 0 and self._rng.random() < self.cfg.check_fraction:
            return "check"
        return None

    def _due(self, st: _Stream, now: float) -> bool:
        cfg = self.cfg
        if st.started_at is None:
            st.started_at = now
            if cfg.at_start:
                return True
        since = st.last_run_at if st.last_run_at is not None else st.started_at
        if now - since >= cfg.interval_s:
            return True
        return len(st.checks) >= cfg.min_checks and (
            sum(st.checks) / len(st.checks) < cfg.min_agreement
        )

    def _start(self, stream: StreamKey, st: _Stream, item: Frame, now: float) -> None:
        per_frame = _kept_bytes(item.image, self.cfg.frame_width)
        need = per_frame * self.cfg.window_frames
        if self._bytes + need > self.cfg.max_bytes:
            # Wait for another stream's window to finish (each frame retries: cheap).
            if not st.waiting:
                st.waiting = True
                self.counts.skipped_memory += 1
                logger.warning(
                    "%s: no room yet for a calibration window (%d bytes needed, %d of %d in "
                    "use); waiting",
                    stream,
                    need,
                    self._bytes,
                    self.cfg.max_bytes,
                )
            return
        st.waiting = False
        self._bytes += need
        st.window = _Window(reserved=need)
        st.checks.clear()
        self.counts.windows += 1
        logger.info("%s: collecting %d frames to recalibrate", stream, self.cfg.window_frames)

    # ------------------------------------------------------------------ answers

    def answered(
        self,
        stream: StreamKey,
        item: Frame,
        answer: JSON,
        *,
        latency_s: float,
        repeated: JSON | None,
        decision: Decision | None,
        authoritative: bool = True,
    ) -> None:
        """After the model: count a check, or keep a window frame (and recalibrate when full).

        ``repeated`` is the answer the stream would have repeated had the
        frame been dropped (for a ``check``). A check answered by a cache
        (not ``authoritative``) is not counted.
        """
        st = self._states.peek(stream)
        if st is None or decision is None:
            return
        if decision == "check":
            if not authoritative:
                return
            from streamedge.bench.answers import answers_agree

            agreed = answers_agree(answer, repeated)
            st.checks.append(agreed)
            self.counts.checked += 1
            self.counts.agreed += int(agreed)
            return
        window = st.window
        if window is None:
            return
        window.frames.append(_kept(item.image, self.cfg.frame_width))
        window.ts.append(item.ts)
        window.answers.append(answer)
        window.latency_s.append(latency_s)
        self.counts.collected += 1
        if len(window.frames) >= self.cfg.window_frames:
            st.window = None
            st.running = True
            self._spawn(stream, window)

    def _spawn(self, stream: StreamKey, window: _Window) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (tests of the logic): run inline
            asyncio.run(self._recalibrate(stream, window))
            return
        task = loop.create_task(self._recalibrate(stream, window))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recalibrate(self, stream: StreamKey, window: _Window) -> None:
        from streamedge.filters.calibration import CalibrationWindow, calibrate

        st = self._states.peek(stream)
        try:
            data = CalibrationWindow(stream, window.frames, window.ts, window.answers)
            model_s = float(np.mean(window.latency_s)) if window.latency_s else 0.0
            result = await asyncio.to_thread(
                calibrate,
                [c for c in self._configs if c is not None],
                data,
                target=self.cfg.target,
                model_s=model_s,
                metric=self.cfg.metric,
                online=True,
            )
            self._apply(stream, result.chosen, result.snm)
        except Exception:  # a failed recalibration keeps the thresholds in force
            self.counts.failed += 1
            logger.exception("%s: recalibration failed; thresholds unchanged", stream)
        else:
            self.counts.runs += 1
            self.counts.met += int(result.met)
            final = result.final
            self.counts.last = {
                "stream": str(stream),
                "settings": [
                    {k: (dict(v) if isinstance(v, dict) else v) for k, v in c.items()}
                    for c in result.chosen
                ],
                "score": None if final is None else round(final.score, 4),
                "pass_fraction": None if final is None else round(final.pass_fraction, 4),
                "met": result.met,
                "frames": result.frames,
            }
            if st is not None:
                st.settings = result.chosen
            logger.info("%s: recalibrated: %s", stream, self.counts.last)
        finally:
            self._bytes -= window.reserved
            window.frames.clear()
            if st is not None:
                st.running = False
                st.last_run_at = st.seen_at  # the gateway clock, as decide's "now"

    def _apply(
        self, stream: StreamKey, chosen: Sequence[dict[str, Any]], snm: dict[int, bytes]
    ) -> None:
        for index, (flt, settings) in enumerate(zip(self.filters, chosen, strict=True)):
            if index in snm and hasattr(flt, "set_model"):
                flt.set_model(stream, snm[index])
            if not settings:
                continue
            if "threshold" in settings and hasattr(flt, "set_threshold"):
                flt.set_threshold(stream, float(settings["threshold"]))
            elif "thresholds" in settings and hasattr(flt, "set_thresholds"):
                flt.set_thresholds(stream, dict(settings["thresholds"]))
            elif "sdd_threshold" in settings and hasattr(flt, "set_thresholds"):
                flt.set_thresholds(
                    stream,
                    sdd=float(settings["sdd_threshold"]),
                    snm_low=float(settings["snm_low"]),
                    snm_high=float(settings["snm_high"]),
                )

    async def wait_idle(self) -> None:
        """Wait for running recalibrations (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def forget(self, stream: StreamKey) -> None:
        """Drop a stream's state (its window's memory is released)."""
        st = self._states.peek(stream)
        if st is not None and st.window is not None:
            self._bytes -= st.window.reserved
        self._states.pop(stream)

    def as_json(self) -> JSON:
        """The counts for the stats snapshot."""
        c = self.counts
        return {
            "checked": c.checked,
            "agreed": c.agreed,
            "agreement": round(c.agreed / c.checked, 4) if c.checked else None,
            "windows": c.windows,
            "collected_frames": c.collected,
            "runs": c.runs,
            "met": c.met,
            "failed": c.failed,
            "skipped_memory": c.skipped_memory,
            "bytes_kept": self._bytes,
            "last": c.last,
        }


def _kept_size(image: Image, width: int) -> tuple[int, int]:
    height, full = int(image.shape[0]), int(image.shape[1])
    if width <= 0 or width >= full:
        return full, height
    return width, max(1, round(height * width / full))


def _kept_bytes(image: Image, width: int) -> int:
    w, h = _kept_size(image, width)
    channels = int(image.shape[2]) if image.ndim == 3 else 1
    return w * h * channels * int(image.dtype.itemsize)


def _kept(image: Image, width: int) -> Image:
    import cv2

    w, h = _kept_size(image, width)
    if (w, h) == (image.shape[1], image.shape[0]):
        return image.copy()
    # Nearest neighbour keeps true pixel values (as the filters' own subsampling).
    return np.ascontiguousarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST))
