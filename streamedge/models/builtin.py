"""Two small models streamedge trains and exports itself, so nothing is downloaded.

``tiny_presence``
    A CNN that says whether a visitor is in view of the generated camera
    scene (:mod:`streamedge.devices.scenes`): two seeded convolution layers
    (fixed random features), global max pooling, and a linear head trained
    by logistic regression on generated frames with their ground truth.
``sensor_anomaly``
    Over a window of ``(16, 2)`` temperature/humidity readings: deviation
    and step features computed inside the ONNX graph, and a linear head
    trained on simulated readings with injected faults.

Both are real ONNX models loaded by the same code as any user model; they
stand in until a deployment configures its own. Training is seeded and takes
about a second; files are written atomically into ``<data_dir>/models``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

OPSET = 17
PRESENCE_SIZE = 32
WINDOW_SIZE = 16
WINDOW_FIELDS = ("temperature", "humidity")
BATCH = "N"
"""A free batch dimension: the local tier runs waiting misses as one batch (same answers)."""


@dataclass(frozen=True, slots=True)
class BuiltinSpec:
    """What the pipeline needs to know about a built-in model."""

    name: str
    version: str
    input_kind: str
    labels: tuple[str, ...]
    window_fields: tuple[str, ...] = ()
    window_size: int = 0


SPECS = {
    "tiny_presence": BuiltinSpec("tiny_presence", "1", "frame", ("empty", "visitor")),
    "sensor_anomaly": BuiltinSpec(
        "sensor_anomaly", "1", "window", ("normal", "anomaly"), WINDOW_FIELDS, WINDOW_SIZE
    ),
}


def _logistic_regression(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, steps: int = 3000, l2: float = 1e-3
) -> tuple[npt.NDArray[np.float64], float]:
    """Fit weights and bias by full-batch gradient descent on standardised features."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    xs = (x - mu) / sd
    w = np.zeros(x.shape[1])
    b = 0.0
    pos = max(float(y.mean()), 1e-3)
    weights = np.where(y > 0.5, 0.5 / pos, 0.5 / max(1 - pos, 1e-3))  # balance the classes
    lr = 0.5
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(xs @ w + b)))
        g = (p - y) * weights
        w -= lr * (xs.T @ g / len(y) + l2 * w)
        b -= lr * float(g.mean())
    # Fold the standardisation into the weights so the ONNX graph takes raw features.
    w_raw = w / sd
    b_raw = b - float(np.sum(w * mu / sd))
    return w_raw, b_raw


def _two_class_head(w: npt.NDArray[np.float64], b: float) -> tuple[np.ndarray, np.ndarray]:
    """A 2-logit Gemm equivalent to one logistic unit: logits (0, z)."""
    weight = np.stack([np.zeros_like(w), w], axis=1).astype(np.float32)
    bias = np.array([0.0, b], dtype=np.float32)
    return weight, bias


def _finish_graph(
    name: str,
    graph_input: tuple[str, list[int | str]],
    nodes: list[Any],
    inits: list[Any],
    *,
    n_features: int,
    head: tuple[np.ndarray, np.ndarray] | None,
) -> bytes:
    """Close a feature graph: output the features, or add the 2-class head and softmax."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    outputs = [helper.make_tensor_value_info("features", TensorProto.FLOAT, [BATCH, n_features])]
    if head is not None:
        weight, bias = head
        inits = [*inits, numpy_helper.from_array(weight, "hw"), numpy_helper.from_array(bias, "hb")]
        nodes = [
            *nodes,
            helper.make_node("Gemm", ["features", "hw", "hb"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
        ]
        outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [BATCH, 2])]
    in_name, in_shape = graph_input
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape)],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _presence_graph(head: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(7)
    w1 = rng.normal(0, 0.5, (12, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 12).astype(np.float32)
    w2 = rng.normal(0, 0.25, (24, 12, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 24).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalMaxPool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["features"]),
    ]
    return _finish_graph(
        "tiny_presence", ("image", [BATCH, 3, 32, 32]), nodes, inits, n_features=24, head=head
    )


def presence_training_set(n: int = 1200, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Generated frames (as 1×3×32×32 RGB tensors in [0, 1]) and presence labels."""
    import cv2

    from streamedge.devices.scenes import SceneGenerator

    xs: list[np.ndarray] = []
    ys: list[float] = []
    for s in range(4):
        gen = SceneGenerator(seed=seed + s, arrival_p=0.05)
        for image, count in gen.frames(n // 4):
            small = cv2.resize(image, (PRESENCE_SIZE, PRESENCE_SIZE), interpolation=cv2.INTER_AREA)
            xs.append(small[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0)
            ys.append(1.0 if count > 0 else 0.0)
    return np.concatenate(xs), np.asarray(ys)


def _train_head(
    graph: Callable[[tuple[np.ndarray, np.ndarray] | None], bytes],
    input_name: str,
    x: np.ndarray,
    y: np.ndarray,
) -> bytes:
    """Run the feature graph over the training set, fit the head, return the full model."""
    from streamedge.models.onnx_runtime import make_session

    session = make_session(graph(None))
    feats = np.concatenate([session.run(None, {input_name: xi[None]})[0] for xi in x])
    w, b = _logistic_regression(feats.astype(np.float64), y)
    return graph(_two_class_head(w, b))


def build_tiny_presence() -> bytes:
    """Train the presence head on generated scenes and return the ONNX bytes."""
    x, y = presence_training_set()
    return _train_head(_presence_graph, "image", x, y)


def _anomaly_graph(head: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    from onnx import helper, numpy_helper

    n, f = WINDOW_SIZE, len(WINDOW_FIELDS)
    inits = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
        numpy_helper.from_array(np.array([n - 1], dtype=np.int64), "last"),
        numpy_helper.from_array(np.array([n], dtype=np.int64), "end"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["window"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["window", "mean"], ["dev"]),
        helper.make_node("Abs", ["dev"], ["absdev"]),
        helper.make_node("ReduceMax", ["absdev"], ["maxdev"], axes=[1], keepdims=0),
        helper.make_node("Slice", ["absdev", "last", "end", "axis1"], ["lastdev3"]),
        helper.make_node("Flatten", ["lastdev3"], ["lastdev"], axis=1),
        helper.make_node("Slice", ["window", "one", "end", "axis1"], ["tail"]),
        helper.make_node("Slice", ["window", "zero", "last", "axis1"], ["head"]),
        helper.make_node("Sub", ["tail", "head"], ["steps"]),
        helper.make_node("Abs", ["steps"], ["abssteps"]),
        helper.make_node("ReduceMax", ["abssteps"], ["maxstep"], axes=[1], keepdims=0),
        helper.make_node("Mul", ["dev", "dev"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),
        helper.make_node("Sqrt", ["var"], ["std"]),
        helper.make_node("Concat", ["lastdev", "maxdev", "maxstep", "std"], ["features"], axis=1),
    ]
    return _finish_graph(
        "sensor_anomaly", ("window", [BATCH, n, f]), nodes, inits, n_features=4 * f, head=head
    )


def anomaly_training_set(
    devices: int = 12, n: int = 600, seed: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Windows of simulated readings and whether the newest reading is anomalous."""
    from streamedge.devices.sensors import SensorSimulator

    xs: list[np.ndarray] = []
    ys: list[float] = []
    for d in range(devices):
        sim = SensorSimulator(seed=seed + d, anomaly_p=0.03)
        samples = [sim.step() for _ in range(n)]
        values = np.array([[s.values[k] for k in WINDOW_FIELDS] for s in samples], dtype=np.float32)
        for end in range(WINDOW_SIZE, n + 1):
            xs.append(values[end - WINDOW_SIZE : end])
            ys.append(1.0 if samples[end - 1].anomaly else 0.0)
    return np.stack(xs), np.asarray(ys)


def build_sensor_anomaly() -> bytes:
    """Train the anomaly head on simulated readings and return the ONNX bytes."""
    x, y = anomaly_training_set()
    return _train_head(_anomaly_graph, "window", x, y)


BUILDERS: dict[str, Callable[[], bytes]] = {
    "tiny_presence": build_tiny_presence,
    "sensor_anomaly": build_sensor_anomaly,
}


def builtin_path(name: str, data_dir: Path) -> Path:
    """Where a built-in model lives (the version is in the file name)."""
    spec = SPECS[name]
    return data_dir / "models" / f"{spec.name}-v{spec.version}.onnx"


def ensure_builtin(name: str, data_dir: Path) -> Path:
    """Build a built-in model unless it already exists; return its path."""
    path = builtin_path(name, data_dir)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    logger.info("training built-in model %s (first use) into %s", name, path)
    data = BUILDERS[name]()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).replace(path)  # atomic: a half-written model is never loaded
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
