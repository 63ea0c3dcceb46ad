"""Per-stream cache state, the byte-bounded LRU that holds it, and statistics."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from collections.abc import Hashable

    from streamedge.records import JSON

F32 = npt.NDArray[np.float32]


@dataclass(slots=True, eq=False)
class StreamState:
    """What one stream (or one pyramid scale of it) has cached.

    Attributes:
        shape: the model input shape the maps were computed for.
        reference: ``(C, H, W)`` pixels the cached maps reflect, block by block.
        maps: cut tensor name → cached feature map ``(1, C, h, w)``.
        since_refresh: frames served since the last full prefix run.
        backoff: frames to run in full after the next time crops cost more than
            a full run (doubles each consecutive time, 0 after a partial frame).
        skip: frames left to run in full without change detection.
    """

    shape: tuple[int, ...]
    reference: F32
    maps: dict[str, npt.NDArray[np.generic]]
    since_refresh: int = 0
    backoff: int = 0
    skip: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the reference frame and the maps."""
        return int(self.reference.nbytes + sum(m.nbytes for m in self.maps.values()))


class LayerCache:
    """States keyed by stream (any hashable, e.g. ``(stream, scale)``), LRU by bytes.

    Inserting a state evicts least recently used ones until the total fits in
    ``max_bytes``; a state larger than the whole budget is not kept. Thread-safe
    for different keys; one key must not be used by two threads at once.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._states: OrderedDict[Hashable, StreamState] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0
        self.rejected = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._states

    @property
    def nbytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    def get(self, key: Hashable) -> StreamState | None:
        """The state of ``key`` (marked most recently used), or ``None``."""
        with self._lock:
            state = self._states.get(key)
            if state is not None:
                self._states.move_to_end(key)
            return state

    def put(self, key: Hashable, state: StreamState) -> bool:
        """Store or re-account ``state``; return whether it was kept."""
        size = state.nbytes
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:
                self.rejected += 1
                return False
            while self._states and self._bytes + size > self.max_bytes:
                old, _ = self._states.popitem(last=False)
                self._bytes -= self._sizes.pop(old)
                self.evictions += 1
            self._states[key] = state
            self._sizes[key] = size
            self._bytes += size
            return True

    def pop(self, key: Hashable) -> StreamState | None:
        """Remove and return the state of ``key``."""
        with self._lock:
            state = self._states.get(key)
            self._drop(key)
            return state

    def clear(self) -> None:
        """Forget every state."""
        with self._lock:
            self._states.clear()
            self._sizes.clear()
            self._bytes = 0

    def _drop(self, key: Hashable) -> None:
        if key in self._states:
            del self._states[key]
            self._bytes -= self._sizes.pop(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerCacheStats:
    """A snapshot of the layer cache's counters.

    Attributes:
        frames: calls to ``run``.
        full_runs: frames whose prefix ran on the whole image (any reason).
        first_runs: full runs because the key had no usable state.
        refreshes: periodic full refreshes (``refresh_every``).
        cost_full_runs: full runs because the crops would have cost more, and
            the frames that follow such a run without change detection (1, 2,
            4... up to 8 of them while it keeps happening).
        partial_runs: frames served from the cache plus crops (maybe none).
        unchanged_frames: partial frames with nothing to recompute.
        fallbacks: frames run on the unsplit model (cache disabled, model not
            splittable, unsupported size or batch, or an error).
        errors: partial runs that failed and were redone in full.
        crops: prefix runs on crops.
        copied_positions: feature-map positions copied from a displaced
            position (diamond search).
        rechecked_positions: positions recomputed only because their cached
            value was near a decision threshold (``recheck_margin``).
        positions: cut-tensor positions of every frame that used the split
            model. reused_positions: those not recomputed.
        reused_fraction: ``reused_positions / positions``, the layer cache's
            hit fraction (share of prefix output area reused).
        prefix_seconds_saved: estimated prefix time saved (full-run time minus
            the time partial frames actually took, change detection included).
        streams: states held. cached_bytes: their bytes. evictions: LRU evictions.
    """

    frames: int = 0
    full_runs: int = 0
    first_runs: int = 0
    refreshes: int = 0
    cost_full_runs: int = 0
    partial_runs: int = 0
    unchanged_frames: int = 0
    fallbacks: int = 0
    errors: int = 0
    crops: int = 0
    copied_positions: int = 0
    rechecked_positions: int = 0
    positions: int = 0
    reused_positions: int = 0
    reused_fraction: float = 0.0
    prefix_seconds_saved: float = 0.0
    streams: int = 0
    cached_bytes: int = 0
    evictions: int = 0

    def as_dict(self) -> JSON:
        """The snapshot as a JSON-serialisable dict."""
        return asdict(self)


@dataclass(slots=True)
class Counters:
    """Mutable counters behind :class:`LayerCacheStats` (guarded by ``lock``)."""

    frames: int = 0
    full_runs: int = 0
    first_runs: int = 0
    refreshes: int = 0
    cost_full_runs: int = 0
    partial_runs: int = 0
    unchanged_frames: int = 0
    fallbacks: int = 0
    errors: int = 0
    crops: int = 0
    copied_positions: int = 0
    rechecked_positions: int = 0
    positions: int = 0
    reused_positions: int = 0
    prefix_seconds_saved: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self, cache: LayerCache) -> LayerCacheStats:
        """Freeze the counters together with the cache's occupancy."""
        with self.lock:
            return LayerCacheStats(
                frames=self.frames,
                full_runs=self.full_runs,
                first_runs=self.first_runs,
                refreshes=self.refreshes,
                cost_full_runs=self.cost_full_runs,
                partial_runs=self.partial_runs,
                unchanged_frames=self.unchanged_frames,
                fallbacks=self.fallbacks,
                errors=self.errors,
                crops=self.crops,
                copied_positions=self.copied_positions,
                rechecked_positions=self.rechecked_positions,
                positions=self.positions,
                reused_positions=self.reused_positions,
                reused_fraction=self.reused_positions / self.positions if self.positions else 0.0,
                prefix_seconds_saved=self.prefix_seconds_saved,
                streams=len(cache),
                cached_bytes=cache.nbytes,
                evictions=cache.evictions,
            )
