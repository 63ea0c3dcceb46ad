"""Camera streams for the harness: a real video, or cameras derived from one.

A :class:`StreamSpec` names a video file, the device/stream it is published
as, and an optional :class:`Derivation` that turns the recorded frames into
those of another (virtual) camera. The derived cameras are **derived, not
recorded**: they are what a second camera near the first would see, made by
cropping an overlapping part of the frame, shifting the viewpoint by a few
pixels, changing brightness, or dropping frames (a lower frame rate). They
exist so that cross-device reuse (one camera's answer serving another) can
be measured on real content; they do not capture parallax, different lenses
or independent sensor noise, and results on them say so.

:func:`derived_cameras` builds the presets the benchmarks use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from streamedge.datasets import iter_frames
from streamedge.records import JSON, Image


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivation:
    """How a derived camera's frames are made from the recorded ones (applied in this order).

    The identity derivation (all defaults) is the recorded video itself.
    """

    start: int = 0
    """Skip this many recorded frames first (the camera starts later)."""
    step: int = 1
    """Keep every ``step``-th recorded frame (a lower frame rate)."""
    crop: tuple[float, float, float, float] | None = None
    """``(x, y, width, height)`` as fractions of the frame: the part this camera sees,
    kept at native resolution (same pixels per face)."""
    shift: tuple[int, int] = (0, 0)
    """Viewpoint shift ``(dx, dy)`` in pixels, applied after cropping; the border is
    replicated."""
    gain: float = 1.0
    """Brightness: pixel values are multiplied by this ..."""
    offset: float = 0.0
    """... then this is added (clipped to 0-255)."""

    def __post_init__(self) -> None:
        """Check the parameters.

        Raises:
            ValueError: out-of-range parameters.
        """
        if self.start < 0 or self.step < 1:
            msg = f"derivation needs start >= 0 and step >= 1, got {self.start}, {self.step}"
            raise ValueError(msg)
        if self.gain < 0:
            msg = f"gain must not be negative, got {self.gain}"
            raise ValueError(msg)
        if self.crop is not None:
            x, y, w, h = self.crop
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 - x + 1e-9 and 0 < h <= 1 - y + 1e-9):
                msg = f"crop {self.crop} is not a part of the frame (fractions x, y, w, h)"
                raise ValueError(msg)

    @property
    def identity(self) -> bool:
        """Whether this is the recorded video unchanged."""
        return self == Derivation()

    def apply(self, image: Image) -> Image:
        """The derived camera's view of one recorded frame."""
        out = image
        if self.crop is not None:
            height, width = image.shape[:2]
            x, y, w, h = self.crop
            x0, y0 = round(x * width), round(y * height)
            x1 = min(width, x0 + max(1, round(w * width)))
            y1 = min(height, y0 + max(1, round(h * height)))
            out = out[y0:y1, x0:x1]
        dx, dy = self.shift
        if dx or dy:
            import cv2  # heavy: imported on use

            matrix = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
            height, width = out.shape[:2]
            shifted = cv2.warpAffine(
                out, matrix, (int(width), int(height)), borderMode=cv2.BORDER_REPLICATE
            )
            out = np.asarray(shifted, dtype=np.uint8)
        if self.gain != 1.0 or self.offset != 0.0:
            scaled = out.astype(np.float32) * self.gain + self.offset
            out = np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out, dtype=np.uint8)

    def to_json(self) -> JSON:
        """A JSON-serialisable dict (part of the reference cache key)."""
        doc = asdict(self)
        doc["crop"] = list(self.crop) if self.crop is not None else None
        doc["shift"] = list(self.shift)
        return doc


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """One frame of a stream, as the harness publishes it."""

    index: int
    """Position in the stream (0, 1, 2, ...), after start/step."""
    source_index: int
    """Frame number in the recorded video."""
    ts: float
    """Stream time in seconds: ``source_index / fps``."""
    image: Image


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSpec:
    """One camera stream the harness replays: a video, its topic key and its derivation."""

    video: Path
    device: str = "cam1"
    stream: str = "camera"
    derivation: Derivation = field(default_factory=Derivation)
    max_frames: int | None = None
    """Stop after this many frames of this stream (None: the whole video)."""

    @property
    def key(self) -> str:
        """``device/stream``, as stream rules match it."""
        return f"{self.device}/{self.stream}"

    def frames(self) -> Iterator[StreamFrame]:
        """Decode the video and yield this stream's frames, derived."""
        d = self.derivation
        fps = video_fps(self.video)
        source = iter_frames(self.video)
        index = 0
        for source_index, image in enumerate(source):
            if self.max_frames is not None and index >= self.max_frames:
                return
            if source_index < d.start or (source_index - d.start) % d.step:
                continue
            yield StreamFrame(index, source_index, source_index / fps, d.apply(image))
            index += 1

    def frame_count(self) -> int | None:
        """How many frames :meth:`frames` will yield, from the container's frame count
        (an estimate for some formats; None when the container does not say)."""
        import cv2  # heavy: imported on use

        cap = cv2.VideoCapture(str(self.video))
        try:
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        finally:
            cap.release()
        if total <= 0:
            return None
        d = self.derivation
        count = max(0, -(-(total - d.start) // d.step))
        return min(count, self.max_frames) if self.max_frames is not None else count

    def describe(self) -> JSON:
        """What the stream is (for reports and the reference key)."""
        return {
            "video": self.video.name,
            "device": self.device,
            "stream": self.stream,
            "derivation": self.derivation.to_json(),
            "max_frames": self.max_frames,
        }


def video_fps(path: Path | str, default: float = 25.0) -> float:
    """The frame rate recorded in a video file (``default`` when it has none)."""
    import cv2  # heavy: imported on use

    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        cap.release()
    return fps if fps > 0 and np.isfinite(fps) else default


def file_digest(path: Path | str, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def json_digest(doc: object) -> str:
    """SHA-256 of a canonical JSON rendering, hex."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


Preset = Literal["overlap", "jitter", "mixed"]

_PRESETS: dict[str, tuple[tuple[str, Derivation], ...]] = {
    # Three cameras whose fields of view overlap by half: left, middle, right.
    "overlap": (
        ("left", Derivation(crop=(0.0, 0.0, 0.6, 1.0))),
        ("middle", Derivation(crop=(0.2, 0.0, 0.6, 1.0))),
        ("right", Derivation(crop=(0.4, 0.0, 0.6, 1.0))),
    ),
    # One scene, slightly different mounts and exposures.
    "jitter": (
        ("a", Derivation()),
        ("b", Derivation(shift=(6, 4), gain=0.9)),
        ("c", Derivation(shift=(-5, 3), offset=12.0)),
    ),
    # Everything at once, including a camera at half the frame rate.
    "mixed": (
        ("a", Derivation()),
        ("b", Derivation(crop=(0.1, 0.05, 0.9, 0.95), shift=(4, -3), gain=1.1)),
        ("c", Derivation(step=2, offset=-10.0)),
    ),
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)
"""Names accepted by :func:`derived_cameras`."""


def derived_cameras(
    video: Path,
    preset: str = "jitter",
    *,
    stream: str = "camera",
    prefix: str = "cam",
    max_frames: int | None = None,
) -> list[StreamSpec]:
    """Several derived cameras from one recorded video, to replay interleaved as devices.

    Presets (devices are named ``{prefix}-{suffix}``):

    * ``overlap``: left, middle and right crops, each 60 % of the width, so
      neighbours share half their view;
    * ``jitter``: the full view, and two copies shifted by a few pixels with
      10 % darker / +12 grey levels brighter exposure;
    * ``mixed``: the full view; a 90 % crop, shifted and 10 % brighter; and
      one at half the frame rate, darker.

    Raises:
        ValueError: unknown preset.
    """
    if preset not in _PRESETS:
        msg = f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}"
        raise ValueError(msg)
    return [
        StreamSpec(
            video=video,
            device=f"{prefix}-{suffix}",
            stream=stream,
            derivation=derivation,
            max_frames=max_frames,
        )
        for suffix, derivation in _PRESETS[preset]
    ]


def interleave(streams: Sequence[StreamSpec]) -> Iterator[tuple[int, StreamFrame]]:
    """Frames of several streams merged in time order, as ``(stream position, frame)``.

    Frames with equal time stamps come in the order the streams are given,
    as cameras sharing a clock would deliver them.
    """
    iterators = [s.frames() for s in streams]
    heads: list[StreamFrame | None] = [next(it, None) for it in iterators]
    while True:
        live = [(f.ts, i) for i, f in enumerate(heads) if f is not None]
        if not live:
            return
        _, i = min(live)
        frame = heads[i]
        assert frame is not None  # noqa: S101  # chosen among the live heads
        yield i, frame
        heads[i] = next(iterators[i], None)
