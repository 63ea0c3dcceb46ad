"""Embedders: model input → float32 vector. Each has a version in the namespace.

Vectors are scaled so that a root-mean-square distance per dimension means
something stable: thumbnails are in [0, 1], reading windows are divided by a
per-field scale, histograms are square-rooted (Hellinger), perceptual hashes
are 0/1 bits, detector features are divided by their own RMS.

Frame embedders and what they are good for (cost per 640x480 frame:
``benchmarks/embedders.py``):

* ``downscale``: a thumbnail; fixed cameras, sensitive to small shifts;
* ``histogram``: colour distribution; blind to where things are (a person
  walking across a fixed scene barely moves it), robust to shifts;
* ``phash``: signs of the low DCT frequencies of a grey thumbnail; robust to
  brightness, noise and small shifts, coarse;
* ``pnet``: pooled features of MTCNN's own first network; sees face-like
  patterns where the downscaled pixels see colour.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamedge.errors import CacheError
from streamedge.records import Frame, ModelInput, Vector, Window

if TYPE_CHECKING:
    from streamedge.caches.config import (
        DownscaleEmbedderConfig,
        HistogramEmbedderConfig,
        PHashEmbedderConfig,
        PNetEmbedderConfig,
        WindowEmbedderConfig,
    )


def _frame_image(item: ModelInput, name: str) -> np.ndarray:
    if not isinstance(item, Frame):
        msg = f"the {name} embedder needs frames"
        raise CacheError(msg)
    image: np.ndarray = item.image
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
        msg = f"the {name} embedder needs a BGR frame, got shape {image.shape}"
        raise CacheError(msg)
    return image


def _shrink(image: np.ndarray, width: int) -> np.ndarray:
    """Shrink to ``width`` pixels keeping the aspect (never enlarges)."""
    import cv2  # lazy: only frame pipelines need OpenCV

    h, w = image.shape[:2]
    if w <= width:
        return image
    height = max(1, round(h * width / w))
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


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


class HistogramEmbedder:
    """A colour histogram (HSV hue x saturation plus value, or joint BGR), square-rooted.

    The square root of a normalised histogram turns L2 distance into the
    Hellinger distance; the scale makes the RMS distance 0 for identical
    colour distributions and at most ``sqrt(2)`` for disjoint ones.
    """

    name = "histogram"

    def __init__(self, cfg: HistogramEmbedderConfig) -> None:
        self._space = cfg.space
        self._bins = cfg.bins
        self._width = cfg.width
        self.dim = cfg.bins * cfg.bins + cfg.bins if cfg.space == "hsv" else cfg.bins**3
        self.version = f"{cfg.space}{cfg.bins}w{cfg.width}.1"
        parts = 2 if cfg.space == "hsv" else 1
        # Each part sums to 1 before the root, so the squared norm is `parts`.
        self._scale = np.float32(np.sqrt(self.dim / parts))

    def embed(self, item: ModelInput) -> Vector:
        """Return the scaled square-rooted histogram of a frame."""
        import cv2  # lazy: only frame pipelines need OpenCV

        image = _shrink(_frame_image(item, self.name), self._width)
        b = self._bins
        if self._space == "hsv":
            hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
            hs = cv2.calcHist([hsv], [0, 1], None, [b, b], [0, 180, 0, 256]).reshape(-1)
            v = cv2.calcHist([hsv], [2], None, [b], [0, 256]).reshape(-1)
            parts = [hs, v]
        else:
            bgr = cv2.calcHist([image], [0, 1, 2], None, [b, b, b], [0, 256, 0, 256, 0, 256])
            parts = [bgr.reshape(-1)]
        out = np.concatenate([np.sqrt(p / max(float(p.sum()), 1.0)) for p in parts])
        return np.ascontiguousarray(out * self._scale, dtype=np.float32)


class PHashEmbedder:
    """Perceptual hash: the signs of a grey thumbnail's low DCT frequencies, as 0/1.

    RMS distance is ``sqrt(hamming / bits)``.
    """

    name = "phash"

    def __init__(self, cfg: PHashEmbedderConfig) -> None:
        self._hash = cfg.hash_size
        self._side = cfg.hash_size * cfg.highfreq_factor
        self.dim = cfg.hash_size * cfg.hash_size
        self.version = f"{cfg.hash_size}x{cfg.highfreq_factor}.1"

    def embed(self, item: ModelInput) -> Vector:
        """Return the hash bits of a frame."""
        import cv2  # lazy: only frame pipelines need OpenCV

        grey = cv2.cvtColor(_frame_image(item, self.name), cv2.COLOR_BGR2GRAY)
        small = cv2.resize(grey, (self._side, self._side), interpolation=cv2.INTER_AREA)
        coeffs = cv2.dct(np.asarray(small, dtype=np.float32))[: self._hash, : self._hash]
        flat = coeffs.reshape(-1)
        # The DC term is the mean brightness: keep it out of the median (it is huge).
        median = np.median(flat[1:])
        bits: Vector = (flat > median).astype(np.float32)
        return bits


class PNetEmbedder:
    """MTCNN PNet's 32-channel feature map, averaged over a grid, divided by its RMS.

    The ONNX session is opened on first use (onnxruntime is imported lazily).
    """

    name = "pnet"

    def __init__(self, cfg: PNetEmbedderConfig) -> None:
        from streamedge.models.mtcnn import PNET_PATH

        self._path = Path(cfg.model_path) if cfg.model_path else PNET_PATH
        if not self._path.is_file():
            msg = f"pnet embedder: model file not found: {self._path}"
            raise CacheError(msg)
        self._width = cfg.width
        self._grid = cfg.grid
        self.dim = 32 * cfg.grid * cfg.grid
        # The weights are part of the namespace: other weights, other vectors.
        digest = hashlib.blake2b(self._path.read_bytes(), digest_size=4).hexdigest()
        self.version = f"w{cfg.width}g{cfg.grid}-{digest}.1"
        self._session: Any = None

    def _run(self, rgb: np.ndarray) -> np.ndarray:
        from streamedge.models.mtcnn import normalise, open_session

        if self._session is None:
            self._session = open_session(self._path, intra_op_threads=1)
        (feats,) = self._session.run(["features"], {"input": normalise(rgb)})
        fmap: np.ndarray = feats[0]
        return fmap

    def embed(self, item: ModelInput) -> Vector:
        """Return the pooled, RMS-normalised feature vector of a frame."""
        import cv2  # lazy: only frame pipelines need OpenCV

        from streamedge.models.mtcnn import CELL

        image = _frame_image(item, self.name)
        h, w = image.shape[:2]
        height = max(CELL, round(h * self._width / w))
        small = cv2.resize(image, (self._width, height), interpolation=cv2.INTER_AREA)
        fmap = self._run(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))  # (32, mh, mw)
        g = self._grid
        ys = np.linspace(0, fmap.shape[1], g + 1).round().astype(int)
        xs = np.linspace(0, fmap.shape[2], g + 1).round().astype(int)
        cells = [
            fmap[:, ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean(
                axis=(1, 2)
            )
            for i in range(g)
            for j in range(g)
        ]
        vec = np.concatenate(cells).astype(np.float32)
        rms = float(np.sqrt(np.mean(vec * vec)))
        return vec / np.float32(max(rms, 1e-6))
