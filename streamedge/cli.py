"""The ``streamedge`` command line.

::

    streamedge run CONFIG             run a gateway daemon
    streamedge check-config FILE...   validate config files (exit 2 on errors)
    streamedge check-config --explain print every configuration key
    streamedge demo [--duration S]    embedded broker + gateway + sample devices
    streamedge stats [--json]         ask a running gateway for its statistics
    streamedge --version

Each subcommand lives in its own module under :mod:`streamedge.commands`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from streamedge import __version__
from streamedge.commands import COMMANDS
from streamedge.commands.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from streamedge.errors import ConfigError


def _parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="streamedge",
        description="Edge gateway that skips, reuses and forwards DNN inference.",
    )
    parser.add_argument("--version", action="version", version=f"streamedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules: dict[str, ModuleType] = {}
    for name in COMMANDS:
        module = importlib.import_module(name)
        modules[module.NAME] = module
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return parser, modules


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser, modules = _parser()
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    try:
        status: int = modules[args.command].run(args)
    except ConfigError as exc:
        print(f"streamedge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `streamedge stats | head`
        sys.stderr.close()
        return EXIT_OK
    return status
