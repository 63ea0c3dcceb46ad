"""MQTT request/response, shared subscriptions, credentials, Mosquitto's command-line tools."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from streamedge.config import StreamedgeConfig
from streamedge.pipeline.gateway import Gateway
from tests.conftest import ROOT, BrokerInfo, free_port, mosquitto_binary, wait_port
from tests.integration.helpers import client, collect, gateway_config, running, wait_until

pytestmark = pytest.mark.integration


def _with_mqtt(cfg: StreamedgeConfig, **mqtt: Any) -> StreamedgeConfig:
    return cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update=mqtt)})


def _need_mqtt5(broker: BrokerInfo) -> None:
    if not broker.mqtt5:
        pytest.skip("this broker speaks MQTT 3.1.1 only (CI runs Mosquitto)")


# -- on-demand requests -----------------------------------------------------------------
async def test_request_with_mqtt5_response_topic_and_correlation_data(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    _need_mqtt5(mqtt_broker)
    gw = Gateway(gateway_config(mqtt_broker, prefix, models_dir))
    async with running(gw), client(mqtt_broker, protocol=aiomqtt.ProtocolVersion.V5) as c:
        assert gw.transport.protocol == "5"
        await c.subscribe(f"{prefix}/#", qos=1)
        answers: list[aiomqtt.Message] = []
        # The same reading twice: on the 'in' topic the deadband filter would drop
        # the second; a request is always answered.
        for n in range(2):
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = f"{prefix}/resp/meter1"
            props.CorrelationData = f"req-{n}".encode()
            await c.publish(
                f"{prefix}/req/meter1/power", b'{"watts": 120}', qos=1, properties=props
            )
        async with asyncio.timeout(10):
            async for message in c.messages:
                if message.topic.value.startswith(f"{prefix}/resp/"):
                    answers.append(message)
                    if len(answers) == 2:
                        break
        await asyncio.sleep(0.3)
        others = [m.topic.value for m in _drain(c) if "/out/" in m.topic.value]
    assert [getattr(m.properties, "CorrelationData", None) for m in answers] == [b"req-0", b"req-1"]
    docs = [json.loads(bytes(m.payload)) for m in answers]
    assert [d["values"] for d in docs] == [{"watts": 120.0}] * 2
    assert [d["correlation"] for d in docs] == ["req-0", "req-1"]
    assert others == []  # a request's answer goes to its requester only
    assert gw.stats.outcomes["answered"] == 2


def _drain(c: aiomqtt.Client) -> list[aiomqtt.Message]:
    queue = c._queue  # what arrived and was not read yet
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


async def test_request_on_mqtt311_names_its_reply_topic_in_the_payload(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    cfg = _with_mqtt(gateway_config(mqtt_broker, prefix, models_dir), protocol="3.1.1")
    gw = Gateway(cfg)
    async with running(gw), client(mqtt_broker) as c:
        assert gw.transport.protocol == "3.1.1"
        await c.subscribe(f"{prefix}/replies/#", qos=1)
        request = {"watts": 7, "reply_to": f"{prefix}/replies/a", "correlation": {"id": 42}}
        await c.publish(f"{prefix}/req/meter2/power", json.dumps(request).encode(), qos=1)
        # No reply topic at all: counted, not answered.
        await c.publish(f"{prefix}/req/meter2/power", b'{"watts": 8}', qos=1)
        got = await collect(c, 1, topic_prefix=f"{prefix}/replies/")
        await wait_until(lambda: gw.stats.messages_in == 2 and gw.stats.pending == 0)
    assert got[0][0] == f"{prefix}/replies/a"
    doc = got[0][1]
    assert doc["correlation"] == {"id": 42}
    assert doc["values"] == {"watts": 7.0}  # reply_to and correlation are not values
    assert "extra" not in doc
    assert gw.stats.drops == {"no_reply_to": 1}


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_stats_get_on_both_protocols(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, protocol: str
) -> None:
    if protocol == "5":
        _need_mqtt5(mqtt_broker)
    cfg = _with_mqtt(gateway_config(mqtt_broker, prefix, models_dir), protocol=protocol)
    gw = Gateway(cfg)
    v5 = protocol == "5"
    kwargs = {"protocol": aiomqtt.ProtocolVersion.V5} if v5 else {}
    async with running(gw), client(mqtt_broker, **kwargs) as c:
        await c.subscribe(f"{prefix}/r/#", qos=0)
        if v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = f"{prefix}/r/1"
            props.CorrelationData = b"\x01\x02"
            await c.publish(f"{prefix}/stats/get", b"{}", properties=props)
        else:
            body = {"reply_to": f"{prefix}/r/1", "correlation": "x1"}
            await c.publish(f"{prefix}/stats/get", json.dumps(body).encode())
        async with asyncio.timeout(10):
            message = await anext(aiter(c.messages))
    assert gw.transport.protocol == protocol
    assert message.topic.value == f"{prefix}/r/1"
    doc = json.loads(bytes(message.payload))
    assert doc["gateway"] == gw.name
    if v5:
        assert getattr(message.properties, "CorrelationData", None) == b"\x01\x02"
    else:
        assert doc["correlation"] == "x1"


# -- shared subscriptions ---------------------------------------------------------------
async def test_two_instances_in_a_share_group_split_the_input(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    _need_mqtt5(mqtt_broker)
    base = gateway_config(mqtt_broker, prefix, models_dir)
    gws = [
        Gateway(
            _with_mqtt(base, share_group="g1", client_id=f"{prefix}-{i}").model_copy(
                update={"gateway": base.gateway.model_copy(update={"name": f"{prefix}-{i}"})}
            )
        )
        for i in range(2)
    ]
    n = 200
    async with running(gws[0]), running(gws[1]), client(mqtt_broker) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        for i in range(n):
            await c.publish(f"{prefix}/in/s{i}/env", json.dumps({"seq": i}).encode(), qos=1)
        got = await collect(c, n, timeout=30)
        await wait_until(lambda: sum(g.stats.outcomes["answered"] for g in gws) == n)
    counts = [g.stats.messages_in for g in gws]
    assert sum(counts) == n, counts  # each message went to exactly one instance
    assert min(counts) > 0, counts  # and both took some
    assert sorted(d["values"]["seq"] for _, d in got) == list(range(n))


async def test_share_group_on_mqtt311_falls_back_to_a_plain_subscription(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _with_mqtt(
        gateway_config(mqtt_broker, prefix, models_dir), share_group="g1", protocol="3.1.1"
    )
    gw = Gateway(cfg)
    with caplog.at_level(logging.WARNING, logger="streamedge.gateways.mqtt"):
        async with running(gw), client(mqtt_broker) as c:
            await c.subscribe(f"{prefix}/out/#", qos=1)
            await c.publish(f"{prefix}/in/s1/env", b'{"t": 1}', qos=1)
            got = await collect(c, 1)
    assert got and got[0][1]["values"] == {"t": 1.0}
    assert [r.message for r in caplog.records if "share_group" in r.message] == [
        f"share_group 'g1' needs MQTT 5; subscribing to {prefix}/in/+/+ without sharing"
    ]


# -- credentials ------------------------------------------------------------------------
_PASSWORD = "s3cret"  # a test broker's
_USERS = ("streamedge", "env1", "dashboard")


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[int]:
    """Mosquitto on brokers/mosquitto-auth.conf and brokers/mosquitto.acl, with
    accounts for the gateway, device env1 and an app; yields its port."""
    binary, passwd = mosquitto_binary(), shutil.which("mosquitto_passwd")
    if binary is None or passwd is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    pwfile = tmp_path / "passwd"
    for i, user in enumerate(_USERS):
        create = ["-c"] if i == 0 else []
        subprocess.run([passwd, *create, "-b", str(pwfile), user, _PASSWORD], check=True)
    pwfile.chmod(0o600)
    port = free_port()
    text = (ROOT / "brokers" / "mosquitto-auth.conf").read_text()
    text = text.replace("/etc/mosquitto/passwd", str(pwfile))
    text = text.replace("/etc/mosquitto/streamedge.acl", str(ROOT / "brokers" / "mosquitto.acl"))
    text = text.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    text = text.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    text = text.replace("log_dest syslog", "log_dest stderr")
    user = pwd.getpwuid(os.geteuid()).pw_name  # as root Mosquitto would switch users
    conf = tmp_path / "m.conf"
    conf.write_text(text + f"\nuser {user}\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_accounts_and_topic_rights_of_the_example_broker_config(
    auth_broker: int, models_dir: Path
) -> None:
    where = ("127.0.0.1", auth_broker)
    with pytest.raises(aiomqtt.MqttError):
        async with client(where):
            pass  # anonymous is refused
    mqtt = {"host": "127.0.0.1", "port": auth_broker, "topic_prefix": "streamedge"}
    gw = Gateway(
        gateway_config(
            where,
            "streamedge",
            models_dir,
            mqtt={**mqtt, "username": "streamedge", "password": _PASSWORD},
        )
    )
    async with (
        running(gw),
        client(where, username="env1", password=_PASSWORD) as device,
        client(where, username="dashboard", password=_PASSWORD) as app,
    ):
        await app.subscribe("streamedge/out/#", qos=1)
        await device.publish("streamedge/in/env2/env", b'{"t": 1}', qos=1)  # not its own
        await device.publish("streamedge/in/env1/env", b'{"t": 2}', qos=1)
        got = await collect(app, 2, timeout=3)
    assert [(topic, doc["values"]) for topic, doc in got] == [
        ("streamedge/out/env1/env", {"t": 2.0})
    ]
    assert gw.stats.messages_in == 1


# -- the Mosquitto command-line clients -------------------------------------------------
def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (.ci/run installs mosquitto-clients)")
    return found


async def _run(*cmd: str, timeout: float = 20) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, (cmd, proc.returncode, err)
    return out


async def test_mosquitto_pub_reading_and_mosquitto_sub_answer_at_qos1(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    pub, sub = _tool("mosquitto_pub"), _tool("mosquitto_sub")
    hp = ["-h", mqtt_broker.host, "-p", str(mqtt_broker.port)]
    cfg = _with_mqtt(gateway_config(mqtt_broker, prefix, models_dir), qos_out=1)
    async with running(Gateway(cfg)):
        answer = asyncio.create_task(
            _run(sub, *hp, "-q", "1", "-C", "1", "-W", "15", "-t", f"{prefix}/out/dev1/env")
        )
        await asyncio.sleep(0.5)  # let mosquitto_sub subscribe
        await _run(pub, *hp, "-q", "1", "-t", f"{prefix}/in/dev1/env", "-m", '{"ts": 5, "t": 3}')
        doc = json.loads(await answer)
    assert doc["device"] == "dev1" and doc["values"] == {"t": 3.0} and doc["ts"] == 5


async def test_mosquitto_pub_mqtt5_request_gets_its_correlation_back(
    mqtt_broker: BrokerInfo, prefix: str, models_dir: Path
) -> None:
    _need_mqtt5(mqtt_broker)
    pub, sub = _tool("mosquitto_pub"), _tool("mosquitto_sub")
    hp = ["-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-V", "mqttv5"]
    async with running(Gateway(gateway_config(mqtt_broker, prefix, models_dir))):
        reply = asyncio.create_task(
            _run(sub, *hp, "-q", "1", "-C", "1", "-W", "15", "-F", "%D %p", "-t", f"{prefix}/re/1")
        )
        await asyncio.sleep(0.5)
        await _run(
            pub, *hp, "-q", "1", "-t", f"{prefix}/req/dev1/env", "-m", '{"t": 4}',
            "-D", "publish", "response-topic", f"{prefix}/re/1",
            "-D", "publish", "correlation-data", "abc123",
        )  # fmt: skip
        correlation, _, body = (await reply).decode().partition(" ")
    assert correlation == "abc123"
    assert json.loads(body)["values"] == {"t": 4.0}


# -- TLS --------------------------------------------------------------------------------
@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Mosquitto with a TLS listener and a certificate for 127.0.0.1 signed by a CA of
    its own; yields the port and the CA certificate."""
    binary, openssl = mosquitto_binary(), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("mosquitto and openssl are needed (.ci/run installs them)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    d = tmp_path

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-days", "1",
        "-subj", "/CN=streamedge-test-ca")  # fmt: skip
    run("req", *ec, "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt",
        "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/server.crt",
        "-days", "1", "-extfile", f"{d}/san.ext")  # fmt: skip
    for name in ("ca.key", "server.key"):
        (d / name).chmod(0o644)  # Mosquitto may run as another user
    port = free_port()
    conf = d / "m.conf"
    user = pwd.getpwuid(os.geteuid()).pw_name
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {d}/ca.crt\n"
        f"certfile {d}/server.crt\nkeyfile {d}/server.key\nuser {user}\n"
        "log_dest stderr\nlog_type error\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port)
        yield port, d / "ca.crt"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("verify", [True, False])
async def test_tls_to_the_broker(
    tls_broker: tuple[int, Path], prefix: str, models_dir: Path, verify: bool
) -> None:
    port, ca = tls_broker
    where = ("127.0.0.1", port)
    # verify: the broker's certificate checked against our CA; else 'insecure' (no check).
    tls = {"enabled": True, "ca_file": str(ca)} if verify else {"enabled": True, "insecure": True}
    mqtt = {"host": "127.0.0.1", "port": port, "topic_prefix": prefix, "tls": tls}
    gw = Gateway(gateway_config(where, prefix, models_dir, mqtt=mqtt))
    ctx = ssl.create_default_context(cafile=str(ca))
    async with running(gw), client(where, tls_context=ctx) as c:
        await c.subscribe(f"{prefix}/out/#", qos=1)
        await c.publish(f"{prefix}/in/s1/env", b'{"t": 5}', qos=1)
        got = await collect(c, 1)
    assert got and got[0][1]["values"] == {"t": 5.0}
    with pytest.raises(aiomqtt.MqttError):
        async with client(where, timeout=2):
            pass  # plain MQTT is not spoken on this port
