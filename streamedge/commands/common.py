"""Pieces shared by the subcommands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

logger = logging.getLogger("streamedge.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def install_stop(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT and SIGTERM (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def log_fatal(group: BaseExceptionGroup[Any]) -> None:
    """Log every leaf of an exception group that ended the daemon."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            log_fatal(exc)
        else:
            logger.error("fatal: %s", exc, exc_info=exc)
