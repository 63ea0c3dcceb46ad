"""Configuration of the input filters, one model per ``type``."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from streamedge.confbase import Model, RelPath


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


class AnswerConfig(Model):
    """What counts as the same answer, and as an empty frame, for a video filter.

    Filters that drop a frame make the pipeline repeat the stream's last
    answer, so they must know when two answers are interchangeable. ``by``:

    * ``presence``: same when both have objects or both have none; empty when
      the count is 0 (detectors: ``{"boxes": [...], "count": n}``);
    * ``count``: same when the object counts are equal; empty when 0;
    * ``label``: same when the labels are equal; empty when the label is one
      of ``empty_labels`` (classifiers: ``{"label": str, ...}``).

    The count is ``answer[count_field]``, else ``len(answer[boxes_field])``.
    An answer without the field it is judged by is never empty and never the
    same as another answer, so a filter facing unknown answers only passes.
    """

    by: Literal["presence", "count", "label"] = Field(
        "presence", description="Which part of an answer decides sameness and emptiness."
    )
    count_field: str = Field("count", description="Key of the object count in an answer.")
    boxes_field: str = Field(
        "boxes", description="Key of the box list, counted when the count key is absent."
    )
    label_field: str = Field("label", description="Key of a classifier's label.")
    empty_labels: tuple[str, ...] = Field(
        ("", "none", "background", "empty"),
        description="Labels meaning 'nothing of interest' when by='label'.",
    )


class NoScopeFilterConfig(Model):
    """NoScope's difference detector (Kang et al., VLDB 2017).

    The distance is the mean squared error (pixel values 0-255, so 0-65025)
    between ``size``×``size``×3 thumbnails, or with ``metric: blocked`` the
    largest MSE of any block of a ``blocks``×``blocks`` grid per channel.
    Only every ``t_skip``-th frame is checked; the frames in between are
    dropped, so they repeat the last answer, as NoScope's skipped frames
    inherit the previous label.

    ``mode: earlier`` compares with the checked frame ``t_diff`` frames back
    and drops when the scene is unchanged and the answer still equals the
    answer that frame had. ``mode: reference`` compares with the average of
    frames the full model answered as empty (learned online) and drops when
    the frame looks empty and the last answer was empty too.
    """

    type: Literal["noscope"] = "noscope"
    mode: Literal["earlier", "reference"] = Field(
        "earlier",
        description="Compare with the frame t_diff earlier, or with the empty-scene reference.",
    )
    size: int = Field(50, ge=4, le=256, description="Thumbnail side in pixels (NoScope: 50).")
    metric: Literal["global", "blocked"] = Field(
        "global",
        description="MSE of the whole thumbnail, or the largest per-channel block MSE.",
    )
    blocks: int = Field(
        10, ge=1, le=64, description="Blocks per side for metric=blocked; must divide size."
    )
    threshold: float = Field(
        10.0,
        ge=0,
        description="Distance (MSE, 0-65025) below which a checked frame is dropped.",
    )
    t_skip: int = Field(
        1,
        ge=1,
        description=(
            "Check every t_skip-th frame of a stream and drop the rest "
            "(NoScope's optimizer tries 10 and 30)."
        ),
    )
    t_diff: int = Field(
        10,
        ge=1,
        description=(
            "mode=earlier: compare with the newest checked frame at least this many frames back."
        ),
    )
    reference_min_frames: int = Field(
        10,
        ge=1,
        description="mode=reference: empty-answered frames averaged before the reference is used.",
    )
    reference_max_frames: int = Field(
        100,
        ge=1,
        description=(
            "mode=reference: the reference is the mean of the first this many empty frames, "
            "then an exponential average with weight 1/this, so it follows slow lighting changes."
        ),
    )
    trust_cache: bool = Field(
        default=False,
        description="Learn the reference from cache answers too, not only from models.",
    )
    max_age_s: float | None = Field(
        None,
        gt=0,
        description="Pass a frame anyway when the stream's last pass is this old (None: never).",
    )
    answer: AnswerConfig = Field(
        default_factory=AnswerConfig, description="What counts as the same / an empty answer."
    )

    @model_validator(mode="after")
    def _blocks_divide(self) -> Self:
        if self.metric == "blocked" and self.size % self.blocks:
            msg = f"size ({self.size}) must be a multiple of blocks ({self.blocks})"
            raise ValueError(msg)
        return self


ReductoFeature = Literal["pixel", "area", "edge"]


def _default_reducto_thresholds() -> dict[ReductoFeature, float]:
    return {"edge": 0.002}


class ReductoFilterConfig(Model):
    """Reducto's on-camera filter (Li et al., SIGCOMM 2020).

    Each frame is compared with the last frame that passed (not the previous
    frame), with Reducto's low-level features, each a fraction of the frame:

    * ``pixel``: pixels whose grey level of the absolute BGR difference
      exceeds ``pixel_level``;
    * ``area``: grey, Gaussian blur, absolute difference, threshold at
      ``area_level``, dilate; the largest external contour's area;
    * ``edge``: grey, Gaussian blur, Canny edges; pixels whose edge state
      changed.

    A frame passes when any configured feature exceeds its threshold. Reducto
    works at native resolution with 11×11 blurs; here the frame is first
    subsampled to ``width`` pixels wide (None: native), and the default 3×3
    blur keeps about the same support relative to the frame at 160 px.
    """

    type: Literal["reducto"] = "reducto"
    thresholds: dict[ReductoFeature, float] = Field(
        default_factory=_default_reducto_thresholds,
        min_length=1,
        description=(
            "Feature -> difference fraction (0-1) above which a frame passes; "
            "several features pass a frame when any exceeds its threshold."
        ),
    )
    width: int | None = Field(
        160,
        ge=16,
        description="Working width in pixels (nearest-neighbour subsampling); None: native.",
    )
    pixel_level: int = Field(
        21, ge=0, le=255, description="Grey-level change that counts a pixel as changed."
    )
    area_level: int = Field(
        21, ge=0, le=255, description="Grey-level change that counts towards an area."
    )
    area_blur: int = Field(3, ge=1, description="Gaussian kernel side for area (odd).")
    edge_blur: int = Field(3, ge=1, description="Gaussian kernel side for edge (odd).")
    canny_low: int = Field(101, ge=0, le=1000, description="Canny lower hysteresis threshold.")
    canny_high: int = Field(255, ge=0, le=1000, description="Canny upper hysteresis threshold.")
    max_age_s: float | None = Field(
        None,
        gt=0,
        description="Pass a frame anyway when the stream's last pass is this old (None: never).",
    )
    samples: int = Field(
        1000,
        ge=0,
        description=(
            "Per stream, how many (feature values, answer changed?) pairs to keep "
            "for threshold calibration (0: none)."
        ),
    )
    answer: AnswerConfig = Field(
        default_factory=AnswerConfig, description="What counts as the same answer."
    )

    @model_validator(mode="after")
    def _odd_blurs(self) -> Self:
        for name in ("area_blur", "edge_blur"):
            if getattr(self, name) % 2 == 0:
                msg = f"{name} must be odd, got {getattr(self, name)}"
                raise ValueError(msg)
        return self


class FfsvaFilterConfig(Model):
    """FFS-VA's filter cascade (Zhang et al., ICPP 2018), in front of the full model.

    1. SDD: MSE of a thumbnail against the stream's background (an
       approximate running median, or an exponential average). Below
       ``sdd_threshold`` the scene is empty.
    2. SNM: a small per-stream model (logistic regression on a thumbnail,
       ONNX) trained on the full model's own answers. Below ``snm_low`` the
       frame is empty; above ``snm_high`` it passes; in between it goes on.
    3. Count: a cheap object-count estimate (the SNM's count regression, or
       foreground blobs against the background); below ``min_count`` the
       frame does not satisfy the query.

    A frame judged empty (or short of ``min_count``) is dropped only when the
    stream's last answer was empty (short of ``min_count``) too; otherwise it
    passes so the full model can say so.
    """

    type: Literal["ffsva"] = "ffsva"
    size: int = Field(50, ge=4, le=256, description="SDD thumbnail side in pixels.")
    background: Literal["median", "mean"] = Field(
        "median",
        description=(
            "median: each pixel steps by background_step towards the frame (approximate "
            "running median, robust to passers-by); mean: exponential average."
        ),
    )
    background_step: float = Field(
        1.0, gt=0, description="median: grey levels a background pixel moves per frame."
    )
    background_alpha: float = Field(
        0.02, gt=0, le=1, description="mean: weight of the newest frame."
    )
    sdd_metric: Literal["global", "blocked"] = Field(
        "global", description="MSE of the whole thumbnail, or the largest block MSE."
    )
    sdd_blocks: int = Field(
        10, ge=1, le=64, description="Blocks per side for sdd_metric=blocked; must divide size."
    )
    sdd_threshold: float = Field(
        20.0, ge=0, description="Background distance (MSE, 0-65025) below which a frame is empty."
    )
    snm_models: dict[str, RelPath] = Field(
        default_factory=dict,
        description=(
            "'device/stream' -> SNM ONNX file (from train_snm); '*' applies to streams "
            "without their own. Streams without a model skip the SNM stage."
        ),
    )
    snm_low: float = Field(
        0.05, ge=0, le=1, description="SNM probability below which a frame is empty."
    )
    snm_high: float = Field(
        0.95, ge=0, le=1, description="SNM probability above which a frame passes."
    )
    count_source: Literal["snm", "blobs", "none"] = Field(
        "snm",
        description=(
            "Count estimate: the SNM's count regression, connected foreground blobs "
            "of the background difference, or none (skip the stage)."
        ),
    )
    min_count: int = Field(
        1, ge=1, description="The query wants frames with at least this many objects."
    )
    blob_level: int = Field(
        30, ge=1, le=255, description="blobs: grey-level difference that marks foreground."
    )
    blob_min_pixels: int = Field(
        4, ge=1, description="blobs: smallest blob (thumbnail pixels) counted as an object."
    )
    snm_size: int = Field(
        16, ge=2, le=64, description="Online training: SNM input side (16: 768 inputs)."
    )
    snm_grayscale: bool = Field(
        default=False, description="Online training: grey SNM input instead of BGR."
    )
    snm_l2: float = Field(1.0, gt=0, description="Online training: ridge penalty.")
    train_min_per_class: int = Field(
        20, ge=1, description="Online training needs this many empty and non-empty frames."
    )
    train_buffer: int = Field(
        1000,
        ge=0,
        description=(
            "Per stream and class (empty / not), how many observed frames to keep "
            "for training the SNM online (0: none)."
        ),
    )
    trust_cache: bool = Field(
        default=False, description="Train on cache answers too, not only on model answers."
    )
    max_age_s: float | None = Field(
        None,
        gt=0,
        description="Pass a frame anyway when the stream's last pass is this old (None: never).",
    )
    answer: AnswerConfig = Field(
        default_factory=AnswerConfig, description="What counts as the same / an empty answer."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.snm_low > self.snm_high:
            msg = f"snm_low ({self.snm_low}) must not exceed snm_high ({self.snm_high})"
            raise ValueError(msg)
        if self.sdd_metric == "blocked" and self.size % self.sdd_blocks:
            msg = f"size ({self.size}) must be a multiple of sdd_blocks ({self.sdd_blocks})"
            raise ValueError(msg)
        return self


FilterConfig = Annotated[
    DeadbandFilterConfig
    | DuplicateFilterConfig
    | RateFilterConfig
    | FrameDiffFilterConfig
    | NoScopeFilterConfig
    | ReductoFilterConfig
    | FfsvaFilterConfig,
    Field(discriminator="type"),
]


class RecalibrationConfig(Model):
    """Online recalibration of a stream rule's filter thresholds, per stream.

    A sample of dropped frames is checked against the full model; a window
    of frames all answered by the full model is collected at the start,
    every ``interval_s`` and when the checked agreement falls below
    ``min_agreement``; the thresholds are then chosen again on it
    (``streamedge calibrate``'s search) for that stream alone.
    """

    check_fraction: float = Field(
        0.02, ge=0, le=1, description="Fraction of dropped frames sent to the model as a check."
    )
    check_window: int = Field(100, ge=1, description="Recent checks the agreement is taken over.")
    min_checks: int = Field(
        20, ge=1, description="Checks needed before low agreement triggers a recalibration."
    )
    min_agreement: float = Field(
        0.95, ge=0, le=1, description="Checked agreement below which the stream is recalibrated."
    )
    window_frames: int = Field(
        150, ge=10, description="Frames answered by the full model and kept for a recalibration."
    )
    interval_s: float = Field(
        3600.0, gt=0, description="Recalibrate each stream at least this often (seconds)."
    )
    at_start: bool = Field(
        default=True, description="Collect a window as soon as a stream is first seen."
    )
    target: float = Field(
        0.98, ge=0, le=1, description="Accuracy the chosen thresholds must reach on the window."
    )
    metric: Literal["agreement", "windowed", "count_agreement", "presence_agreement"] = Field(
        "agreement",
        description="What the target applies to: per-frame agreement or NoScope's windows.",
    )
    frame_width: int = Field(
        320, ge=0, description="Kept frames are subsampled to this width (0: full size)."
    )
    max_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Bytes of kept window frames over all streams."
    )
    seed: int = Field(0, description="Seed of the check sampling (reproducible runs).")
