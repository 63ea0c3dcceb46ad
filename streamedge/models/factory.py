"""Build :class:`~streamedge.protocols.Model` objects from their config entries."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streamedge.inference.config import BuiltinModelConfig, ModelConfig, OnnxClassifierConfig
from streamedge.models.builtin import SPECS, ensure_builtin
from streamedge.models.classifier import OnnxClassifier
from streamedge.models.config import MtcnnModelConfig
from streamedge.models.onnx_runtime import SessionSettings
from streamedge.models.quantize import int8_dynamic
from streamedge.protocols import Model
from streamedge.records import ModelRef


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the pipeline must know about a model before the first input arrives."""

    ref: ModelRef
    input_kind: str
    """``frame`` or ``window``."""
    window_fields: tuple[str, ...] = ()
    window_size: int = 0


def model_info(cfg: ModelConfig) -> ModelInfo:
    """Describe a configured model without loading it."""
    if isinstance(cfg, BuiltinModelConfig):
        spec = SPECS[cfg.name]
        return ModelInfo(
            ModelRef(spec.name, spec.version),
            spec.input_kind,
            spec.window_fields,
            spec.window_size,
        )
    if isinstance(cfg, MtcnnModelConfig):
        return ModelInfo(ModelRef(cfg.name, cfg.version), "frame")
    return ModelInfo(ModelRef(cfg.name, cfg.version), cfg.input)


def build_model(
    cfg: ModelConfig,
    *,
    data_dir: Path,
    settings: SessionSettings | None = None,
    quantize: bool = False,
) -> Model:
    """Load (and for built-ins, first train) a model. Blocking; run it in a thread.

    ``settings`` tunes its onnxruntime sessions; ``quantize`` runs an int8
    (dynamic) variant of its ONNX files instead (see :mod:`streamedge.models.quantize`).
    """
    info = model_info(cfg)

    def variant(path: Path) -> Path:
        return int8_dynamic(path, data_dir) if quantize else path

    if isinstance(cfg, BuiltinModelConfig):
        spec = SPECS[cfg.name]
        return OnnxClassifier(
            ref=info.ref,
            path=variant(ensure_builtin(cfg.name, data_dir)),
            input_kind="frame" if spec.input_kind == "frame" else "window",
            input_size=(32, 32),
            color="rgb",
            labels=spec.labels,
            intra_op_threads=cfg.intra_op_threads,
            settings=settings,
        )
    if isinstance(cfg, MtcnnModelConfig):
        from streamedge.models.mtcnn import (  # lazy: cv2 + three ORT sessions
            ONET_PATH,
            PNET_PATH,
            RNET_PATH,
            build_mtcnn,
        )

        if quantize:
            cfg = cfg.model_copy(
                update={
                    "pnet_path": variant(cfg.pnet_path or PNET_PATH),
                    "rnet_path": variant(cfg.rnet_path or RNET_PATH),
                    "onet_path": variant(cfg.onet_path or ONET_PATH),
                }
            )
        return build_mtcnn(cfg, settings)
    assert isinstance(cfg, OnnxClassifierConfig)  # noqa: S101  # the union's last member
    return OnnxClassifier(
        ref=info.ref,
        path=variant(cfg.path),
        input_kind=cfg.input,
        input_size=cfg.input_size,
        color=cfg.color,
        scale=cfg.scale,
        mean=cfg.mean,
        std=cfg.std,
        labels=cfg.labels,
        apply_softmax=cfg.softmax,
        intra_op_threads=cfg.intra_op_threads,
        settings=settings,
        layer_cache=cfg.layer_cache,
    )
