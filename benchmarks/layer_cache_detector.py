"""The layer cache on the whole MTCNN detector: ``layer_cache.py --detector``.

A separate entry point so that ``make bench`` keeps both results side by side
(``bench-results/layer_cache.json`` for PNet alone,
``bench-results/layer_cache_detector.json`` for the whole detector with
final-answer agreement). Every option of ``layer_cache.py`` applies.

Example::

    python benchmarks/layer_cache_detector.py --video data/videos/vtest.avi --jitter 4 \\
        --psnr 20 30 --recheck-margin none 0 --json /tmp/layer_cache_detector.json
"""

from __future__ import annotations

import sys

from benchmarks.layer_cache import main

if __name__ == "__main__":
    raise SystemExit(main(["--detector", *sys.argv[1:]]))
