from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamedge.config import (
    StreamedgeConfig,
    explain,
    load_config,
    parse_config,
    reference_markdown,
)
from streamedge.errors import ConfigError
from streamedge.inference.config import OnnxClassifierConfig

MINIMAL_APP = {
    "models": [{"type": "builtin", "name": "sensor_anomaly"}],
    "caches": [{"name": "w", "embedder": {"type": "window"}}],
    "streams": [
        {
            "match": "*/env",
            "window": {"size": 16},
            "apps": [{"name": "a", "model": "sensor_anomaly", "cache": "w"}],
        }
    ],
}


def test_config_empty_mapping_gives_working_defaults() -> None:
    cfg = parse_config({})
    assert cfg.mqtt.embedded_broker
    assert cfg.stats.interval_s == 60
    assert cfg.stream_for("dev/anything") is not None


def test_config_unknown_key_names_the_key_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"mqtt": {"prot": 1883}}, source="g.yaml")
    text = str(err.value)
    assert "g.yaml" in text
    assert "mqtt.prot: unknown key" in text


def test_config_bad_value_names_key_and_reason() -> None:
    with pytest.raises(ConfigError, match=r"streams\.0\.queue\.on_full"):
        parse_config({"streams": [{"queue": {"on_full": "sometimes"}}]})


def test_config_env_substitution_with_default_and_missing() -> None:
    cfg = parse_config(
        {"mqtt": {"host": "${BROKER}", "username": "${USER_X:-anon}"}}, env={"BROKER": "pi.lan"}
    )
    assert cfg.mqtt.host == "pi.lan"
    assert cfg.mqtt.username == "anon"
    with pytest.raises(ConfigError, match="BROKER is not set"):
        parse_config({"mqtt": {"host": "${BROKER}"}}, env={})


def test_config_password_from_credentials_directory(tmp_path: Path) -> None:
    (tmp_path / "MQTT_PASSWORD").write_text("s3cret\n")
    cfg = parse_config(
        {"mqtt": {"password": "${MQTT_PASSWORD}"}},
        env={"CREDENTIALS_DIRECTORY": str(tmp_path)},
    )
    assert cfg.mqtt.password is not None
    assert cfg.mqtt.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg.mqtt)


def test_config_apps_must_name_existing_models_and_caches() -> None:
    bad = json.loads(json.dumps(MINIMAL_APP))
    bad["streams"][0]["apps"][0]["model"] = "nope"
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        parse_config(bad)
    bad = json.loads(json.dumps(MINIMAL_APP))
    bad["streams"][0]["apps"][0]["cache"] = "missing"
    with pytest.raises(ConfigError, match="no cache named 'missing'"):
        parse_config(bad)
    parse_config(MINIMAL_APP)


def test_config_duplicate_names_rejected() -> None:
    data = {"caches": [{"name": "x"}, {"name": "x"}]}
    with pytest.raises(ConfigError, match="duplicate cache names: x"):
        parse_config(data)


def test_config_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    path = sub / "gw.yaml"
    path.write_text(
        "models:\n  - {type: onnx_classifier, name: m, path: models/m.onnx}\n"
        "gateway: {data_dir: state}\n"
    )
    cfg = load_config(path)
    model = cfg.models[0]
    assert isinstance(model, OnnxClassifierConfig)
    assert model.path == sub / "models" / "m.onnx"
    assert cfg.gateway.data_dir == sub / "state"


def test_config_cache_profile_is_included_and_overridden(tmp_path: Path) -> None:
    (tmp_path / "profile.yaml").write_text(
        "embedder: {type: downscale, size: 8}\npolicy: {type: threshold, max_distance: 0.5}\n"
    )
    path = tmp_path / "gw.yaml"
    path.write_text("caches:\n  - {name: f, profile: profile.yaml, policy: {max_distance: 0.1}}\n")
    cfg = load_config(path)
    cache = cfg.caches[0]
    assert cache.embedder.type == "downscale"
    assert cache.embedder.size == 8
    assert cache.policy.max_distance == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", "mqtt: [unclosed", "not valid YAML: line 1, column 16"),
        ("list.yaml", "- 1\n- 2\n", "top level must be a mapping"),
        ("bad.toml", "mqtt = ", "not valid TOML"),
    ],
)
def test_config_unreadable_files_give_clear_errors(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_config_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config("/nonexistent/streamedge.yaml")


def test_config_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "g.toml"
    toml.write_text('[mqtt]\nhost = "broker"\nport = 1884\n')
    assert load_config(toml).mqtt.port == 1884
    js = tmp_path / "g.json"
    js.write_text('{"gateway": {"name": "j"}}')
    assert load_config(js).gateway.name == "j"


def _field_paths(model: type[StreamedgeConfig]) -> set[str]:
    return set(model.model_fields)


def test_explain_documents_every_top_level_and_nested_key() -> None:
    text = explain()
    for key in _field_paths(StreamedgeConfig):
        assert f"\n{key}  (" in text
    for key in ("mqtt.topic_prefix", "streams.queue.on_full", "caches.store.max_bytes"):
        assert key in text
    assert "models[type=onnx_classifier].path" in text
    assert "streams.filters[type=deadband].epsilon" in text
    # Every leaf line with a type is followed by a description line.
    lines = text.splitlines()
    undocumented = [
        ln
        for i, ln in enumerate(lines)
        if ln
        and not ln.startswith(" ")
        and not ln.startswith("#")
        and not ln.split("  (")[0].endswith(".type")
        and "Config)" not in ln
        and (i + 1 >= len(lines) or not lines[i + 1].startswith("    "))
    ]
    assert undocumented == []


def test_generated_reference_in_docs_is_current() -> None:
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "config-reference.md").read_text()
    assert doc == reference_markdown(), "run `make docs` to regenerate docs/config-reference.md"
