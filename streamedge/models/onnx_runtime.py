"""Creating onnxruntime sessions the same way everywhere (lazy import, mapped errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamedge.errors import InferenceError


def make_session(model: Path | bytes, *, intra_op_threads: int = 1) -> Any:
    """An onnxruntime InferenceSession on the CPU, tuned for a small board.

    One intra-op thread by default: the gateway runs several inferences in
    parallel threads (onnxruntime releases the GIL), which uses a Pi's cores
    better than one inference spread over all of them.
    """
    import onnxruntime as ort  # lazy: heavy, and sensor-only gateways never need it

    opts = session_options(intra_op_threads)
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        name = model if isinstance(model, Path) else "<bytes>"
        raise InferenceError(f"cannot load ONNX model {name}: {exc}") from exc


def session_options(intra_op_threads: int = 1) -> Any:
    """The ``onnxruntime.SessionOptions`` :func:`make_session` uses."""
    import onnxruntime as ort  # lazy: heavy, and sensor-only gateways never need it

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts
