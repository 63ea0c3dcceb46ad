"""The processor's side of the tiers: error answers, deferred requests, authoritative write-back."""

from __future__ import annotations

import dataclasses

from streamedge.errors import AllTiersFailedError, DeferredError
from streamedge.pipeline.late import LateAnswers
from streamedge.records import InferenceRequest, InferenceResult, ReplyContext, StreamKey, Tier
from streamedge.topics import TopicScheme
from tests.unit.inference.fakes import request
from tests.unit.test_processor import FakeInfer, Sink, jpeg, make, raw


class Refusing(FakeInfer):
    def __init__(self, exc: Exception) -> None:
        super().__init__()
        self.exc = exc

    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        self.calls.append(request)
        raise self.exc


async def test_urgent_failure_publishes_an_error_answer_with_the_reason() -> None:
    infer = Refusing(AllTiersFailedError("edge: circuit open", [], reason="all_tiers_failed"))
    proc, rule, _, sink, stats, _ = make(infer=infer)
    proc._error_answers = True
    outcome = await proc.handle(raw(jpeg(100), reply_to="r/1"), rule)
    assert (outcome.kind, outcome.reason) == ("dropped", "inference_failed")
    docs = sink.docs()
    assert [m.topic for m in sink.sent] == ["p/out/d/s", "r/1"]
    assert docs[0]["tier"] == "error" and docs[0]["answer"] is None
    assert docs[0]["error"] == {"reason": "all_tiers_failed", "detail": "edge: circuit open"}
    assert stats.snapshot()["messages"]["out"] == 2


async def test_without_error_answers_nothing_is_published() -> None:
    proc, rule, _, sink, _, _ = make(infer=Refusing(AllTiersFailedError("x", [])))
    outcome = await proc.handle(raw(jpeg(100)), rule)
    assert outcome.kind == "dropped" and not sink.sent


async def test_a_deferred_request_is_its_own_outcome_and_carries_its_context() -> None:
    infer = Refusing(DeferredError("stored", entry="0001.req"))
    proc, rule, _, sink, _, _ = make(infer=infer)
    outcome = await proc.handle(raw(jpeg(100), reply_to="r/9"), rule)
    assert outcome.kind == "deferred" and not sink.sent
    sent = infer.calls[0]
    assert sent.context == ReplyContext(app="app", reply_to="r/9", correlation=None)
    assert sent.encoded is not None and sent.encoded.startswith(b"\x89PNG")


class NotAuthoritative(FakeInfer):
    async def __call__(self, request: InferenceRequest) -> InferenceResult:
        result = await super().__call__(request)
        return dataclasses.replace(result, authoritative=False)


async def test_answers_of_non_authoritative_tiers_are_not_cached() -> None:
    proc, rule, infer, _, _, _ = make(infer=NotAuthoritative())
    first = await proc.handle(raw(jpeg(100), "cam1"), rule)
    second = await proc.handle(raw(jpeg(100), "cam2"), rule)
    assert (first.tier, second.tier) == ("local", "local")
    assert len(infer.calls) == 2


async def test_late_answers_go_to_the_stream_and_the_reply_topic() -> None:
    from streamedge.stats.metrics import Stats

    sink = Sink()
    stats = Stats(gateway="t", version="0", clock=lambda: 0.0, wall_clock=lambda: 0.0)
    late = LateAnswers(topics=TopicScheme("p"), publish=sink, stats=stats, wall_clock=lambda: 15.0)
    req = dataclasses.replace(
        request(StreamKey("cam", "slow")), context=ReplyContext(app="faces", reply_to="r/2")
    )
    result = InferenceResult(
        model=req.model,
        answer={"count": 1},
        tier=Tier.EDGE,
        backend="edge",
        latency_s=0.1,
    )
    await late(req, result, None)
    await late(req, None, "expired")
    docs = sink.docs()
    assert [m.topic for m in sink.sent] == ["p/out/cam/slow", "r/2"] * 2
    assert docs[0]["tier"] == "edge" and docs[0]["deferred"] is True and docs[0]["app"] == "faces"
    assert docs[0]["waited_s"] == 10.0
    assert docs[2]["tier"] == "error" and docs[2]["error"] == {
        "reason": "expired",
        "detail": "stored request given up",
    }


def test_stats_count_escalations_and_deferred_messages() -> None:
    from streamedge.stats.metrics import Stats

    stats = Stats(gateway="t", version="0", clock=lambda: 0.0, wall_clock=lambda: 0.0)
    for _ in range(3):
        stats.received("cam/slow", 10)
    stats.deferred_to_store("cam/slow")
    stats.answered("cam/slow", "edge", 0.01)
    stats.inference("local", 0.01, ok=True)
    stats.escalation("local")
    snap = stats.snapshot()
    assert snap["messages"]["deferred"] == 1
    assert snap["messages"]["pending"] == 1  # in 3 = answered 1 + deferred 1 + pending 1
    assert snap["inference"]["local"]["escalations"] == 1
