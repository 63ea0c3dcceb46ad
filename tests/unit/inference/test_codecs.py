"""OIP v2 messages (JSON and binary) and the msgpack wire format of edge requests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import DecodeError
from streamedge.inference import oip
from streamedge.inference.wire import decode_input, encode_input, pack, unpack
from streamedge.records import Frame, StreamKey, Window

KEY = StreamKey("cam", "camera")


@pytest.mark.parametrize("binary", [False, True])
def test_request_round_trip(binary: bool) -> None:
    image = np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    body, headers = oip.encode_request(
        [
            oip.Tensor.of("frame", image),
            oip.Tensor.of("w", floats),
            oip.Tensor.of_bytes("b", [b"x", b""]),
        ],
        outputs=["answer"],
        binary=binary,
        id="r1",
    )
    assert (oip.HEADER_LENGTH in headers) is binary
    req = oip.decode_request(body, headers.get(oip.HEADER_LENGTH))
    assert req.id == "r1"
    assert req.inputs["frame"].datatype == "UINT8"
    np.testing.assert_array_equal(req.inputs["frame"].array(), image)
    np.testing.assert_array_equal(req.inputs["w"].array(), floats)
    assert req.inputs["b"].items() == [b"x", b""]
    assert req.outputs == {"answer": binary}


def test_binary_is_much_smaller_than_json_for_a_frame() -> None:
    image = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    json_body, _ = oip.encode_request([oip.Tensor.of("frame", image)], binary=False)
    bin_body, _ = oip.encode_request([oip.Tensor.of("frame", image)], binary=True)
    assert len(bin_body) < image.nbytes + 200 < len(json_body)


def test_response_round_trip_mixed_binary_and_json() -> None:
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    body, headers = oip.encode_response(
        "m",
        [oip.Tensor.of("scores", scores), oip.Tensor.of_bytes("answer", [b'{"a":1}'])],
        binary={"scores"},
        model_version="2",
        id="x",
    )
    resp = oip.decode_response(body, headers.get(oip.HEADER_LENGTH))
    assert (resp.model_name, resp.model_version, resp.id) == ("m", "2", "x")
    np.testing.assert_array_equal(resp.outputs["scores"].array(), scores)
    assert resp.outputs["answer"].items() == [b'{"a":1}']


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (b"not json", None),
        (b'{"inputs": []}', None),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', None),
        (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', None),
        (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
            b'"parameters": {"binary_data_size": 8}}]}abcd',
            "91",
        ),
        (b'{"inputs": []}', "999"),
    ],
)
def test_malformed_requests_are_decode_errors(body: bytes, header: str | None) -> None:
    with pytest.raises(DecodeError):
        oip.decode_request(body, header)


def test_nested_json_data_is_accepted() -> None:
    body = (
        b'{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], '
        b'"data": [[1, 2], [3, 4]]}]}'
    )
    assert oip.decode_request(body, None).inputs["x"].array().tolist() == [[1, 2], [3, 4]]


def _frame() -> tuple[Frame, bytes]:
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    cv2.rectangle(image, (10, 10), (30, 30), (0, 200, 255), -1)
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return Frame(stream=KEY, ts=3.5, image=image), bytes(buf)


@pytest.mark.parametrize("encoding", ["auto", "raw", "jpeg"])
def test_frames_travel_as_encoded_bytes_or_raw_pixels(encoding: str) -> None:
    frame, png = _frame()
    doc = encode_input(frame, encoded=png, encoding=encoding)  # type: ignore[arg-type]
    expected = {"auto": "image/png", "raw": "image/x-raw", "jpeg": "image/png"}[encoding]
    assert doc["content_type"] == expected
    item, encoded = decode_input(unpack(pack(doc)), decoder=PayloadDecoder(max_frame_pixels=10**6))
    assert isinstance(item, Frame) and item.stream == KEY and item.ts == 3.5
    np.testing.assert_array_equal(item.image, frame.image)  # PNG and raw are lossless
    assert (encoded is not None) is (encoding != "raw")


def test_raw_frames_are_jpeg_encoded_on_request() -> None:
    frame, _ = _frame()
    doc = encode_input(frame, encoded=None, encoding="jpeg")
    assert doc["content_type"] == "image/jpeg" and len(doc["data"]) < frame.image.nbytes
    item, _ = decode_input(doc, decoder=PayloadDecoder(max_frame_pixels=10**6))
    assert isinstance(item, Frame) and item.image.shape == frame.image.shape


def test_windows_round_trip_as_float32_bytes() -> None:
    values = np.arange(8, dtype=np.float32).reshape(4, 2)
    window = Window(stream=KEY, ts=1.0, fields=("t", "h"), values=values)
    item, _ = decode_input(
        unpack(pack(encode_input(window))), decoder=PayloadDecoder(max_frame_pixels=1)
    )
    assert isinstance(item, Window) and item.fields == ("t", "h")
    np.testing.assert_array_equal(item.values, values)


@pytest.mark.parametrize(
    "doc",
    [
        {"kind": "frame"},
        {"kind": "blob", "data": b"x"},
        {"kind": "window", "data": b"\x00" * 7, "shape": [1, 2]},
        {"kind": "frame", "data": b"\x00" * 5, "shape": [2, 2, 3], "content_type": "image/x-raw"},
    ],
)
def test_malformed_inputs_are_decode_errors(doc: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_input(doc, decoder=PayloadDecoder(max_frame_pixels=10**6))
