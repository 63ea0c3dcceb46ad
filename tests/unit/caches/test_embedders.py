"""Frame embedders on real video: near-identical frames map close, different frames far."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from streamedge.caches.cache import build_cache, build_embedder
from streamedge.caches.config import CacheConfig
from streamedge.datasets import find_video, iter_frames
from streamedge.errors import CacheError
from streamedge.protocols import Embedder
from streamedge.records import Frame, Image, ModelRef, StreamKey, Window

EMBEDDERS: dict[str, dict[str, object]] = {
    "downscale": {"type": "downscale", "size": 16},
    "histogram-hsv": {"type": "histogram"},
    "histogram-bgr": {"type": "histogram", "space": "bgr", "bins": 6},
    "phash": {"type": "phash"},
    "pnet": {"type": "pnet"},
}


def make(doc: dict[str, object]) -> Embedder:
    cfg = CacheConfig.model_validate({"embedder": doc})
    return build_embedder(cfg, window_fields=None, window_size=None)


def frame(image: Image) -> Frame:
    return Frame(stream=StreamKey("cam", "camera"), ts=0.0, image=image)


@pytest.fixture(scope="module")
def video() -> dict[str, Image]:
    vtest = list(iter_frames(find_video("vtest", excerpt_only=True), max_frames=40))
    mega = next(iter_frames(find_video("megamind", excerpt_only=True), step=1, max_frames=1))
    rng = np.random.default_rng(0)
    base = vtest[0]
    noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255)
    return {
        "base": base,
        "noisy": noisy.astype(np.uint8),
        "next": vtest[1],  # 1/10 s later: a few pedestrians moved a little
        "later": vtest[39],
        "flipped": np.ascontiguousarray(base[::-1, ::-1]),
        "other": np.ascontiguousarray(mega),
    }


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return math.sqrt(float(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("name", list(EMBEDDERS))
def test_near_identical_frames_are_close_and_different_frames_far(
    name: str, video: dict[str, Image]
) -> None:
    emb = make(EMBEDDERS[name])
    vec: Callable[[str], np.ndarray] = lambda key: emb.embed(frame(video[key]))  # noqa: E731
    base = vec("base")
    assert base.shape == (emb.dim,)
    assert base.dtype == np.float32
    assert np.all(np.isfinite(base))
    assert rms(base, vec("base")) == 0.0  # deterministic
    near = max(rms(base, vec("noisy")), rms(base, vec("next")))
    far = rms(base, vec("other"))
    assert far > 3 * near, (name, near, far)
    if name != "histogram-hsv" and name != "histogram-bgr":
        # Histograms ignore where colours are: only the others see a flipped frame as new.
        assert rms(base, vec("flipped")) > 2 * near, name


def test_histogram_ignores_layout_and_phash_counts_bits(video: dict[str, Image]) -> None:
    hist = make(EMBEDDERS["histogram-hsv"])
    base = hist.embed(frame(video["base"]))
    flipped = hist.embed(frame(video["flipped"]))
    assert rms(base, flipped) < 1e-3  # same pixels, other places
    assert 0 < rms(base, hist.embed(frame(video["other"]))) <= math.sqrt(2) + 1e-6
    ph = make(EMBEDDERS["phash"])
    a, b = ph.embed(frame(video["base"])), ph.embed(frame(video["other"]))
    assert set(np.unique(a)) <= {0.0, 1.0}
    hamming = int(np.sum(a != b))
    assert rms(a, b) == pytest.approx(math.sqrt(hamming / 64))


def test_pnet_embedder_is_brightness_tolerant_and_versioned(video: dict[str, Image]) -> None:
    emb = make(EMBEDDERS["pnet"])
    assert emb.dim == 32 * 16
    assert emb.name == "pnet" and emb.version.startswith("w128g4-")
    base = emb.embed(frame(video["base"]))
    assert rms(base, np.zeros_like(base)) == pytest.approx(1.0, rel=1e-4)  # unit RMS
    brighter = np.clip(video["base"].astype(np.int16) + 10, 0, 255).astype(np.uint8)
    assert rms(base, emb.embed(frame(brighter))) < rms(base, emb.embed(frame(video["other"])))


@pytest.mark.parametrize("name", list(EMBEDDERS))
def test_frame_embedders_refuse_windows_and_build_caches(name: str) -> None:
    emb = make(EMBEDDERS[name])
    window = Window(
        stream=StreamKey("s", "t"), ts=0.0, fields=("t",), values=np.zeros((4, 1), np.float32)
    )
    with pytest.raises(CacheError):
        emb.embed(window)
    if name != "downscale":  # (its wrong-sized vector is refused by the cache instead)
        with pytest.raises(CacheError):
            emb.embed(frame(np.zeros((8, 8), dtype=np.uint8)))  # not BGR
    cfg = CacheConfig.model_validate({"embedder": EMBEDDERS[name]})
    cache = build_cache(cfg, model=ModelRef("m", "1"), embedder=emb, clock=lambda: 0.0)
    assert cache.namespace == f"m@1/{emb.name}@{emb.version}"


def test_pnet_embedder_needs_its_model_file() -> None:
    with pytest.raises(CacheError, match="not found"):
        make({"type": "pnet", "model_path": "/nonexistent/pnet.onnx"})
