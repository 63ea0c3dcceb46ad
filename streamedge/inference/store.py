"""Store-and-forward: a bounded on-disk queue of non-urgent requests no tier could answer.

One file per request (``<seq>.req``, msgpack in the edge wire format plus the
reply context), written to a temporary name, fsynced and renamed, so a crash
leaves either the whole request or nothing. Files survive restarts; the
sequence number keeps them in arrival order. The queue is bounded in entries
and in bytes: a request that does not fit is refused (the caller publishes an
error answer). All methods block on disk I/O: call them in a thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamedge.decoders.payloads import PayloadDecoder
from streamedge.errors import DecodeError, InferenceError
from streamedge.inference.wire import VERSION, decode_input, encode_input, pack, unpack
from streamedge.records import InferenceRequest, ModelRef, ReplyContext

logger = logging.getLogger(__name__)

SUFFIX = ".req"


class StoreFullError(InferenceError):
    """The store-and-forward queue has no room for another request."""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One request on disk."""

    name: str
    size: int
    created: float
    """Wall-clock seconds when it was stored (ages survive restarts)."""


class DeferredStore:
    """A FIFO of requests on disk, bounded in count and bytes."""

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int,
        max_bytes: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._wall = wall_clock
        self._entries: deque[StoredEntry] = deque()
        self._seq = 0
        self.bytes = 0
        self._decoder = PayloadDecoder(max_frame_pixels=8192 * 8192)
        self.stored = 0
        self.refused = 0

    def open(self) -> int:
        """Create the directory, forget half-written files, load the queue; return its length."""
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for file in sorted(self.path.glob(f"*{SUFFIX}")):
            try:
                seq = int(file.stem)
                size = file.stat().st_size
                created = file.stat().st_mtime
            except (ValueError, OSError):
                logger.warning("store-and-forward: ignoring unexpected file %s", file.name)
                continue
            self._entries.append(StoredEntry(file.name, size, created))
            self.bytes += size
            self._seq = max(self._seq, seq)
        if self._entries:
            logger.info(
                "store-and-forward: %d request(s) waiting from an earlier run", len(self._entries)
            )
        return len(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, request: InferenceRequest) -> StoredEntry:
        """Persist a request; raise StoreFullError when it does not fit."""
        doc = encode_input(request.input, encoded=request.encoded, encoding="auto")
        ctx = request.context
        doc.update(
            v=VERSION,
            model=str(request.model),
            created=self._wall(),
            urgent=request.urgent,
            context=None
            if ctx is None
            else {"app": ctx.app, "reply_to": ctx.reply_to, "correlation": ctx.correlation},
        )
        body = pack(doc)
        if len(self._entries) >= self.max_entries or self.bytes + len(body) > self.max_bytes:
            self.refused += 1
            raise StoreFullError(
                f"store-and-forward queue full ({len(self._entries)} requests, {self.bytes} bytes)"
            )
        self._seq += 1
        name = f"{self._seq:016d}{SUFFIX}"
        tmp = self.path / f".{name}.tmp"
        try:
            with tmp.open("wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self.path / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreFullError(f"store-and-forward: cannot write {name}: {exc}") from exc
        entry = StoredEntry(name, len(body), float(doc["created"]))
        self._entries.append(entry)
        self.bytes += entry.size
        self.stored += 1
        return entry

    def oldest(self) -> StoredEntry | None:
        """The entry to answer next."""
        return self._entries[0] if self._entries else None

    def load(self, entry: StoredEntry) -> tuple[InferenceRequest, float]:
        """The stored request and its creation time (wall clock).

        Raises:
            DecodeError: the file is unreadable or corrupt (drop it).
        """
        try:
            body = (self.path / entry.name).read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read {entry.name}: {exc}", reason="store_corrupt") from exc
        doc = unpack(body)
        item, encoded = decode_input(doc, decoder=self._decoder)
        model = doc.get("model")
        if not isinstance(model, str):
            raise DecodeError(f"{entry.name}: no model", reason="store_corrupt")
        ctx_doc = doc.get("context")
        context = None
        if isinstance(ctx_doc, dict) and isinstance(ctx_doc.get("app"), str):
            corr = ctx_doc.get("correlation")
            reply_to = ctx_doc.get("reply_to")
            context = ReplyContext(
                app=ctx_doc["app"],
                reply_to=reply_to if isinstance(reply_to, str) else None,
                correlation=bytes(corr) if isinstance(corr, bytes | bytearray) else None,
            )
        created = doc.get("created")
        request = InferenceRequest(
            model=ModelRef.parse(model),
            input=item,
            urgent=bool(doc.get("urgent", False)),
            encoded=encoded,
            context=context,
        )
        return request, float(created) if isinstance(created, int | float) else entry.created

    def remove(self, entry: StoredEntry) -> None:
        """Forget an answered (or expired, or corrupt) entry."""
        if self._entries and self._entries[0] == entry:
            self._entries.popleft()
        else:
            try:
                self._entries.remove(entry)
            except ValueError:
                return
        self.bytes -= entry.size
        (self.path / entry.name).unlink(missing_ok=True)

    def age(self, entry: StoredEntry) -> float:
        """Seconds since the entry was stored."""
        return max(0.0, self._wall() - entry.created)
