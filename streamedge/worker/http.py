"""KServe Open Inference Protocol v2 over HTTP for ``streamedge worker`` (aiohttp).

Each served model is an OIP model whose inputs are one of:

* ``frame`` UINT8 ``[h, w, 3]`` (BGR, or ``[1, h, w, 3]``);
* ``frame_encoded`` BYTES ``[1]``: a JPEG or PNG file;
* ``window`` FP32 ``[n, fields]``: a window of readings;
* for ONNX classifiers, also the graph's own input tensor (FP32, by the
  graph's input name), answered with the graph's raw output ``scores``, as
  Triton would serve the bare model.

The outputs are ``answer`` (BYTES ``[1]``, the JSON answer) and
``confidence`` (FP32 ``[1]``, left out when the model has none). The binary tensor
extension is supported both ways; aiohttp's exceptions stay in this module.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from streamedge import __version__
from streamedge.errors import BackendUnavailableError, DecodeError, InferenceError
from streamedge.inference import oip
from streamedge.inference.wire import is_image
from streamedge.records import Frame, ModelInput, StreamKey, Window
from streamedge.worker.config import WorkerHttpConfig

if TYPE_CHECKING:
    from streamedge.worker.service import Worker

logger = logging.getLogger(__name__)

_KEY = StreamKey("oip", "http")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class OipApp:
    """The request handlers, bound to one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def _model(self, request: web.Request) -> tuple[str, web.Response | None]:
        name = request.match_info["model"]
        ref = self.worker.ref(name)
        if ref is None:
            return name, _error(404, f"unknown model {name}")
        version = request.match_info.get("version")
        if version is not None and version != ref.version:
            return name, _error(404, f"model {name} has no version {version} (serving {ref})")
        return name, None

    async def live(self, request: web.Request) -> web.Response:
        """``GET /v2/health/live``: 200 while the process runs."""
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        """``GET /v2/health/ready``: 200 once every model is loaded and warm."""
        return web.Response(status=200 if self.worker.backend is not None else 400)

    async def server(self, request: web.Request) -> web.Response:
        """``GET /v2``: server metadata, with the extensions."""
        return web.json_response(
            {
                "name": "streamedge-worker",
                "version": __version__,
                "extensions": [oip.BINARY_EXTENSION],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        """``GET /v2/models/{m}/ready``."""
        _, err = self._model(request)
        if err is not None:
            return err
        return web.Response(status=200 if self.worker.backend is not None else 400)

    async def metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/models/{m}``: name, versions, platform, inputs and outputs."""
        name, err = self._model(request)
        if err is not None:
            return err
        model = self.worker.models[name]
        kind = getattr(model, "input_kind", "frame")
        if kind == "window":
            n, f = getattr(model, "window_shape", (-1, -1))
            inputs = [{"name": "window", "datatype": "FP32", "shape": [n, f]}]
        else:
            inputs = [
                {"name": "frame", "datatype": "UINT8", "shape": [-1, -1, 3]},
                {"name": "frame_encoded", "datatype": "BYTES", "shape": [1]},
            ]
        input_name = getattr(model, "input_name", None)
        if isinstance(input_name, str):
            inputs.append({"name": input_name, "datatype": "FP32", "shape": [-1]})
        return web.json_response(
            {
                "name": name,
                "versions": [model.ref.version],
                "platform": "streamedge",
                "inputs": inputs,
                "outputs": [
                    {"name": "answer", "datatype": "BYTES", "shape": [1]},
                    {"name": "confidence", "datatype": "FP32", "shape": [1]},
                ],
            }
        )

    async def infer(self, request: web.Request) -> web.Response:
        """``POST /v2/models/{m}[/versions/{v}]/infer`` (JSON or binary tensors)."""
        name, err = self._model(request)
        if err is not None:
            return err
        body = await request.read()
        try:
            req = oip.decode_request(body, request.headers.get(oip.HEADER_LENGTH))
            model = self.worker.models[name]
            raw = self._raw_tensor(model, req)
            if raw is not None:
                return await self._run_raw(name, model, raw, req)
            item, encoded = await self._input(req)
        except DecodeError as exc:
            return _error(400, str(exc))
        try:
            result = await self.worker.infer(name, item, encoded)
        except BackendUnavailableError as exc:
            return _error(503, str(exc))
        except InferenceError as exc:
            return _error(500, str(exc))
        answer = json.dumps(result.answer, separators=(",", ":")).encode()
        outputs = [oip.Tensor.of_bytes("answer", [answer])]
        if result.confidence is not None and math.isfinite(result.confidence):
            # Omitted when the model has none: JSON has no NaN.
            conf = np.array([result.confidence], dtype=np.float32)
            outputs.append(oip.Tensor.of("confidence", conf))
        return self._respond(name, result.model.version, outputs, req)

    def _respond(
        self, name: str, version: str, outputs: list[oip.Tensor], req: oip.InferRequest
    ) -> web.Response:
        if req.outputs:
            outputs = [t for t in outputs if t.name in req.outputs]
        binary = {n for n, b in req.outputs.items() if b}
        if req.parameters.get("binary_data_output"):
            binary = {t.name for t in outputs}
        payload, headers = oip.encode_response(
            name, outputs, binary=binary, model_version=version, id=req.id
        )
        return web.Response(body=payload, headers=headers)

    @staticmethod
    def _raw_tensor(model: Any, req: oip.InferRequest) -> oip.Tensor | None:
        """The graph's own input tensor, if the request sends that (not a frame or window).

        Told apart by name, datatype and rank: a 2-D ``window`` is a window of
        readings even when the graph's input is also called ``window`` (3-D).
        """
        input_name = getattr(model, "input_name", None)
        rank = getattr(model, "input_rank", None)
        tensor = req.inputs.get(input_name) if isinstance(input_name, str) else None
        if tensor is None or tensor.datatype != "FP32" or len(tensor.shape) != rank:
            return None
        return tensor

    async def _run_raw(
        self, name: str, model: Any, tensor: oip.Tensor, req: oip.InferRequest
    ) -> web.Response:
        x = np.ascontiguousarray(tensor.array(), dtype=np.float32)
        try:
            scores = await asyncio.to_thread(model.run_tensor, x)
        except InferenceError as exc:
            return _error(500, str(exc))
        return self._respond(name, model.ref.version, [oip.Tensor.of("scores", scores)], req)

    async def _input(self, req: oip.InferRequest) -> tuple[ModelInput, bytes | None]:
        if "frame_encoded" in req.inputs:
            data = req.inputs["frame_encoded"].items()
            if len(data) != 1 or not is_image(data[0]):
                raise DecodeError("frame_encoded must be one JPEG or PNG file", reason="bad_input")
            from streamedge.records import RawMessage

            raw = RawMessage(stream=_KEY, payload=data[0], received_at=0.0)
            frame = await asyncio.to_thread(self.worker.decoder.decode_frame, raw)
            return frame, data[0]
        if "frame" in req.inputs:
            image = req.inputs["frame"].array()
            if image.ndim == 4 and image.shape[0] == 1:
                image = image[0]
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise DecodeError("frame must be UINT8 [h, w, 3]", reason="bad_input")
            return Frame(stream=_KEY, ts=0.0, image=np.ascontiguousarray(image)), None
        if "window" in req.inputs:
            values = req.inputs["window"].array().astype(np.float32)
            if values.ndim == 3 and values.shape[0] == 1:
                values = values[0]
            if values.ndim != 2:
                raise DecodeError("window must be FP32 [n, fields]", reason="bad_input")
            return Window(stream=_KEY, ts=0.0, fields=(), values=values), None
        raise DecodeError(
            f"no known input among {sorted(req.inputs)} (frame, frame_encoded, window)",
            reason="bad_input",
        )


def build_app(
    worker: Worker, cfg: WorkerHttpConfig, middlewares: list[Any] | None = None
) -> web.Application:
    """The aiohttp application (tests may add middlewares to inject faults)."""
    handlers = OipApp(worker)
    app = web.Application(client_max_size=cfg.max_request_bytes, middlewares=middlewares or [])
    app.router.add_get("/v2/health/live", handlers.live)
    app.router.add_get("/v2/health/ready", handlers.ready)
    app.router.add_get("/v2", handlers.server)
    for base in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(base, handlers.metadata)
        app.router.add_get(f"{base}/ready", handlers.model_ready)
        app.router.add_post(f"{base}/infer", handlers.infer)
    return app


async def start_http(
    worker: Worker, cfg: WorkerHttpConfig, middlewares: list[Any] | None = None
) -> tuple[web.AppRunner, int]:
    """Start serving; return the runner (clean it up to stop) and the bound port."""
    runner = web.AppRunner(build_app(worker, cfg, middlewares), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.bind, cfg.port, reuse_port=cfg.reuse_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BackendUnavailableError(f"cannot listen on {cfg.bind}:{cfg.port}: {exc}") from exc
    port = cfg.port
    server = getattr(site, "_server", None)
    sockets = getattr(server, "sockets", None) or []
    if sockets:
        port = int(sockets[0].getsockname()[1])
    logger.info("OIP v2 HTTP on %s:%d", cfg.bind, port)
    return runner, port
