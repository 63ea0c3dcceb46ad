"""Configuration of the result caches: embedder, index, hit policy and store."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from streamedge.confbase import Model


class DownscaleEmbedderConfig(Model):
    """A thumbnail of the frame, flattened: cheap and good for fixed cameras."""

    type: Literal["downscale"] = "downscale"
    size: int = Field(16, ge=2, le=128, description="Thumbnail side in pixels.")
    grayscale: bool = Field(False, description="Drop colour before flattening.")


class WindowEmbedderConfig(Model):
    """A window of readings, flattened, each field scaled by ``scale``."""

    type: Literal["window"] = "window"
    scale: dict[str, float] = Field(
        default_factory=dict,
        description="Divide a field by this before comparing (default 1).",
    )


EmbedderConfig = Annotated[
    DownscaleEmbedderConfig | WindowEmbedderConfig, Field(discriminator="type")
]


class NumpyIndexConfig(Model):
    """Exact search with numpy (fastest single query up to about 10k entries)."""

    type: Literal["numpy"] = "numpy"


IndexConfig = Annotated[NumpyIndexConfig, Field(discriminator="type")]


class ThresholdPolicyConfig(Model):
    """Reuse the nearest answer when its distance is below ``max_distance``.

    Distances are root-mean-square per dimension of the embedding, so one
    threshold means the same for a 16×16 and a 32×32 thumbnail.
    """

    type: Literal["threshold"] = "threshold"
    max_distance: float = Field(0.02, ge=0, description="Largest RMS distance reused.")


PolicyConfig = Annotated[ThresholdPolicyConfig, Field(discriminator="type")]


class StoreConfig(Model):
    """Byte-capped storage of cached answers."""

    max_bytes: int = Field(
        64 * 2**20, ge=4096, description="Cap on vectors plus answers, in bytes."
    )
    ttl_s: float = Field(3600.0, gt=0, description="Answers older than this are not reused.")
    eviction: Literal["lru"] = Field("lru", description="What to evict when full.")


class CacheConfig(Model):
    """One cache profile. A namespace is (model@version, embedder@version)."""

    name: str = Field("default", description="Name that applications refer to.")
    embedder: EmbedderConfig = Field(default_factory=DownscaleEmbedderConfig)
    index: IndexConfig = Field(default_factory=NumpyIndexConfig)
    policy: PolicyConfig = Field(default_factory=ThresholdPolicyConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
