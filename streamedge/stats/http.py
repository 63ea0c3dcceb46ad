"""A tiny asyncio HTTP/1.1 server: ``/metrics``, ``/healthz``, ``/readyz``.

Why not prometheus-client's own server: it runs a WSGI server in a daemon
thread, outside the gateway's TaskGroup, and would read the live counters
from another thread while the event loop writes them. Why not aiohttp: a
large dependency (and its C extensions) for three GET routes on a Pi. This
server accepts on a socket in its own TaskGroup, serves one request per
connection (``Connection: close``) with a deadline, at most
``max_connections`` at once, and renders everything on the event loop.

- ``/metrics``: Prometheus text format (:mod:`streamedge.stats.prometheus`).
- ``/healthz``: 200 while the event loop runs (the process is alive).
- ``/readyz``: 200 once the gateway takes input (broker connected), else 503
  with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Self

from streamedge.errors import TransportError
from streamedge.stats.config import HttpConfig
from streamedge.stats.metrics import Stats

logger = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, str]]

_MAX_HEADER_BYTES = 8192
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class StatsHttpServer:
    """Serves a gateway's metrics and health on one TCP port.

    ``async with server:`` binds the socket (a clear error when the port is
    taken); :meth:`serve` accepts until cancelled and belongs in the gateway's
    TaskGroup.
    """

    def __init__(
        self, cfg: HttpConfig, *, stats: Stats, readiness: Readiness, name: str = "streamedge"
    ) -> None:
        if cfg.port is None:
            raise ValueError("stats.http.port is not set")
        self._cfg = cfg
        self._stats = stats
        self._readiness = readiness
        self._name = name
        self._sock: socket.socket | None = None
        self._active = 0
        self.port: int = cfg.port
        self.refused = 0

    async def __aenter__(self) -> Self:
        assert self._cfg.port is not None  # noqa: S101  # checked in __init__
        try:
            sock = socket.create_server((self._cfg.bind, self._cfg.port), reuse_port=False)
        except OSError as exc:
            raise TransportError(
                f"stats.http: cannot listen on {self._cfg.bind}:{self._cfg.port}: {exc}"
            ) from exc
        sock.setblocking(False)
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        logger.info("metrics and health on http://%s:%d/metrics", self._cfg.bind, self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def serve(self) -> None:
        """Accept connections until cancelled (each served by a named task)."""
        sock = self._sock
        if sock is None:
            raise RuntimeError("enter the server (async with) before serving")
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            while True:
                conn, _addr = await loop.sock_accept(sock)
                if self._active >= self._cfg.max_connections:
                    self.refused += 1
                    conn.close()
                    logger.warning("metrics connection refused: %d already open", self._active)
                    continue
                self._active += 1
                tg.create_task(self._connection(conn), name=f"streamedge[{self._name}].http-conn")

    async def _connection(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._cfg.timeout_s):
                reader, writer = await asyncio.open_connection(sock=conn, limit=_MAX_HEADER_BYTES)
                status, ctype, body, head = await self._respond(reader)
                lines = [
                    f"HTTP/1.1 {status} {_REASONS[status]}",
                    f"Content-Type: {ctype}",
                    f"Content-Length: {len(body)}",
                    "Connection: close",
                    "",
                    "",
                ]
                writer.write("\r\n".join(lines).encode("latin-1"))
                if not head:
                    writer.write(body)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or was too slow: nothing to answer
        finally:
            self._active -= 1
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        """Read one request; return status, content type, body and whether it was HEAD."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, "text/plain; charset=utf-8", b"bad request\n", False
        method, target = parts[0], parts[1]
        is_head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", False
        path = target.split("?", 1)[0]
        if path == "/metrics":
            try:
                from streamedge.stats.prometheus import CONTENT_TYPE, render

                return 200, CONTENT_TYPE, render(self._stats), is_head
            except Exception:  # a broken collector must not stop the daemon: answer 500
                logger.exception("rendering /metrics failed")
                return 500, "text/plain; charset=utf-8", b"metrics failed\n", is_head
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n", is_head
        if path == "/readyz":
            ready, reason = self._readiness()
            body = json.dumps({"ready": ready, "reason": reason}).encode() + b"\n"
            return (200 if ready else 503), "application/json", body, is_head
        if path == "/":
            body = b"streamedge: /metrics /healthz /readyz\n"
            return 200, "text/plain; charset=utf-8", body, is_head
        return 404, "text/plain; charset=utf-8", b"not found\n", is_head
