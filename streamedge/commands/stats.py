"""``streamedge stats``: ask a running gateway for its statistics over MQTT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import uuid
from typing import Any

from streamedge.commands.common import EXIT_FAILURE, EXIT_OK
from streamedge.errors import StreamedgeError

NAME = "stats"
HELP = "ask a running gateway for its statistics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stats``."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="streamedge")
    parser.add_argument("--device", default=None, help="per-stream counters of one device")
    parser.add_argument("--stream", default=None, help="per-stream counters of one stream name")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--json", action="store_true", help="print the raw JSON")


def run(args: argparse.Namespace) -> int:
    """Fetch and print the statistics."""
    from streamedge.log import setup_logging

    setup_logging(None, verbose=args.verbose, quiet=True)
    return asyncio.run(_stats(args))


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
