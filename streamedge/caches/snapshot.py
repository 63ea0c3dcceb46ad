"""Cache snapshots on disk: versioned, checksummed, written atomically.

**Format** (version 1)::

    offset  size  field
    0       8     magic b"SEDGSNAP"
    8       2     format version, big-endian u16 (1)
    10      2     flags, u16 (0)
    12      8     body length in bytes, u64
    20      32    blake2b-256 digest of the body
    52      ...   body: one msgpack map

The body holds ``namespace``, ``model`` (``name@version``), ``dim``,
``saved_wall`` (epoch seconds), ``next_id``, ``vectors`` (all key vectors as
one little-endian float32 byte string, ``n × dim``) and ``entries``, a list of
``[id, answer, model, age_s, cost_s, origin, confidence, hits]``. Ages rather
than timestamps are stored because entry times are on the monotonic clock,
which restarts with the machine; the restorer adds the wall-clock time the
gateway was down.

**Writing** goes to a temporary file in the same directory, is flushed and
``fsync``-ed, renamed over the target with :func:`os.replace` (atomic on
POSIX), and the directory is ``fsync``-ed so the rename itself survives a
power cut. A reader therefore sees the old snapshot or the new one, never a
mix. **Reading** checks magic, version, length (a torn file is shorter than it
says) and digest before unpacking, then the schema; any failure raises
:class:`SnapshotError` with the reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from streamedge.errors import CacheError
from streamedge.records import JSON, ModelRef, Vector

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SnapshotData",
    "SnapshotError",
    "SnapshotRecord",
    "read_snapshot",
    "write_snapshot",
]

logger = logging.getLogger(__name__)

MAGIC = b"SEDGSNAP"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">8sHHQ32s")


class SnapshotError(CacheError):
    """A snapshot file is torn, corrupt, or of an unknown format."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRecord:
    """One saved entry."""

    id: int
    vector: Vector
    answer: JSON
    model: ModelRef
    age_s: float
    cost_s: float
    origin: str
    confidence: float | None
    hits: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotData:
    """A whole snapshot."""

    namespace: str
    model: ModelRef
    dim: int
    saved_wall: float
    next_id: int
    records: list[SnapshotRecord]


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32).digest()


def encode_snapshot(data: SnapshotData) -> bytes:
    """The file contents for a snapshot (header + body)."""
    n = len(data.records)
    vectors = np.zeros((n, data.dim), dtype="<f4")
    for row, rec in enumerate(data.records):
        vectors[row] = rec.vector
    body = msgpack.packb(
        {
            "namespace": data.namespace,
            "model": str(data.model),
            "dim": data.dim,
            "saved_wall": data.saved_wall,
            "next_id": data.next_id,
            "vectors": vectors.tobytes(),
            "entries": [
                [
                    r.id,
                    r.answer,
                    str(r.model),
                    r.age_s,
                    r.cost_s,
                    r.origin,
                    r.confidence,
                    r.hits,
                ]
                for r in data.records
            ],
        },
        use_bin_type=True,
    )
    return _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(body), _digest(body)) + body


def write_snapshot(path: Path, data: SnapshotData) -> int:
    """Write a snapshot atomically; return its size in bytes.

    Raises:
        CacheError: the file could not be written (the old one is intact).
    """
    blob = encode_snapshot(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        msg = f"cannot write cache snapshot {path}: {exc}"
        raise CacheError(msg) from exc
    return len(blob)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse fsync on directories.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("fsync of directory %s not supported", directory)
    finally:
        os.close(fd)


def _field(body: dict[Any, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind):
        msg = f"field {name!r} missing or not {kind}"
        raise SnapshotError(msg)
    return value


def decode_snapshot(blob: bytes) -> SnapshotData:
    """Parse and verify snapshot bytes.

    Raises:
        SnapshotError: wrong magic or version, torn, checksum mismatch, bad schema.
    """
    if len(blob) < _HEADER.size:
        msg = f"torn: {len(blob)} bytes is shorter than the header"
        raise SnapshotError(msg)
    magic, version, _flags, length, digest = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise SnapshotError("not a streamedge cache snapshot (bad magic)")
    if version != FORMAT_VERSION:
        msg = f"unsupported snapshot format version {version} (this build reads {FORMAT_VERSION})"
        raise SnapshotError(msg)
    body = blob[_HEADER.size :]
    if len(body) != length:
        msg = f"torn: body is {len(body)} bytes, header says {length}"
        raise SnapshotError(msg)
    if _digest(body) != digest:
        raise SnapshotError("checksum mismatch")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        msg = f"cannot unpack body: {exc}"
        raise SnapshotError(msg) from exc
    if not isinstance(raw, dict):
        raise SnapshotError("body is not a map")
    try:
        return _parse_body(raw)
    except (ValueError, TypeError, IndexError) as exc:
        msg = f"bad entry: {exc}"
        raise SnapshotError(msg) from exc


def _parse_body(raw: dict[Any, Any]) -> SnapshotData:
    dim = int(_field(raw, "dim", int))
    if dim <= 0:
        raise SnapshotError("dim must be positive")
    entries = _field(raw, "entries", list)
    vec_bytes = _field(raw, "vectors", bytes)
    if len(vec_bytes) != len(entries) * dim * 4:
        raise SnapshotError("vector block does not match the entry count")
    vectors = np.frombuffer(vec_bytes, dtype="<f4").astype(np.float32).reshape(-1, dim)
    records: list[SnapshotRecord] = []
    for row, item in enumerate(entries):
        if not isinstance(item, list) or len(item) != 8:
            msg = f"entry {row} is not an 8-item list"
            raise SnapshotError(msg)
        ident, answer, model, age_s, cost_s, origin, confidence, hits = item
        if not isinstance(answer, dict) or not isinstance(origin, str):
            msg = f"entry {row} has a bad answer or origin"
            raise SnapshotError(msg)
        records.append(
            SnapshotRecord(
                id=int(ident),
                vector=vectors[row].copy(),
                answer=answer,
                model=ModelRef.parse(str(model)),
                age_s=float(age_s),
                cost_s=float(cost_s),
                origin=origin,
                confidence=None if confidence is None else float(confidence),
                hits=int(hits),
            )
        )
    return SnapshotData(
        namespace=str(_field(raw, "namespace", str)),
        model=ModelRef.parse(str(_field(raw, "model", str))),
        dim=dim,
        saved_wall=float(_field(raw, "saved_wall", (int, float))),
        next_id=int(_field(raw, "next_id", int)),
        records=records,
    )


def read_snapshot(path: Path) -> SnapshotData:
    """Read and verify a snapshot file.

    Raises:
        FileNotFoundError: there is no snapshot.
        SnapshotError: it is torn, corrupt or of another format.
        CacheError: it could not be read.
    """
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        msg = f"cannot read cache snapshot {path}: {exc}"
        raise CacheError(msg) from exc
    return decode_snapshot(blob)
