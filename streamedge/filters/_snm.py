"""FFS-VA's stream-specialised network model (SNM), small enough to train on a Pi.

FFS-VA trains a small CNN per stream on the full model's labels. Here the SNM
is a linear model on a thumbnail, trained in seconds with numpy, no torch:

* input: the frame's ``thumb``×``thumb`` INTER_LINEAR thumbnail (the same
  one the difference detector uses), area-resized to ``size``×``size``,
  optionally grey, scaled to 0-1 and flattened (HWC, BGR);
* ``p_object``: logistic regression (L2, Newton / IRLS, classes balanced)
  for "the full model's answer is not empty";
* ``count``: ridge regression of the full model's object count on the same
  input, clipped at 0, the cheap count estimate standing in for FFS-VA's
  tiny-YOLO stage.

Both are exported as one ONNX graph (``MatMul``/``Add``/``Sigmoid``/``Relu``,
opset 13, standardisation folded into the weights) and run with onnxruntime
on one thread. The graph's metadata (``streamedge.snm``) records the
preprocessing, so a model file is self-describing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from streamedge.filters._frames import thumbnail
from streamedge.records import Image

logger = logging.getLogger(__name__)

META_KEY: Final = "streamedge.snm"
FORMAT_VERSION: Final = 1
_SD_FLOOR: Final = 1.0 / 255.0  # a pixel that never varies must not blow up its weight


def snm_input(thumb: Image, *, size: int, grayscale: bool) -> npt.NDArray[np.uint8]:
    """Turn a uint8 BGR thumbnail into the SNM's uint8 input vector (before /255)."""
    import cv2  # lazy: only video pipelines need OpenCV

    small: npt.NDArray[Any] = thumb
    if small.shape[0] != size or small.shape[1] != size:
        small = cv2.resize(thumb, (size, size), interpolation=cv2.INTER_AREA)
    if grayscale:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return np.ascontiguousarray(small, dtype=np.uint8).reshape(-1)


class SnmModel:
    """A loaded SNM: an onnxruntime session plus the preprocessing it expects.

    Attributes:
        thumb: Side of the thumbnail the input is derived from.
        size: Side of the model's input image.
        grayscale: Whether the input is grey (else BGR).
        dim: Input length, ``size * size * (1 or 3)``.
        meta: Everything recorded in the model's metadata.
    """

    def __init__(self, data: bytes) -> None:
        """Load from ONNX bytes made by :func:`train_snm`.

        Raises:
            ValueError: not an SNM model, or onnxruntime cannot load it.
        """
        import onnxruntime as ort  # lazy: only configured SNMs need it

        options = ort.SessionOptions()
        # One tiny matrix product per frame: threads cost more than they save.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT's errors derive from Exception only
            msg = f"cannot load SNM model: {exc}"
            raise ValueError(msg) from exc
        props = self._session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            msg = f"ONNX model has no {META_KEY!r} metadata: not an SNM"
            raise ValueError(msg)
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        if self.meta.get("version") != FORMAT_VERSION:
            msg = f"SNM format version {self.meta.get('version')} is not {FORMAT_VERSION}"
            raise ValueError(msg)
        self.thumb = int(self.meta["thumb"])
        self.size = int(self.meta["size"])
        self.grayscale = bool(self.meta["grayscale"])
        self.dim = self.size * self.size * (1 if self.grayscale else 3)
        shape = self._session.get_inputs()[0].shape
        if shape[-1] != self.dim:
            msg = f"SNM input has {shape[-1]} values, metadata says {self.dim}"
            raise ValueError(msg)
        self.data = data

    @classmethod
    def from_path(cls, path: str | Path) -> SnmModel:
        """Load from an ONNX file.

        Raises:
            OSError: the file cannot be read.
            ValueError: not an SNM model.
        """
        return cls(Path(path).read_bytes())

    def predict(self, x: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Return ``(p_object, count)`` for uint8 input rows ``(n, dim)`` or one ``(dim,)``."""
        batch = np.asarray(x, dtype=np.float32).reshape(-1, self.dim) * np.float32(1.0 / 255.0)
        p, count = self._session.run(["p_object", "count"], {"x": batch})
        return np.asarray(p, np.float32).reshape(-1), np.asarray(count, np.float32).reshape(-1)

    def predict_thumb(self, thumb: Image) -> tuple[float, float]:
        """``(p_object, count)`` for one thumbnail of side ``self.thumb``."""
        p, count = self.predict(snm_input(thumb, size=self.size, grayscale=self.grayscale))
        return float(p[0]), float(count[0])

    def predict_frame(self, image: Image) -> tuple[float, float]:
        """``(p_object, count)`` for one full frame (any supported layout)."""
        return self.predict_thumb(thumbnail(image, self.thumb))


def _logistic_irls(
    z: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    l2: float,
    max_iter: int,
) -> npt.NDArray[np.float64]:
    """L2 logistic regression by Newton's method; ``z`` has a trailing 1s column."""
    d = z.shape[1]
    penalty = np.full(d, l2)
    penalty[-1] = 1e-8  # the intercept is (almost) not penalised
    beta = np.zeros(d)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -30.0, 30.0)))
        grad = z.T @ (weights * (p - y)) + penalty * beta
        curvature = weights * p * (1.0 - p)
        hessian = (z * curvature[:, None]).T @ z
        hessian[np.diag_indices(d)] += penalty
        try:
            step = np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hessian, grad, rcond=None)[0]
        beta -= step
        if float(np.max(np.abs(step))) < 1e-6:
            break
    return beta


def fit_snm(
    x: npt.ArrayLike,
    labels: Sequence[bool] | npt.ArrayLike,
    counts: Sequence[float] | npt.ArrayLike | None = None,
    *,
    thumb: int,
    size: int,
    grayscale: bool,
    l2: float = 1.0,
    max_iter: int = 25,
    balanced: bool = True,
) -> bytes:
    """Fit the SNM on prepared uint8 inputs (see :func:`snm_input`); return ONNX bytes.

    Args:
        x: ``(n, dim)`` uint8 inputs.
        labels: ``True`` where the full model's answer is not empty.
        counts: The full model's object counts (default: labels as 0/1).
        thumb: Thumbnail side the inputs were derived from (recorded).
        size: Input image side (recorded).
        grayscale: Whether inputs are grey (recorded).
        l2: Ridge penalty on standardised inputs, for both models.
        max_iter: Newton iterations at most.
        balanced: Weight the classes equally (rare objects are the point).

    Raises:
        ValueError: shapes disagree, or one class is missing.
    """
    data = np.asarray(x, dtype=np.float64) / 255.0
    y = np.asarray(labels, dtype=bool).reshape(-1)
    if data.ndim != 2 or len(data) != len(y):
        msg = f"need (n, dim) inputs and n labels, got {data.shape} and {y.shape}"
        raise ValueError(msg)
    dim = size * size * (1 if grayscale else 3)
    if data.shape[1] != dim:
        msg = f"inputs have {data.shape[1]} values, size/grayscale imply {dim}"
        raise ValueError(msg)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        msg = f"need both classes to train, got {positives} positive of {len(y)}"
        raise ValueError(msg)
    c = y.astype(np.float64) if counts is None else np.asarray(counts, dtype=np.float64)
    if c.shape != y.shape:
        msg = f"need one count per label, got {c.shape} for {y.shape}"
        raise ValueError(msg)

    mean = data.mean(axis=0)
    sd = np.maximum(data.std(axis=0), _SD_FLOOR)
    z = np.hstack([(data - mean) / sd, np.ones((len(data), 1))])
    n = len(y)
    if balanced:
        weights = np.where(y, n / (2.0 * positives), n / (2.0 * (n - positives)))
    else:
        weights = np.ones(n)
    beta_p = _logistic_irls(z, y.astype(np.float64), weights, l2, max_iter)
    gram = z.T @ z
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 1e-8
    gram[np.diag_indices(z.shape[1])] += penalty
    beta_c = np.linalg.solve(gram, z.T @ c)

    # Fold the standardisation into the weights: the graph takes raw 0-1 input.
    def fold(beta: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float32], float]:
        w = beta[:-1] / sd
        return w.astype(np.float32), float(beta[-1] - mean @ w)

    w_p, b_p = fold(beta_p)
    w_c, b_c = fold(beta_c)
    meta = {
        "version": FORMAT_VERSION,
        "thumb": thumb,
        "size": size,
        "grayscale": grayscale,
        "n": n,
        "positives": positives,
        "l2": l2,
    }
    logger.debug("SNM trained on %d inputs (%d positive), dim %d", n, positives, dim)
    return _export(w_p, b_p, w_c, b_c, meta)


def _export(
    w_p: npt.NDArray[np.float32],
    b_p: float,
    w_c: npt.NDArray[np.float32],
    b_c: float,
    meta: dict[str, Any],
) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dim = len(w_p)
    inits = [
        numpy_helper.from_array(w_p.reshape(dim, 1), "w_p"),
        numpy_helper.from_array(np.array([b_p], np.float32), "b_p"),
        numpy_helper.from_array(w_c.reshape(dim, 1), "w_c"),
        numpy_helper.from_array(np.array([b_c], np.float32), "b_c"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w_p"], ["z_p"]),
        helper.make_node("Add", ["z_p", "b_p"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p_object"]),
        helper.make_node("MatMul", ["x", "w_c"], ["z_c"]),
        helper.make_node("Add", ["z_c", "b_c"], ["count_raw"]),
        helper.make_node("Relu", ["count_raw"], ["count"]),
    ]
    graph = helper.make_graph(
        nodes,
        "streamedge_snm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", dim])],
        [
            helper.make_tensor_value_info("p_object", TensorProto.FLOAT, ["n", 1]),
            helper.make_tensor_value_info("count", TensorProto.FLOAT, ["n", 1]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="streamedge"
    )
    model.ir_version = 7  # loadable by every onnxruntime since 1.6
    helper.set_model_props(model, {META_KEY: json.dumps(meta, sort_keys=True)})
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def train_snm(
    frames: Sequence[Image],
    labels: Sequence[bool] | npt.ArrayLike,
    counts: Sequence[float] | npt.ArrayLike | None = None,
    *,
    thumb: int = 50,
    size: int = 16,
    grayscale: bool = False,
    l2: float = 1.0,
    max_iter: int = 25,
) -> bytes:
    """Train an SNM offline from frames and the full model's labels; return ONNX bytes.

    Args:
        frames: Full frames of one stream (any layout :mod:`._frames` accepts).
        labels: ``True`` where the full model's answer is not empty.
        counts: The full model's object counts per frame (default: labels).
        thumb: Thumbnail side; match the filter's ``size`` to share its thumbnail.
        size: Model input side (16: 768 inputs for colour).
        grayscale: Grey input (a third of the inputs).
        l2: Ridge penalty.
        max_iter: Newton iterations at most.

    Raises:
        ValueError: lengths disagree or one class is missing.
        UnsupportedFrameError: a frame cannot be read.
    """
    if len(frames) == 0:
        msg = "no frames to train on"
        raise ValueError(msg)
    x = np.stack([snm_input(thumbnail(f, thumb), size=size, grayscale=grayscale) for f in frames])
    return fit_snm(
        x,
        labels,
        counts,
        thumb=thumb,
        size=size,
        grayscale=grayscale,
        l2=l2,
        max_iter=max_iter,
    )
