from __future__ import annotations

from typing import get_args

import numpy as np
import pytest

from streamedge.filters.base import StreamStates
from streamedge.filters.chain import FilterChain, build_filter
from streamedge.filters.config import (
    DeadbandFilterConfig,
    DuplicateFilterConfig,
    FilterConfig,
    FrameDiffFilterConfig,
    RateFilterConfig,
)
from streamedge.filters.frame_diff import FrameDiffFilter
from streamedge.filters.sensor import DeadbandFilter, DuplicateFilter, RateFilter
from streamedge.records import Frame, InferenceResult, Item, Reading, StreamKey, Verdict

A = StreamKey("a", "s")
B = StreamKey("b", "s")


def reading(**values: float) -> Reading:
    return Reading(stream=A, ts=0.0, values=values)


def frame(value: int, size: tuple[int, int] = (60, 80)) -> Frame:
    return Frame(stream=A, ts=0.0, image=np.full((*size, 3), value, dtype=np.uint8))


def test_deadband_drops_small_changes_and_passes_big_ones() -> None:
    f = DeadbandFilter(DeadbandFilterConfig(epsilon=0.5, max_age_s=100))
    assert f.check(A, reading(t=20.0), 0) is Verdict.PASS
    assert f.check(A, reading(t=20.3), 1) is Verdict.DROP
    # Compared with the last *passed* value, so slow drift accumulates and passes.
    assert f.check(A, reading(t=20.49), 2) is Verdict.DROP
    assert f.check(A, reading(t=20.5), 3) is Verdict.PASS


def test_deadband_per_field_epsilon_max_age_and_new_fields() -> None:
    f = DeadbandFilter(DeadbandFilterConfig(epsilon={"t": 1.0}, default_epsilon=10.0, max_age_s=5))
    assert f.check(A, reading(t=0.0, h=0.0), 0) is Verdict.PASS
    assert f.check(A, reading(t=0.5, h=9.0), 1) is Verdict.DROP
    assert f.check(A, reading(t=0.5, h=10.0), 2) is Verdict.PASS
    assert f.check(A, reading(t=0.5, h=10.0), 8) is Verdict.PASS  # max_age
    assert f.check(A, reading(t=0.5, h=10.0, x=1.0), 9) is Verdict.PASS  # new field


def test_deadband_streams_are_independent() -> None:
    f = DeadbandFilter(DeadbandFilterConfig(epsilon=1.0))
    assert f.check(A, reading(t=1.0), 0) is Verdict.PASS
    assert f.check(B, reading(t=1.0), 0) is Verdict.PASS
    f.reset(A)
    assert f.check(A, reading(t=1.0), 1) is Verdict.PASS
    assert f.check(B, reading(t=1.0), 1) is Verdict.DROP


def test_duplicate_filter_readings_and_frames() -> None:
    f = DuplicateFilter(DuplicateFilterConfig(max_age_s=10))
    assert f.check(A, reading(t=1.0), 0) is Verdict.PASS
    assert f.check(A, reading(t=1.0), 1) is Verdict.DROP
    assert f.check(A, reading(t=1.5), 2) is Verdict.PASS
    assert f.check(A, reading(t=1.5), 13) is Verdict.PASS  # refreshed by age
    assert f.check(B, frame(3), 0) is Verdict.PASS
    assert f.check(B, frame(3), 1) is Verdict.DROP
    assert f.check(B, frame(4), 2) is Verdict.PASS


def test_rate_filter() -> None:
    f = RateFilter(RateFilterConfig(min_interval_s=1.0))
    verdicts = [f.check(A, reading(t=0), t) for t in (0.0, 0.5, 0.99, 1.0, 1.5, 2.1)]
    assert verdicts == [
        Verdict.PASS,
        Verdict.DROP,
        Verdict.DROP,
        Verdict.PASS,
        Verdict.DROP,
        Verdict.PASS,
    ]


def test_frame_diff_compares_with_last_passed_frame() -> None:
    f = FrameDiffFilter(FrameDiffFilterConfig(size=16, threshold=25.0, max_age_s=100))
    assert f.check(A, frame(100), 0) is Verdict.PASS
    assert f.check(A, frame(103), 1) is Verdict.DROP  # MSE 9
    assert f.check(A, frame(104), 2) is Verdict.DROP  # MSE 16 vs the passed frame
    assert f.check(A, frame(106), 3) is Verdict.PASS  # MSE 36
    assert f.check(A, frame(106), 200) is Verdict.PASS  # stale reference


def test_frame_diff_local_change_passes() -> None:
    f = FrameDiffFilter(FrameDiffFilterConfig(size=16, threshold=25.0))
    base = frame(50, (64, 64))
    assert f.check(A, base, 0) is Verdict.PASS
    changed = base.image.copy()
    changed[0:32, 0:32] = 200
    assert f.check(A, Frame(stream=A, ts=0, image=changed), 1) is Verdict.PASS


def test_frame_diff_ignores_readings() -> None:
    f = FrameDiffFilter(FrameDiffFilterConfig())
    assert f.check(A, reading(t=1), 0) is Verdict.PASS


class Exploding:
    name = "exploding"

    def check(self, stream: StreamKey, item: Item, now: float) -> Verdict:
        raise RuntimeError("bug")

    def observe(self, stream: StreamKey, item: Item, result: InferenceResult) -> None:
        raise RuntimeError("bug")

    def reset(self, stream: StreamKey) -> None:
        return None


def test_chain_fails_open_and_reports_which_filter_dropped() -> None:
    dedup = DuplicateFilter(DuplicateFilterConfig())
    chain = FilterChain([Exploding(), dedup])
    assert chain.first_drop(A, reading(t=1), 0) == (None, ["exploding"])
    assert chain.first_drop(A, reading(t=1), 1) == ("duplicate", ["exploding"])


def test_build_filter_covers_every_configurable_type() -> None:
    union = get_args(get_args(FilterConfig)[0])
    assert len(union) >= 7
    for cls in union:
        cfg = cls()
        flt = build_filter(cfg, max_streams=10)
        assert flt.name == cfg.type
        assert type(flt).__name__.lower().startswith(cfg.type.replace("_", "")[:5])


def test_stream_states_are_bounded() -> None:
    states: StreamStates[int] = StreamStates(max_streams=3)
    for i in range(5):
        states.set(StreamKey(str(i), "s"), i)
    assert len(states) == 3
    assert states.get(StreamKey("0", "s")) is None
    assert states.get(StreamKey("4", "s")) == 4


@pytest.mark.parametrize("n", [1, 100])
def test_deadband_state_bounded_by_max_streams(n: int) -> None:
    f = DeadbandFilter(DeadbandFilterConfig(epsilon=1.0), max_streams=n)
    for i in range(n + 10):
        f.check(StreamKey(str(i), "s"), reading(t=0), 0)
    assert len(f._states) == n
