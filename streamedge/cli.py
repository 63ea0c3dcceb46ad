"""The ``streamedge`` command line.

::

    streamedge run CONFIG             run a gateway daemon
    streamedge check-config FILE...   validate config files (exit 2 on errors)
    streamedge check-config --explain print every configuration key
    streamedge demo [--duration S]    embedded broker + gateway + sample devices
    streamedge stats [--json]         ask a running gateway for its statistics
    streamedge --version
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamedge import __version__
from streamedge.errors import ConfigError, StreamedgeError

logger = logging.getLogger("streamedge.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamedge",
        description="Edge gateway that skips, reuses and forwards DNN inference.",
    )
    parser.add_argument("--version", action="version", version=f"streamedge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a gateway daemon from a config file")
    run.add_argument("config", type=Path, help="YAML, TOML or JSON config file")

    check = sub.add_parser("check-config", help="validate config files")
    check.add_argument("files", type=Path, nargs="*", help="config files to validate")
    check.add_argument("--explain", action="store_true", help="print every config key")
    check.add_argument(
        "--print", action="store_true", dest="print_effective", help="print the effective config"
    )

    demo = sub.add_parser("demo", help="embedded broker + gateway + sample devices")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: until ^C)")
    demo.add_argument("--port", type=int, default=1883, help="embedded broker port")
    demo.add_argument("--every", type=float, default=5.0, help="seconds between stats lines")
    demo.add_argument("--data-dir", type=Path, default=None, help="where models are kept")

    stats = sub.add_parser("stats", help="ask a running gateway for its statistics")
    stats.add_argument("--host", default="127.0.0.1")
    stats.add_argument("--port", type=int, default=1883)
    stats.add_argument("--prefix", default="streamedge")
    stats.add_argument("--device", default=None, help="per-stream counters of one device")
    stats.add_argument("--stream", default=None, help="per-stream counters of one stream name")
    stats.add_argument("--timeout", type=float, default=5.0)
    stats.add_argument("--json", action="store_true", help="print the raw JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(list(argv) if argv is not None else sys.argv[1:])
    if args.command is None:
        parser.print_help()
        return EXIT_CONFIG
    from streamedge.log import setup_logging

    try:
        if args.command == "check-config":
            return _check_config(args)
        if args.command == "run":
            from streamedge.config import load_config

            cfg = load_config(args.config)
            setup_logging(cfg.logging, verbose=args.verbose, quiet=args.quiet)
            return asyncio.run(_run(cfg))
        if args.command == "demo":
            setup_logging(None, verbose=args.verbose, quiet=not args.verbose)
            return asyncio.run(_demo(args))
        if args.command == "stats":
            setup_logging(None, verbose=args.verbose, quiet=True)
            return asyncio.run(_stats(args))
    except ConfigError as exc:
        print(f"streamedge: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except BrokenPipeError:  # `streamedge stats | head`
        sys.stderr.close()
        return EXIT_OK
    parser.print_help()
    return EXIT_CONFIG


def _check_config(args: argparse.Namespace) -> int:
    from streamedge.config import explain, load_config

    if args.explain:
        print(explain(), end="")
        return EXIT_OK
    if not args.files:
        print("streamedge check-config: give one or more files, or --explain", file=sys.stderr)
        return EXIT_CONFIG
    status = EXIT_OK
    for path in args.files:
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            print(f"{exc}", file=sys.stderr)
            status = EXIT_CONFIG
            continue
        print(f"{path}: ok")
        if args.print_effective:
            print(cfg.model_dump_json(indent=2))
    return status


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def _log_fatal(group: BaseExceptionGroup[Any]) -> None:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            _log_fatal(exc)
        else:
            logger.error("fatal: %s", exc, exc_info=exc)


async def _run(cfg: Any) -> int:
    from streamedge.pipeline.gateway import Gateway

    stop = asyncio.Event()
    _install_stop(stop)
    gateway = Gateway(cfg)
    status = EXIT_OK
    try:
        await gateway.run(stop)
    except* ConfigError as group:
        for exc in group.exceptions:
            print(f"streamedge: configuration error: {exc}", file=sys.stderr)
        status = EXIT_CONFIG
    except* StreamedgeError as group:
        _log_fatal(group)
        status = EXIT_FAILURE
    return status


async def _demo(args: argparse.Namespace) -> int:
    from streamedge.demo import run_demo

    status = EXIT_OK
    try:
        await run_demo(
            duration=args.duration,
            port=args.port,
            every=args.every,
            out=sys.stdout,
            data_dir=args.data_dir,
        )
    except* StreamedgeError as group:
        _log_fatal(group)
        status = EXIT_FAILURE
    return status


async def fetch_stats(
    *,
    host: str,
    port: int,
    prefix: str,
    timeout: float,
    device: str | None = None,
    stream: str | None = None,
) -> dict[str, Any]:
    """Ask a gateway over MQTT: a stats/get request, else the retained snapshot."""
    import aiomqtt

    reply = f"{prefix}/stats/reply/{uuid.uuid4().hex[:12]}"
    request: dict[str, Any] = {"reply_to": reply}
    if device:
        request["device"] = device
    if stream:
        request["stream"] = stream
    retained: dict[str, Any] | None = None
    async with aiomqtt.Client(
        host, port, identifier=f"streamedge-stats-{uuid.uuid4().hex[:8]}"
    ) as c:
        await c.subscribe(reply, qos=0)
        await c.subscribe(f"{prefix}/stats", qos=0)
        await c.publish(f"{prefix}/stats/get", json.dumps(request).encode(), qos=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for message in c.messages:
                    doc = json.loads(bytes(message.payload))
                    if message.topic.value == reply:
                        return dict(doc)
                    retained = dict(doc)
    if retained is not None:
        return retained
    raise StreamedgeError(f"no answer from a gateway under '{prefix}' at {host}:{port}")


def format_stats(doc: dict[str, Any]) -> str:
    """A human-readable table of a stats snapshot."""
    msgs = doc.get("messages", {})
    rows = [
        ("gateway", f"{doc.get('gateway')} (streamedge {doc.get('version')})"),
        ("uptime", f"{doc.get('uptime_s', 0):.0f} s"),
        ("messages in", msgs.get("in")),
        ("answered", msgs.get("answered")),
        ("filtered", msgs.get("filtered")),
        ("dropped", f"{msgs.get('dropped')} {doc.get('drops') or ''}"),
        ("pending", msgs.get("pending")),
        ("answers by tier", doc.get("answers_by_tier")),
    ]
    for level, c in doc.get("cache", {}).items():
        ratio = c.get("hit_ratio")
        rows.append(
            (
                f"cache {level}",
                f"hits {c.get('hits')}  misses {c.get('misses')}  hit ratio "
                f"{'-' if ratio is None else format(ratio, '.1%')}",
            )
        )
    for tier, t in doc.get("inference", {}).items():
        lat = t.get("latency_ms", {})
        rows.append(
            (
                f"tier {tier}",
                f"calls {t.get('calls')}  failures {t.get('failures')}  "
                f"p50 {lat.get('p50')} ms  p95 {lat.get('p95')} ms",
            )
        )
    e2e = doc.get("latency_ms", {}).get("end_to_end", {})
    rows.append(
        ("end-to-end", f"p50 {e2e.get('p50')} ms  p95 {e2e.get('p95')} ms  p99 {e2e.get('p99')} ms")
    )
    saved = doc.get("saved", {})
    rows.append(
        ("saved", f"{saved.get('inference_s')} inference-s, {saved.get('bytes_not_sent')} bytes")
    )
    for key, sc in doc.get("streams", {}).items():
        rows.append((f"  {key}", sc))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def _stats(args: argparse.Namespace) -> int:
    import aiomqtt

    try:
        doc = await fetch_stats(
            host=args.host,
            port=args.port,
            prefix=args.prefix,
            timeout=args.timeout,
            device=args.device,
            stream=args.stream,
        )
    except StreamedgeError as exc:
        print(f"streamedge stats: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"streamedge stats: cannot reach {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except aiomqtt.MqttError as exc:
        print(f"streamedge stats: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(doc, indent=2) if args.json else format_stats(doc))
    return EXIT_OK
