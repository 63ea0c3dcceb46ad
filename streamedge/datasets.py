"""Real recorded video for tests, demos and benchmarks.

Two videos from OpenCV's samples are used: ``vtest.avi`` (pedestrians, fixed
camera, 768x576, 10 fps, 795 frames) and ``Megamind.avi`` (film trailer
excerpt, 720x528, 24 fps, 270 frames). ``scripts/fetch_data.sh`` puts the full
files in ``data/videos/`` (from Debian's ``opencv-doc`` package); short
re-encoded excerpts are committed in ``samples/video/`` so tests need no
download. :func:`find_video` prefers the full video and falls back to the
excerpt. OpenCV is imported on use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from streamedge.records import Image

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The source checkout this module lives in (meaningless in an installed wheel)."""
FULL_DIR = Path("data") / "videos"
"""Where ``scripts/fetch_data.sh`` puts the full videos, under a root."""
EXCERPT_DIR = Path("samples") / "video"
"""Where the committed excerpts live, under a root."""
EXCERPT_SUFFIX = "_excerpt"
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv")


def _matches(path: Path, wanted: str, *, excerpt: bool) -> bool:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        return False
    stem = path.stem.lower()
    if excerpt:
        if not stem.endswith(EXCERPT_SUFFIX):
            return False
        stem = stem.removesuffix(EXCERPT_SUFFIX)
    return stem == wanted


def _find_in(folder: Path, wanted: str, *, excerpt: bool) -> Path | None:
    if not folder.is_dir():
        return None
    hits = sorted(p for p in folder.iterdir() if _matches(p, wanted, excerpt=excerpt))
    return hits[0] if hits else None


def find_video(
    name: str, *, excerpt_only: bool = False, roots: Sequence[Path] | None = None
) -> Path:
    """Locate a sample video by name.

    Args:
        name: ``"vtest"`` or ``"megamind"`` (case and extension are ignored).
        excerpt_only: return the committed excerpt even when the full video
            was fetched (tests use it so their results do not depend on it).
        roots: folders to look under, in order; default: the current
            directory, then the source checkout holding this module.

    Returns:
        The full video in ``<root>/data/videos/`` if present (unless
        ``excerpt_only``), else ``<root>/samples/video/<name>_excerpt.*``.

    Raises:
        FileNotFoundError: neither is there; the message says how to fetch it.
    """
    wanted = Path(name).stem.lower()
    if wanted.endswith(EXCERPT_SUFFIX):
        wanted = wanted.removesuffix(EXCERPT_SUFFIX)
        excerpt_only = True
    search = list(roots) if roots is not None else [Path.cwd(), REPO_ROOT]
    if not excerpt_only:
        for root in search:
            found = _find_in(root / FULL_DIR, wanted, excerpt=False)
            if found is not None:
                return found
    for root in search:
        found = _find_in(root / EXCERPT_DIR, wanted, excerpt=True)
        if found is not None:
            logger.debug("using the excerpt %s", found)
            return found
    places = ", ".join(str(r / d) for r in search for d in (FULL_DIR, EXCERPT_DIR))
    msg = (
        f"no video named {name!r} in {places}; run scripts/fetch_data.sh for the "
        "full vtest/Megamind videos"
    )
    raise FileNotFoundError(msg)


def iter_frames(
    path: Path | str, *, step: int = 1, max_frames: int | None = None
) -> Iterator[Image]:
    """Yield the frames of a video file as BGR uint8 ``(H, W, 3)`` arrays.

    Args:
        path: the video file.
        step: yield every ``step``-th frame, starting with the first.
        max_frames: stop after yielding this many (``None``: all).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ``step`` < 1, ``max_frames`` < 0, or OpenCV cannot open the file.
    """
    import cv2  # heavy: imported on use, not with the module

    if step < 1:
        msg = f"step must be at least 1, got {step}"
        raise ValueError(msg)
    if max_frames is not None and max_frames < 0:
        msg = f"max_frames must not be negative, got {max_frames}"
        raise ValueError(msg)
    path = Path(path)
    if not path.is_file():
        msg = f"video not found: {path}"
        raise FileNotFoundError(msg)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            msg = f"OpenCV cannot open {path} as a video"
            raise ValueError(msg)
        yielded = 0
        while max_frames is None or yielded < max_frames:
            ok, frame = cap.read()
            if not ok:
                return
            yield np.asarray(frame, dtype=np.uint8)
            yielded += 1
            # grab() skips a frame without converting it into an array.
            for _ in range(step - 1):
                if not cap.grab():
                    return
    finally:
        cap.release()
