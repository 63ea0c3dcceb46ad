"""Filter chains: frames of unexpected layout are converted or rejected with a counted
reason, and a filter that raises lets the frame pass (fail open), counted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamedge.filters._frames import UnsupportedFrameError
from streamedge.filters.chain import MAX_REASONS, FilterChain, build_filter
from streamedge.filters.config import (
    FfsvaFilterConfig,
    FrameDiffFilterConfig,
    NoScopeFilterConfig,
    ReductoFilterConfig,
)
from streamedge.records import Frame, InferenceResult, Item, ModelRef, StreamKey, Tier, Verdict
from streamedge.stats.metrics import Stats

S = StreamKey("cam", "front")
VIDEO_FILTERS = [
    FrameDiffFilterConfig(threshold=5.0),
    NoScopeFilterConfig(threshold=5.0, t_diff=1),
    ReductoFilterConfig(thresholds={"pixel": 0.01}),
    FfsvaFilterConfig(sdd_threshold=5.0),
]


def frame(image: object, ts: float = 0.0) -> Frame:
    return Frame(stream=S, ts=ts, image=image)  # type: ignore[arg-type]


def one_chain(cfg: object) -> FilterChain:
    return FilterChain([build_filter(cfg, max_streams=8)])  # type: ignore[arg-type]


BAD = {
    "frame_channels": np.zeros((3, 48, 64), np.uint8),  # channels first
    "frame_ndim": np.zeros((2, 48, 64, 3), np.uint8),
    "frame_dtype": np.zeros((48, 64, 3), np.complex64),
    "frame_empty": np.zeros((0, 64, 3), np.uint8),
    "frame_type": [[1, 2], [3, 4]],
    "frame_nonfinite": np.full((48, 64, 3), np.nan, np.float32),
}


@pytest.mark.parametrize("cfg", VIDEO_FILTERS, ids=lambda c: c.type)
@pytest.mark.parametrize("reason", sorted(BAD))
def test_an_unreadable_frame_passes_with_its_reason_counted(cfg: object, reason: str) -> None:
    chain = one_chain(cfg)
    verdict = chain.check(S, frame(BAD[reason]), 0.0)
    assert verdict.dropped_by is None
    name = chain.filters[0].name
    assert verdict.failures == [(name, reason)]
    assert chain.failures == {(name, reason): 1}


@pytest.mark.parametrize("cfg", VIDEO_FILTERS, ids=lambda c: c.type)
@pytest.mark.parametrize(
    "image",
    [
        np.full((48, 64), 90, np.uint8),  # grey
        np.full((48, 64, 1), 90, np.uint8),
        np.full((48, 64, 4), 90, np.uint8),  # BGRA
        np.full((48, 64, 3), 90 * 257, np.uint16),
        np.full((48, 64, 3), 90 / 255, np.float32),  # 0-1 floats
    ],
    ids=["grey", "grey1", "bgra", "uint16", "float01"],
)
def test_other_layouts_are_converted_and_judged(cfg: object, image: np.ndarray) -> None:
    chain = one_chain(cfg)
    flt = chain.filters[0]
    empty = InferenceResult(
        model=ModelRef("m", "1"),
        answer={"boxes": [], "count": 0},
        tier=Tier.LOCAL,
        backend="t",
        latency_s=0.0,
    )
    verdicts = []
    for i in range(4):
        item = frame(image.copy(), ts=float(i))
        verdict = chain.check(S, item, float(i))
        verdicts.append(verdict.dropped_by)
        if verdict.dropped_by is None:
            flt.observe(S, item, empty)
    assert not chain.failures
    # The first frame passes; an identical, empty scene is then dropped.
    assert verdicts[0] is None
    assert flt.name in verdicts[1:]


class Raising:
    name = "raising"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        raise self.exc

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        raise self.exc

    def reset(self, stream: StreamKey) -> None:
        return None


class Dropping:
    name = "dropping"

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        return Verdict.DROP

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        return None

    def reset(self, stream: StreamKey) -> None:
        return None


def test_a_raising_filter_fails_open_and_the_next_filter_still_decides() -> None:
    chain = FilterChain([Raising(RuntimeError("bug")), Dropping()])
    verdict = chain.check(S, frame(np.zeros((8, 8, 3), np.uint8)), 0.0)
    assert verdict.dropped_by == "dropping"
    assert verdict.failures == [("raising", "exception")]
    assert chain.first_drop(S, frame(np.zeros((8, 8, 3), np.uint8)), 1.0) == (
        "dropping",
        ["raising"],
    )
    assert chain.failures == {("raising", "exception"): 2}


def test_unsupported_frames_log_a_warning_without_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    chain = FilterChain([Raising(UnsupportedFrameError("odd", reason="frame_dtype"))])
    with caplog.at_level("WARNING"):
        chain.check(S, frame(np.zeros((8, 8, 3), np.uint8)), 0.0)
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.exc_info is None
    assert "frame_dtype" in record.getMessage()


def test_distinct_reasons_are_bounded() -> None:
    chain = FilterChain([Raising(RuntimeError("x"))])
    for i in range(MAX_REASONS + 5):
        chain._count("f", f"r{i}")  # the bound itself is under test
    assert len(chain.failures) == MAX_REASONS + 1  # the cap, plus "other"
    assert chain.failures[("f", "other")] == 5


def test_stats_count_error_reasons_in_the_snapshot() -> None:
    stats = Stats(gateway="g", version="0", clock=lambda: 0.0, wall_clock=lambda: 0.0)
    stats.filter_result("noscope", "pass")
    stats.filter_result("noscope", "error", reason="frame_channels")
    stats.filter_result("noscope", "error", reason="frame_channels")
    stats.filter_result("noscope", "error", reason="exception")
    doc = stats.snapshot()
    assert doc["filters"]["noscope"] == {
        "pass": 1,
        "drop": 0,
        "error": 3,
        "reasons": {"frame_channels": 2, "exception": 1},
    }
    json.dumps(doc)
