"""``streamedge demo``: embedded broker + gateway + sample devices, with live stats."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from streamedge.commands.common import EXIT_FAILURE, EXIT_OK, log_fatal
from streamedge.errors import StreamedgeError

NAME = "demo"
HELP = "embedded broker + gateway + sample devices, printing live stats"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``demo``."""
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: until ^C)")
    parser.add_argument("--port", type=int, default=1883, help="embedded broker port")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between stats lines")
    parser.add_argument("--data-dir", type=Path, default=None, help="where models are kept")


def run(args: argparse.Namespace) -> int:
    """Run the demo until the duration ends or Ctrl-C."""
    from streamedge.log import setup_logging

    setup_logging(None, verbose=args.verbose, quiet=not args.verbose)
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from streamedge.demo import run_demo

    status = EXIT_OK
    try:
        await run_demo(
            duration=args.duration,
            port=args.port,
            every=args.every,
            out=sys.stdout,
            data_dir=args.data_dir,
        )
    except* StreamedgeError as group:
        log_fatal(group)
        status = EXIT_FAILURE
    return status
