"""Configuration of the layer-level computation cache (DeepCache-style)."""

from __future__ import annotations

from pydantic import Field

from streamedge.confbase import Model


class LayerCacheConfig(Model):
    """Reuse the convolutional prefix's feature maps of the previous frame.

    The model is split after its longest spatially local prefix; for each frame
    only the prefix outputs that depend on changed image blocks are recomputed,
    on crops, and the suffix runs on the spliced maps.
    """

    enabled: bool = Field(
        default=True,
        description="Use the cache; when false every frame runs the whole model.",
    )
    block_size: int = Field(
        10,
        ge=2,
        le=256,
        description="Side of the change-detection blocks in pixels (DeepCache: 10).",
    )
    psnr_db: float = Field(
        20.0,
        ge=0,
        description=(
            "A block whose PSNR against the cached frame is at least this is unchanged "
            "(DeepCache: 20 dB). Use inf to reuse only bit-identical blocks."
        ),
    )
    input_range: float = Field(
        255.0,
        gt=0,
        description=(
            "Peak-to-peak range of the model input values, the PSNR peak: 255 for raw "
            "pixels, 2 for inputs normalised to [-1, 1]. Under a model's layer_cache key "
            "the model's own range is used unless this is set."
        ),
    )
    refresh_every: int = Field(
        20,
        ge=0,
        description=(
            "Recompute the whole prefix every N frames of a stream to bound drift "
            "(DeepCache: 10; 20 measured faster at the same answers with MTCNN on "
            "vtest.avi, see the README); 0 never refreshes."
        ),
    )
    diamond_search: bool = Field(
        default=False,
        description=(
            "Match changed blocks against displaced blocks (diamond search) and copy "
            "feature maps for displacements that are multiples of the prefix stride."
        ),
    )
    search_range: int = Field(
        16,
        ge=1,
        le=64,
        description="Largest displacement searched, in pixels per axis.",
    )
    max_crops: int = Field(
        8,
        ge=1,
        le=64,
        description="Most prefix runs on crops per frame; more are merged.",
    )
    recheck_margin: float | None = Field(
        0.0,
        ge=0,
        description=(
            "Recompute, on every frame, each position whose cached output is at least the "
            "model's decision threshold minus this margin, so decisions taken on the "
            "prefix outputs stay exact (mtcnn: PNet cells at or near the face "
            "threshold); null disables. Models without such a threshold ignore it."
        ),
    )
    max_bytes: int = Field(
        64 * 2**20,
        ge=0,
        description="Cap on cached frames plus maps over all streams, in bytes (LRU).",
    )
