"""Savings against accuracy on vtest.avi: ``streamedge bench eval`` with the benchmark configs.

Replays the video through each configuration in ``benchmarks/configs/`` (a
frame-difference filter, NoScope's difference detector against an earlier
frame and against the empty scene, a thumbnail cache, a filter plus a
cache) and through infer-every-frame, in one process, and scores every
answer against MTCNN's own answer to the same frame. Prints the table,
writes the figures (``--json``) and the agreement-vs-savings plot
(``--plot``, default next to the JSON file).

Usage::

    python benchmarks/eval.py --video data/videos/vtest.avi --json bench-results/eval.json

Any other ``streamedge bench eval`` option is passed on (``--frames``,
``--cameras``, ``--config``, ``--reference-dir`` ...).
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamedge.cli import main as cli_main


def main(argv: list[str]) -> int:
    """Run ``streamedge bench eval`` with a plot beside the JSON file."""
    args = list(argv)
    if "--json" in args and "--plot" not in args:
        target = Path(args[args.index("--json") + 1])
        args += ["--plot", str(target.with_suffix(".png"))]
    return cli_main(["bench", "eval", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
