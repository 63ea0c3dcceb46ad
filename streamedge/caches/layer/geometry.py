"""Receptive-field arithmetic along one spatial axis.

Everything here is integer arithmetic on one axis (height or width); the 2-D
picture is the product of two independent axes because every operator the
layer cache accepts (convolution, pooling, padding, pointwise ops) acts on the
two axes separately.

Conventions. A spatial operator is described by an :class:`AxisWindow`: output
position ``o`` reads layer-input positions ``o*stride - pad_begin + t*dilation``
for ``t`` in ``0..kernel-1``. Positions below 0 or at/after the input size are
padding. Composed from the image to a tensor, an :class:`AxisField` says that
tensor position ``o`` depends on image pixels inside
``[o*jump + start, o*jump + start + extent)`` (possibly reaching outside the
image, which is where the model's padding is used). ``start`` is never positive
because pads are never negative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

End = int | None
"""An interval bound where ``None`` means "up to the tensor's own end"."""


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of ``a / b`` for positive ``b`` (exact for negatives)."""
    return -((-a) // b)


@dataclass(frozen=True, slots=True)
class AxisWindow:
    """One spatial operator along one axis, with its padding resolved."""

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_begin: int = 0
    pad_end: int = 0
    ceil_mode: bool = False

    @property
    def span(self) -> int:
        """Extent of one window in input positions (dilated kernel)."""
        return self.dilation * (self.kernel - 1) + 1

    def out_size(self, n: int) -> int:
        """Output length for input length ``n`` (ONNX / onnxruntime rules).

        With ``ceil_mode`` the last window may hang over the padded input, but
        it must start inside the input or the begin padding; onnxruntime drops
        a window that would start in the end padding (PyTorch's rule too).
        """
        room = n + self.pad_begin + self.pad_end - self.span
        if room < 0:
            return 0
        if not self.ceil_mode:
            return room // self.stride + 1
        out = ceil_div(room, self.stride) + 1
        if (out - 1) * self.stride >= n + self.pad_begin:
            out -= 1
        return out

    def valid(self, lo: End, hi: End) -> tuple[End, End]:
        """Map an interval of exact input positions to exact output positions.

        ``[lo, hi)`` are the positions of this operator's input (in full-image
        coordinates of that tensor) whose values computed on a crop equal the
        values computed on the whole image. ``lo is None`` means the crop starts
        at the image border, so the begin padding the crop sees is the model's
        real padding; ``hi is None`` is the same at the end. An output is exact
        when every position its window reads is exact or real padding.
        """
        out_lo = None if lo is None else ceil_div(lo + self.pad_begin, self.stride)
        out_hi = (
            None if hi is None else (hi - 1 + self.pad_begin - (self.span - 1)) // self.stride + 1
        )
        return out_lo, out_hi


@dataclass(frozen=True, slots=True)
class AxisField:
    """Which image pixels one position of a tensor depends on, along one axis.

    Position ``o`` depends on pixels ``[o*jump + start, o*jump + start + extent)``.
    The image itself is ``AxisField(1, 0, 1)``.
    """

    jump: int = 1
    start: int = 0
    extent: int = 1

    def through(self, window: AxisWindow) -> AxisField:
        """The field after applying ``window`` to a tensor with this field."""
        return AxisField(
            jump=self.jump * window.stride,
            start=self.start - window.pad_begin * self.jump,
            extent=self.extent + (window.span - 1) * self.jump,
        )

    def union(self, other: AxisField) -> AxisField:
        """The field of a pointwise combination of two position-aligned tensors.

        Raises:
            ValueError: the two tensors do not advance at the same pace.
        """
        if other.jump != self.jump:
            msg = f"cannot combine jumps {self.jump} and {other.jump}"
            raise ValueError(msg)
        start = min(self.start, other.start)
        end = max(self.start + self.extent, other.start + other.extent)
        return AxisField(self.jump, start, end - start)

    def span(self, lo: int, hi: int) -> tuple[int, int]:
        """Image interval read by positions ``[lo, hi)`` (may leave the image)."""
        return lo * self.jump + self.start, (hi - 1) * self.jump + self.start + self.extent

    def affected(self, r0: int, r1: int, n: int) -> tuple[int, int]:
        """Positions in ``[0, n)`` whose field intersects image pixels ``[r0, r1)``."""
        lo = ceil_div(r0 - self.start - self.extent + 1, self.jump)
        hi = (r1 - 1 - self.start) // self.jump + 1
        return max(lo, 0), min(hi, n)

    def inside(self, n_image: int, n: int) -> tuple[int, int]:
        """Positions in ``[0, n)`` whose whole field lies inside the image.

        Those positions never see padding, so shifting the image by a multiple
        of the alignment shifts them without change.
        """
        lo = ceil_div(-self.start, self.jump)
        hi = (n_image - self.extent - self.start) // self.jump + 1
        return max(lo, 0), min(hi, n)


def lcm_all(values: list[int]) -> int:
    """Least common multiple of positive integers (1 for an empty list)."""
    out = 1
    for v in values:
        out = math.lcm(out, v)
    return out


def clip_interval(lo: End, hi: End, n: int) -> tuple[int, int]:
    """Resolve ``None`` bounds against a tensor of length ``n`` and clip."""
    a = 0 if lo is None else max(lo, 0)
    b = n if hi is None else min(hi, n)
    return a, max(a, b)
