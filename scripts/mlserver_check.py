"""Check the cloud tier against a real third-party OIP v2 server: Seldon MLServer.

MLServer is not a streamedge dependency (it pulls FastAPI, uvicorn, gRPC,
...); install it into a separate virtual environment::

    python3 -m venv /tmp/mlserver/venv
    /tmp/mlserver/venv/bin/pip install mlserver mlserver-sklearn onnxruntime

then run, with streamedge's own interpreter::

    .venv/bin/python scripts/mlserver_check.py --mlserver-venv /tmp/mlserver/venv

It builds a model repository in a temporary directory with two models:

* ``tiny_presence``: streamedge's built-in ONNX model, served by a small
  custom MLServer runtime (``OnnxRuntime`` below, onnxruntime inside
  MLServer's process). The cloud tier sends the locally preprocessed tensor
  (``payload: tensor``) and must give exactly the local model's answer.
* ``anomaly_sklearn``: a scikit-learn LogisticRegression trained (inside the
  MLServer venv) on windows of simulated readings, served by MLServer's own
  ``mlserver_sklearn.SKLearnModel`` runtime; the cloud tier asks for its
  ``predict_proba`` output and must match the probabilities scikit-learn
  computed for the same windows.

MLServer does not implement the binary tensor extension over REST (its
``GET /v2`` lists no extensions), so ``binary: auto`` falls back to JSON;
the script checks that too. Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from streamedge.inference.config import BuiltinModelConfig, InferenceConfig
from streamedge.inference.factory import build_router
from streamedge.models.builtin import anomaly_training_set, ensure_builtin
from streamedge.models.factory import build_model
from streamedge.records import Frame, InferenceRequest, ModelRef, StreamKey, Tier, Window

RUNTIME = '''
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    """Serve one ONNX file with onnxruntime (MLServer has no built-in ONNX runtime)."""

    async def load(self) -> bool:
        self._session = ort.InferenceSession(await get_model_uri(self._settings))
        self._input = self._session.get_inputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        out = self._session.run(None, {self._input: x})[0]
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("scores", out)]
        )
'''

TRAIN = """
import json, sys
import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
data = np.load(sys.argv[1])
x, y, probe = data["x"], data["y"], data["probe"]
clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x, y)
joblib.dump(clf, sys.argv[2])
json.dump(clf.predict_proba(probe).tolist(), open(sys.argv[3], "w"))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_repository(
    root: Path, venv: Path, data_dir: Path
) -> tuple[list[list[float]], np.ndarray]:
    """The model repository, the sklearn model trained in MLServer's venv, and probe windows."""
    presence = root / "tiny_presence"
    presence.mkdir(parents=True)
    shutil.copy(ensure_builtin("tiny_presence", data_dir), presence / "model.onnx")
    (root / "onnx_runtime.py").write_text(textwrap.dedent(RUNTIME))
    (presence / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "tiny_presence",
                "implementation": "onnx_runtime.OnnxRuntime",
                "parameters": {"uri": "./model.onnx"},
            }
        )
    )
    sk = root / "anomaly_sklearn"
    sk.mkdir()
    x, y = anomaly_training_set(devices=4, n=300)
    flat = x.reshape(len(x), -1)
    probe = flat[np.r_[0:5, np.flatnonzero(y > 0.5)[:5]]]
    np.savez(root / "train.npz", x=flat, y=y, probe=probe)
    (root / "train.py").write_text(TRAIN)
    expected_path = root / "expected.json"
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            str(root / "train.py"),
            str(root / "train.npz"),
            str(sk / "model.joblib"),
            str(expected_path),
        ],
        check=True,
    )
    (sk / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "anomaly_sklearn",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }
        )
    )
    (root / "settings.json").write_text(json.dumps({"debug": False, "metrics_endpoint": None}))
    expected: list[list[float]] = json.loads(expected_path.read_text())
    return expected, probe


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mlserver exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("mlserver did not become ready")


async def checks(
    port: int, data_dir: Path, expected: list[list[float]], probe: np.ndarray
) -> list[str]:
    failures: list[str] = []
    presence = build_model(BuiltinModelConfig(name="tiny_presence"), data_dir=data_dir)
    anomaly = build_model(BuiltinModelConfig(name="sensor_anomaly"), data_dir=data_dir)
    ref_p, ref_a = ModelRef("tiny_presence", "1"), ModelRef("sensor_anomaly", "1")
    cfg = InferenceConfig.model_validate(
        {
            "tiers": [
                {
                    "type": "cloud",
                    "url": f"http://127.0.0.1:{port}",
                    "timeout_s": 30,
                    "remote_models": [
                        {"name": "tiny_presence", "payload": "tensor"},
                        {
                            "name": "sensor_anomaly",
                            "remote_name": "anomaly_sklearn",
                            "payload": "tensor",
                            "input_shape": [1, 32],
                            "output_name": "predict_proba",
                        },
                    ],
                }
            ]
        }
    )
    router = build_router(cfg, {ref_p: presence, ref_a: anomaly})
    async with router:
        cloud = router.backends[0]
        server = getattr(cloud, "server", {})
        name, version = server.get("name"), server.get("version")
        print(f"server: {name} {version}, extensions {server.get('extensions')}")
        if getattr(cloud, "binary", None) is not False:
            failures.append("expected binary: auto to fall back to JSON against MLServer")
        rng = np.random.default_rng(3)
        for i in range(5):
            image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
            frame = Frame(stream=StreamKey("cam", "camera"), ts=0.0, image=image)
            result = await router.infer(InferenceRequest(model=ref_p, input=frame))
            local = presence.predict(frame).answer
            ok = result.tier is Tier.CLOUD and result.answer == local
            verdict = "OK" if ok else "MISMATCH"
            print(f"tiny_presence frame {i}: cloud {result.answer['scores']}, {verdict}")
            if not ok:
                failures.append(f"tiny_presence frame {i}: {result.answer} != {local}")
        # MLServer's sklearn runtime wants the output named in the request.
        for i, (row, want) in enumerate(zip(probe, expected, strict=True)):
            window = Window(
                stream=StreamKey("env", "t"),
                ts=0.0,
                fields=("temperature", "humidity"),
                values=row.reshape(16, 2).astype(np.float32),
            )
            result = await router.infer(InferenceRequest(model=ref_a, input=window))
            got = [result.answer["scores"]["normal"], result.answer["scores"]["anomaly"]]
            ok = bool(np.allclose(got, want, atol=1e-4))
            verdict = "OK" if ok else "MISMATCH"
            print(f"anomaly_sklearn window {i}: cloud {got}, scikit-learn {want}, {verdict}")
            if not ok:
                failures.append(f"anomaly window {i}: {got} != {want}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mlserver-venv",
        type=Path,
        default=Path(os.environ.get("STREAMEDGE_MLSERVER_VENV", "/tmp/mlserver/venv")),  # noqa: S108
    )
    args = parser.parse_args()
    mlserver = args.mlserver_venv / "bin" / "mlserver"
    if not mlserver.exists():
        print(
            f"no MLServer at {mlserver}; see this script's docstring to install it", file=sys.stderr
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="mlserver-check-"))
    data_dir = work / "data"
    port = free_port()
    proc = None
    try:
        expected, probe = write_repository(work / "models", args.mlserver_venv, data_dir)
        env = {
            **os.environ,
            "MLSERVER_HTTP_PORT": str(port),
            "MLSERVER_GRPC_PORT": str(free_port()),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_PARALLEL_WORKERS": "0",
            "PYTHONPATH": str(work / "models"),
        }
        with (work / "mlserver.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(mlserver), "start", str(work / "models")],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=work / "models",
            )
        wait_ready(port, proc)
        failures = asyncio.run(checks(port, data_dir, expected, probe))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log_text = (
            (work / "mlserver.log").read_text(errors="replace")
            if (work / "mlserver.log").exists()
            else ""
        )
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        print("\n".join(["FAILED:", *failures]))
        print(log_text[-3000:])
        return 1
    print("all MLServer checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
