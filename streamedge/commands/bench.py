"""``streamedge bench SUBCOMMAND``: measure filters and caches against the full model.

A group of sub-subcommands, each a module with the same four names as a
top-level command (``NAME``, ``HELP``, ``add_arguments(parser)``,
``run(args) -> int``); add one by listing its module in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from streamedge.commands.common import EXIT_CONFIG

NAME = "bench"
HELP = "evaluate filters and caches against the full model (bench eval ...)"

SUBCOMMANDS = ("streamedge.commands.bench_eval",)
"""Modules of the ``bench`` subcommands."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One subparser per module in :data:`SUBCOMMANDS`."""
    sub = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(name)
        child = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__)
        module.add_arguments(child)
        child.set_defaults(bench_run=module.run)
    parser.set_defaults(bench_usage=parser.format_help)


def run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand (usage and exit 2 without one)."""
    chosen: Callable[[argparse.Namespace], int] | None = getattr(args, "bench_run", None)
    if chosen is None:
        print(args.bench_usage(), file=sys.stderr)
        return EXIT_CONFIG
    return chosen(args)
