"""Configuration of the input filters, one model per ``type``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from streamedge.confbase import Model


class DeadbandFilterConfig(Model):
    """Drop a reading whose every field moved less than epsilon since the last one passed."""

    type: Literal["deadband"] = "deadband"
    epsilon: float | dict[str, float] = Field(
        0.0,
        description=(
            "Smallest change that passes: one number for every field, or a map "
            "field -> epsilon (fields not named use 'default_epsilon')."
        ),
    )
    default_epsilon: float = Field(0.0, ge=0, description="Epsilon of fields not in the map.")
    max_age_s: float = Field(
        60.0, gt=0, description="Pass a reading anyway when the last pass is this old."
    )


class DuplicateFilterConfig(Model):
    """Drop an input identical to the stream's previous input."""

    type: Literal["duplicate"] = "duplicate"
    max_age_s: float = Field(
        300.0, gt=0, description="Pass a repeat anyway when the last pass is this old."
    )


class RateFilterConfig(Model):
    """Pass at most one input per interval per stream."""

    type: Literal["rate"] = "rate"
    min_interval_s: float = Field(1.0, gt=0, description="Shortest time between passes.")


class FrameDiffFilterConfig(Model):
    """Drop a frame that differs too little from the last frame that passed.

    The distance is the mean squared error of ``size``×``size`` colour
    thumbnails (pixel values 0-255), the cheap difference detector NoScope
    and Glimpse use.
    """

    type: Literal["frame_diff"] = "frame_diff"
    size: int = Field(50, ge=4, le=256, description="Thumbnail side in pixels.")
    threshold: float = Field(
        25.0, ge=0, description="MSE below which a frame is dropped (0-65025)."
    )
    max_age_s: float = Field(
        10.0, gt=0, description="Pass a frame anyway when the last pass is this old."
    )


FilterConfig = Annotated[
    DeadbandFilterConfig | DuplicateFilterConfig | RateFilterConfig | FrameDiffFilterConfig,
    Field(discriminator="type"),
]
