"""Frame hygiene shared by the video filters: shrink first, then normalise.

The filters expect ``Frame.image`` as an ``(H, W, 3)`` BGR ``uint8`` array
(:mod:`streamedge.records`), but decoders and cameras deliver other layouts.
What happens to each:

Converted (the filter judges the frame as usual):
    * grey ``(H, W)`` or ``(H, W, 1)``: the grey level is copied to B, G and R;
    * ``(H, W, 4)``: taken as BGRA, alpha is dropped;
    * ``uint16``: divided by 257 (0-65535 onto 0-255);
    * floating point: taken as 0-1 and scaled by 255 when the shrunk image's
      maximum is at most 1, otherwise as 0-255; clipped to 0-255 either way;
    * ``bool``: False/True onto 0/255; other integer types are clipped to 0-255;
    * non-contiguous views (crops, flips) are copied first.

Rejected with :class:`UnsupportedFrameError` (a :class:`DecodeError` whose
``reason`` says why; the pipeline lets a frame pass when a filter raises):
    * not a numpy array, an empty array, or a dimension of size 0;
    * more than 3 dimensions, or a channel count other than 1, 3 or 4, which
      includes channels-first ``(3, H, W)`` arrays;
    * complex, object or other non-numeric dtypes;
    * NaN or infinity among the sampled pixels.

A frame whose resolution differs from the stream's previous frame is not an
error: each filter resets that stream's state and lets the frame pass.

The conversions run on the shrunk image wherever possible, so an odd frame
costs about as much as a normal one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from streamedge.errors import DecodeError

if TYPE_CHECKING:
    from streamedge.records import Image

FloatImage = npt.NDArray[np.float32]

# Dtypes cv2.resize accepts directly; anything else is cast to float32 first.
_RESIZABLE = (np.uint8, np.uint16, np.float32, np.float64)


class UnsupportedFrameError(DecodeError):
    """A frame the video filters cannot interpret; ``reason`` names the problem."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, reason=reason)


def validate(image: Any) -> tuple[int, int]:
    """Check that ``image`` can be normalised; return its ``(height, width)``.

    Raises:
        UnsupportedFrameError: the array cannot be read as an image.
    """
    if not isinstance(image, np.ndarray):
        msg = f"frame image must be a numpy array, got {type(image).__name__}"
        raise UnsupportedFrameError(msg, reason="frame_type")
    if image.size == 0:
        msg = f"frame image is empty (shape {image.shape})"
        raise UnsupportedFrameError(msg, reason="frame_empty")
    if image.ndim == 3:
        if image.shape[2] not in (1, 3, 4):
            layout = (
                "channels-first layout is not supported"
                if image.shape[0] in (1, 3, 4)
                else "expected 1, 3 or 4 channels"
            )
            msg = f"frame image has shape {image.shape}: {layout}"
            raise UnsupportedFrameError(msg, reason="frame_channels")
    elif image.ndim != 2:
        msg = f"frame image must be 2-D or 3-D, got shape {image.shape}"
        raise UnsupportedFrameError(msg, reason="frame_ndim")
    if image.dtype.kind not in "biuf":
        msg = f"frame image dtype {image.dtype} is not numeric"
        raise UnsupportedFrameError(msg, reason="frame_dtype")
    return int(image.shape[0]), int(image.shape[1])


def _shrink(image: npt.NDArray[Any], size: tuple[int, int], interpolation: int) -> Any:
    """Resize to ``size`` (width, height) in the image's own dtype where cv2 can."""
    import cv2  # lazy: only video pipelines need OpenCV

    if image.dtype.type not in _RESIZABLE:
        # bool, int32, float16...: rare, so the full-size cast is acceptable.
        image = image.astype(np.float32)
    if not image.flags.c_contiguous:
        image = np.ascontiguousarray(image)
    height, width = image.shape[:2]
    if (width, height) == size:
        return image
    return cv2.resize(image, size, interpolation=interpolation)


def _to_bgr_float(small: npt.NDArray[Any], kind: str, dtype: np.dtype[Any]) -> FloatImage:
    """Map a shrunk image of any supported layout and dtype to float32 BGR 0-255."""
    if small.ndim == 3 and small.shape[2] == 4:
        small = small[:, :, :3]
    elif small.ndim == 3 and small.shape[2] == 1:
        small = small[:, :, 0]
    out = small.astype(np.float32)
    if dtype == np.uint16:
        out *= np.float32(1.0 / 257.0)
    elif kind == "b":
        out *= np.float32(255.0)
    elif kind == "f":
        if not np.isfinite(out).all():
            msg = "frame image contains NaN or infinite values"
            raise UnsupportedFrameError(msg, reason="frame_nonfinite")
        if out.size and float(out.max()) <= 1.0:
            out *= np.float32(255.0)
    if dtype != np.uint8:
        np.clip(out, 0.0, 255.0, out=out)
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def thumbnail(image: Image, side: int) -> Image:
    """Return a ``side``×``side``×3 uint8 BGR thumbnail.

    INTER_LINEAR, as NoScope: INTER_AREA costs about 30 times more at
    640×480. Thumbnails are kept as uint8 (a quarter of float32's memory per
    stored frame); distances are computed in floating point.

    Raises:
        UnsupportedFrameError: see the module docstring.
    """
    import cv2

    validate(image)
    small = _shrink(image, (side, side), cv2.INTER_LINEAR)
    if image.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3:
        return small.copy() if small is image else small  # the common case
    return np.rint(_to_bgr_float(small, image.dtype.kind, image.dtype)).astype(np.uint8)


def working_size(height: int, width: int, target_width: int | None) -> tuple[int, int]:
    """Return ``(width, height)`` for a frame scaled to ``target_width``, same aspect.

    ``None`` or a target at least as wide as the frame keeps the frame's size.
    """
    if target_width is None or target_width >= width:
        return width, height
    new_height = max(1, round(height * target_width / width))
    return target_width, new_height


def working_bgr(image: Image, target_width: int | None) -> Image:
    """Return a uint8 BGR copy at ``target_width`` (nearest-neighbour subsampling).

    Nearest neighbour keeps every sampled pixel's true value, so fractions of
    changed pixels measured on it estimate those of the full frame without
    bias; it is also the cheapest resize.

    Raises:
        UnsupportedFrameError: see the module docstring.
    """
    import cv2

    height, width = validate(image)
    size = working_size(height, width, target_width)
    small = _shrink(image, size, cv2.INTER_NEAREST)
    if image.dtype == np.uint8 and small.ndim == 3 and small.shape[2] == 3:
        # A frame already at the working size comes back as itself; copy it
        # because decoders may reuse their buffers and the filter keeps it.
        return small.copy() if small is image else np.ascontiguousarray(small)
    out = _to_bgr_float(small, image.dtype.kind, image.dtype)
    return np.rint(out).astype(np.uint8)
