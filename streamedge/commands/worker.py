"""``streamedge worker CONFIG``: serve models to gateways (MQTT edge tier, OIP v2 HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from streamedge.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, install_stop, log_fatal
from streamedge.errors import ConfigError, StreamedgeError

NAME = "worker"
HELP = "serve models to gateways over MQTT (edge tier) and OIP v2 HTTP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``worker``."""
    parser.add_argument("config", type=Path, help="worker config file (YAML, TOML or JSON)")
    parser.add_argument("--name", help="worker name (default: <hostname>-<pid>)")
    parser.add_argument("--http-port", type=int, help="override http.port (0: any free port)")
    parser.add_argument(
        "--check", action="store_true", help="validate the config and exit (2 if invalid)"
    )


def run(args: argparse.Namespace) -> int:
    """Load the config (exit 2 if invalid) and serve until SIGINT/SIGTERM."""
    from streamedge.log import setup_logging
    from streamedge.worker.config import load_worker_config

    cfg = load_worker_config(args.config)
    if args.check:
        print(f"{args.config}: OK ({len(cfg.models)} model(s))")
        return EXIT_OK
    if args.name:
        cfg = cfg.model_copy(update={"worker": cfg.worker.model_copy(update={"name": args.name})})
    if args.http_port is not None:
        cfg = cfg.model_copy(update={"http": cfg.http.model_copy(update={"port": args.http_port})})
    setup_logging(cfg.logging, verbose=args.verbose, quiet=args.quiet)
    return asyncio.run(_run(cfg))


async def _run(cfg: Any) -> int:
    from streamedge.worker.service import Worker

    stop = asyncio.Event()
    install_stop(stop)
    worker = Worker(cfg)
    status = EXIT_OK
    try:
        await worker.run(stop)
    except* ConfigError as group:
        for exc in group.exceptions:
            print(f"streamedge: configuration error: {exc}", file=sys.stderr)
        status = EXIT_CONFIG
    except* StreamedgeError as group:
        log_fatal(group)
        status = EXIT_FAILURE
    return status
