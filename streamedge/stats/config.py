"""Configuration of statistics publication."""

from __future__ import annotations

from pydantic import Field

from streamedge.confbase import Model


class StatsConfig(Model):
    """Counters and latency histograms, published on ``<prefix>/stats``."""

    interval_s: float = Field(
        60.0, gt=0, description="Seconds between retained snapshots (Frigate's default)."
    )
    window_s: float = Field(
        300.0, ge=10, description="Length of the sliding window for recent hit ratios."
    )
    per_stream: bool = Field(
        True, description="Keep per-stream counters (bounded by pipeline.max_streams)."
    )
