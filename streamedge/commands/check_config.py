"""``streamedge check-config FILE...``: validate config files; ``--explain`` lists keys."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamedge.commands.common import EXIT_CONFIG, EXIT_OK
from streamedge.errors import ConfigError

NAME = "check-config"
HELP = "validate config files (exit 2 on errors)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``check-config``."""
    parser.add_argument("files", type=Path, nargs="*", help="config files to validate")
    parser.add_argument("--explain", action="store_true", help="print every config key")
    parser.add_argument(
        "--print", action="store_true", dest="print_effective", help="print the effective config"
    )


def run(args: argparse.Namespace) -> int:
    """Validate each file; print one line per problem naming the file and key."""
    from streamedge.config import explain, load_config

    if args.explain:
        print(explain(), end="")
        return EXIT_OK
    if not args.files:
        print("streamedge check-config: give one or more files, or --explain", file=sys.stderr)
        return EXIT_CONFIG
    status = EXIT_OK
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(f"{exc}", file=sys.stderr)
            status = EXIT_CONFIG
            continue
        print(f"{path}: ok")
        if args.print_effective:
            print(cfg.model_dump_json(indent=2))
    return status
