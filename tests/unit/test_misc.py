from __future__ import annotations

import logging

from streamedge.log import LogThrottle
from streamedge.records import ModelRef, StreamKey
from streamedge.topics import TopicScheme, valid_segment


def test_topics_build_and_parse() -> None:
    t = TopicScheme("se")
    key = StreamKey("dev", "cam")
    assert t.input(key) == "se/in/dev/cam"
    assert t.output(key) == "se/out/dev/cam"
    assert t.parse_input("se/in/dev/cam") == key
    assert t.parse_input("se/in/dev") is None
    assert t.parse_input("se/in/dev/cam/extra") is None
    assert t.parse_input("other/in/dev/cam") is None
    assert t.parse_input("se/in//cam") is None
    assert t.inputs == "se/in/+/+"
    assert not valid_segment("a/b")
    assert not valid_segment("+")


def test_model_ref_round_trip() -> None:
    assert str(ModelRef.parse("m@3")) == "m@3"
    assert ModelRef.parse("m") == ModelRef("m", "0")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def record(msg: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("x", level, __file__, 1, msg, args, None)


def test_log_throttle_summarises_repeats() -> None:
    clock = Clock()
    throttle = LogThrottle(30, clock)
    assert throttle.filter(record("bad payload from %s", "a"))
    assert not throttle.filter(record("bad payload from %s", "b"))
    assert not throttle.filter(record("bad payload from %s", "c"))
    assert throttle.filter(record("other %s", "x"))
    assert throttle.filter(record("info %s", "x", level=logging.INFO))
    clock.t = 31
    rec = record("bad payload from %s", "d")
    assert throttle.filter(rec)
    assert rec.getMessage() == "bad payload from d (2 similar suppressed)"
