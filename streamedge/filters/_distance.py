"""Distances between thumbnails: NoScope's MSE and its blocked variant."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

Thumb = npt.NDArray[Any]
"""A ``(side, side, 3)`` thumbnail, uint8 or float32, values 0-255."""


def mse(a: Thumb, b: Thumb) -> float:
    """Mean squared error over every pixel and channel (0-65025)."""
    import cv2  # lazy: only video pipelines need OpenCV

    if a.dtype != b.dtype:
        a = a.astype(np.float32, copy=False)
        b = b.astype(np.float32, copy=False)
    return float(cv2.norm(a, b, cv2.NORM_L2SQR)) / a.size


def block_mse(a: Thumb, b: Thumb, blocks: int) -> npt.NDArray[np.float32]:
    """Per-channel MSE of each block of a ``blocks``×``blocks`` grid, ``(blocks, blocks, 3)``.

    The side must be a multiple of ``blocks`` (NoScope's BlockedFilter asserts
    the same); an area resize by an integer factor is then exactly the block
    mean, and costs a fraction of a numpy reshape-and-mean.
    """
    import cv2

    diff = a.astype(np.float32) - b.astype(np.float32)
    np.multiply(diff, diff, out=diff)
    means = cv2.resize(diff, (blocks, blocks), interpolation=cv2.INTER_AREA)
    return np.asarray(means, dtype=np.float32)


def max_block_mse(a: Thumb, b: Thumb, blocks: int) -> float:
    """The largest per-channel block MSE: NoScope's blocked distance with ``use_max``."""
    return float(block_mse(a, b, blocks).max())


def distance(a: Thumb, b: Thumb, metric: str, blocks: int) -> float:
    """``mse`` for ``metric == "global"``, else ``max_block_mse``."""
    if metric == "global":
        return mse(a, b)
    return max_block_mse(a, b, blocks)
