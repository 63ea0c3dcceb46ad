"""Gateways on a real broker: cache snapshots across a restart, cache sharing between gateways."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streamedge.commands.stats import rows
from streamedge.pipeline.gateway import Gateway
from streamedge.stats.schema import snapshot_schema
from tests.conftest import ROOT, BrokerInfo, free_port, mosquitto_binary, wait_port
from tests.integration.helpers import client, collect, gateway_config, running, wait_until
from tests.integration.test_gateway_mqtt import jpeg

pytestmark = pytest.mark.integration

SECRET = "integration-test-group-secret"
WRONG_SECRET = "a-different-secret-value"


def _data_dir(models_dir: Path, target: Path) -> Path:
    """A private data_dir holding the session's built models (snapshots land here)."""
    shutil.copytree(models_dir, target, ignore=shutil.ignore_patterns("caches"))
    return target


def _frames_cache(**cache: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": "frames",
            "embedder": {"type": "downscale", "size": 16},
            "policy": {"type": "threshold", "max_distance": 0.03},
            **cache,
        }
    ]


def _local_calls(gw: Gateway) -> int:
    calls: int = gw.stats.snapshot()["inference"].get("local", {}).get("calls", 0)
    return calls


async def _ask(broker: BrokerInfo, prefix: str, device: str, frame: bytes) -> dict[str, Any]:
    async with client(broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/{device}/camera", frame, qos=1)
        got = await collect(c, 1)
    assert got, f"no answer for {device}"
    doc: dict[str, Any] = got[0][1]
    return doc


# ---------------------------------------------------------------------- snapshots


async def test_cache_snapshot_survives_a_gateway_restart(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, tmp_path: Path
) -> None:
    data = _data_dir(models_dir, tmp_path / "data")
    cfg = gateway_config(
        mqtt_broker,
        prefix,
        data,
        caches=_frames_cache(snapshot={"enabled": True, "interval_s": 0.3}),
    )
    first = Gateway(cfg)
    async with running(first):
        answer = await _ask(mqtt_broker, prefix, "cam1", jpeg(90, 1))
        # The periodic snapshot: written while the gateway runs.
        await wait_until(lambda: any((data / "caches").glob("*.snap")))
    assert answer["tier"] == "local"

    second = Gateway(cfg)
    async with running(second):
        again = await _ask(mqtt_broker, prefix, "cam2", jpeg(90, 2))
    assert again["tier"] == "cache"
    assert again["answer"] == answer["answer"]
    assert _local_calls(second) == 0, "the restored entry answered without the model"
    assert second.stats.snapshot()["cache"]["application"]["hits"] == 1


async def test_a_torn_snapshot_is_discarded_with_a_warning(
    mqtt_broker: BrokerInfo,
    prefix: str,
    models_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = _data_dir(models_dir, tmp_path / "data")
    cfg = gateway_config(
        mqtt_broker, prefix, data, caches=_frames_cache(snapshot={"enabled": True})
    )
    async with running(Gateway(cfg)):
        await _ask(mqtt_broker, prefix, "cam1", jpeg(90, 1))
        assert not any((data / "caches").glob("*.snap")), "no periodic snapshot yet (300 s)"
    (snap,) = (data / "caches").glob("*.snap")  # the shutdown snapshot
    blob = snap.read_bytes()
    snap.write_bytes(blob[: len(blob) // 2])  # a write cut short by a power loss

    second = Gateway(cfg)
    with caplog.at_level(logging.WARNING, logger="streamedge.caches.cache"):
        async with running(second):
            again = await _ask(mqtt_broker, prefix, "cam2", jpeg(90, 2))
    assert "discarding cache snapshot" in caplog.text and "torn" in caplog.text
    assert again["tier"] == "local", "nothing was restored from the torn file"
    assert _local_calls(second) == 1


# ---------------------------------------------------------------------- sharing


def _sharing_gateway(
    broker: BrokerInfo, prefix: str, data: Path, share_prefix: str, secret: str = SECRET
) -> Gateway:
    return Gateway(
        gateway_config(
            broker,
            prefix,
            data,
            caches=_frames_cache(snapshot={"enabled": False}),
            sharing={"enabled": True, "topic_prefix": share_prefix, "secret": secret},
        )
    )


async def test_gateway_b_reuses_an_answer_that_gateway_a_computed(
    mqtt_broker: BrokerInfo, models_dir: Path, tmp_path: Path
) -> None:
    share = f"setest-share-{tmp_path.name[-8:]}"
    data = _data_dir(models_dir, tmp_path / "data")
    gw_a = _sharing_gateway(mqtt_broker, "setest-gwa001", data, share)
    gw_b = _sharing_gateway(mqtt_broker, "setest-gwb002", data, share)
    intruder = _sharing_gateway(mqtt_broker, "setest-gwc003", data, share, secret=WRONG_SECRET)
    async with running(gw_a), running(gw_b), running(intruder):
        sa, sb = gw_a.sharing, gw_b.sharing
        assert sa is not None and sb is not None
        # The intruder answers a dark frame first: its entry must not reach B's cache.
        dark = await _ask(mqtt_broker, "setest-gwc003", "camx", jpeg(20, 5))
        assert dark["tier"] == "local"
        await wait_until(lambda: sb.rejected["bad_mac"] >= 1)

        answer = await _ask(mqtt_broker, "setest-gwa001", "cam1", jpeg(90, 1))
        assert answer["tier"] == "local"
        await wait_until(lambda: sb.merged >= 1)
        assert sa.sent == 1
        await wait_until(lambda: sa.own >= 1)

        again = await _ask(mqtt_broker, "setest-gwb002", "cam7", jpeg(90, 2))
        dark_b = await _ask(mqtt_broker, "setest-gwb002", "cam8", jpeg(20, 6))
        await wait_until(lambda: sa.merged >= 1)
        await wait_until(lambda: sa.rejected["bad_mac"] >= 1)
        snap_b = gw_b.stats.snapshot()
        snap_a = gw_a.stats.snapshot()
    assert again["tier"] == "cache" and again["answer"] == answer["answer"]
    assert dark_b["tier"] == "local", "the intruder's entry was not merged"
    assert _local_calls(gw_b) == 1, "only the dark frame ran B's model"
    device = snap_b["cache"]["device"]
    assert device["hits"] == 1
    sharing = device["sharing"]
    assert sharing["merged"] == 1
    assert sharing["rejected"] == {"bad_mac": 1}
    assert sharing["sent"] == 1, "B shares its dark frame; merged entries are not re-sent"
    assert snap_a["cache"]["device"]["sharing"]["merged"] == 1, "A merged B's dark frame"
    assert snap_a["cache"]["device"]["sharing"]["rejected"] == {"bad_mac": 1}
    jsonschema.Draft202012Validator(snapshot_schema()).validate(snap_b)
    row = dict(rows(snap_b))["cache sharing"]
    assert "merged 1" in row and "rejected 1 {'bad_mac': 1}" in row


@pytest.fixture
def bridged_brokers(tmp_path: Path) -> Iterator[tuple[BrokerInfo, BrokerInfo]]:
    """Two Mosquitto brokers on loopback joined by brokers/mosquitto-bridge.conf."""
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    base = (ROOT / "brokers" / "mosquitto-test.conf").read_text()
    bridge = (ROOT / "brokers" / "mosquitto-bridge.conf").read_text()
    assert "address neighbour-broker.lan:1883" in bridge
    far_port, near_port = free_port(), free_port()
    # The bridge's remote is the other loopback broker, never the placeholder host.
    bridge = bridge.replace("neighbour-broker.lan:1883", f"127.0.0.1:{far_port}")
    bridge = bridge.replace("restart_timeout 2 60", "restart_timeout 1 2")
    far_conf, near_conf = tmp_path / "far.conf", tmp_path / "near.conf"
    far_conf.write_text(base + f"\nlistener {far_port} 127.0.0.1\n")
    # Bridge options must follow the listener (they end the general section).
    near_conf.write_text(base + f"\nlistener {near_port} 127.0.0.1\n" + bridge)
    procs = [
        subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)
        for conf in (far_conf, near_conf)
    ]
    try:
        wait_port("127.0.0.1", far_port)
        wait_port("127.0.0.1", near_port)
        yield (
            BrokerInfo("127.0.0.1", near_port, "mosquitto"),
            BrokerInfo("127.0.0.1", far_port, "mosquitto"),
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.communicate(timeout=10)


async def _bridge_up(near: BrokerInfo, far: BrokerInfo, topic: str) -> None:
    """Wait until a message on the near broker reaches the far one (bridge connected)."""
    async with client(far) as c:
        await c.subscribe(topic, qos=0)
        async with client(near) as p:
            for _ in range(50):
                await p.publish(topic, b"ping", qos=0)
                if await collect(c, 1, timeout=0.2):
                    return
    raise AssertionError("the bridge did not connect")


async def test_gateways_on_bridged_brokers_share_entries(
    bridged_brokers: tuple[BrokerInfo, BrokerInfo], models_dir: Path, tmp_path: Path
) -> None:
    near, far = bridged_brokers
    await _bridge_up(near, far, "streamedge-share/cache/ping/x")
    data = _data_dir(models_dir, tmp_path / "data")
    gw_a = _sharing_gateway(near, "setest-near01", data, "streamedge-share")
    gw_b = _sharing_gateway(far, "setest-far002", data, "streamedge-share")
    async with running(gw_a), running(gw_b), client(far) as spy:
        sa, sb = gw_a.sharing, gw_b.sharing
        assert sa is not None and sb is not None
        await spy.subscribe("setest-near01/#", qos=0)
        answer = await _ask(near, "setest-near01", "cam1", jpeg(90, 1))
        await wait_until(lambda: sb.merged >= 1)
        again = await _ask(far, "setest-far002", "cam2", jpeg(90, 2))
        leaked = await collect(spy, 1, timeout=0.5)
    assert answer["tier"] == "local"
    assert again["tier"] == "cache" and again["answer"] == answer["answer"]
    assert _local_calls(gw_b) == 0
    assert gw_b.stats.snapshot()["cache"]["device"]["hits"] == 1
    assert leaked == [], "only the sharing topic crosses the bridge"
    assert sb.rejected == {} and sa.rejected == {}


async def test_a_private_namespace_is_neither_reused_across_devices_nor_shared(
    mqtt_broker: BrokerInfo, models_dir: Path, tmp_path: Path
) -> None:
    share = f"setest-share-{tmp_path.name[-8:]}"
    data = _data_dir(models_dir, tmp_path / "data")
    sharing = {"enabled": True, "topic_prefix": share, "secret": SECRET}
    private = Gateway(
        gateway_config(
            mqtt_broker,
            "setest-priv01",
            data,
            caches=_frames_cache(snapshot={"enabled": False}, private=True),
            sharing=sharing,
        )
    )
    neighbour = _sharing_gateway(mqtt_broker, "setest-nbr002", data, share)
    async with running(private), running(neighbour):
        first = await _ask(mqtt_broker, "setest-priv01", "cam1", jpeg(90, 1))
        other = await _ask(mqtt_broker, "setest-priv01", "cam2", jpeg(90, 2))
        same = await _ask(mqtt_broker, "setest-priv01", "cam1", jpeg(90, 3))
        # The neighbour's entry reaches the private gateway, which refuses it.
        await _ask(mqtt_broker, "setest-nbr002", "cam9", jpeg(90, 4))
        ps = private.sharing
        assert ps is not None
        await wait_until(lambda: ps.rejected["not_shared"] >= 1)
        ns = neighbour.sharing
        assert ns is not None
        await wait_until(lambda: ns.own >= 1)
    assert (first["tier"], other["tier"], same["tier"]) == ("local", "local", "cache")
    assert ps.sent == 0 and ps.merged == 0
    assert ns.received == ns.own == 1, "nothing came from the private gateway"
