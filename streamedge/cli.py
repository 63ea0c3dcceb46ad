"""The ``streamedge`` command (stub; filled in by the foundation work)."""

from __future__ import annotations

import argparse
import sys

from streamedge import __version__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = argparse.ArgumentParser(prog="streamedge")
    parser.add_argument("--version", action="version", version=f"streamedge {__version__}")
    parser.parse_args(argv if argv is not None else sys.argv[1:])
    return 0
