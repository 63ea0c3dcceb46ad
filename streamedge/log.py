"""Logging set-up (called only by the CLI) and the warning throttle.

Library code logs with ``logging.getLogger(__name__)`` and %-style arguments.
Repeated warnings about bad input would flood a Pi's journal, so
:class:`LogThrottle` lets the first record of each message template through
and then one summary per interval: "... (N similar suppressed)".
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamedge.config import LoggingConfig

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


class LogThrottle(logging.Filter):
    """Pass each (logger, template) at WARNING and above once per ``interval_s``."""

    def __init__(
        self, interval_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether the record is emitted (and annotate suppressed counts)."""
        if record.levelno < logging.WARNING or self.interval_s <= 0:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        count = self._suppressed.pop(key, 0)
        if count:
            record.msg = f"{record.msg} (%d similar suppressed)"
            record.args = (
                (*(record.args or ()), count) if isinstance(record.args, tuple) else record.args
            )
        if len(self._last) > 10_000:  # bounded: forget the oldest templates
            for old in sorted(self._last, key=self._last.__getitem__)[:5000]:
                self._last.pop(old, None)
        return True


def setup_logging(cfg: LoggingConfig | None, *, verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root handler once: level, per-logger levels, throttle."""
    level = _LEVELS[cfg.level] if cfg is not None else logging.INFO
    if verbose:
        level = logging.DEBUG
    if quiet:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(LogThrottle(cfg.throttle_s if cfg is not None else 30.0))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if cfg is not None:
        for name, lvl in cfg.loggers.items():
            logging.getLogger(name).setLevel(_LEVELS[lvl])
    # Third-party chatter (amqtt logs every connection at INFO) stays at WARNING.
    for noisy in ("amqtt", "transitions", "aiocoap", "asyncio"):
        if cfg is None or noisy not in cfg.loggers:
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
