"""Decode device payloads into :class:`Reading` or :class:`Frame`.

Readings are JSON or msgpack maps: numeric fields become ``values``, ``ts``
(epoch seconds) is the device time, everything else is kept in ``extra``.
A nested ``{"values": {...}}`` map is accepted too. ``reply_to`` and
``correlation`` route an on-demand request's answer and are not values.

Frames are raw JPEG/PNG bytes, or a msgpack envelope
``{"ts": float, "content_type": "image/jpeg" | "image/png" | "image/x-raw",
"data": bytes, "shape": [h, w, c]}`` (``shape`` for raw arrays, uint8).
Images are converted to 8-bit BGR with three channels; sizes are checked from
the header before decoding so a decompression bomb costs nothing.
"""

from __future__ import annotations

import json
import math
import struct
import time
from typing import Any, Literal

import msgpack
import numpy as np

from streamedge.errors import DecodeError
from streamedge.records import Frame, Image, Item, RawMessage, Reading

Kind = Literal["reading", "frame"]

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_RAW_TYPES = {"image/x-raw", "application/x-raw", "image/x-raw-bgr"}
# Not values: the device time, a nested map, and request/response routing (MQTT 3.1.1).
_RESERVED = frozenset({"values", "ts", "reply_to", "correlation"})


def sniff_kind(payload: bytes, content_type: str | None) -> Kind:
    """Decide whether a payload is a reading or a frame."""
    if content_type:
        ct = content_type.split(";")[0].strip().lower()
        if ct.startswith("image/"):
            return "frame"
        if ct in ("application/json", "text/json"):
            return "reading"
    if payload.startswith((_JPEG, _PNG)):
        return "frame"
    if payload[:1] in (b"{", b" ", b"\n", b"\t"):
        return "reading"
    first = payload[:1]
    if first and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF)):
        # A msgpack map: an envelope has a binary "data" field.
        return "frame" if b"\xa4data" in payload[:256] else "reading"
    raise DecodeError("payload is neither a JSON/msgpack map nor an image", reason="bad_payload")


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding."""
    if data.startswith(_PNG) and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data.startswith(_JPEG):
        i = 2
        n = len(data)
        while i + 9 < n:
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
            # SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the size.
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(w), int(h)
            i += 2 + seg_len
    return None


def to_bgr(image: np.ndarray[Any, Any]) -> Image:
    """Convert gray, BGRA and 16-bit or float images to uint8 BGR (H, W, 3)."""
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        elif np.issubdtype(image.dtype, np.floating):
            image = np.clip(image * (255.0 if image.max(initial=0) <= 1.0 else 1.0), 0, 255)
            image = image.astype(np.uint8)
        else:
            raise DecodeError(f"unsupported pixel type {image.dtype}", reason="bad_image")
    if image.ndim == 2:
        return np.ascontiguousarray(np.repeat(image[:, :, None], 3, axis=2))
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(image, 3, axis=2))
    raise DecodeError(f"unsupported image shape {image.shape}", reason="bad_image")


class PayloadDecoder:
    """Decodes both kinds; ``kind`` forces one, ``auto`` sniffs the payload."""

    def __init__(self, *, max_frame_pixels: int, wall_clock: Any = time.time) -> None:
        self._max_pixels = max_frame_pixels
        self._wall = wall_clock

    def decode(self, raw: RawMessage, kind: Literal["auto", "reading", "frame"] = "auto") -> Item:
        """Decode one payload; raise DecodeError with a drop reason."""
        if not raw.payload:
            raise DecodeError("empty payload", reason="bad_payload")
        actual: Kind = sniff_kind(raw.payload, raw.content_type) if kind == "auto" else kind
        if actual == "frame":
            return self.decode_frame(raw)
        return self.decode_reading(raw)

    # -- readings ---------------------------------------------------------
    def decode_reading(self, raw: RawMessage) -> Reading:
        """JSON or msgpack map → Reading."""
        data = self._load_map(raw.payload)
        nested = data.get("values")
        fields: dict[str, Any] = dict(nested) if isinstance(nested, dict) else {}
        fields.update({k: v for k, v in data.items() if k not in _RESERVED})
        values: dict[str, float] = {}
        extra: dict[str, Any] = {}
        for key, value in fields.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                fv = float(value)
                if not math.isfinite(fv):
                    raise DecodeError(f"field {key!r} is not finite", reason="bad_payload")
                values[str(key)] = fv
            else:
                extra[str(key)] = value
        ts = data.get("ts")
        if ts is None:
            ts = self._wall()
        elif not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
            raise DecodeError("'ts' must be a number (epoch seconds)", reason="bad_payload")
        return Reading(stream=raw.stream, ts=float(ts), values=values, extra=extra)

    @staticmethod
    def _load_map(payload: bytes) -> dict[str, Any]:
        try:
            if payload[:1] in (b"{", b" ", b"\n", b"\t", b"["):
                data = json.loads(payload)
            else:
                data = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as exc:
            raise DecodeError(f"malformed reading: {exc}", reason="bad_payload") from exc
        if not isinstance(data, dict):
            raise DecodeError("a reading must be a JSON or msgpack map", reason="bad_payload")
        return data

    # -- frames -----------------------------------------------------------
    def decode_frame(self, raw: RawMessage) -> Frame:
        """Image bytes or a msgpack envelope → Frame (BGR uint8)."""
        payload = raw.payload
        ts: float | None = None
        content_type = raw.content_type
        shape: Any = None
        if not payload.startswith((_JPEG, _PNG)):
            first = payload[0]
            if not (0x80 <= first <= 0x8F or first in (0xDE, 0xDF)):
                raise DecodeError(
                    "frame is neither JPEG/PNG nor a msgpack frame envelope", reason="bad_image"
                )
            env = self._load_map(payload)
            data = env.get("data")
            if not isinstance(data, bytes | bytearray):
                raise DecodeError("frame envelope needs binary 'data'", reason="bad_payload")
            payload = bytes(data)
            raw_ts = env.get("ts")
            if isinstance(raw_ts, int | float) and not isinstance(raw_ts, bool):
                ts = float(raw_ts)
            content_type = env.get("content_type", content_type)
            shape = env.get("shape")
        image = self._decode_image(payload, content_type, shape)
        return Frame(
            stream=raw.stream,
            ts=ts if ts is not None else self._wall(),
            image=image,
            encoded_bytes=len(raw.payload),
        )

    def _decode_image(self, data: bytes, content_type: Any, shape: Any) -> Image:
        ct = str(content_type).split(";")[0].strip().lower() if content_type else ""
        if ct in _RAW_TYPES or (shape is not None and not data.startswith((_JPEG, _PNG))):
            return self._decode_raw(data, shape)
        size = _image_size(data)
        if size is None:
            raise DecodeError("not a JPEG or PNG image", reason="bad_image")
        w, h = size
        if w <= 0 or h <= 0:
            raise DecodeError("image header has a zero size", reason="bad_image")
        if w * h > self._max_pixels:
            raise DecodeError(f"image {w}x{h} exceeds max_frame_pixels", reason="too_large")
        import cv2  # lazy: sensor-only gateways never load OpenCV

        buf = np.frombuffer(data, dtype=np.uint8)
        image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if image is None:
            raise DecodeError("image data is corrupt", reason="bad_image")
        return to_bgr(image)

    def _decode_raw(self, data: bytes, shape: Any) -> Image:
        if not isinstance(shape, list | tuple) or len(shape) not in (2, 3):
            raise DecodeError("raw frames need 'shape': [h, w] or [h, w, c]", reason="bad_payload")
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError) as exc:
            raise DecodeError("'shape' must be integers", reason="bad_payload") from exc
        if any(d <= 0 for d in dims) or dims[0] * dims[1] > self._max_pixels:
            raise DecodeError(f"raw frame shape {dims} is invalid or too large", reason="too_large")
        if math.prod(dims) != len(data):
            raise DecodeError(
                f"raw frame has {len(data)} bytes, shape {dims} needs {math.prod(dims)}",
                reason="bad_payload",
            )
        return to_bgr(np.frombuffer(data, dtype=np.uint8).reshape(dims))
