from __future__ import annotations

import json
import math
import struct
import zlib

import cv2
import msgpack
import numpy as np
import pytest

from streamedge.decoders.payloads import PayloadDecoder, sniff_kind, to_bgr
from streamedge.errors import DecodeError
from streamedge.records import Frame, RawMessage, Reading, StreamKey

KEY = StreamKey("dev1", "s")


def raw(payload: bytes, content_type: str | None = None) -> RawMessage:
    return RawMessage(stream=KEY, payload=payload, received_at=0.0, content_type=content_type)


@pytest.fixture
def decoder() -> PayloadDecoder:
    return PayloadDecoder(max_frame_pixels=1000 * 1000, wall_clock=lambda: 123.0)


def image(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_reading_json_numeric_fields_and_extras(decoder: PayloadDecoder) -> None:
    item = decoder.decode(
        raw(json.dumps({"ts": 5, "t": 21.5, "n": 3, "ok": True, "unit": "C"}).encode())
    )
    assert isinstance(item, Reading)
    assert item.ts == 5.0
    assert item.values == {"t": 21.5, "n": 3.0}
    assert item.extra == {"ok": True, "unit": "C"}


def test_reading_msgpack_and_nested_values(decoder: PayloadDecoder) -> None:
    payload = msgpack.packb({"values": {"a": 1.5}, "b": 2})
    item = decoder.decode(raw(payload))
    assert isinstance(item, Reading)
    assert item.values == {"a": 1.5, "b": 2.0}
    assert item.ts == 123.0  # no ts: the gateway's wall clock


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[1, 2]", b'{"ts": "yesterday"}', b'{"x": NaN}', b"\x81\xc1", b""],
)
def test_reading_malformed_payloads_raise_decode_error(
    decoder: PayloadDecoder, payload: bytes
) -> None:
    with pytest.raises(DecodeError) as err:
        decoder.decode(raw(payload), "reading")
    assert err.value.reason == "bad_payload"


def test_frame_jpeg_and_png_decode_to_bgr(decoder: PayloadDecoder) -> None:
    img = image()
    ok, png = cv2.imencode(".png", img)
    assert ok
    frame = decoder.decode(raw(bytes(png)))
    assert isinstance(frame, Frame)
    assert np.array_equal(frame.image, img)
    assert frame.encoded_bytes == len(png)
    ok, jpg = cv2.imencode(".jpg", img)
    frame = decoder.decode(raw(bytes(jpg)))
    assert isinstance(frame, Frame)
    assert frame.image.shape == (48, 64, 3)


def test_frame_gray_png_becomes_three_channels(decoder: PayloadDecoder) -> None:
    gray = image()[:, :, 0]
    ok, png = cv2.imencode(".png", gray)
    frame = decoder.decode(raw(bytes(png)))
    assert isinstance(frame, Frame)
    assert frame.image.shape == (48, 64, 3)
    assert np.array_equal(frame.image[:, :, 2], gray)


def test_frame_envelope_with_raw_array(decoder: PayloadDecoder) -> None:
    img = image(4, 5)
    env = msgpack.packb(
        {"ts": 9.5, "content_type": "image/x-raw", "data": img.tobytes(), "shape": [4, 5, 3]}
    )
    frame = decoder.decode(raw(env))
    assert isinstance(frame, Frame)
    assert frame.ts == 9.5
    assert np.array_equal(frame.image, img)


def test_frame_envelope_wrong_raw_size(decoder: PayloadDecoder) -> None:
    env = msgpack.packb({"data": b"\x00" * 10, "shape": [4, 5, 3], "content_type": "image/x-raw"})
    with pytest.raises(DecodeError, match="needs 60"):
        decoder.decode(raw(env), "frame")


def _png_header(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def test_frame_too_many_pixels_rejected_from_the_header(decoder: PayloadDecoder) -> None:
    # Only a header: decoding would fail, so the size check must come first.
    with pytest.raises(DecodeError) as err:
        decoder.decode(raw(_png_header(5000, 5000)))
    assert err.value.reason == "too_large"


def test_frame_jpeg_size_read_from_sof_marker(decoder: PayloadDecoder) -> None:
    small = PayloadDecoder(max_frame_pixels=100)
    ok, jpg = cv2.imencode(".jpg", image(20, 30))
    with pytest.raises(DecodeError, match="30x20"):
        small.decode(raw(bytes(jpg)))


def test_frame_corrupt_image(decoder: PayloadDecoder) -> None:
    ok, jpg = cv2.imencode(".jpg", image())
    broken = bytes(jpg)[:40]
    with pytest.raises(DecodeError) as err:
        decoder.decode(raw(broken))
    assert err.value.reason == "bad_image"


def test_frame_non_image_bytes(decoder: PayloadDecoder) -> None:
    with pytest.raises(DecodeError):
        decoder.decode(raw(b"GIF89a...."), "frame")


def test_sniff_kind() -> None:
    assert sniff_kind(b"\xff\xd8\xff\xe0", None) == "frame"
    assert sniff_kind(b'{"a": 1}', None) == "reading"
    assert sniff_kind(msgpack.packb({"a": 1}), None) == "reading"
    assert sniff_kind(msgpack.packb({"ts": 1, "data": b"x"}), None) == "frame"
    assert sniff_kind(b"whatever", "image/jpeg") == "frame"
    with pytest.raises(DecodeError):
        sniff_kind(b"\x00\x01", None)


def test_to_bgr_conversions() -> None:
    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    assert to_bgr(bgra).shape == (2, 2, 3)
    f = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert to_bgr(f)[0, 0, 0] == 127
    u16 = np.full((2, 2), 65535, dtype=np.uint16)
    assert to_bgr(u16)[0, 0, 0] == 255
    with pytest.raises(DecodeError):
        to_bgr(np.zeros((2, 2, 5), dtype=np.uint8))
    assert math.isclose(float(to_bgr(np.ones((1, 1), dtype=np.float64))[0, 0, 0]), 255)


def test_frame_envelope_with_jpeg_data_and_device_time(decoder: PayloadDecoder) -> None:
    ok, buf = cv2.imencode(".jpg", image())
    assert ok
    env = msgpack.packb({"ts": 1700000000.25, "content_type": "image/jpeg", "data": bytes(buf)})
    frame = decoder.decode(raw(env))
    assert isinstance(frame, Frame)
    assert frame.ts == 1700000000.25
    assert frame.image.shape == (48, 64, 3)
    assert frame.encoded_bytes == len(env)


def test_frame_envelope_with_a_gray_raw_array(decoder: PayloadDecoder) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    env = msgpack.packb({"content_type": "image/x-raw", "data": gray.tobytes(), "shape": [3, 4]})
    frame = decoder.decode(raw(env))
    assert isinstance(frame, Frame)
    assert frame.image.shape == (3, 4, 3)
    assert (frame.image[:, :, 1] == gray).all()


def test_an_envelope_carrying_request_routing_is_still_a_frame(decoder: PayloadDecoder) -> None:
    # A 3.1.1 request names its reply topic inside the envelope, before 'data'.
    env = msgpack.packb(
        {
            "ts": 3.0,
            "reply_to": "streamedge/replies/" + "x" * 100,
            "correlation": "c-1",
            "content_type": "image/x-raw",
            "shape": [2, 2, 3],
            "data": bytes(12),
        }
    )
    assert sniff_kind(env, None) == "frame"
    frame = decoder.decode(raw(env))
    assert isinstance(frame, Frame) and frame.ts == 3.0


def test_content_type_property_decides_the_kind(decoder: PayloadDecoder) -> None:
    # MQTT 5 Content Type (or CoAP Content-Format) overrides sniffing the bytes.
    ok, buf = cv2.imencode(".png", image(8, 8))
    assert ok
    assert isinstance(decoder.decode(raw(bytes(buf), "image/png")), Frame)
    assert isinstance(decoder.decode(raw(b' {"t": 1}', "application/json")), Reading)
    with pytest.raises(DecodeError) as err:
        decoder.decode(raw(b'{"t": 1}', "image/jpeg"))
    assert err.value.reason == "bad_image"


def test_request_routing_fields_are_not_reading_values(decoder: PayloadDecoder) -> None:
    for payload in (
        json.dumps({"t": 2, "reply_to": "a/b", "correlation": 7}).encode(),
        msgpack.packb({"t": 2, "reply_to": "a/b", "correlation": 7}),
    ):
        reading = decoder.decode(raw(payload))
        assert isinstance(reading, Reading)
        assert reading.values == {"t": 2.0}
        assert reading.extra == {}
