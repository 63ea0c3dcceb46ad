"""A real replay: the committed vtest excerpt through the gateway's pipeline and real MTCNN.

Kept to a handful of frames (MTCNN takes 0.1-0.3 s per frame here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamedge.bench.evaluate import evaluate_async
from streamedge.bench.metrics import pooled_accuracy
from streamedge.bench.reference import ReferenceStore
from streamedge.bench.replay import every_frame_config, frame_payload, replay
from streamedge.bench.workloads import Derivation, StreamSpec
from streamedge.config import StreamedgeConfig, parse_config
from streamedge.datasets import find_video
from streamedge.errors import ConfigError

FRAMES = 4


def config(filters: list[dict[str, Any]], cache: bool = False) -> StreamedgeConfig:
    app: dict[str, Any] = {"name": "faces", "model": "mtcnn"}
    caches: list[dict[str, Any]] = []
    if cache:
        app["cache"] = "frames"
        caches = [
            {
                "name": "frames",
                "embedder": {"type": "downscale", "size": 16},
                # Any frame of this fixed camera is within 0.5 of any other: all hits.
                "policy": {"type": "threshold", "max_distance": 0.5},
            }
        ]
    return parse_config(
        {
            "models": [{"type": "mtcnn"}],
            "caches": caches,
            "streams": [
                {"match": "*/camera", "kind": "frame", "filters": filters, "apps": [app]},
            ],
        }
    )


@pytest.fixture
def spec() -> StreamSpec:
    return StreamSpec(
        video=find_video("vtest", excerpt_only=True), device="lobby1", max_frames=FRAMES
    )


async def test_configurations_replay_through_the_real_pipeline(
    tmp_path: Path, spec: StreamSpec
) -> None:
    # frame_diff with a threshold no change reaches drops every frame after the first;
    # the cache with a generous distance answers every frame after the first.
    configs = [
        ("frame_diff", config([{"type": "frame_diff", "threshold": 65025, "max_age_s": 1e6}])),
        ("cache", config([], cache=True)),
    ]
    result = await evaluate_async(configs, [spec], store=ReferenceStore(tmp_path))
    refs = result.references[0].answers
    assert len(refs) == FRAMES
    assert result.model == "mtcnn@1"

    every = result.every_frame
    assert every.replay.levels() == {"local": FRAMES}
    assert every.accuracy.agreement == 1.0  # same pixels, same deterministic model
    assert [r.answer for r in every.replay.records] == refs
    assert every.infer_s > 0
    assert all(r.stages_ms.get("infer", 0) > 0 for r in every.replay.records)

    diff, cached = result.configs
    assert diff.replay.levels() == {"local": 1, "filter": FRAMES - 1}
    assert cached.replay.levels() == {"local": 1, "cache": FRAMES - 1}
    for scored in (diff, cached):
        answers = [r.answer for r in scored.replay.records]
        assert answers == [refs[0]] * FRAMES  # the first answer, repeated or reused
        expected = pooled_accuracy([(refs, answers)])
        assert scored.accuracy == expected
        assert scored.inferences == 1
        assert scored.inference_saved == pytest.approx(1 - 1 / FRAMES)
        assert scored.infer_s < every.infer_s
        assert scored.throughput_ratio is not None
        assert scored.throughput_ratio > 1
        assert scored.uniform is not None
        assert scored.uniform.accuracy.agreement >= scored.accuracy.agreement
    assert {r.tier for r in diff.replay.records[1:]} == {"filter"}
    assert {r.reason for r in diff.replay.records[1:]} == {"frame_diff"}
    assert all(r.distance is not None for r in cached.replay.records[1:])

    doc = result.to_json(frames=True)
    assert doc["reference"]["frames"] == FRAMES
    assert [c["name"] for c in doc["configs"]] == ["frame_diff", "cache"]
    assert len(doc["configs"][0]["records"]) == FRAMES
    assert doc["baselines"]["oracle"]["accuracy"]["agreement"] == 1.0


async def test_derived_cameras_are_replayed_interleaved(tmp_path: Path) -> None:
    video = find_video("vtest", excerpt_only=True)
    streams = [
        StreamSpec(video=video, device="cam-a", max_frames=2),
        StreamSpec(video=video, device="cam-b", max_frames=2, derivation=Derivation(shift=(4, 2))),
    ]
    cfg = config([], cache=True)
    result = await replay(cfg, streams)
    assert [(r.stream, r.index) for r in result.records] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    # cam-b's first frame is answered from cam-a's entry: cross-device reuse.
    assert [r.level for r in result.records] == ["local", "cache", "cache", "cache"]
    assert len(result.answers(1)) == 2


async def test_streams_no_rule_matches_are_a_config_error(spec: StreamSpec) -> None:
    other = StreamSpec(video=spec.video, device="x", stream="audio", max_frames=1)
    with pytest.raises(ConfigError, match="no stream rule"):
        await replay(config([]), [other])
    with pytest.raises(ConfigError, match="no app 'nope'"):
        await replay(config([]), [spec], app="nope")


def test_every_frame_baseline_drops_filters_and_caches(spec: StreamSpec) -> None:
    cfg = config([{"type": "frame_diff"}], cache=True)
    base = every_frame_config(cfg, [spec])
    assert base.caches == []
    assert len(base.streams) == 1
    rule = base.streams[0]
    assert rule.filters == []
    assert [(a.name, a.model, a.cache) for a in rule.apps] == [("faces", "mtcnn", None)]
    assert base.models == cfg.models


def test_frame_payload_is_a_raw_envelope() -> None:
    import msgpack

    doc = msgpack.unpackb(frame_payload(b"\x01\x02\x03", (1, 1, 3), 0.5))
    assert doc == {
        "ts": 0.5,
        "content_type": "image/x-raw",
        "data": b"\x01\x02\x03",
        "shape": [1, 1, 3],
    }
