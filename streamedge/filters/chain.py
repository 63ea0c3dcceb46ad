"""A stream's filters in order, failing open, with per-filter counts."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence

from streamedge.filters.config import FilterConfig
from streamedge.protocols import Filter
from streamedge.records import InferenceResult, Item, StreamKey, Verdict

logger = logging.getLogger(__name__)


_BUILTINS = {
    "deadband": "streamedge.filters.sensor:DeadbandFilter",
    "duplicate": "streamedge.filters.sensor:DuplicateFilter",
    "rate": "streamedge.filters.sensor:RateFilter",
    "frame_diff": "streamedge.filters.frame_diff:FrameDiffFilter",
    "noscope": "streamedge.filters.noscope:NoScopeFilter",
    "reducto": "streamedge.filters.reducto:ReductoFilter",
    "ffsva": "streamedge.filters.ffsva:FfsvaFilter",
}


def build_filter(cfg: FilterConfig, *, max_streams: int) -> Filter:
    """Construct the filter a config entry names, importing only its module."""
    module_name, _, attr = _BUILTINS[cfg.type].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    flt: Filter = cls(cfg, max_streams=max_streams)
    return flt


class FilterChain:
    """Runs filters in order; the first DROP wins. A raising filter lets the input pass."""

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = list(filters)

    def first_drop(self, stream: StreamKey, item: Item, now: float) -> tuple[str | None, list[str]]:
        """Return (name of the dropping filter or None, names of filters that raised)."""
        failed: list[str] = []
        for flt in self.filters:
            try:
                verdict = flt.check(stream, item, now)
            except Exception:  # fail open: a filter bug must not lose input
                logger.exception("filter %s failed on %s; input passes", flt.name, stream)
                failed.append(flt.name)
                continue
            if verdict is Verdict.DROP:
                return flt.name, failed
        return None, failed

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> list[str]:
        """Feed an answer back to every filter; return names of filters that raised."""
        failed: list[str] = []
        for flt in self.filters:
            try:
                flt.observe(stream, item, result)
            except Exception:
                logger.exception("filter %s failed to observe %s", flt.name, stream)
                failed.append(flt.name)
        return failed
