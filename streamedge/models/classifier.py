"""A generic ONNX classifier: a frame or a window of readings in, class scores out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamedge.caches.layer.runner import LayerCachedRunner
from streamedge.caches.layer.wiring import StripedLocks, with_input_range
from streamedge.caches.layer_config import LayerCacheConfig
from streamedge.errors import InferenceError
from streamedge.models.onnx_runtime import SessionSettings, make_session, session_options
from streamedge.records import Frame, ModelInput, ModelRef, Prediction, Window

logger = logging.getLogger(__name__)


def softmax(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Numerically stable softmax over the last axis."""
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float32] = (e / np.sum(e, axis=-1, keepdims=True)).astype(np.float32)
    return out


class OnnxClassifier:
    """Runs an ONNX classifier with the preprocessing its config describes.

    With ``layer_cache``, frames run through a
    :class:`~streamedge.caches.layer.LayerCachedRunner` keyed by the frame's
    stream (one lock per stream around each run, so concurrent streams are
    fine); a model without a convolutional prefix runs whole, with a warning.
    """

    def __init__(
        self,
        *,
        ref: ModelRef,
        path: Path,
        input_kind: Literal["frame", "window"],
        input_size: tuple[int, int] = (32, 32),
        color: Literal["rgb", "bgr", "gray"] = "rgb",
        scale: float = 1 / 255,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        labels: Sequence[str] = (),
        apply_softmax: bool = False,
        intra_op_threads: int = 1,
        settings: SessionSettings | None = None,
        layer_cache: LayerCacheConfig | None = None,
    ) -> None:
        self.ref = ref
        self.input_kind = input_kind
        self._size = input_size
        self._color = color
        self._scale = np.float32(scale)
        self._mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
        self.labels = list(labels)
        self._softmax = apply_softmax
        if not path.is_file():
            raise InferenceError(f"model file not found: {path}")
        self._session = make_session(path, intra_op_threads=intra_op_threads, settings=settings)
        inp = self._session.get_inputs()[0]
        self._input_name: str = inp.name
        self._input_shape: list[Any] = list(inp.shape)
        self._output_name: str = self._session.get_outputs()[0].name
        self.layer_cache: LayerCachedRunner | None = None
        self._stream_locks = StripedLocks()
        if layer_cache is not None and input_kind == "frame":
            # PSNR peak: the span of (pixel * scale - mean) / std over 0..255.
            span = 255.0 * abs(float(scale)) / float(np.min(np.abs(self._std)))
            self.layer_cache = LayerCachedRunner(
                path,
                with_input_range(layer_cache, span),
                outputs=(self._output_name,),
                session_options=session_options(
                    intra_op_threads=intra_op_threads, settings=settings
                ),
                name=str(ref),
            )
        first = self._input_shape[0] if self._input_shape else 1
        # A symbolic or unknown first dimension lets several inputs run as one batch.
        self.batchable = not (isinstance(first, int) and first > 0)

    @property
    def input_name(self) -> str:
        """The ONNX graph's input name (OIP v2 tensor requests use it)."""
        return self._input_name

    @property
    def input_rank(self) -> int:
        """Dimensions of the ONNX graph's input."""
        return len(self._input_shape)

    @property
    def window_shape(self) -> tuple[int, int]:
        """(readings, fields) a window model takes, from its declared input shape."""
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in self._input_shape]
        return int(np.prod(dims[:-1])), int(dims[-1])

    def _frame_tensor(self, frame: Frame) -> npt.NDArray[np.float32]:
        import cv2  # lazy

        image: np.ndarray[Any, Any] = cv2.resize(
            frame.image, self._size, interpolation=cv2.INTER_AREA
        )
        if self._color == "rgb":
            image = image[:, :, ::-1]
        elif self._color == "gray":
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
        x = image.astype(np.float32).transpose(2, 0, 1)[None] * self._scale
        return np.ascontiguousarray((x - self._mean) / self._std, dtype=np.float32)

    def _window_tensor(self, window: Window) -> npt.NDArray[np.float32]:
        values = np.asarray(window.values, dtype=np.float32)
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in self._input_shape]
        if int(np.prod(shape)) != values.size:
            msg = (
                f"{self.ref}: window of {values.shape} does not fit model input {self._input_shape}"
            )
            raise InferenceError(msg)
        return values.reshape(shape)

    def tensor(self, item: ModelInput) -> npt.NDArray[np.float32]:
        """The model's input tensor for one item."""
        if self.input_kind == "frame":
            if not isinstance(item, Frame):
                raise InferenceError(f"{self.ref} takes frames, got a reading window")
            return self._frame_tensor(item)
        if not isinstance(item, Window):
            raise InferenceError(f"{self.ref} takes reading windows, got a frame")
        return self._window_tensor(item)

    def predict(self, item: ModelInput) -> Prediction:
        """Classify one input: label, its probability, and every class's score."""
        x = self.tensor(item)
        if self.layer_cache is not None and isinstance(item, Frame):
            # The runner maps onnxruntime's errors itself; one frame per stream at a time.
            with self._stream_locks.lock(item.stream):
                out = self.layer_cache.run(item.stream, x)[0]
        else:
            try:
                out = self._session.run([self._output_name], {self._input_name: x})[0]
            except Exception as exc:  # map onnxruntime's exceptions once, here
                raise InferenceError(f"{self.ref}: inference failed: {exc}") from exc
        return self.prediction(np.asarray(out, dtype=np.float32).reshape(-1))

    def predict_batch(self, items: Sequence[ModelInput]) -> list[Prediction]:
        """Classify several inputs in one run when the model takes batches.

        With a layer cache each frame runs alone: its cached state is per stream.
        """
        if self.layer_cache is not None or not self.batchable or len(items) == 1:
            return [self.predict(item) for item in items]
        x = np.concatenate([self.tensor(item) for item in items])
        try:
            out = self._session.run([self._output_name], {self._input_name: x})[0]
        except Exception as exc:  # map onnxruntime's exceptions once, here
            raise InferenceError(f"{self.ref}: inference failed: {exc}") from exc
        rows = np.asarray(out, dtype=np.float32).reshape(len(items), -1)
        return [self.prediction(row) for row in rows]

    def run_tensor(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run the raw graph on an already preprocessed input tensor (OIP v2 tensors)."""
        try:
            out = self._session.run([self._output_name], {self._input_name: x})[0]
        except Exception as exc:  # map onnxruntime's exceptions once, here
            raise InferenceError(f"{self.ref}: inference failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def prediction(self, scores: npt.NDArray[np.float32]) -> Prediction:
        """Turn one row of the model's output into the classifier answer."""
        if self._softmax:
            scores = softmax(scores)
        best = int(np.argmax(scores))
        label = self.labels[best] if best < len(self.labels) else str(best)
        names = (
            self.labels if len(self.labels) == len(scores) else [str(i) for i in range(len(scores))]
        )
        return Prediction(
            answer={
                "label": label,
                "score": round(float(scores[best]), 4),
                "scores": {n: round(float(s), 4) for n, s in zip(names, scores, strict=True)},
            },
            confidence=float(scores[best]),
        )
