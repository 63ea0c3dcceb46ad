"""The MTCNN detector with the packaged ONNX files on real images and video."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from streamedge.datasets import find_video, iter_frames
from streamedge.errors import ConfigError, InferenceError
from streamedge.models.mtcnn import (
    ONET_PATH,
    PNET_PATH,
    RNET_PATH,
    FloatArray,
    MtcnnDetector,
    OnnxPNetRunner,
    iou,
)
from streamedge.records import Frame, ModelRef, Prediction, StreamKey, Window

if TYPE_CHECKING:
    from streamedge.protocols import Model
    from streamedge.records import Image

DATA = Path(__file__).parent / "data"
# Hand-checked on the 512x512 photo: eye centres at about (203, 99) and
# (247, 99), cheeks at x = 180 and 266, brows at y = 75, chin at y = 177.
ASTRONAUT_FACE = np.array([180, 70, 266, 178], dtype=np.float32)
ASTRONAUT_EYES = np.array([[203, 99], [247, 99]], dtype=np.float32)
STREAM = StreamKey("cam", "front")


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector()


@pytest.fixture(scope="module")
def astronaut() -> Image:
    image = cv2.imread(str(DATA / "astronaut.jpg"))
    assert image is not None
    return np.asarray(image, dtype=np.uint8)


def frame(image: Image) -> Frame:
    return Frame(stream=STREAM, ts=0.0, image=image)


def test_packaged_files_are_there() -> None:
    for path in (PNET_PATH, RNET_PATH, ONET_PATH):
        assert path.is_file()
    assert (PNET_PATH.parent / "LICENSE").read_text().startswith("MIT License")


def test_detector_satisfies_model_protocol(detector: MtcnnDetector) -> None:
    model: Model = detector
    assert model.ref == ModelRef("mtcnn", "1")


def test_finds_the_single_face_of_the_astronaut(detector: MtcnnDetector, astronaut: Image) -> None:
    found = detector.detect(astronaut)
    assert found.count == 1
    assert iou(ASTRONAUT_FACE, found.boxes)[0] >= 0.5
    assert found.boxes[0, 4] > 0.9
    # Landmarks come out as (x, y) in image pixels, left eye first.
    np.testing.assert_allclose(found.landmarks[0, :2], ASTRONAUT_EYES, atol=8)
    assert found.features.shape == (1, 256)


def test_predict_answer_format(detector: MtcnnDetector, astronaut: Image) -> None:
    pred = detector.predict(frame(astronaut))
    assert isinstance(pred, Prediction)
    assert pred.answer["count"] == len(pred.answer["boxes"]) == 1
    x1, y1, x2, y2, score = pred.answer["boxes"][0]
    assert 0 <= x1 < x2 <= 512
    assert 0 <= y1 < y2 <= 512
    assert pred.confidence is not None
    assert 0.5 < pred.confidence <= score


def test_face_moves_with_the_image(detector: MtcnnDetector, astronaut: Image) -> None:
    # The same face pasted 100 px right and 50 px down in a larger frame.
    canvas = np.full((640, 640, 3), 128, dtype=np.uint8)
    canvas[50:562, 100:612] = astronaut
    found = detector.detect(canvas)
    shifted = ASTRONAUT_FACE + np.array([100, 50, 100, 50], dtype=np.float32)
    assert found.count >= 1
    assert iou(shifted, found.boxes).max() >= 0.5


def test_blank_image_has_no_face_and_full_confidence(detector: MtcnnDetector) -> None:
    pred = detector.predict(frame(np.full((240, 320, 3), 90, dtype=np.uint8)))
    assert pred.answer == {"boxes": [], "count": 0}
    assert pred.confidence == 1.0


def test_tiny_image_is_answered_not_rejected(detector: MtcnnDetector) -> None:
    pred = detector.predict(frame(np.zeros((10, 10, 3), dtype=np.uint8)))
    assert pred.answer["count"] == 0


def test_excerpt_frames_give_well_formed_answers(detector: MtcnnDetector) -> None:
    for name in ("vtest", "megamind"):
        path = find_video(name, excerpt_only=True)
        counts = []
        for image in iter_frames(path, step=20, max_frames=3):
            height, width = image.shape[:2]
            pred = detector.predict(frame(image))
            assert set(pred.answer) == {"boxes", "count"}
            assert pred.answer["count"] == len(pred.answer["boxes"])
            assert pred.confidence is not None
            assert 0.0 <= pred.confidence <= 1.0
            scores = [b[4] for b in pred.answer["boxes"]]
            assert scores == sorted(scores, reverse=True)
            for x1, y1, x2, y2, score in pred.answer["boxes"]:
                assert 0 <= x1 < x2 <= width
                assert 0 <= y1 < y2 <= height
                assert 0.7 <= score <= 1.0
            counts.append(pred.answer["count"])
        if name == "megamind":
            # The trailer opens on an all-black frame; faces fill the rest.
            assert counts[0] == 0
            assert min(counts[1:]) >= 1


def test_wrong_inputs_raise_inference_error(detector: MtcnnDetector) -> None:
    window = Window(stream=STREAM, ts=0.0, fields=("t",), values=np.zeros((4, 1), dtype=np.float32))
    with pytest.raises(InferenceError, match="frames"):
        detector.predict(window)
    with pytest.raises(InferenceError, match="uint8"):
        detector.detect(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(InferenceError, match="uint8"):
        detector.detect(np.zeros((32, 32, 3), dtype=np.float32))


def test_pnet_runner_is_pluggable(detector: MtcnnDetector, astronaut: Image) -> None:
    plain = OnnxPNetRunner(detector.pnet_session)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def recording(image: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
        seen.append((level, image.shape))
        return plain(image, level)

    found = detector.detect(astronaut, pnet_runner=recording)
    assert [lvl for lvl, _ in seen] == list(range(len(seen)))
    assert seen[0][1] == (1, 3, 308, 308)  # 512 * 12 / 20 = 307.2, rounded up
    np.testing.assert_allclose(found.boxes, detector.detect(astronaut).boxes)

    def blind(image: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
        reg, prob = plain(image, level)
        return reg, np.zeros_like(prob)

    assert detector.detect(astronaut, pnet_runner=blind).count == 0


def test_pnet_embedding_is_cheap_and_discriminative(
    detector: MtcnnDetector, astronaut: Image
) -> None:
    vec = detector.pnet_embedding(astronaut)
    assert vec.shape == (4 * 4 * 32,)
    assert vec.dtype == np.float32
    same = detector.pnet_embedding(astronaut)
    brighter = detector.pnet_embedding(np.minimum(astronaut, 247) + np.uint8(8))
    flipped = detector.pnet_embedding(np.ascontiguousarray(astronaut[:, ::-1]))
    np.testing.assert_array_equal(vec, same)
    assert np.linalg.norm(vec - brighter) < np.linalg.norm(vec - flipped)


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        MtcnnDetector(pnet_path=tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot load"):
        MtcnnDetector(rnet_path=bad)


def test_thresholds_change_what_is_kept(detector: MtcnnDetector, astronaut: Image) -> None:
    strict = MtcnnDetector(thresholds=(0.6, 0.7, 0.99999999))
    default = detector.detect(astronaut)
    assert default.count == 1
    assert strict.detect(astronaut).count == 0
    # The rejected face is the near miss that sets the count's confidence.
    pred = strict.predict(frame(astronaut))
    assert pred.confidence == pytest.approx(1.0 - float(default.boxes[0, 4]), abs=1e-6)
