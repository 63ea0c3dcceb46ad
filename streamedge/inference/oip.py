"""KServe Open Inference Protocol v2 (REST) messages, with the binary tensor extension.

Shared by the cloud tier's client and ``streamedge worker``'s server. JSON
tensors carry ``data`` as a flat row-major list; with the binary extension a
tensor's bytes follow the JSON object in the body (little-endian, row-major;
BYTES elements each prefixed by a 4-byte little-endian length), its JSON
entry has ``parameters.binary_data_size`` and the header
``Inference-Header-Content-Length`` gives the JSON object's length.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streamedge.errors import DecodeError

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"

DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
_BY_DTYPE = {np.dtype(v): k for k, v in DTYPES.items()}


@dataclass(frozen=True, slots=True)
class Tensor:
    """One named tensor: a numpy array, or a list of byte strings for ``BYTES``."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: npt.NDArray[Any] | list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, array: npt.NDArray[Any]) -> Tensor:
        """A numeric tensor from an array (its dtype picks the datatype)."""
        arr = np.ascontiguousarray(array)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        kind = _BY_DTYPE.get(arr.dtype)
        if kind is None:
            raise DecodeError(f"no OIP datatype for {arr.dtype}", reason="bad_input")
        return cls(name, kind, tuple(int(d) for d in arr.shape), arr)

    @classmethod
    def of_bytes(cls, name: str, items: list[bytes]) -> Tensor:
        """A ``BYTES`` tensor of shape ``[len(items)]``."""
        return cls(name, "BYTES", (len(items),), list(items))

    def array(self) -> npt.NDArray[Any]:
        """The numeric data (DecodeError for BYTES)."""
        if isinstance(self.data, list):
            raise DecodeError(f"tensor {self.name} holds BYTES, not numbers", reason="bad_input")
        return self.data

    def items(self) -> list[bytes]:
        """The elements of a BYTES tensor (DecodeError otherwise)."""
        if not isinstance(self.data, list):
            raise DecodeError(
                f"tensor {self.name} is {self.datatype}, not BYTES", reason="bad_input"
            )
        return self.data

    def to_bytes(self) -> bytes:
        """The binary-extension encoding of the data."""
        if isinstance(self.data, list):
            return b"".join(struct.pack("<I", len(b)) + b for b in self.data)
        dtype = np.dtype(DTYPES[self.datatype])
        return np.ascontiguousarray(self.data, dtype=dtype).tobytes()

    def json_data(self) -> list[Any]:
        """The flat JSON list of the data (BYTES elements as UTF-8 strings)."""
        if isinstance(self.data, list):
            return [b.decode("utf-8", errors="replace") for b in self.data]
        flat: list[Any] = self.data.reshape(-1).tolist()
        return flat


def _shape(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise DecodeError(
            f"{what}: 'shape' must be a list of non-negative ints", reason="bad_input"
        )
    return tuple(value)


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _split_bytes(blob: bytes, what: str) -> list[bytes]:
    items: list[bytes] = []
    i = 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise DecodeError(f"{what}: truncated BYTES element", reason="bad_input")
        (n,) = struct.unpack_from("<I", blob, i)
        i += 4
        if i + n > len(blob):
            raise DecodeError(f"{what}: truncated BYTES element", reason="bad_input")
        items.append(blob[i : i + n])
        i += n
    return items


def _tensor_from_json(entry: object, blobs: memoryview | None, offset: int) -> tuple[Tensor, int]:
    """One tensor of a request/response JSON object; returns it and the new blob offset."""
    if not isinstance(entry, dict):
        raise DecodeError("each tensor must be a JSON object", reason="bad_input")
    name = entry.get("name")
    datatype = entry.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise DecodeError("a tensor needs 'name' and 'datatype'", reason="bad_input")
    if datatype != "BYTES" and datatype not in DTYPES:
        raise DecodeError(f"{name}: unsupported datatype {datatype}", reason="bad_input")
    shape = _shape(entry.get("shape"), name)
    params = entry.get("parameters") or {}
    if not isinstance(params, dict):
        raise DecodeError(f"{name}: 'parameters' must be an object", reason="bad_input")
    size = params.get("binary_data_size")
    data: npt.NDArray[Any] | list[bytes]
    if size is not None:
        if blobs is None or not isinstance(size, int) or size < 0 or offset + size > len(blobs):
            raise DecodeError(f"{name}: binary data missing or short", reason="bad_input")
        blob = bytes(blobs[offset : offset + size])
        offset += size
        if datatype == "BYTES":
            data = _split_bytes(blob, name)
        else:
            dtype = np.dtype(DTYPES[datatype])
            if size != _count(shape) * dtype.itemsize:
                raise DecodeError(
                    f"{name}: {size} bytes do not fit shape {shape}", reason="bad_input"
                )
            data = np.frombuffer(blob, dtype=dtype).reshape(shape)
    else:
        raw = entry.get("data")
        if not isinstance(raw, list):
            raise DecodeError(f"{name}: 'data' must be a list", reason="bad_input")
        if datatype == "BYTES":
            flat = _flatten(raw)
            data = [x.encode() if isinstance(x, str) else bytes(x) for x in flat]
        else:
            try:
                arr = np.asarray(raw, dtype=np.dtype(DTYPES[datatype]))
                data = arr.reshape(shape)
            except (ValueError, TypeError) as exc:
                raise DecodeError(
                    f"{name}: data does not fit shape {shape}: {exc}", reason="bad_input"
                ) from exc
    rest = {k: v for k, v in params.items() if k not in ("binary_data_size", "binary_data")}
    return Tensor(name, datatype, shape, data, rest), offset


def _flatten(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flatten(v))
        else:
            out.append(v)
    return out


def _tensor_json(tensor: Tensor, *, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    doc: dict[str, Any] = {
        "name": tensor.name,
        "datatype": tensor.datatype,
        "shape": list(tensor.shape),
    }
    params = dict(tensor.parameters)
    blob = None
    if binary:
        blob = tensor.to_bytes()
        params["binary_data_size"] = len(blob)
    else:
        doc["data"] = tensor.json_data()
    if params:
        doc["parameters"] = params
    return doc, blob


def _body(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview | None]:
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError as exc:
            raise DecodeError(
                f"bad {HEADER_LENGTH}: {header_length!r}", reason="bad_input"
            ) from exc
        if not 0 < n <= len(body):
            raise DecodeError(f"{HEADER_LENGTH} {n} outside the body", reason="bad_input")
        head, blobs = body[:n], memoryview(body)[n:]
    else:
        head, blobs = body, None
    try:
        doc = json.loads(head)
    except ValueError as exc:
        raise DecodeError(f"body is not JSON: {exc}", reason="bad_input") from exc
    if not isinstance(doc, dict):
        raise DecodeError("body must be a JSON object", reason="bad_input")
    return doc, blobs


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded ``POST /v2/models/{m}/infer`` body."""

    inputs: dict[str, Tensor]
    outputs: dict[str, bool]
    """Requested outputs and whether each should come back binary (empty: all, JSON)."""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InferResponse:
    """A decoded inference response."""

    model_name: str
    outputs: dict[str, Tensor]
    model_version: str | None = None
    id: str | None = None


def encode_request(
    inputs: list[Tensor],
    *,
    outputs: list[str] | None = None,
    binary: bool = False,
    id: str | None = None,  # noqa: A002  # the protocol's field name
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """An inference request body and its headers."""
    doc: dict[str, Any] = {}
    if id is not None:
        doc["id"] = id
    if parameters:
        doc["parameters"] = parameters
    blobs: list[bytes] = []
    doc["inputs"] = []
    for tensor in inputs:
        entry, blob = _tensor_json(tensor, binary=binary)
        doc["inputs"].append(entry)
        if blob is not None:
            blobs.append(blob)
    if outputs is not None:
        doc["outputs"] = [
            {"name": n, **({"parameters": {"binary_data": True}} if binary else {})}
            for n in outputs
        ]
    return _body(doc, blobs)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a request body (JSON, or JSON + binary tensors)."""
    doc, blobs = _split_body(body, header_length)
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise DecodeError("request needs a non-empty 'inputs' list", reason="bad_input")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for entry in raw_inputs:
        tensor, offset = _tensor_from_json(entry, blobs, offset)
        inputs[tensor.name] = tensor
    outputs: dict[str, bool] = {}
    for out in doc.get("outputs") or []:
        if isinstance(out, dict) and isinstance(out.get("name"), str):
            params = out.get("parameters") or {}
            outputs[out["name"]] = bool(isinstance(params, dict) and params.get("binary_data"))
    params = doc.get("parameters")
    rid = doc.get("id")
    return InferRequest(
        inputs=inputs,
        outputs=outputs,
        id=rid if isinstance(rid, str) else None,
        parameters=params if isinstance(params, dict) else {},
    )


def encode_response(
    model_name: str,
    outputs: list[Tensor],
    *,
    binary: set[str] | None = None,
    model_version: str | None = None,
    id: str | None = None,  # noqa: A002  # the protocol's field name
) -> tuple[bytes, dict[str, str]]:
    """An inference response body and headers; outputs named in ``binary`` go binary."""
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if id is not None:
        doc["id"] = id
    blobs: list[bytes] = []
    doc["outputs"] = []
    for tensor in outputs:
        entry, blob = _tensor_json(tensor, binary=tensor.name in (binary or set()))
        doc["outputs"].append(entry)
        if blob is not None:
            blobs.append(blob)
    return _body(doc, blobs)


def decode_response(body: bytes, header_length: str | None) -> InferResponse:
    """Parse a response body (JSON, or JSON + binary tensors)."""
    doc, blobs = _split_body(body, header_length)
    raw_outputs = doc.get("outputs")
    if not isinstance(raw_outputs, list):
        raise DecodeError("response has no 'outputs' list", reason="bad_response")
    outputs: dict[str, Tensor] = {}
    offset = 0
    for entry in raw_outputs:
        tensor, offset = _tensor_from_json(entry, blobs, offset)
        outputs[tensor.name] = tensor
    rid = doc.get("id")
    version = doc.get("model_version")
    return InferResponse(
        model_name=str(doc.get("model_name", "")),
        outputs=outputs,
        model_version=str(version) if version is not None else None,
        id=rid if isinstance(rid, str) else None,
    )
