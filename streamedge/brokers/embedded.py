"""An amqtt broker in a child process, for installs with no broker of their own.

amqtt shares nothing with the gateway when it runs in its own process (it
moves about twice the messages per second that way), and a broker crash
cannot take the gateway down. amqtt 0.12 speaks MQTT 3.1.1 only.

Run directly: ``python -m streamedge.brokers.embedded --bind 127.0.0.1 --port 1883``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from types import TracebackType
from typing import Self

from streamedge.errors import ConnectError

logger = logging.getLogger(__name__)


def port_is_free(host: str, port: int) -> bool:
    """Whether nothing listens on host:port (a bind attempt, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on host (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Wait until host:port accepts TCP connections; raise ConnectError after timeout."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
        except OSError as exc:  # TimeoutError is an OSError too
            last = exc
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise ConnectError(
        f"embedded broker did not listen on {host}:{port} within {timeout} s: {last}"
    )


class EmbeddedBroker:
    """``async with EmbeddedBroker(host, port):`` runs amqtt in a child process."""

    def __init__(self, host: str, port: int, *, start_timeout_s: float = 20.0) -> None:
        self.host = host
        self.port = port
        self._timeout = start_timeout_s
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        if not port_is_free(self.host, self.port):
            raise ConnectError(
                f"cannot start the embedded broker: {self.host}:{self.port} is in use"
            )
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamedge.brokers.embedded",
            "--bind",
            self.host,
            "--port",
            str(self.port),
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            await wait_for_port(self.host, self.port, self._timeout)
        except BaseException:
            await self.stop()
            raise
        logger.info(
            "embedded MQTT broker (amqtt, MQTT 3.1.1) on %s:%d, pid %d",
            self.host,
            self.port,
            self._proc.pid,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.returncode is None

    async def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def broker_config(bind: str, port: int) -> dict[str, object]:
    """amqtt configuration: one TCP listener, anonymous clients allowed."""
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": f"{bind}:{port}", "max_connections": 1000}
        },
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def serve(bind: str, port: int) -> None:
    """Run an amqtt broker until SIGTERM/SIGINT."""
    from amqtt.broker import Broker  # lazy: only this process needs amqtt

    broker = Broker(broker_config(bind, port))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the broker child process."""
    parser = argparse.ArgumentParser(description="streamedge's embedded amqtt broker")
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="broker: %(levelname)s %(message)s")
    # amqtt logs every malformed or refused connection; the gateway's logs matter more.
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
    logging.getLogger("transitions").setLevel(logging.ERROR)
    asyncio.run(serve(args.bind, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
