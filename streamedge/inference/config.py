"""Configuration of models and of the tiers that run them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from streamedge.caches.layer_config import LayerCacheConfig
from streamedge.confbase import Model, RelPath
from streamedge.models.config import MtcnnModelConfig


class OnnxClassifierConfig(Model):
    """Any ONNX classifier: image or reading-window in, class scores out."""

    type: Literal["onnx_classifier"] = "onnx_classifier"
    name: str = Field(description="Model name; answers and cache namespaces carry it.")
    version: str = Field("1", description="Bump it to invalidate cached answers.")
    path: RelPath = Field(description="The .onnx file (relative to the config file).")
    input: Literal["frame", "window"] = Field("frame", description="What the model takes.")
    input_size: tuple[int, int] = Field(
        (32, 32), description="Frames are resized to (width, height)."
    )
    color: Literal["rgb", "bgr", "gray"] = Field("rgb", description="Channel order fed.")
    scale: float = Field(1 / 255, description="Pixel values are multiplied by this.")
    mean: tuple[float, ...] = Field((0.0,), description="Subtracted per channel after scaling.")
    std: tuple[float, ...] = Field((1.0,), description="Divided per channel after the mean.")
    labels: list[str] = Field(default_factory=list, description="Class names by index.")
    softmax: bool = Field(False, description="Apply softmax to the output (it holds logits).")
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime threads per run (0 = all).")
    layer_cache: LayerCacheConfig | None = Field(
        None,
        description=(
            "Reuse the convolutional prefix's feature maps between frames of a stream "
            "(frame models only); a model without such a prefix runs whole, with a "
            "warning. input_range defaults to the range scale, mean and std give."
        ),
    )

    @model_validator(mode="after")
    def _layer_cache_needs_frames(self) -> OnnxClassifierConfig:
        if self.layer_cache is not None and self.input != "frame":
            msg = "layer_cache needs a frame model (input: frame)"
            raise ValueError(msg)
        return self


class BuiltinModelConfig(Model):
    """A small model streamedge trains and exports on first use (demo and tests)."""

    type: Literal["builtin"] = "builtin"
    name: Literal["tiny_presence", "sensor_anomaly"] = Field(
        description=(
            "tiny_presence: CNN, frame -> is an object in view; "
            "sensor_anomaly: window of readings -> normal/anomaly."
        )
    )
    intra_op_threads: int = Field(1, ge=0, description="onnxruntime threads per run (0 = all).")


ModelConfig = Annotated[
    OnnxClassifierConfig | BuiltinModelConfig | MtcnnModelConfig, Field(discriminator="type")
]


class LocalTierConfig(Model):
    """Run models in-process with onnxruntime, in worker threads."""

    type: Literal["local"] = "local"
    max_concurrency: int = Field(
        2, ge=1, description="Inferences running at once (onnxruntime releases the GIL)."
    )
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one local inference.")
    warmup: bool = Field(True, description="Run each model once at start.")


TierConfig = Annotated[LocalTierConfig, Field(discriminator="type")]


class InferenceConfig(Model):
    """Where misses go, in order."""

    tiers: list[TierConfig] = Field(
        default_factory=lambda: [LocalTierConfig()],
        description="Tiers tried in order for each miss.",
    )
