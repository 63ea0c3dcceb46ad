"""The worker process: models behind a local backend, served over MQTT and OIP v2 HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import (
    BackendUnavailableError,
    DecodeError,
    InferenceError,
    InferenceTimeoutError,
)
from streamedge.inference.factory import session_settings
from streamedge.inference.local import LocalBackend
from streamedge.inference.mqtt_rpc import Broker, MqttRpcServer
from streamedge.inference.wire import (
    decode_input,
    encode_answer,
    encode_error,
    parse_model,
    unpack,
)
from streamedge.models.factory import build_model, model_info
from streamedge.protocols import Model
from streamedge.records import InferenceRequest, InferenceResult, ModelInput, ModelRef
from streamedge.worker.config import WorkerConfig

logger = logging.getLogger(__name__)


class Worker:
    """Loads the configured models and serves them until ``stop`` is set."""

    def __init__(self, cfg: WorkerConfig, *, http_middlewares: list[Any] | None = None) -> None:
        self.cfg = cfg
        self._middlewares = http_middlewares
        self.name = cfg.worker.name
        self.models: dict[str, Model] = {}
        self.decoder = PayloadDecoder(max_frame_pixels=8192 * 8192)
        self.backend: LocalBackend | None = None
        self.mqtt: MqttRpcServer | None = None
        self.http_port: int | None = None
        self.ready = asyncio.Event()
        self.started = time.monotonic()

    async def load(self) -> None:
        """Build every model (in threads), with the runtime's tuning."""
        settings = session_settings(self.cfg.runtime)
        for mcfg in self.cfg.models:
            start = time.perf_counter()
            model = await asyncio.to_thread(
                build_model,
                mcfg,
                data_dir=self.cfg.worker.data_dir,
                settings=settings,
                quantize=mcfg.name in self.cfg.runtime.quantize,
            )
            self.models[model_info(mcfg).ref.name] = model
            logger.info("loaded %s in %.2f s", model.ref, time.perf_counter() - start)

    async def infer(self, name: str, item: ModelInput, encoded: bytes | None) -> InferenceResult:
        """Run one model on one input (through the batching local backend).

        Raises:
            InferenceError: unknown model, timeout, overload or model failure.
        """
        model = self.models.get(name)
        if model is None or self.backend is None:
            raise BackendUnavailableError(f"model {name} is not served here")
        request = InferenceRequest(model=model.ref, input=item, encoded=encoded)
        timeout = self.cfg.runtime.timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await self.backend.infer(request)
        except TimeoutError as exc:
            raise InferenceTimeoutError(f"{model.ref}: no answer within {timeout:g} s") from exc

    def ref(self, name: str) -> ModelRef | None:
        """The served model called ``name``."""
        model = self.models.get(name)
        return model.ref if model is not None else None

    async def handle_mqtt(self, name: str, body: bytes) -> dict[str, Any]:
        """Answer one MQTT request (never raises: errors become error replies)."""
        try:
            doc = unpack(body)
            ref = parse_model(doc.get("model"))
            served = self.ref(name)
            if served is None or ref.name != name:
                return encode_error("not_served", f"{ref} is not served here", worker=self.name)
            if ref.version != served.version:
                return encode_error(
                    "version_mismatch", f"serving {served}, asked {ref}", worker=self.name
                )
            if doc.get("content_type") == "image/x-raw" or doc.get("kind") == "window":
                item, encoded = decode_input(doc, decoder=self.decoder)
            else:  # JPEG decoding takes milliseconds: keep it off the event loop
                item, encoded = await asyncio.to_thread(decode_input, doc, decoder=self.decoder)
            result = await self.infer(name, item, encoded)
        except DecodeError as exc:
            return encode_error(exc.reason, str(exc), worker=self.name)
        except BackendUnavailableError as exc:
            return encode_error("overloaded", str(exc), worker=self.name)
        except InferenceError as exc:
            return encode_error("failed", str(exc), worker=self.name)
        return encode_answer(result, worker=self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Load, serve over MQTT and HTTP, and stop cleanly when ``stop`` is set."""
        if not self.models:
            await self.load()
        backend = LocalBackend(
            {m.ref: m for m in self.models.values()},
            self.cfg.runtime.model_copy(update={"models": None}),
        )
        async with backend:
            self.backend = backend
            runner = None
            if self.cfg.http.enabled:
                from streamedge.worker.http import start_http

                runner, self.http_port = await start_http(self, self.cfg.http, self._middlewares)
            try:
                async with asyncio.TaskGroup() as tg:
                    mqtt_ready = asyncio.Event()
                    mqtt_task = None
                    if self.cfg.mqtt is not None:
                        self.mqtt = self._mqtt_server()
                        mqtt_task = tg.create_task(
                            self.mqtt.run(mqtt_ready), name=f"worker[{self.name}].mqtt"
                        )
                    else:
                        mqtt_ready.set()
                    waiter = tg.create_task(mqtt_ready.wait(), name=f"worker[{self.name}].wait")
                    stopper = tg.create_task(stop.wait(), name=f"worker[{self.name}].stop")
                    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                    if mqtt_ready.is_set():
                        self.ready.set()
                        logger.info(
                            "worker %s ready: %s (MQTT %s, HTTP %s)",
                            self.name,
                            ", ".join(str(m.ref) for m in self.models.values()),
                            self.mqtt.protocol if self.mqtt else "off",
                            self.http_port if self.http_port is not None else "off",
                        )
                    await stopper
                    waiter.cancel()
                    if mqtt_task is not None:
                        mqtt_task.cancel()
            finally:
                if runner is not None:
                    with contextlib.suppress(Exception):
                        await runner.cleanup()
                self.backend = None

    def _mqtt_server(self) -> MqttRpcServer:
        mq = self.cfg.mqtt
        assert mq is not None  # noqa: S101  # only called when configured
        broker = Broker(
            host=mq.host,
            port=mq.port,
            client_id=f"streamedge-worker-{self.name}",
            protocol=mq.protocol,
            username=mq.username,
            password=mq.password.get_secret_value() if mq.password else None,
        )
        rt = self.cfg.runtime
        return MqttRpcServer(
            broker,
            prefix=mq.topic_prefix,
            group=mq.group,
            worker=self.name,
            models=sorted(self.models),
            handler=self.handle_mqtt,
            concurrency=rt.max_concurrency,
            admit=rt.max_concurrency * rt.max_batch,
            max_pending=mq.max_pending,
            qos=mq.qos,
        )
