"""A circuit breaker per tier: closed → open after N failures → half-open probe → closed."""

from __future__ import annotations

import logging
from enum import StrEnum

from streamedge.inference.config import BreakerConfig
from streamedge.records import Clock

logger = logging.getLogger(__name__)


class BreakerState(StrEnum):
    """Where a breaker is."""

    CLOSED = "closed"  # requests flow
    OPEN = "open"  # requests skip the tier until reset_s has passed
    HALF_OPEN = "half_open"  # one probe request is in flight


class CircuitBreaker:
    """Counts consecutive failures of one tier and decides whether to try it.

    Not thread-safe: used from the event loop only.
    """

    def __init__(self, name: str, cfg: BreakerConfig, clock: Clock) -> None:
        self.name = name
        self._cfg = cfg
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.opens = 0
        self._probing = False

    def allow(self) -> bool:
        """Whether a request may go to the tier now (an open breaker lets one probe through)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self.opened_at < self._cfg.reset_s:
                return False
            self.state = BreakerState.HALF_OPEN
            logger.info("tier %s: circuit half-open, probing", self.name)
        if self._probing:
            return False
        self._probing = True
        return True

    def ready(self) -> bool:
        """Whether :meth:`allow` would let a request through now (no side effect)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return self._clock() - self.opened_at >= self._cfg.reset_s
        return not self._probing

    def success(self) -> None:
        """The tier answered."""
        if self.state is not BreakerState.CLOSED:
            logger.info("tier %s: circuit closed (probe answered)", self.name)
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._probing = False

    def failure(self) -> None:
        """The tier failed or timed out."""
        self.failures += 1
        self._probing = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.failures >= self._cfg.failures
        ):
            if self.state is BreakerState.CLOSED:
                self.opens += 1
                logger.warning(
                    "tier %s: circuit open after %d failures; retrying in %.1f s",
                    self.name,
                    self.failures,
                    self._cfg.reset_s,
                )
            self.state = BreakerState.OPEN
            self.opened_at = self._clock()

    def release(self) -> None:
        """A request let through ended without a verdict (cancelled by its caller)."""
        self._probing = False
