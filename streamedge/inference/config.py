"""Configuration of models and of the tiers that run them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from streamedge.caches.layer_config import LayerCacheConfig
from streamedge.confbase import EnvStr, Model, RelPath, env_substituted
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


class BreakerConfig(Model):
    """A circuit breaker in front of one tier."""

    failures: int = Field(
        3, ge=1, description="Consecutive failures (errors or timeouts) that open the breaker."
    )
    reset_s: float = Field(
        5.0,
        gt=0,
        description=(
            "Seconds an open breaker skips the tier before letting one probe request "
            "through (half-open); the probe's success closes it, its failure reopens it."
        ),
    )


class TierCommon(Model):
    """Keys every tier has."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Tier name in stats and logs (default: the type). Must be unique.",
    )
    timeout_s: float = Field(
        2.0, gt=0, description="Deadline of one request on this tier (asyncio.timeout)."
    )
    models: list[str] | None = Field(
        None, description="Names of the models this tier answers; none: every model."
    )
    authoritative: bool | list[str] = Field(
        True,
        description=(
            "Whether answers from this tier may be written back into caches: true, false, "
            "or the names of the models it is authoritative for."
        ),
    )
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    capacity: int = Field(
        4,
        ge=1,
        description=(
            "Requests the tier serves at once without queueing (cost model: expected "
            "latency grows with requests in flight beyond this)."
        ),
    )
    expected_latency_ms: float | None = Field(
        None,
        gt=0,
        description=(
            "Cost model prior before the tier's latency has been measured; none: "
            "unmeasured tiers are tried once to measure them."
        ),
    )

    def tier_name(self) -> str:
        """The configured name, or the type."""
        return self.name or str(getattr(self, "type", "tier"))

    def is_authoritative(self, model: str) -> bool:
        """Whether this tier's answers for ``model`` may be cached."""
        if isinstance(self.authoritative, bool):
            return self.authoritative
        return model in self.authoritative


class LocalTierConfig(TierCommon):
    """Run models in-process with onnxruntime, in worker threads."""

    type: Literal["local"] = "local"
    timeout_s: float = Field(30.0, gt=0, description="Deadline of one local inference.")
    max_concurrency: int = Field(
        2, ge=1, description="Inferences running at once (onnxruntime releases the GIL)."
    )
    warmup: bool = Field(True, description="Run each model once at start.")
    max_batch: int = Field(
        8,
        ge=1,
        description=(
            "Misses of one model waiting together are run as one batch of up to this many "
            "(models whose ONNX input has a free batch dimension; others run one by one)."
        ),
    )
    queue_size: int = Field(
        256, ge=1, description="Requests waiting for a free runner; beyond, the tier refuses."
    )
    intra_op_threads: int | None = Field(
        None,
        ge=0,
        description="onnxruntime threads per run for every model (none: each model's own).",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        "all", description="onnxruntime graph optimisation level."
    )
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description=(
            "onnxruntime execution providers in order of preference; unavailable ones are "
            "skipped with a warning (CPUExecutionProvider is always available)."
        ),
    )
    quantize: list[str] = Field(
        default_factory=list,
        description=(
            "Models to run as an int8 variant made by onnxruntime's dynamic quantisation "
            "(written once into data_dir). Measure first: see README, Tiers."
        ),
    )


class EdgeTierConfig(TierCommon):
    """Edge workers (``streamedge worker``) over MQTT request/response."""

    type: Literal["edge"] = "edge"
    host: EnvStr | None = Field(
        None, description="Broker of the workers; none: the gateway's own broker."
    )
    port: int | None = Field(
        None, ge=0, le=65535, description="Broker port; none: the gateway's broker port."
    )
    username: EnvStr | None = Field(None, description="User name, if the broker needs one.")
    password: SecretStr | None = Field(
        None, description="Password; write '${EDGE_PASSWORD}' to take it from the environment."
    )
    topic_prefix: str | None = Field(
        None, description="Prefix of the workers' topics; none: the gateway's topic prefix."
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto",
        description=(
            "MQTT version; 5 carries Response Topic and Correlation Data as properties, "
            "3.1.1 (amqtt) inside the msgpack request."
        ),
    )
    encoding: Literal["auto", "jpeg", "raw"] = Field(
        "auto",
        description=(
            "How frames travel: auto sends the device's JPEG/PNG bytes when it sent "
            "some (10-20x smaller), raw BGR bytes otherwise; jpeg re-encodes raw frames."
        ),
    )
    jpeg_quality: int = Field(
        90, ge=10, le=100, description="Quality when a frame must be encoded as JPEG."
    )
    qos: Literal[0, 1] = Field(0, description="QoS of requests and replies.")
    require_workers: bool = Field(
        True,
        description=(
            "Fail at once (and fall back) when no worker announces the model online, "
            "instead of waiting for the timeout."
        ),
    )

    @field_validator("password", mode="before")
    @classmethod
    def _password_env(cls, value: object, info: ValidationInfo) -> object:
        return env_substituted(value, info)


class CloudModelConfig(Model):
    """How one model is asked of an OIP v2 server."""

    name: str = Field(description="The model's name in this gateway's 'models'.")
    remote_name: str | None = Field(None, description="Its name on the server (default: name).")
    remote_version: str | None = Field(
        None, description="Version path segment on the server; none: the server's default."
    )
    payload: Literal["frame", "tensor"] = Field(
        "frame",
        description=(
            "frame: send the frame (UINT8 [h, w, 3] or its JPEG as BYTES) or the window and "
            "get an 'answer' back (streamedge worker); tensor: send the model's own "
            "preprocessed input tensor and read class scores (Triton, MLServer, KServe "
            "serving the same ONNX or scikit-learn model)."
        ),
    )
    input_name: str | None = Field(
        None, description="tensor: the input tensor's name (default: the ONNX model's)."
    )
    input_shape: list[int] | None = Field(
        None,
        description="tensor: reshape the input to this (e.g. [1, 32] for a scikit-learn model).",
    )
    output_name: str | None = Field(
        None, description="tensor: the output holding class scores (default: the first)."
    )
    softmax: bool = Field(False, description="tensor: apply softmax to the scores.")


class CloudTierConfig(TierCommon):
    """Any KServe Open Inference Protocol v2 server over HTTP (httpx)."""

    type: Literal["cloud"] = "cloud"
    url: EnvStr = Field(description="Base URL of the server, e.g. http://cloud:8080.")
    binary: Literal["auto", "always", "never"] = Field(
        "auto",
        description=(
            "Binary tensor extension: auto uses it when the server lists "
            "'binary_tensor_data' in GET /v2 (Triton, streamedge worker; not MLServer)."
        ),
    )
    token: SecretStr | None = Field(
        None, description="Bearer token; write '${CLOUD_TOKEN}' to take it from the environment."
    )
    frames_as_jpeg: bool = Field(
        True,
        description=(
            "payload frame: send the device's JPEG bytes (BYTES input 'frame_encoded') when "
            "there are some, else raw pixels (UINT8 input 'frame')."
        ),
    )
    remote_models: list[CloudModelConfig] = Field(
        default_factory=list,
        description="Per-model settings; models not listed use the defaults (payload frame).",
    )
    max_connections: int = Field(8, ge=1, description="HTTP connections kept to the server.")

    @field_validator("token", mode="before")
    @classmethod
    def _token_env(cls, value: object, info: ValidationInfo) -> object:
        return env_substituted(value, info)


TierConfig = Annotated[
    LocalTierConfig | EdgeTierConfig | CloudTierConfig, Field(discriminator="type")
]


def _default_tiers() -> list[TierConfig]:
    return [LocalTierConfig()]


class EscalationRule(Model):
    """Send a hard example on to a stronger tier (Sedna's hard-example mining)."""

    model: str = Field("*", description="Model name this rule applies to ('*': every model).")
    tiers: list[str] = Field(
        default_factory=lambda: ["local"],
        description="Tiers whose answers are checked.",
    )
    to: list[str] | None = Field(
        None,
        description=(
            "Stronger tiers tried, in order, for a hard example; none: every tier configured "
            "after the one that answered."
        ),
    )
    min_confidence: float | None = Field(
        None,
        ge=0,
        le=1,
        description="An answer whose confidence is below this is escalated.",
    )
    max_entropy: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "An answer whose class scores have a normalised entropy (0: sure, 1: uniform) "
            "above this is escalated."
        ),
    )

    def applies(self, model: str, tier: str) -> bool:
        """Whether answers of ``model`` from ``tier`` are checked by this rule."""
        return self.model in ("*", model) and tier in self.tiers


class StoreForwardConfig(Model):
    """A bounded on-disk queue for non-urgent requests while every tier is down."""

    enabled: bool = Field(False, description="Keep non-urgent requests when no tier answers.")
    streams: list[str] = Field(
        default_factory=list,
        description="Globs on 'device/stream' whose requests are non-urgent (may wait).",
    )
    path: RelPath | None = Field(
        None, description="Directory of the queue; none: <gateway.data_dir>/deferred."
    )
    max_entries: int = Field(1000, ge=1, description="Requests kept at most.")
    max_bytes: int = Field(64 * 2**20, ge=2**16, description="Bytes kept at most on disk.")
    max_age_s: float = Field(
        24 * 3600.0, gt=0, description="Older requests are dropped with an error answer."
    )
    retry_s: float = Field(
        2.0, gt=0, description="Seconds between attempts to answer the oldest stored request."
    )


class InferenceConfig(Model):
    """Where misses go: tiers, and the router in front of them."""

    tiers: list[TierConfig] = Field(
        default_factory=_default_tiers,
        description="Tiers for each miss, weakest first (fallback and escalation go down).",
    )
    order: Literal["fixed", "latency"] = Field(
        "fixed",
        description=(
            "fixed: try tiers in the configured order; latency: try first the tier with the "
            "lowest expected latency (measured latency x queueing given requests in flight)."
        ),
    )
    stale_s: float = Field(
        30.0,
        gt=0,
        description="latency order: a tier unused this long is measured again (tried once).",
    )
    escalation: list[EscalationRule] = Field(
        default_factory=list, description="Hard examples go on to a stronger tier."
    )
    store_and_forward: StoreForwardConfig = Field(default_factory=StoreForwardConfig)
    error_answers: bool = Field(
        True,
        description=(
            "Publish an answer with tier 'error' and a reason when no tier answers an "
            "urgent request (it is still counted as dropped, 'inference_failed')."
        ),
    )

    @model_validator(mode="after")
    def _unique_tier_names(self) -> InferenceConfig:
        names = [t.tier_name() for t in self.tiers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"duplicate tier names: {', '.join(dupes)} (give each tier a 'name')"
            raise ValueError(msg)
        for rule in self.escalation:
            unknown = [t for t in [*rule.tiers, *(rule.to or [])] if t not in names]
            if unknown:
                msg = f"escalation.tiers: unknown tier(s) {', '.join(unknown)}"
                raise ValueError(msg)
            if rule.min_confidence is None and rule.max_entropy is None:
                msg = "an escalation rule needs min_confidence or max_entropy"
                raise ValueError(msg)
        return self
