"""The numpy parts of the MTCNN cascade, on cases worked out by hand."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from streamedge.models.mtcnn import (
    Detections,
    crop_padded,
    iou,
    nms,
    pnet_candidates,
    pyramid_scales,
    regress,
    scaled_size,
    snap,
    square,
    to_prediction,
)


def boxes(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# A (0), B (1), C (2), D (3): areas 100, 100, 100, 50.
# IoU(A, B) = 81 / 119; IoU(A, D) = 50 / 100; IoU(B, D) = 36 / 114; C is apart.
# Min-overlap(A, D) = 50 / 50; min-overlap(B, D) = 36 / 50.
FOUR = boxes(
    (0, 0, 10, 10, 0.9),
    (1, 1, 11, 11, 0.8),
    (20, 20, 30, 30, 0.7),
    (0, 0, 5, 10, 0.95),
)


def test_iou_union_and_min_by_hand() -> None:
    got = iou(FOUR[0], FOUR[1:])
    np.testing.assert_allclose(got, [81 / 119, 0.0, 0.5], rtol=1e-6)
    got_min = iou(FOUR[3], FOUR[:3], mode="min")
    np.testing.assert_allclose(got_min, [1.0, 36 / 50, 0.0], rtol=1e-6)


def test_iou_of_empty_box_is_zero() -> None:
    got = iou(boxes((5, 5, 5, 9, 1.0))[0], FOUR)
    assert got.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_nms_union_drops_only_overlaps_above_threshold() -> None:
    # D first (best score); A touches D at exactly 0.5, which is not above 0.5;
    # B overlaps A by 0.68 and goes.
    assert nms(FOUR, 0.5).tolist() == [3, 0, 2]
    # At 0.7 nothing overlaps enough: all kept, best score first.
    assert nms(FOUR, 0.7).tolist() == [3, 0, 1, 2]


def test_nms_min_mode_removes_boxes_inside_or_mostly_covering() -> None:
    # D lies inside A (min-overlap 1.0) and covers 72 % of... itself vs B.
    assert nms(FOUR, 0.7, mode="min").tolist() == [3, 2]


def test_nms_empty_and_ties() -> None:
    assert nms(np.empty((0, 5), dtype=np.float32), 0.5).tolist() == []
    tied = boxes((0, 0, 10, 10, 0.5), (0, 0, 10, 10, 0.5), (50, 50, 60, 60, 0.5))
    # Equal scores keep input order; the duplicate of the first box goes.
    assert nms(tied, 0.5).tolist() == [0, 2]


def test_regress_moves_each_edge_by_offset_times_size() -> None:
    box = boxes((10, 20, 30, 60, 0.8))  # width 20, height 40
    out = regress(box, np.array([[0.1, -0.25, 0.5, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[12, 10, 40, 60, 0.8]], rtol=1e-6)
    assert box[0, 0] == 10  # the input is not modified


def test_square_keeps_centre_and_takes_longer_side() -> None:
    out = square(boxes((10, 20, 30, 60, 0.8), (0, 0, 10, 4, 0.3)))
    np.testing.assert_allclose(out, [[0, 20, 40, 60, 0.8], [0, -3, 10, 7, 0.3]], rtol=1e-6)


def test_snap_rounds_and_keeps_one_pixel() -> None:
    out = snap(boxes((0.4, 1.6, 0.6, 1.7, 0.9), (2.2, 3.8, 9.7, 12.1, 0.5)))
    np.testing.assert_allclose(out, [[0, 2, 1, 3, 0.9], [2, 4, 10, 12, 0.5]], rtol=1e-6)


def test_crop_padded_fills_outside_with_zeros() -> None:
    image = (np.arange(16, dtype=np.uint8).reshape(4, 4, 1) + 1).repeat(3, axis=2)
    patch = crop_padded(image, [-1, -1, 2, 2])
    assert patch.shape == (3, 3, 3)
    np.testing.assert_array_equal(patch[..., 0], [[0, 0, 0], [0, 1, 2], [0, 5, 6]])
    right = crop_padded(image, [3, 2, 6, 4])
    np.testing.assert_array_equal(right[..., 1], [[12, 0, 0], [16, 0, 0]])
    outside = crop_padded(image, [10, 10, 12, 13])
    assert outside.shape == (3, 2, 3)
    assert not outside.any()


def test_pyramid_scales_for_vtest_frames() -> None:
    scales = pyramid_scales(576, 768, min_face=20, factor=0.709)
    # 12 / 20 first; the shorter side 576 * 0.6 = 345.6 shrinks by 0.709 per
    # level: 345.6 * 0.709**9 = 15.7 is the last one >= 12 pixels.
    assert len(scales) == 10
    assert scales[0] == pytest.approx(0.6)
    np.testing.assert_allclose(np.diff(np.log(scales)), np.log(0.709), rtol=1e-9)
    assert 576 * scales[-1] >= 12 > 576 * scales[-1] * 0.709
    assert scaled_size(576, 768, scales[0]) == (346, 461)


def test_pyramid_scales_edge_cases() -> None:
    assert pyramid_scales(20, 30, min_face=20) == [pytest.approx(0.6)]
    assert pyramid_scales(19, 300, min_face=20) == []
    # Larger minimum faces mean fewer, smaller scales.
    assert len(pyramid_scales(576, 768, min_face=40)) < 10
    with pytest.raises(ValueError, match="factor"):
        pyramid_scales(100, 100, factor=1.0)
    with pytest.raises(ValueError, match="min_face"):
        pyramid_scales(100, 100, min_face=0)


def test_pnet_candidates_map_cells_to_image_boxes() -> None:
    prob = np.zeros((1, 2, 3, 4), dtype=np.float32)
    prob[0, 1, 1, 2] = 0.9  # row 1, column 2
    prob[0, 1, 0, 0] = 0.5  # below the threshold
    reg = np.zeros((1, 4, 3, 4), dtype=np.float32)
    reg[0, :, 1, 2] = [0.1, 0.2, 0.3, 0.4]
    out = pnet_candidates(reg, prob, scale_xy=(0.5, 0.25), threshold=0.6)
    # Window [2*2, 2*2+12) x [2*1, 2*1+12) in the scaled image, divided by
    # the scale per axis.
    np.testing.assert_allclose(out, [[8, 8, 32, 56, 0.9, 0.1, 0.2, 0.3, 0.4]], rtol=1e-6)


def test_importing_the_model_modules_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import streamedge.datasets, streamedge.models.config\n"
        "import streamedge.models.mtcnn\n"
        "heavy = {'cv2', 'onnxruntime', 'onnx'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def detections(rows: list[list[float]], near_miss: float) -> Detections:
    n = len(rows)
    return Detections(
        boxes=np.array(rows, dtype=np.float32).reshape(n, 5),
        landmarks=np.zeros((n, 5, 2), dtype=np.float32),
        features=np.zeros((n, 256), dtype=np.float32),
        near_miss=near_miss,
    )


def test_answer_format_and_count_confidence() -> None:
    found = detections([[10.04, 20.06, 30.0, 40.0, 0.912345], [1, 2, 3, 4, 0.8]], 0.3)
    pred = to_prediction(found)
    assert pred.answer == {
        "boxes": [[10.0, 20.1, 30.0, 40.0, 0.9123], [1.0, 2.0, 3.0, 4.0, 0.8]],
        "count": 2,
    }
    # The near miss (0.3 rejected) is closer to the threshold than the weakest
    # face (0.8 accepted): 1 - 0.3 wins.
    assert pred.confidence == pytest.approx(0.7)
    weak_face = to_prediction(detections([[0, 0, 5, 5, 0.75]], 0.1))
    assert weak_face.confidence == pytest.approx(0.75)
    nothing = to_prediction(detections([], 0.0))
    assert nothing.answer == {"boxes": [], "count": 0}
    assert nothing.confidence == 1.0
