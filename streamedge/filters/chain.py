"""A stream's filters in order, failing open, with per-filter counts."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from streamedge.filters.config import FilterConfig
from streamedge.protocols import Filter
from streamedge.records import InferenceResult, Item, StreamKey, Verdict

logger = logging.getLogger(__name__)


def build_filter(cfg: FilterConfig, *, max_streams: int) -> Filter:
    """Construct the filter a config entry names (imports only what it needs)."""
    if cfg.type == "deadband":
        from streamedge.filters.sensor import DeadbandFilter

        return DeadbandFilter(cfg, max_streams=max_streams)
    if cfg.type == "duplicate":
        from streamedge.filters.sensor import DuplicateFilter

        return DuplicateFilter(cfg, max_streams=max_streams)
    if cfg.type == "rate":
        from streamedge.filters.sensor import RateFilter

        return RateFilter(cfg, max_streams=max_streams)
    from streamedge.filters.frame_diff import FrameDiffFilter

    return FrameDiffFilter(cfg, max_streams=max_streams)


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
