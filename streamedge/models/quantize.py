"""int8 variants of ONNX models, made with onnxruntime's quantisation tools.

Dynamic quantisation stores weights as int8 and quantises activations at run
time, so it needs no calibration data. The variant is written once next to
the gateway's data (``<data_dir>/quantized/``), keyed by the source file's
content hash, atomically, and reused afterwards.

Measure before using it: on the development machine (x86) dynamic int8 made
MTCNN about 2.8x *slower* (ConvInteger has no fast x86 kernel) and changed the
face count on 6 % of real frames; ``scripts/measure_quantization.py`` measures
dynamic and calibrated static (QDQ) variants against fp32 on real video.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

from streamedge.errors import ConfigError

logger = logging.getLogger(__name__)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def int8_dynamic(source: Path, data_dir: Path) -> Path:
    """The int8 (dynamic) variant of ``source``; made on first use. Blocking.

    Raises:
        ConfigError: the file is missing or onnxruntime cannot quantise it.
    """
    if not source.is_file():
        raise ConfigError(f"cannot quantise {source}: no such file")
    target = data_dir / "quantized" / f"{source.stem}-{_digest(source)}-int8dyn.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy, heavy

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".onnx")
    os.close(fd)
    try:
        quantize_dynamic(Path(source), Path(tmp), weight_type=QuantType.QInt8)
        Path(tmp).replace(target)  # atomic: a half-written model is never loaded
    except Exception as exc:  # onnxruntime.quantization raises anything
        Path(tmp).unlink(missing_ok=True)
        raise ConfigError(f"cannot quantise {source}: {exc}") from exc
    logger.info("wrote int8 (dynamic) variant of %s to %s", source.name, target)
    return target
