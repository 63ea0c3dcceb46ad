"""Logic of the CoAP server that needs no network: codes, paths, rate limit, caps, config."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiocoap
import pytest
from aiocoap.numbers.codes import Code

from streamedge.config import parse_config
from streamedge.errors import ConfigError
from streamedge.gateways.coap import CoapServer, coap_path, content, later_block, response_code
from streamedge.gateways.config import CoapConfig
from streamedge.records import Inbound, OutboundMessage, StreamKey
from streamedge.stats.metrics import Stats
from streamedge.topics import TopicScheme


@pytest.mark.parametrize(
    ("kind", "reason", "code"),
    [
        ("answered", None, Code.CHANGED),
        ("filtered", "frame_diff", Code.CHANGED),
        ("deferred", "store_and_forward", Code.CHANGED),
        ("dropped", "window_incomplete", Code.CHANGED),
        ("dropped", "bad_payload", Code.BAD_REQUEST),
        ("dropped", "bad_image", Code.BAD_REQUEST),
        ("dropped", "too_large", Code.REQUEST_ENTITY_TOO_LARGE),
        ("dropped", "queue_full", Code.SERVICE_UNAVAILABLE),
        ("dropped", "queue_bytes", Code.SERVICE_UNAVAILABLE),
        ("dropped", "shutdown", Code.SERVICE_UNAVAILABLE),
        ("dropped", "error", Code.INTERNAL_SERVER_ERROR),
    ],
)
def test_outcome_maps_to_a_response_code(kind: str, reason: str | None, code: Code) -> None:
    assert response_code(kind, reason) == code


def test_coap_path_mirrors_the_topic_tree() -> None:
    assert coap_path("site/a/out/cam1/camera") == ("ps", "site", "a", "out", "cam1", "camera")


def test_coap_section_is_off_by_default_and_forbids_unknown_keys() -> None:
    cfg = parse_config({})
    assert cfg.coap.enabled is False
    assert cfg.coap.bind == "127.0.0.1"
    with pytest.raises(ConfigError, match="coap"):
        parse_config({"coap": {"enabled": True, "prot": 5683}})


class _Obs:
    """Stands in for aiocoap's ServerObservation: records triggers."""

    def __init__(self) -> None:
        self.triggers: list[Any] = []
        self.cancel: Any = None

        self.deregistered = False

    def accept(self, cancel: Any) -> None:
        self.cancel = cancel

    def deregister(self) -> None:
        self.deregistered = True

    def trigger(self, response: Any = None) -> None:
        self.triggers.append(response)


def _server(**cfg: Any) -> CoapServer:
    async def deliver(msg: Inbound) -> None:
        raise AssertionError("not used")

    return CoapServer(
        CoapConfig(enabled=True, **cfg),
        topics=TopicScheme("p"),
        stats=Stats(gateway="g", version="0", clock=time.monotonic, wall_clock=time.time),
        deliver=deliver,
        has_rule=lambda key: True,
        accepting=lambda: True,
        max_payload_bytes=1000,
        stats_interval_s=1.0,
        clock=lambda: 0.0,
    )


def _answer(server: CoapServer, device: str, body: bytes) -> None:
    server.answer(OutboundMessage(topic=f"p/out/{device}/s", payload=body))


async def test_notifications_are_rate_limited_and_coalesced() -> None:
    server = _server(min_notify_interval_s=0.2)
    _answer(server, "d", b"1")
    obs = _Obs()
    server.out.entries[("d", "s")].notifier.add(obs)
    _answer(server, "d", b"2")  # first update: notified at once
    assert len(obs.triggers) == 1
    for i in range(3, 8):  # inside the interval: one pending notification
        _answer(server, "d", str(i).encode())
    assert len(obs.triggers) == 1
    assert server.coalesced == 4
    await asyncio.sleep(0.3)
    assert len(obs.triggers) == 2  # one more, rendering the latest value
    assert server.out.latest(StreamKey("d", "s")) == b"7"


async def test_out_resources_are_capped_by_count_and_bytes() -> None:
    server = _server(max_out_resources=2, max_out_bytes=1024, min_notify_interval_s=0)
    _answer(server, "a", b"x")
    obs = _Obs()
    server.out.entries[("a", "s")].notifier.add(obs)
    _answer(server, "b", b"x")
    _answer(server, "c", b"x")  # evicts a, the least recently updated
    assert list(server.out.entries) == [("b", "s"), ("c", "s")]
    assert obs.triggers[-1].code == Code.NOT_FOUND  # its observer is told it is gone
    _answer(server, "d", b"y" * 1024)  # over the byte cap: only d stays
    assert list(server.out.entries) == [("d", "s")]
    assert server.out.nbytes == 1024
    assert server.evicted == 3


def test_observers_are_capped() -> None:
    server = _server(max_observers=1)
    _answer(server, "a", b"x")
    notifier = server.out.entries[("a", "s")].notifier
    first, second = _Obs(), _Obs()
    assert notifier.add(first)
    assert not notifier.add(second)
    assert second.deregistered  # served as a plain GET
    first.cancel()
    assert server.observer_count == 0
    assert notifier.add(second)


def test_answers_outside_the_out_tree_are_ignored() -> None:
    server = _server()
    server.answer(OutboundMessage(topic="p/stats", payload=b"{}"))
    server.answer(OutboundMessage(topic="reply/here", payload=b"{}"))
    server.answer(OutboundMessage(topic="p/out/only-one", payload=b"{}"))
    assert not server.out.entries


class _Remote:
    maximum_payload_size = 1024
    maximum_block_size_exp = 6


def _get(block2: tuple[int, bool, int] | None = None) -> aiocoap.Message:
    msg = aiocoap.Message(code=Code.GET)
    if block2 is not None:
        msg.opt.block2 = block2
    msg.remote = _Remote()
    return msg


def test_small_bodies_go_whole_and_large_ones_block_wise_with_an_etag() -> None:
    small = content(_get(), b"x" * 1024)
    assert small.payload == b"x" * 1024
    assert small.opt.block2 is None
    body = bytes(range(256)) * 10  # 2560 bytes: three blocks
    first = content(_get(), body)
    assert first.payload == body[:1024]
    assert (first.opt.block2.block_number, first.opt.block2.more) == (0, True)
    last = content(_get((2, False, 6)), body)
    assert last.payload == body[2048:]
    assert (last.opt.block2.block_number, last.opt.block2.more) == (2, False)
    assert first.opt.etag == last.opt.etag != content(_get(), body + b" ").opt.etag
    assert later_block(_get((1, False, 6)))
    assert not later_block(_get((0, False, 6)))
    assert not later_block(_get())
