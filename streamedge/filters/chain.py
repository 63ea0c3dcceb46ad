"""A stream's filters in order, failing open, with per-filter counts.

A filter that raises lets the input pass (fail open: a filter bug must not
lose input) and the failure is counted with a reason: a frame the video
filters cannot read (:class:`~streamedge.filters._frames.UnsupportedFrameError`:
wrong layout, dtype, non-finite pixels) by its ``reason`` (``frame_channels``,
``frame_dtype`` ...), any other exception as ``exception``. Logs are one
line per failure template, which the gateway's log throttle thins out.
"""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamedge.errors import DecodeError
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


MAX_REASONS = 64
"""Distinct (filter, reason) pairs counted; later ones are counted as ``other``."""


@dataclass(frozen=True, slots=True)
class ChainVerdict:
    """What the chain decided for one input."""

    dropped_by: str | None
    """The filter that dropped the input (None: it passes)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """``(filter name, reason)`` of each filter that raised; the input passed it."""

    @property
    def failed(self) -> list[str]:
        """Names of the filters that raised."""
        return [name for name, _ in self.failures]


def failure_reason(exc: Exception) -> str:
    """The counted reason of a filter failure: a decode reason, else ``exception``."""
    if isinstance(exc, DecodeError) and getattr(exc, "reason", None):
        return str(exc.reason)
    return "exception"


class FilterChain:
    """Runs filters in order; the first DROP wins. A raising filter lets the input pass.

    Attributes:
        failures: Failures by ``(filter name, reason)`` since the chain was built.
    """

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters = list(filters)
        self.failures: Counter[tuple[str, str]] = Counter()

    def _count(self, name: str, reason: str) -> tuple[str, str]:
        key = (name, reason)
        if key not in self.failures and len(self.failures) >= MAX_REASONS:
            key = (name, "other")
        self.failures[key] += 1
        return key

    def check(self, stream: StreamKey, item: Item, now: float) -> ChainVerdict:
        """Run the filters in order until one drops; count and pass over failures."""
        failures: list[tuple[str, str]] = []
        for flt in self.filters:
            try:
                verdict = flt.check(stream, item, now)
            except DecodeError as exc:  # includes UnsupportedFrameError: bad input, not a bug
                reason = failure_reason(exc)
                logger.warning(
                    "filter %s cannot read input from %s (%s): %s; it passes",
                    flt.name,
                    stream,
                    reason,
                    exc,
                )
                failures.append(self._count(flt.name, reason))
                continue
            except Exception:  # fail open: a filter bug must not lose input
                logger.exception("filter %s failed on %s; input passes", flt.name, stream)
                failures.append(self._count(flt.name, "exception"))
                continue
            if verdict is Verdict.DROP:
                return ChainVerdict(flt.name, failures)
        return ChainVerdict(None, failures)

    def first_drop(self, stream: StreamKey, item: Item, now: float) -> tuple[str | None, list[str]]:
        """Return (name of the dropping filter or None, names of filters that raised)."""
        verdict = self.check(stream, item, now)
        return verdict.dropped_by, verdict.failed

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
