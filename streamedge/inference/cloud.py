"""The ``cloud`` tier: any KServe Open Inference Protocol v2 server over HTTP (httpx).

Two ways to ask, per model (``remote_models``):

* ``payload: frame`` (the default) sends the frame itself, as the device's
  JPEG bytes (``frame_encoded``, BYTES) or raw pixels (``frame``, UINT8
  ``[h, w, 3]``, BGR), or a window (``window``, FP32 ``[n, fields]``), and
  reads the ``answer`` (BYTES, JSON) and ``confidence`` outputs. This is what
  ``streamedge worker`` serves: the full model pipeline runs remotely.
* ``payload: tensor`` runs the model's own preprocessing here and sends its
  input tensor (FP32) to a server hosting the bare model (Triton, MLServer,
  KServe serving the same ONNX or a scikit-learn model), then turns the
  returned class scores into a classifier answer.

The binary tensor extension is used when the server lists it in ``GET /v2``
(``binary: auto``); JSON otherwise. httpx's exceptions are mapped here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

import numpy as np

from streamedge.errors import (
    BackendUnavailableError,
    DecodeError,
    InferenceError,
    InferenceTimeoutError,
)
from streamedge.inference import oip
from streamedge.inference.config import CloudModelConfig, CloudTierConfig
from streamedge.inference.wire import is_image
from streamedge.models.classifier import softmax
from streamedge.protocols import Model
from streamedge.records import (
    JSON,
    InferenceRequest,
    InferenceResult,
    ModelRef,
    Tier,
    Window,
)

logger = logging.getLogger(__name__)


def frame_inputs(request: InferenceRequest, *, jpeg: bool) -> list[oip.Tensor]:
    """The frame-level OIP inputs of a request (what ``streamedge worker`` takes)."""
    item = request.input
    if isinstance(item, Window):
        return [oip.Tensor.of("window", np.asarray(item.values, dtype=np.float32))]
    if jpeg and is_image(request.encoded):
        assert request.encoded is not None  # noqa: S101  # is_image checked it
        return [oip.Tensor.of_bytes("frame_encoded", [request.encoded])]
    return [oip.Tensor.of("frame", item.image)]


def answer_from_outputs(outputs: Mapping[str, oip.Tensor]) -> tuple[JSON, float | None]:
    """The ``answer`` and ``confidence`` outputs of a frame-level response."""
    tensor = outputs.get("answer")
    if tensor is None:
        raise InferenceError("response has no 'answer' output")
    try:
        answer = json.loads(tensor.items()[0])
    except (ValueError, IndexError, DecodeError) as exc:
        raise InferenceError(f"response 'answer' is not a JSON document: {exc}") from exc
    if not isinstance(answer, dict):
        raise InferenceError("response 'answer' is not a JSON object")
    confidence = None
    conf = outputs.get("confidence")
    if conf is not None and not isinstance(conf.data, list) and conf.data.size:
        value = float(conf.data.reshape(-1)[0])
        confidence = value if math.isfinite(value) else None
    return answer, confidence


def classifier_answer(
    scores: np.ndarray[Any, Any], labels: list[str], *, apply_softmax: bool
) -> tuple[JSON, float]:
    """A classifier answer (``label``, ``score``, ``scores``) from one row of scores."""
    row = np.asarray(scores, dtype=np.float32).reshape(-1)
    if not row.size:
        raise InferenceError("the server returned no class scores")
    if apply_softmax:
        row = softmax(row)
    best = int(np.argmax(row))
    names = labels if len(labels) == len(row) else [str(i) for i in range(len(row))]
    answer = {
        "label": names[best],
        "score": round(float(row[best]), 4),
        "scores": {n: round(float(s), 4) for n, s in zip(names, row, strict=True)},
    }
    return answer, float(row[best])


class CloudBackend:
    """An OIP v2 client for one server."""

    tier = Tier.CLOUD

    def __init__(self, cfg: CloudTierConfig, *, models: Mapping[ModelRef, Model]) -> None:
        self.name = cfg.tier_name()
        self._cfg = cfg
        self._models = {ref.name: m for ref, m in models.items()}
        self._remote = {m.name: m for m in cfg.remote_models}
        self._client: Any = None
        self._binary: bool | None = {"always": True, "never": False}.get(cfg.binary)
        self.inflight = 0
        self.server: dict[str, Any] = {}

    @property
    def capacity(self) -> int:
        """Requests served at once without queueing (configured)."""
        return self._cfg.capacity

    @property
    def depth(self) -> int:
        """Requests in flight."""
        return self.inflight

    @property
    def binary(self) -> bool | None:
        """Whether requests use the binary extension (None: not known yet)."""
        return self._binary

    def remote(self, model: str) -> CloudModelConfig:
        """How ``model`` is asked of the server."""
        return self._remote.get(model) or CloudModelConfig(name=model)

    async def __aenter__(self) -> Self:
        import httpx  # lazy: only gateways with a cloud tier need it

        headers = {}
        if self._cfg.token is not None:
            headers["Authorization"] = f"Bearer {self._cfg.token.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=self._cfg.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self._cfg.timeout_s * 2, connect=min(self._cfg.timeout_s, 5.0)),
            limits=httpx.Limits(max_connections=self._cfg.max_connections),
        )
        try:
            await self._probe()
        except InferenceError as exc:
            logger.warning("cloud tier %s: %s; falling back meanwhile", self.name, exc)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def serves(self, model: ModelRef) -> bool:
        """Whether this tier is configured for the model."""
        if self._cfg.models is not None and model.name not in self._cfg.models:
            return False
        if self.remote(model.name).payload == "tensor":
            return hasattr(self._models.get(model.name), "tensor")
        return True

    async def _get(self, path: str) -> Any:
        import httpx

        try:
            response = await self._client.get(path)
        except httpx.TimeoutException as exc:
            raise InferenceTimeoutError(f"GET {path}: timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"GET {path}: {exc}") from exc
        if response.status_code != 200:
            raise BackendUnavailableError(f"GET {path}: HTTP {response.status_code}")
        return response.json() if response.content else {}

    async def _probe(self) -> None:
        """Learn the server's name and extensions (``GET /v2``)."""
        if self._client is None:
            raise BackendUnavailableError(f"{self.name} tier is not running")
        try:
            doc = await self._get("/v2")
        except ValueError as exc:
            raise BackendUnavailableError(f"GET /v2: not JSON: {exc}") from exc
        self.server = doc if isinstance(doc, dict) else {}
        extensions = self.server.get("extensions") or []
        if self._cfg.binary == "auto":
            self._binary = oip.BINARY_EXTENSION in extensions
        logger.info(
            "cloud tier %s: %s %s (binary tensors: %s)",
            self.name,
            self.server.get("name", "?"),
            self.server.get("version", "?"),
            "yes" if self._binary else "no",
        )

    async def ready(self, model: ModelRef) -> bool:
        """``GET /v2/models/{m}/ready`` of the model's remote name."""
        rm = self.remote(model.name)
        try:
            await self._get(f"/v2/models/{rm.remote_name or model.name}/ready")
        except InferenceError:
            return False
        return True

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """POST one inference request and turn the response into an answer."""
        import httpx

        if self._client is None:
            raise BackendUnavailableError(f"{self.name} tier is not running")
        if self._binary is None:
            await self._probe()
        binary = bool(self._binary)
        rm = self.remote(request.model.name)
        path = f"/v2/models/{rm.remote_name or request.model.name}"
        if rm.remote_version:
            path += f"/versions/{rm.remote_version}"
        path += "/infer"
        if rm.payload == "tensor":
            inputs = [self._tensor_input(request, rm)]
            outputs = [rm.output_name] if rm.output_name else None
        else:
            inputs = frame_inputs(request, jpeg=self._cfg.frames_as_jpeg and binary)
            outputs = ["answer", "confidence"]
        body, headers = oip.encode_request(inputs, outputs=outputs, binary=binary)
        start = time.perf_counter()
        self.inflight += 1
        try:
            response = await self._client.post(path, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise InferenceTimeoutError(f"{self.name}: {path} timed out") from exc
        except httpx.HTTPError as exc:
            raise BackendUnavailableError(f"{self.name}: {path}: {exc}") from exc
        finally:
            self.inflight -= 1
        latency = time.perf_counter() - start
        if response.status_code != 200:
            raise InferenceError(
                f"{self.name}: {path}: HTTP {response.status_code}: {_error_text(response)}"
            )
        try:
            decoded = oip.decode_response(response.content, response.headers.get(oip.HEADER_LENGTH))
        except DecodeError as exc:
            raise InferenceError(f"{self.name}: bad response: {exc}") from exc
        confidence: float | None
        if rm.payload == "tensor":
            answer, confidence = self._tensor_answer(request, rm, decoded)
        else:
            answer, confidence = answer_from_outputs(decoded.outputs)
        return InferenceResult(
            model=request.model,
            answer=answer,
            tier=Tier.CLOUD,
            backend=self.name,
            latency_s=latency,
            confidence=confidence,
        )

    def _tensor_input(self, request: InferenceRequest, rm: CloudModelConfig) -> oip.Tensor:
        model = self._models.get(request.model.name)
        make = getattr(model, "tensor", None)
        if make is None:
            raise InferenceError(f"{request.model}: no local preprocessing for tensor requests")
        x = np.asarray(make(request.input), dtype=np.float32)
        if rm.input_shape:
            try:
                x = x.reshape(rm.input_shape)
            except ValueError as exc:
                raise InferenceError(f"{request.model}: input_shape: {exc}") from exc
        name = rm.input_name or getattr(model, "input_name", None) or "input"
        return oip.Tensor.of(str(name), x)

    def _tensor_answer(
        self, request: InferenceRequest, rm: CloudModelConfig, decoded: oip.InferResponse
    ) -> tuple[JSON, float]:
        if not decoded.outputs:
            raise InferenceError(f"{self.name}: response without outputs")
        tensor = (
            decoded.outputs.get(rm.output_name)
            if rm.output_name
            else next(iter(decoded.outputs.values()))
        )
        if tensor is None:
            raise InferenceError(f"{self.name}: response lacks output {rm.output_name!r}")
        try:
            scores = tensor.array().astype(np.float32)
        except DecodeError as exc:
            raise InferenceError(f"{self.name}: {exc}") from exc
        labels = list(getattr(self._models.get(request.model.name), "labels", []) or [])
        return classifier_answer(scores, labels, apply_softmax=rm.softmax)


def _error_text(response: Any) -> str:
    try:
        doc = response.json()
    except ValueError:
        return str(response.text)[:200]
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])[:200]
    return str(doc)[:200]
