"""The accuracy guard end to end: Processor → real tier router → real ONNX model (tiny_presence)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from streamedge.caches.cache import build_cache, build_embedder
from streamedge.caches.config import CacheConfig
from streamedge.config import StreamConfig
from streamedge.decoders.payloads import PayloadDecoder
from streamedge.devices.scenes import SceneGenerator
from streamedge.filters.chain import FilterChain
from streamedge.inference.config import BuiltinModelConfig, InferenceConfig
from streamedge.inference.factory import EdgeDefaults, build_router
from streamedge.models.factory import build_model, model_info
from streamedge.pipeline.processor import AppRuntime, Processor, RuleRuntime
from streamedge.records import Frame, OutboundMessage, RawMessage, StreamKey
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf)


async def test_rechecks_on_a_real_model_count_and_tighten(models_dir: Path) -> None:
    mcfg = BuiltinModelConfig(name="tiny_presence")
    info = model_info(mcfg)
    model = build_model(mcfg, data_dir=models_dir)
    decoder = PayloadDecoder(max_frame_pixels=10**6)

    def label(payload: bytes) -> str:
        frame = decoder.decode(
            RawMessage(stream=StreamKey("d", "s"), payload=payload, received_at=0.0), "frame"
        )
        assert isinstance(frame, Frame)
        answer = model.predict(frame).answer
        assert isinstance(answer, dict)
        return str(answer["label"])

    # The generated camera scene the built-in model was trained on.
    frames = [png(image) for image, _ in SceneGenerator(seed=5, arrival_p=0.2).frames(200)]
    labels = [label(f) for f in frames]
    empty = frames[labels.index("empty")]
    visitors = [f for f, lab in zip(frames, labels, strict=True) if lab == "visitor"][:12]
    assert len(visitors) >= 10

    clock_t = [0.0]
    stats = Stats(gateway="t", version="0", clock=lambda: clock_t[0], wall_clock=lambda: 0.0)
    # A threshold far too loose: every visitor frame reuses the empty room's answer.
    cfg = CacheConfig.model_validate(
        {
            "name": "frames",
            "embedder": {"type": "downscale", "size": 16},
            "policy": {"type": "threshold", "max_distance": 0.5},
            "answer_key": "label",
            "accuracy": {"recheck_fraction": 1.0, "target": 0.9, "min_samples": 5, "window": 10},
        }
    )
    embedder = build_embedder(cfg, window_fields=None, window_size=None)
    cache = build_cache(cfg, model=info.ref, embedder=embedder, clock=lambda: clock_t[0])
    rule = RuleRuntime(
        index=0,
        cfg=StreamConfig(kind="frame"),
        chain=FilterChain([]),
        apps=[AppRuntime(name="presence", info=info, cache=cache)],
        window_fields=None,
        window_size=0,
    )
    sent: list[OutboundMessage] = []

    async def publish(message: OutboundMessage) -> None:
        sent.append(message)

    router = build_router(
        InferenceConfig.model_validate({"tiers": [{"type": "local"}]}),
        {info.ref: model},
        stats=stats,
        edge=EdgeDefaults(host="127.0.0.1", port=1, topic_prefix="t", client_id="t"),
        data_dir=models_dir,
    )
    async with router:
        proc = Processor(
            topics=TopicScheme("t"),
            decoder=decoder,
            infer=router.infer,
            publish=publish,
            stats=stats,
            clock=lambda: clock_t[0],
        )

        def msg(payload: bytes, i: int) -> RawMessage:
            return RawMessage(
                stream=StreamKey(f"cam{i}", "camera"), payload=payload, received_at=clock_t[0]
            )

        await proc.handle(msg(empty, 0), rule)
        start_distance = cache.hit_distance
        hits = 0
        for i, payload in enumerate(visitors, start=1):
            clock_t[0] += 0.1
            outcome = await proc.handle(msg(payload, i), rule)
            hits += outcome.tier == "cache"
            await proc.drain_rechecks(30.0)

    answers = [json.loads(m.payload) for m in sent]
    assert answers[0]["answer"]["label"] == "empty"
    ns = stats.snapshot()["accuracy"]["namespaces"][cache.namespace]
    assert hits >= 5
    assert ns["checked"] == hits  # every hit re-checked on the real model
    assert ns["agreed"] == 0  # the room was not empty
    assert cache.adjuster is not None and cache.adjuster.tightened >= 1
    assert cache.hit_distance < start_distance
    # The model ran once per miss and once per re-check.
    calls = stats.snapshot()["inference"]["local"]["calls"]
    assert calls == (len(visitors) + 1 - hits) + hits
