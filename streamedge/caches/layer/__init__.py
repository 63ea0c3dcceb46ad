"""Layer-level computation cache (DeepCache-style) for ONNX models.

The model is split after its longest spatially local prefix (convolutions,
pooling, pointwise ops). For each frame of a stream only the prefix outputs
whose receptive field touches a changed block are recomputed, on a few aligned
crops, and spliced into the cached maps; the suffix then runs on the full maps.

Public API::

    runner = LayerCachedRunner("pnet.onnx", LayerCacheConfig(input_range=2.0))
    outputs = runner.run((stream, scale_index), x_nchw)
    runner.stats()

``onnx``, ``onnxruntime`` are imported only when a runner or a split is made.
"""

from streamedge.caches.layer.geometry import AxisField, AxisWindow
from streamedge.caches.layer.graph import (
    Layout,
    LayoutError,
    PrefixAnalysis,
    Step,
    WindowSpec,
    analyse,
    layout,
    split,
)
from streamedge.caches.layer.regions import CropCostModel
from streamedge.caches.layer.runner import BoundRunner, Decision, LayerCachedRunner
from streamedge.caches.layer.state import LayerCache, LayerCacheStats, StreamState
from streamedge.caches.layer_config import LayerCacheConfig

__all__ = [
    "AxisField",
    "AxisWindow",
    "BoundRunner",
    "CropCostModel",
    "Decision",
    "LayerCache",
    "LayerCacheConfig",
    "LayerCacheStats",
    "LayerCachedRunner",
    "Layout",
    "LayoutError",
    "PrefixAnalysis",
    "Step",
    "StreamState",
    "WindowSpec",
    "analyse",
    "layout",
    "split",
]
