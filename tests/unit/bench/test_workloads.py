"""Derived cameras: crops, shifts, brightness, frame-rate changes, and interleaving."""

from __future__ import annotations

import numpy as np
import pytest

from streamedge.bench.workloads import (
    PRESETS,
    Derivation,
    StreamSpec,
    derived_cameras,
    interleave,
)
from streamedge.datasets import find_video, iter_frames


def ramp(height: int = 4, width: int = 6) -> np.ndarray:
    values = np.arange(height * width, dtype=np.uint8).reshape(height, width)
    return np.repeat(values[:, :, None], 3, axis=2)


def test_identity_is_the_recorded_frame() -> None:
    image = ramp()
    assert Derivation().identity
    assert np.array_equal(Derivation().apply(image), image)


def test_crop_keeps_native_pixels() -> None:
    image = ramp()
    right_half = Derivation(crop=(0.5, 0.0, 0.5, 1.0)).apply(image)
    assert right_half.shape == (4, 3, 3)
    assert np.array_equal(right_half, image[:, 3:])
    middle = Derivation(crop=(0.25, 0.25, 0.5, 0.5)).apply(image)
    assert np.array_equal(middle, image[1:3, 2:5])  # rounded to whole pixels


def test_shift_replicates_the_border() -> None:
    image = ramp()
    shifted = Derivation(shift=(1, 0)).apply(image)
    assert np.array_equal(shifted[:, 1:], image[:, :-1])
    assert np.array_equal(shifted[:, 0], image[:, 0])
    down = Derivation(shift=(0, 2)).apply(image)
    assert np.array_equal(down[2:], image[:-2])


def test_brightness_scales_offsets_and_clips() -> None:
    image = np.array([[[0, 100, 250]]], dtype=np.uint8)
    assert Derivation(gain=0.5).apply(image).tolist() == [[[0, 50, 125]]]
    assert Derivation(offset=10).apply(image).tolist() == [[[10, 110, 255]]]
    assert Derivation(gain=2.0, offset=-20).apply(image).tolist() == [[[0, 180, 255]]]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step": 0},
        {"start": -1},
        {"gain": -1.0},
        {"crop": (0.5, 0.0, 0.6, 1.0)},
        {"crop": (0.0, 0.0, 0.0, 1.0)},
    ],
)
def test_bad_derivations_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must|needs|not a part"):
        Derivation(**kwargs)  # type: ignore[arg-type]


def test_frame_rate_change_and_start_pick_recorded_frames() -> None:
    video = find_video("vtest", excerpt_only=True)
    recorded = list(iter_frames(video, max_frames=9))
    spec = StreamSpec(video=video, derivation=Derivation(start=3, step=2), max_frames=3)
    frames = list(spec.frames())
    assert [(f.index, f.source_index) for f in frames] == [(0, 3), (1, 5), (2, 7)]
    assert [f.ts for f in frames] == pytest.approx([0.3, 0.5, 0.7])  # 10 fps
    assert np.array_equal(frames[1].image, recorded[5])
    assert spec.frame_count() == 3
    assert StreamSpec(video=video, derivation=Derivation(step=2)).frame_count() == 30


def test_interleave_orders_devices_by_time() -> None:
    video = find_video("vtest", excerpt_only=True)
    fast = StreamSpec(video=video, device="a", max_frames=4)
    slow = StreamSpec(video=video, device="b", derivation=Derivation(step=2), max_frames=2)
    order = [(i, f.source_index) for i, f in interleave([fast, slow])]
    # Equal times keep the given order; b sees frames 0 and 2 only.
    assert order == [(0, 0), (1, 0), (0, 1), (0, 2), (1, 2), (0, 3)]


def test_presets_name_distinct_devices() -> None:
    video = find_video("vtest", excerpt_only=True)
    for preset in PRESETS:
        cams = derived_cameras(video, preset, prefix="lobby", max_frames=5)
        assert len({c.device for c in cams}) == len(cams) >= 3
        assert all(c.device.startswith("lobby-") and c.max_frames == 5 for c in cams)
        assert any(not c.derivation.identity for c in cams)
    overlap = derived_cameras(video, "overlap")
    widths = [next(c.frames()).image.shape[1] for c in overlap]
    assert widths == [round(0.6 * 768)] * 3
    with pytest.raises(ValueError, match="unknown preset"):
        derived_cameras(video, "nope")
