"""Configuration of the models streamedge ships (pydantic, no heavy imports)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from streamedge.caches.layer_config import LayerCacheConfig
from streamedge.confbase import Model, RelPath

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class MtcnnModelConfig(Model):
    """MTCNN face detector (ONNX exports of facenet-pytorch's weights).

    Answers ``{"boxes": [[x1, y1, x2, y2, score], ...], "count": n}``. Bump
    ``version`` when changing a threshold, ``min_face`` or ``factor``: cached
    answers are shared per ``name@version``.
    """

    type: Literal["mtcnn"] = "mtcnn"
    name: str = Field("mtcnn", min_length=1, description="Model name in answers and caches.")
    version: str = Field("1", min_length=1, description="Bump it to invalidate cached answers.")
    thresholds: tuple[Probability, Probability, Probability] = Field(
        (0.6, 0.7, 0.7),
        description="Smallest face probability kept by PNet, RNet and ONet.",
    )
    min_face: float = Field(
        20.0,
        ge=6.0,
        description="Smallest face side looked for, in pixels; smaller costs more.",
    )
    factor: float = Field(
        0.709, gt=0.1, lt=1.0, description="Ratio between successive pyramid scales."
    )
    intra_op_threads: int = Field(
        1, ge=0, description="onnxruntime threads per network run (0 = all cores)."
    )
    pnet_path: RelPath | None = Field(
        None, description="PNet .onnx file; default: the one packaged with streamedge."
    )
    rnet_path: RelPath | None = Field(
        None, description="RNet .onnx file; default: the one packaged with streamedge."
    )
    onet_path: RelPath | None = Field(
        None, description="ONet .onnx file; default: the one packaged with streamedge."
    )
    layer_cache: LayerCacheConfig | None = Field(
        None,
        description=(
            "Reuse PNet's feature maps between frames of a stream, recomputing only "
            "around changed blocks (DeepCache-style); null runs every frame in full. "
            "State is kept per stream and pyramid level; input_range defaults to "
            "MTCNN's 255/128 and recheck_margin applies to PNet's face threshold."
        ),
    )
