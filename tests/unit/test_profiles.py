"""Every deployable file in gateways/, caches/ and brokers/ must be valid."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from streamedge.caches.config import CacheConfig
from streamedge.config import load_config, parse_config
from streamedge.demo import demo_config
from tests.conftest import ROOT, free_port, mosquitto_binary, wait_port

GATEWAYS = sorted((ROOT / "gateways").glob("*.yaml"))
CACHES = sorted((ROOT / "caches").glob("*.yaml"))


def test_profiles_exist() -> None:
    assert GATEWAYS, "no gateway profiles"
    assert CACHES, "no cache profiles"


@pytest.mark.parametrize("path", GATEWAYS, ids=lambda p: p.name)
def test_gateway_profile_validates(path: Path) -> None:
    load_config(path, env={})


@pytest.mark.parametrize("path", CACHES, ids=lambda p: p.name)
def test_cache_profile_validates(path: Path) -> None:
    CacheConfig.model_validate({"name": path.stem, **yaml.safe_load(path.read_text())})


def test_demo_yaml_matches_the_embedded_demo_config() -> None:
    from_file = load_config(ROOT / "gateways" / "demo.yaml", env={})
    embedded = parse_config(demo_config(port=1883))
    assert from_file.model_dump(exclude={"gateway"}) == embedded.model_dump(exclude={"gateway"})
    assert from_file.gateway.name == embedded.gateway.name


def test_amqtt_profile_loads_into_amqtt() -> None:
    from amqtt.contexts import BrokerConfig

    data = yaml.safe_load((ROOT / "brokers" / "amqtt.yaml").read_text())
    cfg = BrokerConfig.from_dict(data)
    assert "default" in cfg.listeners


@pytest.mark.integration
@pytest.mark.parametrize("name", ["mosquitto.conf", "mosquitto-test.conf"])
def test_mosquitto_configs_start_a_broker(name: str, tmp_path: Path) -> None:
    binary = mosquitto_binary()
    if binary is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    text = (ROOT / "brokers" / name).read_text()
    port = free_port()
    # The deployment file listens on 1883 and persists to /var/lib; move both aside.
    text = text.replace("listener 1883", f"listener {port} 127.0.0.1")
    text = text.replace("/var/lib/mosquitto/", f"{tmp_path}/")
    if not any(line.startswith("listener") for line in text.splitlines()):
        text += f"\nlistener {port} 127.0.0.1\n"
    conf = tmp_path / name
    conf.write_text(text)
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        wait_port("127.0.0.1", port, timeout=10)
        running = proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert running, err.decode()
