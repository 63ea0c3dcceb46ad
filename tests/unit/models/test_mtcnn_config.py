"""MtcnnModelConfig: defaults, validation, and building a detector from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from streamedge.errors import ConfigError
from streamedge.models.config import MtcnnModelConfig
from streamedge.models.mtcnn import PNET_PATH, build_mtcnn
from streamedge.records import ModelRef

if TYPE_CHECKING:
    from pathlib import Path


def test_defaults_are_the_published_settings() -> None:
    cfg = MtcnnModelConfig()
    assert cfg.type == "mtcnn"
    assert cfg.name == "mtcnn"
    assert cfg.thresholds == (0.6, 0.7, 0.7)
    assert cfg.min_face == 20.0
    assert cfg.factor == 0.709
    assert cfg.intra_op_threads == 1
    assert cfg.pnet_path is None


def test_every_field_is_documented() -> None:
    for name, field in MtcnnModelConfig.model_fields.items():
        if name != "type":
            assert field.description, name


def test_validates_from_yaml_like_data() -> None:
    cfg = MtcnnModelConfig.model_validate(
        {
            "type": "mtcnn",
            "name": "faces",
            "version": "2",
            "thresholds": [0.5, 0.6, 0.8],
        }
    )
    assert cfg.thresholds == (0.5, 0.6, 0.8)
    assert cfg.name == "faces"


@pytest.mark.parametrize(
    "data",
    [
        {"unknown": 1},
        {"type": "onnx_classifier"},
        {"thresholds": [0.6, 0.7]},
        {"thresholds": [0.6, 0.7, 1.5]},
        {"factor": 1.0},
        {"min_face": 2},
        {"intra_op_threads": -1},
        {"name": ""},
    ],
)
def test_rejects_bad_values_and_unknown_keys(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MtcnnModelConfig.model_validate(data)


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = MtcnnModelConfig.model_validate(
        {"pnet_path": "models/pnet.onnx"}, context={"base_dir": tmp_path}
    )
    assert cfg.pnet_path == tmp_path / "models" / "pnet.onnx"


def test_build_mtcnn_uses_name_version_and_packaged_files() -> None:
    det = build_mtcnn(MtcnnModelConfig(name="faces", version="7", intra_op_threads=2))
    assert det.ref == ModelRef("faces", "7")
    assert det.pnet_path == PNET_PATH
    assert det.thresholds == (0.6, 0.7, 0.7)


def test_build_mtcnn_reports_a_missing_file(tmp_path: Path) -> None:
    cfg = MtcnnModelConfig.model_validate(
        {"onet_path": "missing.onnx"}, context={"base_dir": tmp_path}
    )
    with pytest.raises(ConfigError, match=r"missing\.onnx"):
        build_mtcnn(cfg)
