"""The MQTT transport's logic without a broker: requests, subscriptions, TLS, backpressure."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiomqtt
import msgpack
import pydantic
import pytest

from streamedge.errors import PublishError
from streamedge.gateways.config import MqttConfig
from streamedge.gateways.mqtt import MqttTransport, Subscription, backoff_delay
from streamedge.gateways.requests import reply_fields
from streamedge.records import OutboundMessage


def transport(**cfg: object) -> MqttTransport:
    return MqttTransport(
        MqttConfig.model_validate({"host": "127.0.0.1", **cfg}),
        client_id="t",
        available_topic="p/available",
        subscriptions=[Subscription("p/in/+/+", 1, shared=True)],
    )


def test_reply_fields_from_json_and_msgpack_maps() -> None:
    doc = {"t": 1, "reply_to": "app/replies/1", "correlation": {"n": 3}}
    for payload in (json.dumps(doc).encode(), msgpack.packb(doc)):
        reply_to, correlation = reply_fields(payload)
        assert reply_to == "app/replies/1"
        assert correlation is not None and json.loads(correlation) == {"n": 3}
    assert reply_fields(b'{"reply_to": "a/b"}') == ("a/b", None)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xd8\xff\xe0 a bare jpeg",
        b'{"reply_to": "a/+"}',  # wildcards cannot be published to
        b'{"reply_to": ""}',
        b'{"reply_to": 5}',
        b'["reply_to"]',
        b"{broken",
        b"",
    ],
)
def test_reply_fields_reject_what_cannot_be_answered(payload: bytes) -> None:
    assert reply_fields(payload) == (None, None)


def test_share_group_only_on_mqtt5_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    t = transport(share_group="edge")
    sub, plain = Subscription("p/in/+/+", 1, shared=True), Subscription("p/stats/get")
    t.protocol = "5"
    assert t.subscription_topic(sub) == "$share/edge/p/in/+/+"
    assert t.subscription_topic(plain) == "p/stats/get"
    t.protocol = "3.1.1"
    assert t.subscription_topic(sub) == "p/in/+/+"
    assert t.subscription_topic(sub) == "p/in/+/+"
    assert len([r for r in caplog.records if "share_group" in r.message]) == 1
    assert transport().subscription_topic(sub) == "p/in/+/+"  # no group configured


@pytest.mark.parametrize("group", ["a/b", "+", "#", "$x", "has space", ""])
def test_share_group_names_are_checked(group: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        MqttConfig.model_validate({"share_group": group})


def test_persistent_session_is_the_default() -> None:
    cfg = MqttConfig()
    assert cfg.clean_start is False and cfg.session_expiry_s > 0


def test_tls_context_verifies_unless_insecure() -> None:
    ctx = transport(tls={"enabled": True})._tls_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    ctx = transport(tls={"enabled": True, "insecure": True})._tls_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_backoff_is_exponential_capped_and_jittered() -> None:
    delays = [backoff_delay(a, min_s=0.5, max_s=30, jitter=0.5) for a in range(12)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(15 <= d <= 30 for d in delays[7:])
    assert len({backoff_delay(3, min_s=0.5, max_s=30, jitter=0.5) for _ in range(20)}) > 1
    assert backoff_delay(3, min_s=0.5, max_s=30, jitter=0) == 4.0


async def test_a_full_outgoing_queue_waits_then_fails_counted() -> None:
    t = transport(out_queue_size=2, publish_timeout_s=0.2)
    msg = OutboundMessage(topic="p/out/a/b", payload=b"x")
    await t.publish(msg)
    await t.publish(msg)
    waiting = asyncio.create_task(t.publish(msg))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # backpressure, not a drop
    t._out.popleft()  # what the sender does once a PUBACK arrived
    t._out_space.set()
    await asyncio.wait_for(waiting, 1)
    assert t.out_depth == 2 and t.lost_outgoing == 0
    with pytest.raises(PublishError):
        await t.publish(msg)
    assert t.lost_outgoing == 1


class FlakyBroker:
    """Stands in for aiomqtt.Client.publish: the first publish of 'b' times out."""

    def __init__(self) -> None:
        self.acked: list[bytes] = []
        self.failed = False

    async def publish(self, topic: str, payload: bytes, **_kw: object) -> None:
        await asyncio.sleep(0.001)  # the PUBACK round trip
        if payload == b"b" and not self.failed:
            self.failed = True
            raise aiomqtt.MqttError("Operation timed out")
        self.acked.append(payload)


async def test_the_sender_resends_after_a_failure_on_a_live_connection() -> None:
    t = transport()
    for body in (b"a", b"b", b"c"):
        await t.publish(OutboundMessage(topic="p/out/x/y", payload=body, qos=1))
    t.protocol = "3.1.1"
    broker = FlakyBroker()
    sender = asyncio.create_task(t._sender(broker))  # type: ignore[arg-type]
    try:
        assert await t.flush(timeout=5)
    finally:
        sender.cancel()
    assert broker.failed
    assert b"b" in broker.acked and broker.acked[0] == b"a"  # at least once, first in order
    assert t.out_depth == 0 and t._out_bytes == 0
