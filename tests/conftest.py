"""Shared fixtures: a real MQTT broker on loopback, built-in models, unique topics.

The broker is Mosquitto when its binary is installed (``.ci/run`` installs
Debian's package), else streamedge's embedded amqtt broker in a child
process (``STREAMEDGE_TEST_BROKER_KIND=amqtt`` forces it).
``STREAMEDGE_TEST_BROKER=host:port`` points the tests at a broker that is
already running.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BrokerInfo:
    """A broker the tests can use."""

    host: str
    port: int
    kind: str  # "mosquitto", "amqtt" or "external"

    @property
    def mqtt5(self) -> bool:
        """Whether the broker speaks MQTT 5 (amqtt 0.12 does not)."""
        return self.kind in ("mosquitto", "external")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout} s")


def broker_kind() -> str:
    """Mosquitto when installed, else amqtt; ``STREAMEDGE_TEST_BROKER_KIND`` forces one."""
    forced = os.environ.get("STREAMEDGE_TEST_BROKER_KIND")
    if forced in ("mosquitto", "amqtt"):
        return forced
    return "mosquitto" if mosquitto_binary() else "amqtt"


def mosquitto_binary() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


class BrokerProcess:
    """A broker in a child process that a test may stop and restart on the same port."""

    def __init__(self, kind: str, port: int, workdir: Path, *, persistent: bool = False) -> None:
        self.kind = kind
        self.port = port
        self._workdir = workdir
        # Mosquitto saves sessions and queued QoS 1 messages on a clean stop and
        # loads them on start; amqtt 0.12 keeps nothing across a restart.
        self.persistent = persistent and kind == "mosquitto"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.kind == "mosquitto":
            binary = mosquitto_binary()
            assert binary is not None
            conf = self._workdir / f"mosquitto-{self.port}.conf"
            template = (ROOT / "brokers" / "mosquitto-test.conf").read_text()
            extra = f"\nlistener {self.port} 127.0.0.1\n"
            if self.persistent:  # Mosquitto takes the first 'persistence' line
                template = template.replace("persistence false", "persistence true")
                extra += f"persistence_location {self._workdir}/\n"
                # As root Mosquitto would switch to user 'mosquitto', who cannot write here.
                extra += f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            conf.write_text(template + extra)
            cmd = [binary, "-c", str(conf)]
        else:
            cmd = [
                sys.executable,
                "-m",
                "streamedge.brokers.embedded",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
            ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", self.port)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A real broker on loopback for the whole session."""
    external = os.environ.get("STREAMEDGE_TEST_BROKER")
    if external:
        host, _, port = external.rpartition(":")
        yield BrokerInfo(host or "127.0.0.1", int(port), "external")
        return
    kind = broker_kind()
    proc = BrokerProcess(kind, free_port(), tmp_path_factory.mktemp("broker"))
    proc.start()
    try:
        yield BrokerInfo("127.0.0.1", proc.port, kind)
    finally:
        proc.stop()


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of this test's own, which the test may stop and start again.

    Mosquitto persists sessions across the restart (``proc.persistent``)."""
    proc = BrokerProcess(broker_kind(), free_port(), tmp_path, persistent=True)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix unique to the test, so tests never see each other's messages."""
    return f"setest-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with both built-in models trained once per session."""
    from streamedge.models.builtin import ensure_builtin

    data_dir = tmp_path_factory.mktemp("data")
    ensure_builtin("tiny_presence", data_dir)
    ensure_builtin("sensor_anomaly", data_dir)
    return data_dir
