"""A cheap frame-difference filter against the last frame that passed.

MSE of ``size``×``size`` colour thumbnails (INTER_LINEAR: INTER_AREA costs
about 30× more here). Comparing with the last frame *sent* rather than the
previous frame (Glimpse, Reducto) means slow drift cannot sneak past.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamedge.filters._frames import thumbnail
from streamedge.filters.base import BaseFilter, StreamStates
from streamedge.filters.config import FrameDiffFilterConfig
from streamedge.records import Frame, Item, StreamKey, Verdict


@dataclass(slots=True)
class _Sent:
    thumb: npt.NDArray[np.float32]
    at: float


class FrameDiffFilter(BaseFilter):
    """DROP a frame whose thumbnail MSE to the last passed frame is below the threshold."""

    name = "frame_diff"

    def __init__(self, cfg: FrameDiffFilterConfig, *, max_streams: int = 10_000) -> None:
        self.cfg = self._cfg = cfg  # cfg: what calibration replays
        self._states: StreamStates[_Sent] = StreamStates(max_streams)

    def _thumb(self, frame: Frame) -> npt.NDArray[np.float32]:
        # The shared frame hygiene: grey, BGRA, uint16 and float frames are
        # converted; unreadable ones raise UnsupportedFrameError (counted).
        return thumbnail(frame.image, self._cfg.size).astype(np.float32)

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """PASS on the first frame, on change above the threshold, or when stale."""
        if not isinstance(item, Frame):
            return Verdict.PASS
        thumb = self._thumb(item)
        last = self._states.get(stream)
        if last is not None and now - last.at < self._cfg.max_age_s:
            mse = float(np.mean((thumb - last.thumb) ** 2))
            if mse < self._cfg.threshold:
                return Verdict.DROP
        self._states.set(stream, _Sent(thumb, now))
        return Verdict.PASS

    def reset(self, stream: StreamKey) -> None:
        """Forget the stream's last passed frame."""
        self._states.pop(stream)
