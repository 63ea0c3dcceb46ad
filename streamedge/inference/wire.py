"""How inputs and answers travel between a gateway and edge workers (msgpack, raw bytes).

A request is one msgpack map::

    {"v": 1, "model": "name@version", "stream": "device/stream", "ts": 1700000000.5,
     "kind": "frame", "content_type": "image/jpeg", "data": <bytes>, "shape": [h, w, 3]}
    {"v": 1, ..., "kind": "window", "fields": ["t", "h"], "data": <float32 LE>, "shape": [n, f]}

plus, on MQTT 3.1.1 (no properties), ``"reply_to"`` and ``"correlation"``.
Frames travel as the device's own JPEG/PNG bytes when there are some (a
768x576 frame is ~40-60 kB as JPEG and 1.3 MB as raw BGR), else as raw BGR
bytes with their shape; never base64. An answer is::

    {"v": 1, "ok": true, "model": "name@version", "answer": {...}, "confidence": 0.97,
     "latency_ms": 12.5, "worker": "w1"}
    {"v": 1, "ok": false, "reason": "bad_input", "error": "..."}

The store-and-forward queue persists requests in the same format.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import msgpack
import numpy as np

from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import DecodeError, InferenceError
from streamedge.records import (
    Frame,
    InferenceResult,
    ModelInput,
    ModelRef,
    RawMessage,
    StreamKey,
    Window,
)

VERSION = 1
Encoding = Literal["auto", "jpeg", "raw"]
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


def is_image(data: bytes | None) -> bool:
    """Whether ``data`` is JPEG or PNG bytes."""
    return data is not None and data.startswith(_IMAGE_MAGIC)


def pack(doc: dict[str, Any]) -> bytes:
    """msgpack with bin types for bytes."""
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def unpack(data: bytes) -> dict[str, Any]:
    """A msgpack map, or DecodeError."""
    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"malformed msgpack: {exc}", reason="bad_payload") from exc
    if not isinstance(doc, dict):
        raise DecodeError("expected a msgpack map", reason="bad_payload")
    return doc


def encode_input(
    item: ModelInput,
    *,
    encoded: bytes | None = None,
    encoding: Encoding = "auto",
    jpeg_quality: int = 90,
) -> dict[str, Any]:
    """The input part of a request (frame or window)."""
    doc: dict[str, Any] = {"stream": str(item.stream), "ts": item.ts}
    if isinstance(item, Window):
        values = np.ascontiguousarray(item.values, dtype="<f4")
        doc.update(
            kind="window",
            fields=list(item.fields),
            data=values.tobytes(),
            shape=list(values.shape),
        )
        return doc
    image = item.image
    doc.update(kind="frame", shape=list(image.shape))
    if encoding != "raw" and is_image(encoded):
        assert encoded is not None  # noqa: S101  # is_image checked it
        content_type = "image/png" if encoded.startswith(b"\x89PNG") else "image/jpeg"
        doc.update(content_type=content_type, data=encoded)
    elif encoding == "jpeg":
        import cv2  # lazy

        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise InferenceError("cannot encode the frame as JPEG")
        doc.update(content_type="image/jpeg", data=buf.tobytes())
    else:
        doc.update(content_type="image/x-raw", data=np.ascontiguousarray(image, np.uint8).tobytes())
    return doc


def _stream(doc: dict[str, Any]) -> StreamKey:
    text = doc.get("stream")
    device, _, stream = (text if isinstance(text, str) else "").partition("/")
    return StreamKey(device or "remote", stream or "remote")


def decode_input(
    doc: dict[str, Any], *, decoder: PayloadDecoder
) -> tuple[ModelInput, bytes | None]:
    """The model input of a request, and the encoded image bytes it carried (if any).

    Raises:
        DecodeError: the input is malformed (its ``reason`` is the error answer's).
    """
    key = _stream(doc)
    ts = doc.get("ts")
    ts = float(ts) if isinstance(ts, int | float) and math.isfinite(ts) else 0.0
    data = doc.get("data")
    shape = doc.get("shape")
    if not isinstance(data, bytes | bytearray):
        raise DecodeError("request needs binary 'data'", reason="bad_input")
    data = bytes(data)
    kind = doc.get("kind")
    if kind == "window":
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(d, int) for d in shape)
        ):
            raise DecodeError("a window needs 'shape': [n, fields]", reason="bad_input")
        n, f = shape
        if n <= 0 or f <= 0 or n * f * 4 != len(data):
            raise DecodeError(f"window of {len(data)} bytes != shape {shape}", reason="bad_input")
        fields = doc.get("fields") or []
        values = np.frombuffer(data, dtype="<f4").reshape(n, f).astype(np.float32)
        window = Window(stream=key, ts=ts, fields=tuple(str(x) for x in fields), values=values)
        return window, None
    if kind != "frame":
        raise DecodeError(f"unknown input kind {kind!r}", reason="bad_input")
    content_type = doc.get("content_type")
    raw = RawMessage(stream=key, payload=data, received_at=0.0)
    if is_image(data):
        frame = decoder.decode_frame(raw)
        return Frame(stream=key, ts=ts, image=frame.image, encoded_bytes=len(data)), data
    envelope = pack({"content_type": content_type or "image/x-raw", "data": data, "shape": shape})
    frame = decoder.decode_frame(RawMessage(stream=key, payload=envelope, received_at=0.0))
    return Frame(stream=key, ts=ts, image=frame.image, encoded_bytes=len(data)), None


def encode_answer(result: InferenceResult, *, worker: str) -> dict[str, Any]:
    """A successful answer."""
    return {
        "v": VERSION,
        "ok": True,
        "model": str(result.model),
        "answer": result.answer,
        "confidence": result.confidence,
        "latency_ms": round(result.latency_s * 1e3, 3),
        "worker": worker,
    }


def encode_error(reason: str, message: str, *, worker: str) -> dict[str, Any]:
    """An error answer (the requester fails over at once instead of timing out)."""
    return {"v": VERSION, "ok": False, "reason": reason, "error": message, "worker": worker}


def parse_model(text: object) -> ModelRef:
    """``name@version`` from a request, or DecodeError."""
    if not isinstance(text, str) or not text:
        raise DecodeError("request needs 'model': 'name@version'", reason="bad_input")
    return ModelRef.parse(text)
