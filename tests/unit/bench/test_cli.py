"""``streamedge bench eval`` end to end on a few frames of the committed excerpt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamedge.cli import main
from tests.conftest import ROOT

FRAME_DIFF = ROOT / "benchmarks" / "configs" / "frame-diff.yaml"
CACHE = ROOT / "benchmarks" / "configs" / "cache-downscale.yaml"


def test_eval_prints_the_table_and_writes_json_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.png"
    status = main(
        [
            "bench",
            "eval",
            "--quick",
            "--frames",
            "3",
            "--config",
            f"diff={FRAME_DIFF}",
            "--config",
            str(CACHE),
            "--reference-dir",
            str(tmp_path / "ref"),
            "--json",
            str(out_json),
            "--records",
            "--plot",
            str(out_png),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "every-frame" in out
    assert "diff " in out
    assert "cache-downscale" in out
    assert "oracle (answer changes)" in out
    doc = json.loads(out_json.read_text())
    assert doc["reference"]["frames"] == 3
    assert doc["streams"][0]["video"] == "vtest_excerpt.avi"
    assert [c["name"] for c in doc["configs"]] == ["diff", "cache-downscale"]
    assert doc["every_frame"]["accuracy"]["agreement"] == 1.0
    assert len(doc["configs"][0]["records"]) == 3
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "ref").glob("*.json"))  # the reference was stored


def test_eval_derived_cameras(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "eval", "--quick", "--frames", "1", "--cameras", "jitter", "--no-progress"]
    args += ["--config", str(CACHE), "--reference-dir", str(tmp_path), "--json"]
    args += [str(tmp_path / "e.json")]
    assert main(args) == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    assert [s["device"] for s in doc["streams"]] == ["cam1-a", "cam1-b", "cam1-c"]
    assert doc["reference"]["frames"] == 3
    assert any("derived cameras" in n for n in doc["notes"])
    assert "cam1-a/camera" in capsys.readouterr().out


def test_bench_without_subcommand_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "eval" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: [{match: '*', filtres: []}]\n")
    base = ["bench", "eval", "--quick", "--no-progress", "--reference-dir", str(tmp_path)]
    assert main([*base, "--config", str(bad)]) == 2
    assert "filtres" in capsys.readouterr().err
    assert main([*base, "--config", str(FRAME_DIFF), "--cameras", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main([*base, "--config", str(FRAME_DIFF), "--video", "nosuchvideo"]) == 2
    assert "no video named" in capsys.readouterr().err
    assert main([*base, "--config", str(FRAME_DIFF), "--device", "x", "--stream", "audio"]) == 2
    assert "no stream rule matches" in capsys.readouterr().err
    assert main([*base, "--config", str(FRAME_DIFF), "--frames", "0"]) == 2


def test_benchmark_script_puts_the_plot_beside_the_json(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import eval as bench_eval

    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 0

    monkeypatch.setattr(bench_eval, "cli_main", fake_main)
    assert bench_eval.main(["--video", "v.avi", "--json", "out/eval.json"]) == 0
    assert seen == [
        ["bench", "eval", "--video", "v.avi", "--json", "out/eval.json", "--plot", "out/eval.png"]
    ]


def test_benchmark_configs_are_valid_and_match_the_default_stream() -> None:
    from streamedge.bench.replay import evaluated_app
    from streamedge.config import load_config

    files = sorted((ROOT / "benchmarks" / "configs").glob("*.yaml"))
    assert len(files) >= 4
    for path in files:
        cfg = load_config(path)
        assert evaluated_app(cfg, "cam1/camera").model == "mtcnn", path


def test_filters_benchmark_runs_on_the_excerpt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/filters.py end to end on 24 excerpt frames: calibrate on 12, replay 12."""
    import json

    from benchmarks import filters as bench_filters
    from streamedge.datasets import find_video

    out = tmp_path / "filters.json"
    status = bench_filters.main(
        [
            "--video",
            str(find_video("vtest", excerpt_only=True)),
            "--frames",
            "24",
            "--only",
            "cascade",
            "--cost-frames",
            "4",
            "--reference-dir",
            str(tmp_path / "ref"),
            "--out-dir",
            str(tmp_path / "out"),
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "calibrated on the first 12, evaluated on the other 12" in printed
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert [(r["filters"], r["metric"]) for r in rows] == [
        ("cascade", "windowed"),
        ("cascade", "agreement"),
    ]
    for row in rows:
        assert 0.0 < row["model_fraction"] <= 1.0
        assert row["filter_ms_640"] > 0
        assert row["uniform_k"] >= 1
