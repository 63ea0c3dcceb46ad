"""``streamedge worker`` configuration: profiles, reference docs, the CLI's check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamedge.cli import main
from streamedge.errors import ConfigError
from streamedge.inference.config import InferenceConfig
from streamedge.worker.config import (
    load_worker_config,
    parse_worker_config,
    worker_reference_markdown,
)
from tests.conftest import ROOT

WORKERS = sorted((ROOT / "workers").glob("*.yaml"))


@pytest.mark.parametrize("path", WORKERS, ids=lambda p: p.name)
def test_worker_profiles_validate(path: Path) -> None:
    cfg = load_worker_config(path)
    assert cfg.models


def test_worker_reference_in_docs_is_current() -> None:
    doc = (ROOT / "docs" / "worker-config-reference.md").read_text()
    assert doc == worker_reference_markdown(), "run `make docs` to regenerate it"


def test_the_default_worker_name_is_unique_per_process() -> None:
    # <host>-<pid>: a second process started from the same file gets its own
    # name and MQTT client id, so it joins the shared subscription unchanged.
    doc = {"models": [{"type": "mtcnn"}]}
    assert parse_worker_config(doc).worker.name.endswith(f"-{os.getpid()}")


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"models": []}, "models"),
        ({"models": [{"type": "mtcnn"}], "mqtt": {"port": 1}}, "mqtt.host"),
        ({"models": [{"type": "mtcnn"}], "http": {"bogus": 1}}, "http.bogus"),
    ],
)
def test_bad_worker_configs_name_the_key(doc: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_worker_config(doc)


def test_cli_check_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--check", str(WORKERS[0])]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{type: nope}]\n")
    assert main(["worker", "--check", str(bad)]) == 2


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"tiers": [{"type": "local"}, {"type": "local"}]}, "duplicate tier names"),
        ({"escalation": [{"tiers": ["nope"], "min_confidence": 0.5}]}, "unknown tier"),
        ({"escalation": [{"tiers": ["local"]}]}, "min_confidence or max_entropy"),
        (
            {"tiers": [{"type": "local"}], "escalation": [{"to": ["cloud"], "max_entropy": 0.5}]},
            "unknown tier",
        ),
    ],
)
def test_bad_inference_configs(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InferenceConfig.model_validate(doc)
