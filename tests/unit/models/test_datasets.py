"""Locating the sample videos and reading their frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamedge.datasets import find_video, iter_frames

REPO = Path(__file__).resolve().parents[3]


def test_excerpts_are_found_by_any_spelling() -> None:
    for name in ("vtest", "VTEST.avi", "vtest_excerpt"):
        path = find_video(name, excerpt_only=True)
        assert path == REPO / "samples" / "video" / "vtest_excerpt.avi"
    assert find_video("megamind", excerpt_only=True).name == "Megamind_excerpt.avi"


def test_full_video_is_preferred_when_fetched(tmp_path: Path) -> None:
    fetched, checkout = tmp_path / "fetched", tmp_path / "checkout"
    (fetched / "data" / "videos").mkdir(parents=True)
    (checkout / "samples" / "video").mkdir(parents=True)
    full = fetched / "data" / "videos" / "vtest.avi"
    excerpt = checkout / "samples" / "video" / "vtest_excerpt.avi"
    full.write_bytes(b"x")
    excerpt.write_bytes(b"x")
    assert find_video("vtest", roots=[fetched, checkout]) == full
    assert find_video("vtest", roots=[checkout, fetched]) == full
    assert find_video("vtest", roots=[fetched, checkout], excerpt_only=True) == excerpt
    # Without the fetched file, the excerpt is the fallback.
    assert find_video("vtest", roots=[checkout]) == excerpt


def test_unknown_video_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"fetch_data\.sh"):
        find_video("vtest", roots=[tmp_path])
    with pytest.raises(FileNotFoundError, match="nosuch"):
        find_video("nosuch")


def test_excerpts_decode_to_their_documented_frame_counts() -> None:
    vtest = list(iter_frames(find_video("vtest", excerpt_only=True)))
    assert len(vtest) == 60
    assert vtest[0].shape == (576, 768, 3)
    assert vtest[0].dtype == np.uint8
    megamind = find_video("megamind", excerpt_only=True)
    assert sum(1 for _ in iter_frames(megamind)) == 72


def test_step_and_max_frames() -> None:
    path = find_video("vtest", excerpt_only=True)
    every = list(iter_frames(path))
    picked = list(iter_frames(path, step=7, max_frames=4))
    assert len(picked) == 4
    for k, image in enumerate(picked):
        np.testing.assert_array_equal(image, every[7 * k])
    # step beyond the end yields what there is
    assert len(list(iter_frames(path, step=25))) == 3
    assert list(iter_frames(path, max_frames=0)) == []


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_frames(tmp_path / "none.avi"))
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot open"):
        list(iter_frames(junk))
    with pytest.raises(ValueError, match="step"):
        list(iter_frames(junk, step=0))
