"""Configuration of statistics publication, history, per-device topics and HTTP."""

from __future__ import annotations

from pydantic import Field

from streamedge.confbase import Model


class HistoryConfig(Model):
    """The bounded history ring published retained on ``<prefix>/stats/history``."""

    interval_s: float = Field(
        15.0, ge=1, description="Seconds between history points (each point covers one interval)."
    )
    points: int = Field(
        240,
        ge=2,
        le=10_000,
        description="Points kept (240 x 15 s = 1 h); older points are forgotten.",
    )


class DeviceTopicsConfig(Model):
    """``<prefix>/stats/{device}``: published only while someone asked for it."""

    max_devices: int = Field(
        16, ge=0, le=1024, description="Devices followed at once; further requests are refused."
    )
    default_follow_s: float = Field(
        600.0, gt=0, description="How long a follow request lasts when it names no duration."
    )
    max_follow_s: float = Field(
        3600.0, gt=0, description="Longest follow a request may ask for (renew to keep going)."
    )


class HttpConfig(Model):
    """Optional HTTP endpoint: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``."""

    port: int | None = Field(
        None, ge=0, le=65535, description="TCP port; none: no HTTP endpoint (0: any free port)."
    )
    bind: str = Field(
        "127.0.0.1",
        description="Address to listen on; '0.0.0.0' lets a Prometheus on another host scrape.",
    )
    max_connections: int = Field(
        16, ge=1, le=1024, description="Connections served at once; further ones are closed."
    )
    timeout_s: float = Field(
        5.0, gt=0, description="Deadline for a client to send its request and read the answer."
    )


class StatsConfig(Model):
    """Counters and latency histograms, published on ``<prefix>/stats``."""

    interval_s: float = Field(
        60.0, gt=0, description="Seconds between retained snapshots (Frigate's default)."
    )
    window_s: float = Field(
        300.0, ge=10, description="Length of the sliding window for recent hit ratios."
    )
    per_stream: bool = Field(
        True, description="Keep per-stream counters (bounded by limits.max_streams)."
    )
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    device_topics: DeviceTopicsConfig = Field(default_factory=DeviceTopicsConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
