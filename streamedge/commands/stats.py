"""``streamedge stats``: ask a running gateway for its statistics over MQTT.

One-shot table (default), ``--json`` for scripts, ``--watch`` for a live
view (rich), ``--plot FILE`` to draw the gateway's retained history,
``--follow SECONDS`` (with ``--device``) to have the gateway publish
``<prefix>/stats/{device}``, ``--schema`` to print the snapshot's JSON Schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamedge.commands.common import EXIT_FAILURE, EXIT_OK
from streamedge.errors import StreamedgeError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

NAME = "stats"
HELP = "ask a running gateway for its statistics (table, --json, --watch, --plot)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``stats``."""
    parser.add_argument("--host", default="127.0.0.1", help="broker host")
    parser.add_argument("--port", type=int, default=1883, help="broker port")
    parser.add_argument("--prefix", default="streamedge", help="mqtt.topic_prefix of the gateway")
    parser.add_argument("--username", default=None, help="broker user name")
    parser.add_argument("--password", default=None, help="broker password")
    parser.add_argument("--device", default=None, help="per-stream counters of one device")
    parser.add_argument("--stream", default=None, help="per-stream counters of one stream name")
    parser.add_argument("--model", default=None, help="only this model (name or name@version)")
    parser.add_argument(
        "--window", type=float, default=None, metavar="S", help="windowed figures over S seconds"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for answers")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="print the raw JSON snapshot")
    mode.add_argument("--watch", action="store_true", help="live view, refreshed every --interval")
    mode.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE",
        help="draw the retained history (PNG/SVG/PDF; needs the 'plot' extra)",
    )
    mode.add_argument(
        "--follow",
        type=float,
        default=None,
        metavar="S",
        help="have the gateway publish <prefix>/stats/{device} for S seconds (0 stops)",
    )
    mode.add_argument(
        "--schema", action="store_true", help="print the snapshot's JSON Schema and exit"
    )
    parser.add_argument("--interval", type=float, default=2.0, help="--watch refresh, seconds")
    parser.add_argument(
        "--count", type=int, default=0, help="--watch: stop after N refreshes (0: until Ctrl-C)"
    )


def run(args: argparse.Namespace) -> int:
    """Fetch and print the statistics."""
    from streamedge.log import setup_logging

    setup_logging(None, verbose=args.verbose, quiet=not args.verbose)
    if args.schema:
        from streamedge.stats.schema import snapshot_schema

        print(json.dumps(snapshot_schema(), indent=2))
        return EXIT_OK
    if args.follow is not None and not args.device:
        print("streamedge stats: --follow needs --device", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return asyncio.run(_stats(args))
    except KeyboardInterrupt:
        return EXIT_OK


async def fetch_stats(
    *,
    host: str,
    port: int,
    prefix: str,
    timeout: float,
    device: str | None = None,
    stream: str | None = None,
    model: str | None = None,
    window_s: float | None = None,
) -> dict[str, Any]:
    """Ask a gateway over MQTT: a stats/get request, else the retained snapshot."""
    from streamedge.stats.client import StatsClient

    async with StatsClient(host, port, prefix=prefix, timeout=timeout) as client:
        return await client.request(device=device, stream=stream, model=model, window_s=window_s)


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1%}"


def _ms(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.1f}"


def _lat(lat: dict[str, Any]) -> str:
    return f"p50 {_ms(lat.get('p50'))}  p95 {_ms(lat.get('p95'))}  p99 {_ms(lat.get('p99'))} ms"


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def rows(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The snapshot as (label, value) rows, shared by the table and the live view."""
    msgs = doc.get("messages", {})
    out = [
        ("gateway", f"{doc.get('gateway')} (streamedge {doc.get('version')})"),
        ("uptime", f"{doc.get('uptime_s', 0):.0f} s"),
        ("messages in", f"{msgs.get('in')}  ({_bytes(msgs.get('bytes_in'))})"),
        ("answered", str(msgs.get("answered"))),
        ("filtered", str(msgs.get("filtered"))),
        ("dropped", f"{msgs.get('dropped')} {doc.get('drops') or ''}".rstrip()),
        ("pending", str(msgs.get("pending"))),
        ("published", str(msgs.get("out"))),
        ("answers by tier", str(doc.get("answers_by_tier", {}))),
    ]
    reuse = doc.get("reuse")
    if isinstance(reuse, dict):
        out.append(
            (
                "reused answers",
                f"{_pct(reuse.get('ratio'))} since start, {_pct(reuse.get('window_ratio'))} "
                f"over {doc.get('window_s', 0):.0f} s",
            )
        )
    for name, f in doc.get("filters", {}).items():
        out.append(
            (
                f"filter {name}",
                f"pass {f.get('pass')}  drop {f.get('drop')}  error {f.get('error')}"
                + (
                    " (" + ", ".join(f"{r} {n}" for r, n in f["reasons"].items()) + ")"
                    if f.get("reasons")
                    else ""
                ),
            )
        )
    for level, c in doc.get("cache", {}).items():
        out.append(
            (
                f"cache {level}",
                f"hits {c.get('hits')}  misses {c.get('misses')}  hit ratio "
                f"{_pct(c.get('hit_ratio'))} (window {_pct(c.get('window_hit_ratio'))})",
            )
        )
    sharing = doc.get("cache", {}).get("device", {}).get("sharing")
    if isinstance(sharing, dict):
        skipped, rejected = sharing.get("skipped", {}), sharing.get("rejected", {})
        out.append(
            (
                "cache sharing",
                f"sent {sharing.get('sent')} ({_bytes(sharing.get('bytes_sent'))})  "
                f"skipped {sum(skipped.values())}  received {sharing.get('received')}  "
                f"merged {sharing.get('merged')}  rejected {sum(rejected.values())}"
                + (f" {dict(rejected)}" if rejected else ""),
            )
        )
    acc = doc.get("accuracy")
    if isinstance(acc, dict):
        out.append(
            (
                "reuse accuracy",
                f"{_pct(acc.get('agreement'))} of {acc.get('checked')} re-checked hits "
                f"(window {_pct(acc.get('window_agreement'))} of {acc.get('window_checked')})",
            )
        )
    for tier, t in doc.get("inference", {}).items():
        out.append(
            (
                f"tier {tier}",
                f"calls {t.get('calls')}  failures {t.get('failures')}  "
                f"{_lat(t.get('latency_ms', {}))}",
            )
        )
    for name, m in doc.get("models", {}).items():
        out.append(
            (
                f"model {name}",
                f"hits {m.get('hits')}  misses {m.get('misses')}  inferences {m.get('calls')}  "
                f"{_lat(m.get('latency_ms', {}))}",
            )
        )
    out.append(("end-to-end", _lat(doc.get("latency_ms", {}).get("end_to_end", {}))))
    saved = doc.get("saved", {})
    out.append(
        (
            "saved",
            f"{saved.get('inference_s')} inference-s, "
            f"{_bytes(saved.get('bytes_not_sent'))} not sent upstream",
        )
    )
    for ns, c in doc.get("caches", {}).items():
        out.append((f"cache size {ns}", f"{c.get('entries')} entries, {_bytes(c.get('bytes'))}"))
    queues = doc.get("queues")
    if isinstance(queues, dict):
        out.append(
            (
                "queues",
                f"{queues.get('depth')} queued ({_bytes(queues.get('bytes'))}); per shard "
                f"{queues.get('shards')}",
            )
        )
    transport = doc.get("transport")
    if isinstance(transport, dict):
        state = "connected" if transport.get("connected") else "DISCONNECTED"
        out.append(
            (
                "transport",
                f"{state} (MQTT {transport.get('protocol')}), reconnects "
                f"{transport.get('reconnects')}",
            )
        )
    for key, sc in doc.get("streams", {}).items():
        out.append(
            (
                f"  {key}",
                f"in {sc.get('received')}  answered {sc.get('answered')}  filtered "
                f"{sc.get('filtered')}  dropped {sc.get('dropped')}  hits {sc.get('hits')}  "
                f"misses {sc.get('misses')}  inferences {sc.get('inferences')}",
            )
        )
    return out


def format_stats(doc: dict[str, Any]) -> str:
    """A human-readable table of a stats snapshot."""
    table = rows(doc)
    width = max(len(k) for k, _ in table)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in table)


_SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], top: float | None = None) -> str:
    """A unicode sparkline (blank where a value is missing)."""
    known = [v for v in values if v is not None]
    hi = top if top is not None else max(known, default=0.0)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            level = 0 if hi <= 0 else round(v / hi * (len(_SPARK) - 1))
            out.append(_SPARK[max(0, min(level, len(_SPARK) - 1))])
    return "".join(out)


class Trend:
    """What the live view remembers between refreshes (bounded)."""

    def __init__(self, points: int = 60) -> None:
        self.rate: deque[float | None] = deque(maxlen=points)
        self.hit: deque[float | None] = deque(maxlen=points)
        self.drops: deque[float | None] = deque(maxlen=points)
        self._last: tuple[float, int, int] | None = None

    def add(self, doc: dict[str, Any]) -> None:
        """Record one snapshot: input rate, reuse ratio, drop rate since the last one."""
        msgs = doc.get("messages", {})
        ts, n_in, n_drop = (
            float(doc.get("ts", 0)),
            int(msgs.get("in", 0)),
            int(msgs.get("dropped", 0)),
        )
        if self._last is not None and ts > self._last[0]:
            dt = ts - self._last[0]
            self.rate.append(max(0, n_in - self._last[1]) / dt)
            self.drops.append(max(0, n_drop - self._last[2]) / dt)
        self._last = (ts, n_in, n_drop)
        reuse = doc.get("reuse", {})
        self.hit.append(reuse.get("window_ratio") if isinstance(reuse, dict) else None)


def dashboard(doc: dict[str, Any], trend: Trend) -> RenderableType:
    """The live view: the snapshot's rows plus trends."""
    from rich.table import Table

    table = Table(
        title=f"streamedge {doc.get('gateway')}: stats every refresh",
        show_header=False,
        expand=False,
    )
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    rate = trend.rate[-1] if trend.rate else None
    table.add_row(
        "input rate", f"{sparkline(list(trend.rate))}  {'-' if rate is None else f'{rate:.1f}'}/s"
    )
    table.add_row(
        "reused answers",
        f"{sparkline(list(trend.hit), top=1.0)}  {_pct(trend.hit[-1] if trend.hit else None)}",
    )
    drops = trend.drops[-1] if trend.drops else None
    table.add_row(
        "drop rate", f"{sparkline(list(trend.drops))}  {'-' if drops is None else f'{drops:.1f}'}/s"
    )
    for label, value in rows(doc):
        style = "bold red" if "DISCONNECTED" in value else None
        table.add_row(label, value, style=style)
    return table


async def watch(args: argparse.Namespace, console: Console) -> int:
    """Refresh a live view every ``args.interval`` seconds (``args.count`` times, 0: forever)."""
    from rich.live import Live

    from streamedge.stats.client import StatsClient

    trend = Trend()
    n = 0
    async with StatsClient(
        args.host,
        args.port,
        prefix=args.prefix,
        username=args.username,
        password=args.password,
        timeout=args.timeout,
    ) as client:

        async def one() -> RenderableType:
            doc = await client.request(
                device=args.device, stream=args.stream, model=args.model, window_s=args.window
            )
            trend.add(doc)
            return dashboard(doc, trend)

        first = await one()
        n += 1
        if not console.is_terminal:
            # Piped or logged: print each refresh rather than redrawing in place.
            console.print(first)
            while args.count == 0 or n < args.count:
                await asyncio.sleep(args.interval)
                console.print(await one())
                n += 1
            return EXIT_OK
        with Live(first, console=console, auto_refresh=False) as live:
            while args.count == 0 or n < args.count:
                await asyncio.sleep(args.interval)
                live.update(await one(), refresh=True)
                n += 1
    return EXIT_OK


async def _stats(args: argparse.Namespace) -> int:
    from streamedge.stats.client import StatsClient

    try:
        if args.watch:
            from rich.console import Console

            return await watch(args, Console())
        async with StatsClient(
            args.host,
            args.port,
            prefix=args.prefix,
            username=args.username,
            password=args.password,
            timeout=args.timeout,
        ) as client:
            if args.plot is not None:
                from streamedge.stats.plot import plot_history

                doc = await client.retained_doc("history")
                path = plot_history(doc, args.plot)
                print(f"wrote {path} ({len(doc.get('t', []))} points)")
                return EXIT_OK
            doc = await client.request(
                device=args.device,
                stream=args.stream,
                model=args.model,
                window_s=args.window,
                follow_s=args.follow,
                fallback=args.follow is None,
            )
    except StreamedgeError as exc:
        print(f"streamedge stats: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.follow is not None:
        follow = doc.get("follow", {})
        if "error" in follow:
            print(f"streamedge stats: follow refused: {follow['error']}", file=sys.stderr)
            return EXIT_FAILURE
        print(f"publishing {follow.get('topic')} for {follow.get('expires_in_s')} s")
        return EXIT_OK
    print(json.dumps(doc, indent=2) if args.json else format_stats(doc))
    return EXIT_OK
