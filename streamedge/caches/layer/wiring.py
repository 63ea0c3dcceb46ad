"""Glue between the layer cache and the models and stats of a running gateway.

A model built with a ``layer_cache`` config key owns one
:class:`~streamedge.caches.layer.LayerCachedRunner` shared by every stream,
keyed by the frame's :class:`~streamedge.records.StreamKey` (and, for MTCNN,
the pyramid level). Different streams run through it concurrently in the local
tier's worker threads. One stream's frames must not: the cached maps of a key
are updated in place. The pipeline already serialises them (a stream always
maps to the same shard, whose one worker awaits each message before the next),
but a local inference that times out leaves its thread running while the next
frame of the same stream starts, so the models also hold a per-stream lock
(:class:`StripedLocks`) around each cached run.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Hashable, Iterable, Mapping

    from streamedge.caches.layer.runner import LayerCachedRunner
    from streamedge.caches.layer_config import LayerCacheConfig
    from streamedge.records import JSON


class StripedLocks:
    """A fixed set of locks; a key always gets the same one.

    Bounded whatever the number of streams: two streams that share a stripe
    merely wait for each other, which costs a little concurrency, never
    correctness.
    """

    def __init__(self, stripes: int = 64) -> None:
        if stripes < 1:
            msg = f"need at least one stripe, got {stripes}"
            raise ValueError(msg)
        self._locks = [threading.Lock() for _ in range(stripes)]

    def __len__(self) -> int:
        return len(self._locks)

    def lock(self, key: Hashable) -> threading.Lock:
        """The lock of ``key``."""
        return self._locks[hash(key) % len(self._locks)]


def with_input_range(cfg: LayerCacheConfig, input_range: float) -> LayerCacheConfig:
    """``cfg`` with the model's own input range, unless the user set one."""
    if "input_range" in cfg.model_fields_set:
        return cfg
    return cfg.model_copy(update={"input_range": float(input_range)})


def layer_runners(models: Iterable[Any]) -> dict[str, LayerCachedRunner]:
    """The layer-cache runners of the models that have one, by ``name@version``."""
    out: dict[str, LayerCachedRunner] = {}
    for model in models:
        runner = getattr(model, "layer_cache", None)
        if runner is not None:
            out[str(model.ref)] = runner
    return out


def layer_cache_report(runners: Mapping[str, LayerCachedRunner]) -> JSON:
    """The stats snapshot's ``cache.layer`` entry.

    ``hits`` are model runs served from cached maps plus crops (one run per
    frame, or per pyramid level for MTCNN), ``misses`` are runs of the whole
    prefix (first frame of a stream, refresh, too much change) or of the
    unsplit model (``fallbacks``). ``reused_fraction`` is the hit fraction by
    area: the share of prefix outputs not recomputed. ``saved_s`` is the
    prefix time saved (estimated from the measured full-run time).
    """
    per_model: dict[str, JSON] = {}
    totals = {
        "hits": 0,
        "misses": 0,
        "refreshes": 0,
        "fallbacks": 0,
        "positions": 0,
        "reused_positions": 0,
        "rechecked_positions": 0,
        "cached_bytes": 0,
        "streams": 0,
        "evictions": 0,
    }
    saved = 0.0
    for name, runner in sorted(runners.items()):
        st = runner.stats()
        per_model[name] = {
            "active": runner.active,
            "reason": runner.reason,
            **st.as_dict(),
        }
        totals["hits"] += st.partial_runs
        totals["misses"] += st.full_runs + st.fallbacks
        totals["refreshes"] += st.refreshes
        totals["fallbacks"] += st.fallbacks
        totals["positions"] += st.positions
        totals["reused_positions"] += st.reused_positions
        totals["rechecked_positions"] += st.rechecked_positions
        totals["cached_bytes"] += st.cached_bytes
        totals["streams"] += st.streams
        totals["evictions"] += st.evictions
        saved += st.prefix_seconds_saved
    positions = totals.pop("positions")
    reused = totals.pop("reused_positions")
    runs = totals["hits"] + totals["misses"]
    return {
        **totals,
        "hit_ratio": round(totals["hits"] / runs, 4) if runs else None,
        "reused_fraction": round(reused / positions, 4) if positions else None,
        "saved_s": round(saved, 3),
        "models": per_model,
    }
