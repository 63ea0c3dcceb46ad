"""Creating onnxruntime sessions the same way everywhere (lazy import, mapped errors)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamedge.errors import InferenceError

logger = logging.getLogger(__name__)

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How sessions are tuned (the ``local`` tier's and the worker's settings).

    ``intra_op_threads`` of ``None`` keeps each model's own setting.
    """

    intra_op_threads: int | None = None
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


DEFAULT_SETTINGS = SessionSettings()


def available_providers(wanted: tuple[str, ...]) -> list[str]:
    """The wanted execution providers this onnxruntime build has, in order (CPU last resort)."""
    import onnxruntime as ort  # lazy

    have = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in have]
    for missing in (p for p in wanted if p not in have):
        logger.warning("execution provider %s is not available here; skipped", missing)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(*, intra_op_threads: int, settings: SessionSettings | None = None) -> Any:
    """onnxruntime SessionOptions for one request at a time per session."""
    import onnxruntime as ort  # lazy

    settings = settings or DEFAULT_SETTINGS
    opts = ort.SessionOptions()
    level = _LEVELS.get(settings.graph_optimization, "ORT_ENABLE_ALL")
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    threads = settings.intra_op_threads
    opts.intra_op_num_threads = intra_op_threads if threads is None else threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


def make_session(
    model: Path | bytes, *, intra_op_threads: int = 1, settings: SessionSettings | None = None
) -> Any:
    """An onnxruntime InferenceSession, tuned for a small board.

    One intra-op thread by default: the gateway runs several inferences in
    parallel threads (onnxruntime releases the GIL), which uses a Pi's cores
    better than one inference spread over all of them.
    """
    import onnxruntime as ort  # lazy: heavy, and sensor-only gateways never need it

    settings = settings or DEFAULT_SETTINGS
    opts = session_options(intra_op_threads=intra_op_threads, settings=settings)
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(
            source, sess_options=opts, providers=available_providers(settings.providers)
        )
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        name = model if isinstance(model, Path) else "<bytes>"
        raise InferenceError(f"cannot load ONNX model {name}: {exc}") from exc
