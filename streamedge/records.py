"""Hot-path records: frozen, slotted, keyword-only dataclasses.

pydantic validates configuration only; messages flowing through the pipeline
are plain dataclasses because validating every frame on a Pi costs too much.
Images are ``uint8`` arrays of shape ``(H, W, 3)`` in OpenCV's BGR order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Vector: TypeAlias = npt.NDArray[np.float32]
"""Float32 vectors, shape ``(d,)`` or ``(n, d)``."""
Ids: TypeAlias = npt.NDArray[np.int64]
"""Int64 ids, ``-1`` meaning "no entry" (faiss convention)."""
Image: TypeAlias = npt.NDArray[np.uint8]
"""An ``(H, W, 3)`` BGR image."""
Clock: TypeAlias = Callable[[], float]
"""Monotonic seconds. Tests inject a fake clock."""
JSON: TypeAlias = dict[str, Any]
"""A JSON-serialisable object (answers, stats snapshots)."""
OutcomeHook: TypeAlias = Callable[[str, str | None], None]
"""Called with an outcome kind (answered, filtered, dropped, deferred) and its reason."""


class Tier(StrEnum):
    """Where an answer came from."""

    FILTER = "filter"  # the input was filtered; the last answer is repeated
    CACHE = "cache"  # an earlier answer was reused
    LOCAL = "local"  # the model ran on this machine
    EDGE = "edge"  # an edge worker answered
    CLOUD = "cloud"  # a cloud (OIP v2) server answered
    FORWARD = "forward"  # no model: the decoded reading is forwarded as is


class Verdict(StrEnum):
    """A filter's decision for one input."""

    PASS = "pass"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class StreamKey:
    """Identifies one stream: ``{device}/{stream}`` in the topic tree."""

    device: str
    stream: str

    def __str__(self) -> str:
        return f"{self.device}/{self.stream}"


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model and its version; ``name@version`` is part of every cache namespace."""

    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Parse ``name@version`` (version defaults to ``0``)."""
        name, _, version = text.partition("@")
        return cls(name, version or "0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Inbound:
    """Any message a transport received, before the gateway routes it by topic."""

    topic: str
    payload: bytes
    received_at: float
    """Monotonic time of arrival."""
    content_type: str | None = None
    qos: int = 0
    reply_to: str | None = None
    """MQTT 5 Response Topic (CoAP: the request's own response)."""
    correlation: bytes | None = None
    transport: str = "mqtt"
    on_outcome: OutcomeHook | None = None
    """Told how the message ended (kind, reason); CoAP answers its request from it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RawMessage:
    """One message as a transport delivered it, before decoding."""

    stream: StreamKey
    payload: bytes
    received_at: float
    """Monotonic time of arrival (the clock the gateway runs on)."""
    content_type: str | None = None
    qos: int = 0
    reply_to: str | None = None
    """Where an on-demand answer goes (MQTT 5 Response Topic or ``reply_to``)."""
    correlation: bytes | None = None
    transport: str = "mqtt"
    request: bool = False
    """An on-demand request (``<prefix>/req/...``): filters are skipped and the
    answer goes to ``reply_to`` only."""
    on_outcome: OutcomeHook | None = None
    """Told how the message ended (kind, reason); CoAP answers its request from it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reading:
    """A decoded sensor reading: numeric fields plus any other fields."""

    stream: StreamKey
    ts: float
    """Device timestamp (epoch seconds) or the gateway's wall clock at arrival."""
    values: Mapping[str, float]
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """A decoded video frame."""

    stream: StreamKey
    ts: float
    image: Image
    encoded_bytes: int = 0
    """Size of the payload it was decoded from (bytes not sent upstream on reuse)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The last ``n`` readings of a stream as a ``(n, fields)`` float32 matrix."""

    stream: StreamKey
    ts: float
    fields: tuple[str, ...]
    values: npt.NDArray[np.float32]


ModelInput: TypeAlias = Frame | Window
Item: TypeAlias = Reading | Frame


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """What a model computes: a JSON answer and, where it has one, a confidence."""

    answer: JSON
    confidence: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyContext:
    """What the caller needs to publish an answer that comes later (store-and-forward).

    Tiers never read it; the router persists it with a deferred request.
    """

    app: str
    reply_to: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceRequest:
    """Ask one model to answer one input."""

    model: ModelRef
    input: ModelInput
    urgent: bool = True
    encoded: bytes | None = None
    """The JPEG/PNG bytes a frame was decoded from, when the device sent them: remote
    tiers send these (10-20x smaller than raw pixels) instead of the decoded image."""
    context: ReplyContext | None = None
    deferrable: bool = True
    """False for requests nobody waits on an answer for later (accuracy re-checks):
    when every tier fails they fail, instead of going to store-and-forward."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceResult:
    """A model's answer, with where and how long it took."""

    model: ModelRef
    answer: JSON
    tier: Tier
    backend: str
    latency_s: float
    confidence: float | None = None
    authoritative: bool = True
    """Whether the tier that answered may write the answer back into caches."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheQuery:
    """A lookup key: the namespace, an exact digest and the embedding."""

    namespace: str
    key: bytes
    vector: Vector
    owner: str | None = None
    """In a private namespace, the device asking: only its own answers are reused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    """One cached answer. Usage counters live in the store, not here."""

    id: int
    namespace: str
    vector: Vector
    answer: JSON
    model: ModelRef
    created_at: float
    cost_s: float
    """Inference seconds the answer cost; what a hit saves."""
    origin: str
    """Who produced it: ``device/stream`` locally, a gateway name when shared."""
    nbytes: int
    confidence: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Neighbour:
    """A candidate returned by an index search."""

    entry: CacheEntry
    distance: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheHit:
    """A reused answer."""

    entry: CacheEntry
    distance: float
    level: str = "application"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundMessage:
    """A message for a transport to publish."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    correlation: bytes | None = None
    content_type: str | None = None
