"""``streamedge run CONFIG``: run a gateway daemon until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from streamedge.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, install_stop, log_fatal
from streamedge.errors import ConfigError, StreamedgeError

NAME = "run"
HELP = "run a gateway daemon from a config file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``run``."""
    parser.add_argument("config", type=Path, help="YAML, TOML or JSON config file")


def run(args: argparse.Namespace) -> int:
    """Load the config (exit 2 if invalid) and run the gateway."""
    from streamedge.config import load_config
    from streamedge.log import setup_logging

    cfg = load_config(args.config)
    setup_logging(cfg.logging, verbose=args.verbose, quiet=args.quiet)
    return asyncio.run(_run(cfg))


async def _run(cfg: Any) -> int:
    from streamedge.pipeline.gateway import Gateway

    stop = asyncio.Event()
    install_stop(stop)
    gateway = Gateway(cfg)
    status = EXIT_OK
    try:
        await gateway.run(stop)
    except* ConfigError as group:
        for exc in group.exceptions:
            print(f"streamedge: configuration error: {exc}", file=sys.stderr)
        status = EXIT_CONFIG
    except* StreamedgeError as group:
        log_fatal(group)
        status = EXIT_FAILURE
    return status
