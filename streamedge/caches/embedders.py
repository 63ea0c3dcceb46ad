"""Embedders: model input → float32 vector. Each has a version in the namespace.

Vectors are scaled so that a root-mean-square distance per dimension means
something stable: thumbnails are in [0, 1], reading windows are divided by a
per-field scale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from streamedge.errors import CacheError
from streamedge.records import Frame, ModelInput, Vector, Window

if TYPE_CHECKING:
    from streamedge.caches.config import DownscaleEmbedderConfig, WindowEmbedderConfig


class DownscaleEmbedder:
    """A ``size``×``size`` thumbnail (INTER_AREA), values scaled to [0, 1]."""

    name = "downscale"

    def __init__(self, cfg: DownscaleEmbedderConfig) -> None:
        self._size = cfg.size
        self._gray = cfg.grayscale
        self.dim = cfg.size * cfg.size * (1 if cfg.grayscale else 3)
        self.version = f"{cfg.size}{'g' if cfg.grayscale else 'c'}.1"

    def embed(self, item: ModelInput) -> Vector:
        """Return the flattened thumbnail of a frame."""
        if not isinstance(item, Frame):
            raise CacheError("the downscale embedder needs frames")
        import cv2  # lazy: only frame pipelines need OpenCV

        image: np.ndarray = item.image
        if self._gray:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        # INTER_AREA averages every source pixel, so small shifts move the key little.
        small = cv2.resize(image, (self._size, self._size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small, dtype=np.float32).reshape(-1) / np.float32(255.0)


class WindowEmbedder:
    """A window of readings, each field divided by its scale, flattened."""

    name = "window"

    def __init__(self, cfg: WindowEmbedderConfig, *, fields: tuple[str, ...], size: int) -> None:
        self._scale = np.array([cfg.scale.get(f, 1.0) for f in fields], dtype=np.float32)
        if np.any(self._scale == 0):
            raise CacheError("window embedder: a field scale of 0 is not allowed")
        self.dim = len(fields) * size
        self.version = "1"

    def embed(self, item: ModelInput) -> Vector:
        """Return the scaled, flattened window."""
        if not isinstance(item, Window):
            raise CacheError("the window embedder needs reading windows")
        values = np.asarray(item.values, dtype=np.float32) / self._scale
        flat = values.reshape(-1)
        if flat.shape[0] != self.dim:
            msg = f"window has {flat.shape[0]} values, embedder expects {self.dim}"
            raise CacheError(msg)
        return flat
