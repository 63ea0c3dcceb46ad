from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamedge import __version__
from streamedge.cli import main
from streamedge.commands.stats import format_stats
from tests.conftest import ROOT, free_port


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_python_dash_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamedge", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"streamedge {__version__}"


def test_check_config_ok_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 99999\n  hots: x\n")
    assert main(["check-config", str(ROOT / "gateways" / "demo.yaml")]) == 0
    assert main(["check-config", str(ROOT / "gateways" / "demo.yaml"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: mqtt.port:" in err
    assert f"{bad}: mqtt.hots: unknown key" in err


def test_check_config_explain(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "mqtt.topic_prefix" in out and "stats.interval_s" in out


def test_run_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [{apps: [{name: a, model: nope}]}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "streamedge", "run", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no model named 'nope'" in proc.stderr


def test_stats_without_a_broker_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--port", str(free_port()), "--timeout", "1"]) == 1
    assert "streamedge stats:" in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_format_stats_renders_a_snapshot() -> None:
    doc = {
        "gateway": "g",
        "version": "1",
        "uptime_s": 3,
        "messages": {"in": 5, "answered": 4, "filtered": 0, "dropped": 1, "pending": 0},
        "drops": {"bad_payload": 1},
        "cache": {"application": {"hits": 3, "misses": 1, "hit_ratio": 0.75}},
        "inference": {"local": {"calls": 1, "failures": 0, "latency_ms": {"p50": 2.0, "p95": 3.0}}},
    }
    text = format_stats(doc)
    assert "hit ratio 75.0%" in text
    assert "bad_payload" in text
