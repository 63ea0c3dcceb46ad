"""MTCNN face detection on onnxruntime, with the cascade written in numpy.

MTCNN (Zhang et al., 2016) is a cascade of three small CNNs:

1. **PNet** slides a 12 x 12 window (stride 2) over an image pyramid and
   proposes candidate boxes with a face probability and box offsets;
2. **RNet** re-scores 24 x 24 crops of the surviving candidates;
3. **ONet** re-scores 48 x 48 crops and adds five landmarks.

Between the stages, non-maximum suppression (:func:`nms`) removes duplicates,
:func:`regress` applies the predicted offsets and :func:`square` makes each
box square before it is cut out with zero padding (:func:`crop_boxes`).

Boxes are float arrays ``(n, 5+)`` of ``x1, y1, x2, y2, score, ...`` in pixel
coordinates of the input image, continuous: a box covers ``[x1, x2) x [y1, y2)``
and its width is ``x2 - x1`` (no ``+ 1``).

The networks are the ONNX files exported by ``scripts/export_mtcnn.py`` from
facenet-pytorch's weights (``streamedge/models/data/mtcnn/``). They take RGB
float32 NCHW scaled by :func:`normalise`; frames arrive BGR and are converted
here.

The PNet stage is pluggable (:class:`PNetRunner`): the layer-level cache runs
its own PNet that reuses feature maps between frames of a stream, and passes
it to :meth:`MtcnnDetector.detect`. onnxruntime and OpenCV are imported when a
detector is built, never when this module is imported.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from streamedge.caches.layer.runner import Decision, LayerCachedRunner
from streamedge.caches.layer.wiring import StripedLocks, with_input_range
from streamedge.errors import ConfigError, InferenceError, MissingDependencyError
from streamedge.models.onnx_runtime import (
    DEFAULT_SETTINGS,
    SessionSettings,
    available_providers,
    session_options,
)
from streamedge.records import Frame, ModelRef, Prediction

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streamedge.caches.layer_config import LayerCacheConfig
    from streamedge.models.config import MtcnnModelConfig
    from streamedge.records import Image, ModelInput, Vector

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IndexArray = npt.NDArray[np.int64]

DATA_DIR = Path(__file__).resolve().parent / "data" / "mtcnn"
"""Where the packaged ONNX files live."""
PNET_PATH = DATA_DIR / "pnet.onnx"
RNET_PATH = DATA_DIR / "rnet.onnx"
ONET_PATH = DATA_DIR / "onet.onnx"

CELL = 12
"""PNet's window side in pixels of the scaled image."""
STRIDE = 2
"""PNet's step between neighbouring windows (one 2 x 2 max-pool)."""
RNET_SIZE = 24
ONET_SIZE = 48

PNET_SCALE_NMS = 0.5
"""IoU above which PNet candidates of one scale are merged."""
PNET_NMS = 0.7
"""IoU above which PNet candidates of all scales are merged."""
RNET_NMS = 0.7
ONET_NMS = 0.7
"""Min-overlap above which final boxes merge (drops small boxes inside big ones)."""

NmsMode = Literal["union", "min"]


class PNetRunner(Protocol):
    """Runs PNet on one scaled image of the pyramid.

    The default runs the ONNX session (:class:`OnnxPNetRunner`). A layer-level
    cache substitutes a runner that recomputes only what changed since the
    stream's previous frame; it can key its state on ``level``, which is the
    same for the same scale of consecutive frames of one size.
    """

    def __call__(self, image: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
        """Return PNet's ``(reg, prob)`` for one image.

        Args:
            image: ``(1, 3, h, w)`` float32, RGB, :func:`normalise`-d, at
                pyramid scale ``level``.
            level: index of the scale in :func:`pyramid_scales` (0 = largest).

        Returns:
            ``reg`` of shape ``(1, 4, mh, mw)`` and ``prob`` of shape
            ``(1, 2, mh, mw)``, exactly the ONNX graph's outputs.
        """
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Detections:
    """Everything the cascade found in one image (``n`` faces, best first)."""

    boxes: FloatArray
    """``(n, 5)``: ``x1, y1, x2, y2, score``, clipped to the image."""
    landmarks: FloatArray
    """``(n, 5, 2)``: ``(x, y)`` of left eye, right eye, nose, mouth corners."""
    features: FloatArray
    """``(n, 256)``: ONet's last hidden layer for each face."""
    near_miss: float
    """Highest ONet score among candidates ONet rejected (0 when none)."""

    @property
    def count(self) -> int:
        """Number of faces."""
        return int(self.boxes.shape[0])


# --------------------------------------------------------------------------
# Pure helpers (numpy only): public so caches and tests can reuse them.
# --------------------------------------------------------------------------


def pyramid_scales(
    height: int, width: int, *, min_face: float = 20.0, factor: float = 0.709
) -> list[float]:
    """Scales of the image pyramid, largest first.

    The first scale maps a face of ``min_face`` pixels onto PNet's 12-pixel
    window; each next one multiplies by ``factor`` until the shorter side of
    the scaled image drops below 12 pixels.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        min_face: smallest face side to find, in pixels.
        factor: ratio between successive scales, in ``(0, 1)``.

    Returns:
        The scales (may be empty for images smaller than ``min_face``).

    Raises:
        ValueError: ``factor`` is not in ``(0, 1)`` or ``min_face`` is not positive.
    """
    if not 0.0 < factor < 1.0:
        msg = f"pyramid factor must be in (0, 1), got {factor}"
        raise ValueError(msg)
    if min_face <= 0:
        msg = f"min_face must be positive, got {min_face}"
        raise ValueError(msg)
    scale = CELL / min_face
    side = min(height, width) * scale
    scales: list[float] = []
    while side >= CELL:
        scales.append(scale)
        scale *= factor
        side *= factor
    return scales


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(h, w)`` of the image at ``scale`` (rounded up, as PNet's maps assume)."""
    return max(1, math.ceil(height * scale)), max(1, math.ceil(width * scale))


INPUT_RANGE = 255.0 / 128.0
"""Peak-to-peak range of :func:`normalise`'s output (the layer cache's PSNR peak)."""


def normalise(rgb: npt.NDArray[np.uint8]) -> FloatArray:
    """Turn ``(h, w, 3)`` uint8 RGB into the networks' ``(1, 3, h, w)`` input."""
    x = rgb.astype(np.float32)
    x -= 127.5
    x *= 1.0 / 128.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def pnet_candidates(
    reg: FloatArray,
    prob: FloatArray,
    *,
    scale_xy: tuple[float, float],
    threshold: float,
) -> FloatArray:
    """Boxes of the PNet windows whose face probability reaches ``threshold``.

    Args:
        reg: PNet's ``(1, 4, mh, mw)`` box offsets.
        prob: PNet's ``(1, 2, mh, mw)`` probabilities (channel 1 = face).
        scale_xy: ``(sx, sy)``, scaled size divided by original size per axis.
        threshold: smallest face probability kept.

    Returns:
        ``(n, 9)`` float32: ``x1, y1, x2, y2, score, dx1, dy1, dx2, dy2`` in
        original-image pixels (the offsets are not applied yet).
    """
    face = prob[0, 1]
    rows, cols = np.nonzero(face >= threshold)
    sx, sy = scale_xy
    out = np.empty((rows.size, 9), dtype=np.float32)
    out[:, 0] = cols * STRIDE / sx
    out[:, 1] = rows * STRIDE / sy
    out[:, 2] = (cols * STRIDE + CELL) / sx
    out[:, 3] = (rows * STRIDE + CELL) / sy
    out[:, 4] = face[rows, cols]
    out[:, 5:9] = reg[0][:, rows, cols].T
    return out


def _areas(boxes: FloatArray) -> FloatArray:
    w: FloatArray = np.maximum(boxes[:, 2] - boxes[:, 0], 0)
    h: FloatArray = np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    return w * h


def _overlap(
    box: FloatArray, area: float, others: FloatArray, areas: FloatArray, mode: NmsMode
) -> FloatArray:
    iw = np.maximum(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0)
    ih = np.maximum(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0)
    inter = iw * ih
    denom = areas + area - inter if mode == "union" else np.minimum(areas, area)
    # Empty boxes have denominator 0: they overlap nothing.
    out: FloatArray = np.zeros_like(inter)
    np.divide(inter, denom, out=out, where=denom > 0)
    return out


def iou(box: FloatArray, others: FloatArray, mode: NmsMode = "union") -> FloatArray:
    """Overlap of one box with each of ``others``.

    Args:
        box: ``(4+,)``: ``x1, y1, x2, y2, ...``.
        others: ``(n, 4+)``.
        mode: ``"union"`` divides the intersection by the union (IoU),
            ``"min"`` by the smaller of the two areas.

    Returns:
        ``(n,)`` overlaps in ``[0, 1]`` (0 for empty boxes).
    """
    area = float(_areas(box[None, :4])[0])
    return _overlap(box, area, others, _areas(others), mode).astype(np.float32, copy=False)


def nms(boxes: FloatArray, threshold: float, mode: NmsMode = "union") -> IndexArray:
    """Greedy non-maximum suppression.

    Repeatedly keeps the best-scoring box left and drops every remaining box
    that overlaps it by more than ``threshold``.

    Args:
        boxes: ``(n, 5+)``: ``x1, y1, x2, y2, score, ...``.
        threshold: overlap above which a box is dropped.
        mode: ``"union"`` (IoU) or ``"min"`` (intersection over the smaller area).

    Returns:
        Indices of the kept boxes, best score first (ties keep input order).
    """
    if boxes.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    order = np.argsort(-boxes[:, 4], kind="stable")
    # Work on a score-sorted copy so each round slices contiguous rows.
    ranked = np.ascontiguousarray(boxes[order, :4])
    areas = _areas(ranked)
    alive = np.arange(order.size)
    keep: list[int] = []
    while alive.size:
        best = int(alive[0])
        keep.append(best)
        rest = alive[1:]
        if not rest.size:
            break
        overlap = _overlap(ranked[best], float(areas[best]), ranked[rest], areas[rest], mode)
        alive = rest[overlap <= threshold]
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64, copy=False)


def regress(boxes: FloatArray, offsets: FloatArray) -> FloatArray:
    """Apply predicted offsets: each edge moves by its offset times the box size.

    Args:
        boxes: ``(n, 4+)``; columns past the fourth are copied unchanged.
        offsets: ``(n, 4)``: ``dx1, dy1, dx2, dy2`` as fractions of the
            box's width (x) and height (y).

    Returns:
        A new array like ``boxes``.
    """
    out = boxes.astype(np.float32, copy=True)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    out[:, 0] += offsets[:, 0] * w
    out[:, 1] += offsets[:, 1] * h
    out[:, 2] += offsets[:, 2] * w
    out[:, 3] += offsets[:, 3] * h
    return out


def square(boxes: FloatArray) -> FloatArray:
    """Grow each box to a square around the same centre (side = longer side).

    Returns:
        A new array like ``boxes``; extra columns are copied unchanged.
    """
    out = boxes.astype(np.float32, copy=True)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx = boxes[:, 0] + w / 2
    cy = boxes[:, 1] + h / 2
    out[:, 0] = cx - side / 2
    out[:, 1] = cy - side / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def snap(boxes: FloatArray) -> FloatArray:
    """Round box edges to whole pixels, keeping at least one pixel per side.

    The crops fed to RNet/ONet cover whole pixels; snapping the boxes first
    keeps the offsets the networks predict relative to exactly what they saw.
    """
    out = boxes.astype(np.float32, copy=True)
    out[:, :4] = np.round(boxes[:, :4])
    out[:, 2] = np.maximum(out[:, 2], out[:, 0] + 1)
    out[:, 3] = np.maximum(out[:, 3], out[:, 1] + 1)
    return out


def crop_padded(image: Image, box: Sequence[float]) -> Image:
    """Cut ``box`` (whole pixels) out of ``image``, zero-filling what lies outside.

    Args:
        image: ``(H, W, C)`` uint8.
        box: ``x1, y1, x2, y2`` in whole pixels, ``x2 > x1``, ``y2 > y1``.

    Returns:
        ``(y2 - y1, x2 - x1, C)`` uint8.
    """
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    height, width = image.shape[:2]
    patch = np.zeros((y2 - y1, x2 - x1, image.shape[2]), dtype=np.uint8)
    sx1, sy1 = max(x1, 0), max(y1, 0)
    sx2, sy2 = min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        patch[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    return patch


def crop_boxes(image: Image, boxes: FloatArray, size: int) -> FloatArray:
    """Crops of ``boxes`` (snapped), resized to ``size`` and normalised.

    Returns:
        ``(n, 3, size, size)`` float32 network input.
    """
    import cv2  # heavy: imported on use, not with the module

    batch = np.empty((boxes.shape[0], size, size, 3), dtype=np.uint8)
    for i, box in enumerate(boxes):
        patch = crop_padded(image, box[:4].tolist())
        # Area averaging when shrinking matches how the networks were
        # trained; linear interpolation when a small box is enlarged.
        shrink = patch.shape[0] >= size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        batch[i] = cv2.resize(patch, (size, size), interpolation=interp)
    x = batch.astype(np.float32)
    x -= 127.5
    x *= 1.0 / 128.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _keep_valid(boxes: FloatArray, height: int, width: int) -> FloatArray:
    # Regression can invert a box or push it off the image; such boxes would
    # yield empty crops.
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    inside = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (boxes[:, 0] < width) & (boxes[:, 1] < height)
    return boxes[(w >= 1) & (h >= 1) & inside]


def count_confidence(detections: Detections) -> float:
    """How sure the detector is of the face count.

    The lowest score among the reported faces, or one minus the highest
    score among the candidates ONet rejected (the near miss), whichever is
    lower; 1.0 when ONet saw no candidate. A low value means one final-stage
    decision was close, so the count could easily have been different.
    """
    accepted = float(detections.boxes[:, 4].min()) if detections.count else 1.0
    return min(accepted, 1.0 - detections.near_miss)


def to_prediction(detections: Detections) -> Prediction:
    """The answer published for a frame (see :meth:`MtcnnDetector.predict`).

    Public so that wrappers (e.g. a layer-cached PNet per stream) that call
    :meth:`MtcnnDetector.detect` themselves answer in the same format.
    """
    boxes = [
        [*(round(float(v), 1) for v in row[:4]), round(float(row[4]), 4)]
        for row in detections.boxes
    ]
    answer = {"boxes": boxes, "count": detections.count}
    return Prediction(answer=answer, confidence=count_confidence(detections))


# --------------------------------------------------------------------------
# onnxruntime plumbing
# --------------------------------------------------------------------------


def _ort() -> Any:
    try:
        import onnxruntime  # heavy: imported on use, not with the module
    except ImportError as exc:
        raise MissingDependencyError("mtcnn", "onnxruntime") from exc
    return onnxruntime


def _cv2() -> Any:
    try:
        import cv2  # heavy: imported on use, not with the module
    except ImportError as exc:
        raise MissingDependencyError("mtcnn", "opencv-python-headless") from exc
    return cv2


def open_session(
    path: Path, *, intra_op_threads: int = 1, settings: SessionSettings | None = None
) -> Any:
    """Load an ONNX file into an onnxruntime CPU session.

    Args:
        path: the ``.onnx`` file.
        intra_op_threads: threads one run may use (0 lets onnxruntime decide).
        settings: the tier's tuning (optimisation level, providers, threads).

    Returns:
        An ``onnxruntime.InferenceSession``.

    Raises:
        ConfigError: the file is missing or onnxruntime cannot load it.
    """
    ort = _ort()
    if not path.is_file():
        msg = f"MTCNN model file not found: {path}"
        raise ConfigError(msg)
    # One request at a time per session; the gateway runs several in threads.
    opts = session_options(intra_op_threads=intra_op_threads, settings=settings)
    providers = available_providers((settings or DEFAULT_SETTINGS).providers)
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        msg = f"onnxruntime cannot load {path}: {exc}"
        raise ConfigError(msg) from exc


class OnnxPNetRunner:
    """The default :class:`PNetRunner`: the PNet ONNX session, run as is."""

    def __init__(self, session: Any) -> None:
        """Wrap an ``onnxruntime.InferenceSession`` of ``pnet.onnx``."""
        self.session = session

    def __call__(self, image: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
        """Run PNet on one pyramid level."""
        del level  # every level runs afresh: nothing is cached here
        reg, prob = self.session.run(["reg", "prob"], {"input": image})
        return reg, prob


# --------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------


class MtcnnDetector:
    """MTCNN face detector implementing :class:`streamedge.protocols.Model`.

    Thread-safe: onnxruntime sessions may run concurrently and the detector
    keeps no per-call state, except the layer cache's per-stream maps, which
    :meth:`predict` guards with a per-stream lock.
    """

    def __init__(
        self,
        *,
        ref: ModelRef | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_face: float = 20.0,
        factor: float = 0.709,
        intra_op_threads: int = 1,
        pnet_path: Path = PNET_PATH,
        rnet_path: Path = RNET_PATH,
        onet_path: Path = ONET_PATH,
        pnet_runner: PNetRunner | None = None,
        settings: SessionSettings | None = None,
        layer_cache: LayerCacheConfig | None = None,
    ) -> None:
        """Load the three networks.

        Args:
            ref: name and version the answers carry (default ``mtcnn@1``).
            thresholds: smallest face probability kept by PNet, RNet, ONet.
            min_face: smallest face side to look for, in pixels.
            factor: ratio between successive pyramid scales.
            intra_op_threads: onnxruntime threads per network run.
            pnet_path: PNet ONNX file (default: the packaged one).
            rnet_path: RNet ONNX file.
            onet_path: ONet ONNX file.
            pnet_runner: replaces the plain PNet session for every call
                (a per-call runner can also be given to :meth:`detect`).
            settings: session tuning of the tier that runs the detector.
            layer_cache: run PNet through a layer cache in :meth:`predict`,
                with state per frame stream and pyramid level
                (:attr:`layer_cache`).

        Raises:
            ConfigError: a file is missing or invalid, or a parameter is out of range.
            MissingDependencyError: onnxruntime or OpenCV is not installed.
        """
        if not 0.0 < factor < 1.0 or min_face <= 0:
            msg = f"mtcnn: need 0 < factor < 1, min_face > 0; got {factor}, {min_face}"
            raise ConfigError(msg)
        self.ref = ref or ModelRef("mtcnn", "1")
        self.thresholds = thresholds
        self.min_face = min_face
        self.factor = factor
        self.pnet_path = pnet_path
        self._cv2 = _cv2()
        threads = intra_op_threads
        self.pnet_session = open_session(pnet_path, intra_op_threads=threads, settings=settings)
        self.rnet_session = open_session(rnet_path, intra_op_threads=threads, settings=settings)
        self.onet_session = open_session(onet_path, intra_op_threads=threads, settings=settings)
        self.pnet_runner: PNetRunner = pnet_runner or OnnxPNetRunner(self.pnet_session)
        self.layer_cache: LayerCachedRunner | None = None
        """PNet with its feature maps cached per (stream, level), when configured."""
        self._stream_locks = StripedLocks()
        if layer_cache is not None:
            self.layer_cache = LayerCachedRunner(
                pnet_path,
                with_input_range(layer_cache, INPUT_RANGE),
                outputs=("reg", "prob"),
                session_options=session_options(
                    intra_op_threads=intra_op_threads, settings=settings
                ),
                # A PNet cell is a candidate when its face probability reaches
                # thresholds[0]; cells at or near it are always recomputed.
                decision=Decision("prob", 1, thresholds[0]),
                name=f"{self.ref} pnet",
            )
        logger.info(
            "mtcnn %s loaded (thresholds %s, min_face %s, factor %s, %d thread(s))",
            self.ref,
            thresholds,
            min_face,
            factor,
            intra_op_threads,
        )

    # -- the Model protocol -------------------------------------------------

    def predict(self, item: ModelInput) -> Prediction:
        """Detect faces in a frame.

        The answer is ``{"boxes": [[x1, y1, x2, y2, score], ...], "count": n}``
        with boxes in pixels of the frame (clipped to it, rounded to 0.1 px),
        best score first, and scores rounded to 4 decimals.

        The confidence is that of the face *count* (:func:`count_confidence`):
        the lowest score among the reported faces, or one minus the highest
        score among the candidates ONet rejected (its "near miss"), whichever
        is lower; 1.0 when ONet saw no candidate at all. A low value means one
        final-stage decision was close, so the count could easily differ.

        Raises:
            InferenceError: the input is not a BGR uint8 frame, or a network failed.
        """
        if not isinstance(item, Frame):
            msg = f"mtcnn takes video frames, not {type(item).__name__}"
            raise InferenceError(msg)
        if self.layer_cache is None:
            return to_prediction(self.detect(item.image))
        # The cached maps of a stream are updated in place: one frame at a time.
        runner, stream = self.layer_cache, item.stream

        def pnet(image: FloatArray, level: int) -> tuple[FloatArray, FloatArray]:
            reg, prob = runner.run((stream, level), image)
            return reg, prob

        with self._stream_locks.lock(stream):
            return to_prediction(self.detect(item.image, pnet_runner=pnet))

    # -- the cascade --------------------------------------------------------

    def detect(self, image: Image, *, pnet_runner: PNetRunner | None = None) -> Detections:
        """Run the full cascade on one BGR uint8 ``(H, W, 3)`` image.

        Args:
            image: the frame, OpenCV's BGR order.
            pnet_runner: PNet for this call only (e.g. a per-stream layer cache).

        Returns:
            The faces found, best first.

        Raises:
            InferenceError: the image has the wrong shape or type, or a network failed.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            msg = f"mtcnn needs an (H, W, 3) uint8 image, got {image.dtype} {image.shape}"
            raise InferenceError(msg)
        rgb = self._cv2.cvtColor(image, self._cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        try:
            boxes = self.propose(rgb, pnet_runner=pnet_runner)
            boxes = self.refine(rgb, boxes)
            return self.output(rgb, boxes)
        except InferenceError:
            raise
        except Exception as exc:  # onnxruntime's errors have no common base
            msg = f"mtcnn failed on a {width}x{height} image: {exc}"
            raise InferenceError(msg) from exc

    def scaled_inputs(self, rgb: Image) -> list[tuple[FloatArray, tuple[float, float]]]:
        """The pyramid of an RGB image as PNet inputs, with ``(sx, sy)`` per level."""
        height, width = rgb.shape[:2]
        levels = []
        # OpenCV's area averaging costs about the same (~3 ms on a 768x576
        # frame) whatever the target size, except for whole-number ratios,
        # which are fast. So small levels are shrunk from a copy halved once
        # or more: an exact 2x2 average followed by area averaging is close
        # to area averaging straight from the frame, unlike chaining every
        # level from the previous one, which blurs the small levels.
        halves = [rgb]
        for scale in pyramid_scales(height, width, min_face=self.min_face, factor=self.factor):
            sh, sw = scaled_size(height, width, scale)
            while scale * 2 ** len(halves) <= 1.0 and min(halves[-1].shape[:2]) >= 2:
                last = halves[-1]
                half = (last.shape[1] // 2, last.shape[0] // 2)
                halves.append(self._cv2.resize(last, half, interpolation=self._cv2.INTER_AREA))
            source = halves[-1]
            resized = self._cv2.resize(source, (sw, sh), interpolation=self._cv2.INTER_AREA)
            levels.append((normalise(resized), (sw / width, sh / height)))
        return levels

    def propose(self, rgb: Image, *, pnet_runner: PNetRunner | None = None) -> FloatArray:
        """Stage 1: PNet over the pyramid; returns squared ``(n, 5)`` boxes."""
        runner = pnet_runner or self.pnet_runner
        per_scale = []
        for level, (x, scale_xy) in enumerate(self.scaled_inputs(rgb)):
            reg, prob = runner(x, level)
            cands = pnet_candidates(reg, prob, scale_xy=scale_xy, threshold=self.thresholds[0])
            if cands.shape[0]:
                per_scale.append(cands[nms(cands, PNET_SCALE_NMS)])
        if not per_scale:
            return np.empty((0, 5), dtype=np.float32)
        cands = np.concatenate(per_scale)
        cands = cands[nms(cands, PNET_NMS)]
        boxes = regress(cands[:, :5], cands[:, 5:9])
        height, width = rgb.shape[:2]
        return _keep_valid(snap(square(boxes)), height, width)

    def refine(self, rgb: Image, boxes: FloatArray) -> FloatArray:
        """Stage 2: RNet re-scores the candidates; returns squared ``(n, 5)`` boxes."""
        if not boxes.shape[0]:
            return boxes
        reg, prob = self.rnet_session.run(
            ["reg", "prob"], {"input": crop_boxes(rgb, boxes, RNET_SIZE)}
        )
        keep = prob[:, 1] >= self.thresholds[1]
        boxes = boxes[keep].copy()
        boxes[:, 4] = prob[keep, 1]
        reg = reg[keep]
        picked = nms(boxes, RNET_NMS)
        boxes = regress(boxes[picked], reg[picked])
        height, width = rgb.shape[:2]
        return _keep_valid(snap(square(boxes)), height, width)

    def output(self, rgb: Image, boxes: FloatArray) -> Detections:
        """Stage 3: ONet scores, regresses and adds landmarks."""
        height, width = rgb.shape[:2]
        if not boxes.shape[0]:
            return _empty(near_miss=0.0)
        reg, landmarks, prob, feats = self.onet_session.run(
            ["reg", "landmarks", "prob", "features"],
            {"input": crop_boxes(rgb, boxes, ONET_SIZE)},
        )
        score = prob[:, 1]
        keep = score >= self.thresholds[2]
        near_miss = float(score[~keep].max()) if (~keep).any() else 0.0
        if not keep.any():
            return _empty(near_miss=near_miss)
        kept = boxes[keep].copy()
        kept[:, 4] = score[keep]
        # Landmarks are fractions of the box ONet saw: five x then five y.
        w = (kept[:, 2] - kept[:, 0])[:, None]
        h = (kept[:, 3] - kept[:, 1])[:, None]
        points = np.stack(
            [
                kept[:, 0:1] + landmarks[keep, :5] * w,
                kept[:, 1:2] + landmarks[keep, 5:] * h,
            ],
            axis=2,
        ).astype(np.float32)
        final = regress(kept, reg[keep])
        picked = nms(final, ONET_NMS, mode="min")
        final = final[picked]
        final[:, [0, 2]] = np.clip(final[:, [0, 2]], 0, width)
        final[:, [1, 3]] = np.clip(final[:, [1, 3]], 0, height)
        return Detections(
            boxes=np.ascontiguousarray(final, dtype=np.float32),
            landmarks=points[picked],
            features=np.ascontiguousarray(feats[keep][picked], dtype=np.float32),
            near_miss=near_miss,
        )

    # -- features for embedders --------------------------------------------

    def pnet_embedding(self, image: Image, *, width: int = 128, grid: int = 4) -> Vector:
        """A cheap whole-frame feature vector from PNet's last hidden layer.

        The frame is shrunk to ``width`` pixels (keeping its aspect), PNet's
        32-channel feature map is averaged over a ``grid x grid`` layout of
        cells and flattened, cell by cell. Costs one small PNet run (about
        a millisecond at the default width).

        Args:
            image: BGR uint8 ``(H, W, 3)``.
            width: width of the shrunken frame in pixels (at least 24).
            grid: cells per side.

        Returns:
            ``(grid * grid * 32,)`` float32, not normalised.
        """
        height = max(CELL, round(image.shape[0] * width / image.shape[1]))
        small = self._cv2.resize(image, (width, height), interpolation=self._cv2.INTER_AREA)
        rgb = self._cv2.cvtColor(small, self._cv2.COLOR_BGR2RGB)
        (feats,) = self.pnet_session.run(["features"], {"input": normalise(rgb)})
        fmap = feats[0]  # (32, mh, mw)
        ys = np.linspace(0, fmap.shape[1], grid + 1).round().astype(int)
        xs = np.linspace(0, fmap.shape[2], grid + 1).round().astype(int)
        cells = [
            fmap[:, ys[i] : max(ys[i + 1], ys[i] + 1), xs[j] : max(xs[j + 1], xs[j] + 1)].mean(
                axis=(1, 2)
            )
            for i in range(grid)
            for j in range(grid)
        ]
        return np.concatenate(cells).astype(np.float32)


def _empty(*, near_miss: float) -> Detections:
    return Detections(
        boxes=np.empty((0, 5), dtype=np.float32),
        landmarks=np.empty((0, 5, 2), dtype=np.float32),
        features=np.empty((0, 256), dtype=np.float32),
        near_miss=near_miss,
    )


def build_mtcnn(cfg: MtcnnModelConfig, settings: SessionSettings | None = None) -> MtcnnDetector:
    """Build a detector from its configuration.

    Raises:
        ConfigError: a model file is missing or invalid.
        MissingDependencyError: onnxruntime or OpenCV is not installed.
    """
    return MtcnnDetector(
        ref=ModelRef(cfg.name, cfg.version),
        thresholds=cfg.thresholds,
        min_face=cfg.min_face,
        factor=cfg.factor,
        intra_op_threads=cfg.intra_op_threads,
        pnet_path=cfg.pnet_path or PNET_PATH,
        rnet_path=cfg.rnet_path or RNET_PATH,
        onet_path=cfg.onet_path or ONET_PATH,
        settings=settings,
        layer_cache=cfg.layer_cache,
    )
