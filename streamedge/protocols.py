"""The interfaces every plugin implements.

They are :class:`typing.Protocol` classes, so a plugin need not import a base
class. Each docstring says whether a method is async (I/O) or sync (CPU work
the caller may run in a thread).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

if TYPE_CHECKING:
    import asyncio

    from streamedge.records import (
        CacheHit,
        CacheQuery,
        Ids,
        Inbound,
        InferenceRequest,
        InferenceResult,
        Item,
        ModelInput,
        ModelRef,
        Neighbour,
        OutboundMessage,
        Prediction,
        RawMessage,
        StreamKey,
        Tier,
        Vector,
        Verdict,
    )

Deliver = Callable[["Inbound"], Awaitable[None]]
"""How a transport hands a received message to the gateway. It may block
(backpressure) when the stream's queue is full and its policy says wait."""


@runtime_checkable
class Transport(Protocol):
    """Ingress and egress over one protocol (MQTT, CoAP, in-memory).

    Lifecycle: construct (no I/O) → ``run(deliver, ready)`` as a task in the
    gateway's TaskGroup, which connects, reconnects and delivers until
    cancelled → ``close()`` flushes answers and announces ``stopped``; the
    gateway then cancels ``run``, which disconnects cleanly.
    """

    name: str

    async def run(self, deliver: Deliver, ready: asyncio.Event) -> None:
        """Connect, set ``ready``, deliver messages until cancelled (async)."""
        ...

    async def publish(self, message: OutboundMessage) -> None:
        """Queue a message for publication (async; bounded, never unbounded)."""
        ...

    async def close(self, *, graceful: bool) -> None:
        """Flush, announce ``stopped`` when graceful, and disconnect (async)."""
        ...


class Decoder(Protocol):
    """Turns a raw payload into a :class:`Reading` or :class:`Frame`."""

    def decode(self, raw: RawMessage) -> Item:
        """Decode (sync; raises :class:`streamedge.errors.DecodeError`)."""
        ...


class Filter(Protocol):
    """Decides whether an input is worth processing. Cheap, sync, per-stream state.

    ``observe`` is called with the answer produced for an input that passed,
    so difference detectors can keep "the last frame sent" or a reference
    image of empty frames. A filter that raises lets the input pass.
    """

    name: str

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        """Return PASS or DROP for one input (sync)."""
        ...

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        """Learn from the answer given to an input that passed (sync)."""
        ...

    def reset(self, stream: StreamKey) -> None:
        """Forget a stream's state (sync)."""
        ...


class Embedder(Protocol):
    """Maps a model input to a float32 vector; its version is part of the namespace."""

    name: str
    version: str
    dim: int

    def embed(self, item: ModelInput) -> Vector:
        """Return a ``(dim,)`` float32 vector (sync; may run in a thread)."""
        ...


class Index(Protocol):
    """A faiss-shaped vector index. Blocking; one writer, readers may overlap.

    Distances are squared L2 unless the implementation documents otherwise;
    ``search`` returns ``(D, I)`` of shape ``(n, k)``, ascending by distance,
    with id ``-1`` and distance ``inf`` for empty slots.
    """

    dim: int

    def add(self, ids: Ids, vectors: Vector) -> None:
        """Insert vectors with caller-chosen ids (sync)."""
        ...

    def search(self, vectors: Vector, k: int) -> tuple[Vector, Ids]:
        """Return the ``k`` nearest ids per query (sync)."""
        ...

    def remove(self, ids: Ids) -> int:
        """Remove ids; return how many were present (sync)."""
        ...

    def __len__(self) -> int: ...


class HitPolicy(Protocol):
    """Decides whether the nearest cached answers may be reused for a query."""

    k: int
    """How many neighbours the policy wants to see."""

    def decide(self, query: CacheQuery, neighbours: Sequence[Neighbour]) -> CacheHit | None:
        """Return the hit to reuse, or ``None`` for a miss (sync)."""
        ...


class ResultCache(Protocol):
    """What the pipeline sees of a cache namespace."""

    namespace: str

    def query_for(self, item: ModelInput, *, vector: Vector | None = None) -> CacheQuery:
        """Build the lookup key (sync; embeds unless ``vector`` is given)."""
        ...

    async def get(self, query: CacheQuery) -> CacheHit | None:
        """Look up a reusable answer (async; errors mean a miss)."""
        ...

    async def put(self, query: CacheQuery, result: InferenceResult, *, origin: str) -> None:
        """Store an answer (async)."""
        ...


class Model(Protocol):
    """A complete model pipeline that runs on this machine (pre-, inference, post-)."""

    ref: ModelRef

    def predict(self, item: ModelInput) -> Prediction:
        """Compute an answer (sync, CPU-bound; called in a worker thread)."""
        ...


class InferenceBackend(Protocol):
    """One tier that answers inference requests for one or more models.

    Lifecycle: ``async with backend:`` loads and warms up (local) or opens a
    client (remote). Deadlines come from the caller's ``asyncio.timeout``.
    """

    name: str
    tier: Tier

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def serves(self, model: ModelRef) -> bool:
        """Whether this backend can answer for ``model`` (sync)."""
        ...

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Answer one request (async; raises InferenceError)."""
        ...
