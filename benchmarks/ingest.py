"""Ingest throughput: the broker alone versus readings through the gateway.

One run, one private Mosquitto on a free loopback port, the same payloads:

(a) ``broker``: raw pub→sub through the broker with aiomqtt (QoS 1 both ways):
    the ceiling that any MQTT gateway on this box sits under;
(b) ``gateway-mqtt``: the same readings published to ``<prefix>/in/{device}/env``,
    through a ``streamedge run`` subprocess (decode → deadband filter → publish the
    answer at QoS 1), answers read back from ``<prefix>/out/#``.

Both use one publisher with ``--window`` QoS 1 publishes in flight and one subscriber,
in this process; the latency of a message is from just before its PUBLISH to the
arrival of its answer (or of the message itself, for (a)). The gateway's RSS is read
from ``/proc`` after the run (current and peak). The ratio (b)/(a) is the figure to
read; absolute rates depend on the (shared) machine.

(c) CoAP POST throughput (measured in-process, closed loop, by ``ingest_coap.py``) fits
this table too: write ``scenario_coap(ctx) -> Row`` like
:func:`scenario_gateway_mqtt` (a gateway with a ``coap`` section, POSTs to
``/in/{device}/env``) and add it to :data:`SCENARIOS`.

Usage::

    python benchmarks/ingest.py --messages 20000 --json bench-results/ingest.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One scenario's figures."""

    scenario: str
    messages: int
    seconds: float
    rate: float  # messages answered per second
    p50_ms: float
    p99_ms: float
    rss_mb: float | None = None  # the gateway process, after the run
    peak_rss_mb: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What every scenario gets: the broker, the payloads, the knobs."""

    host: str
    port: int
    payloads: list[tuple[str, bytes]]  # (device, JSON reading with a unique 'seq')
    window: int
    timeout_s: float
    workdir: Path
    protocol: str = "auto"  # the gateway's MQTT version
    rate: float = 0.0  # messages per second offered; 0 = as fast as the window allows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        raise SystemExit("this benchmark needs Mosquitto (apt-get install mosquitto)")
    port = free_port()
    conf = workdir / "mosquitto.conf"
    text = (ROOT / "brokers" / "mosquitto-test.conf").read_text()
    conf.write_text(text + f"\nlistener {port} 127.0.0.1\n")  # set_tcp_nodelay is in it
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def make_payloads(n: int, devices: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        doc = {
            "ts": 1_700_000_000 + i * 0.01,
            "temperature": round(20 + (i % 97) * 0.37, 2),
            "humidity": round(40 + (i % 89) * 0.29, 2),
            "seq": i,
        }
        out.append((f"env{i % devices}", json.dumps(doc).encode()))
    return out


async def pump(
    ctx: Context,
    topic_of: Callable[[str], str],
    answer_topic: str,
    seq_of: Callable[[dict[str, Any]], int],
) -> Row:
    """Publish every payload (window in flight), wait for every answer, time both."""
    n = len(ctx.payloads)
    sent_at: list[float] = [0.0] * n
    latency: list[float] = [0.0] * n
    seen = 0
    done = asyncio.Event()
    ident = uuid.uuid4().hex[:8]
    async with (
        aiomqtt.Client(ctx.host, ctx.port, identifier=f"bench-sub-{ident}") as sub,
        aiomqtt.Client(ctx.host, ctx.port, identifier=f"bench-pub-{ident}") as pub,
    ):
        await sub.subscribe(answer_topic, qos=1)

        async def receive() -> None:
            nonlocal seen
            async for message in sub.messages:
                now = time.perf_counter()
                assert isinstance(message.payload, bytes)
                seq = seq_of(json.loads(message.payload))
                if latency[seq] == 0.0:
                    latency[seq] = now - sent_at[seq]
                    seen += 1
                    if seen == n:
                        done.set()
                        return

        receiver = asyncio.create_task(receive())
        start = time.perf_counter()
        cpu0 = time.process_time()
        try:
            async with asyncio.timeout(ctx.timeout_s):
                slots = asyncio.Semaphore(ctx.window)
                sends: set[asyncio.Task[None]] = set()

                async def send(topic: str, body: bytes) -> None:
                    try:
                        await pub.publish(topic, body, qos=1)
                    finally:
                        slots.release()

                for i, (device, body) in enumerate(ctx.payloads):
                    if ctx.rate:  # paced: message i leaves at start + i / rate
                        delay = start + i / ctx.rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await slots.acquire()  # a sliding window of QoS 1 publishes in flight
                    sent_at[i] = time.perf_counter()
                    task = asyncio.create_task(send(topic_of(device), body))
                    sends.add(task)
                    task.add_done_callback(sends.discard)
                if sends:
                    await asyncio.gather(*sends)
                await done.wait()
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
        seconds = time.perf_counter() - start
        client_cpu = (time.process_time() - cpu0) / seconds
    lat_ms = sorted(x * 1e3 for x in latency)
    return Row(
        scenario="",
        messages=n,
        seconds=round(seconds, 3),
        rate=round(n / seconds, 1),
        p50_ms=round(statistics.median(lat_ms), 2),
        p99_ms=round(lat_ms[min(n - 1, int(n * 0.99))], 2),
        # Share of one core this process (publisher + subscriber) used.
        notes={"client_cpu": round(client_cpu, 2)},
    )


async def scenario_broker(ctx: Context) -> Row:
    """(a) the broker alone: publish to bench/raw/{device}, subscribe to bench/raw/#."""
    row = await pump(ctx, lambda d: f"bench/raw/{d}", "bench/raw/#", lambda doc: int(doc["seq"]))
    row.scenario = "broker"
    return row


def gateway_config(ctx: Context, prefix: str) -> dict[str, Any]:
    """A sensor-only gateway: readings through a deadband filter, answered (forwarded)."""
    return {
        "gateway": {"name": f"bench-{prefix}", "data_dir": str(ctx.workdir / "data")},
        "mqtt": {
            "host": ctx.host,
            "port": ctx.port,
            "topic_prefix": prefix,
            "qos_in": 1,
            "qos_out": 1,
            "protocol": ctx.protocol,
        },
        "streams": [
            {
                "match": "*/env",
                "kind": "reading",
                "queue": {"size": 256, "on_full": "block"},
                # Every reading moves ('seq' grows by 1), so each one passes and is answered.
                "filters": [{"type": "deadband", "default_epsilon": 0.5}],
            }
        ],
        "stats": {"interval_s": 60},
    }


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process, from /proc."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return round(fields["VmRSS"], 1), round(fields["VmHWM"], 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_online(ctx: Context, prefix: str, timeout: float = 60.0) -> None:
    async with aiomqtt.Client(ctx.host, ctx.port, identifier=f"bench-w-{prefix}") as c:
        await c.subscribe(f"{prefix}/available", qos=1)
        async with asyncio.timeout(timeout):
            async for message in c.messages:
                if message.payload == b"online":
                    return


async def scenario_gateway_mqtt(ctx: Context) -> Row:
    """(b) readings through a ``streamedge run`` subprocess over MQTT."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    config = ctx.workdir / f"{prefix}.json"
    config.write_text(json.dumps(gateway_config(ctx, prefix)))
    log = ctx.workdir / f"{prefix}.log"
    with log.open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamedge",
            "run",
            str(config),
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        await wait_online(ctx, prefix)
        cpu0 = cpu_seconds(proc.pid)
        row = await pump(
            ctx,
            lambda d: f"{prefix}/in/{d}/env",
            f"{prefix}/out/#",
            lambda doc: int(doc["values"]["seq"]),
        )
        row.rss_mb, row.peak_rss_mb = rss_mb(proc.pid)
        # Share of one core the gateway used while pumping (1.0 = CPU-bound).
        row.notes["gateway_cpu"] = round((cpu_seconds(proc.pid) - cpu0) / row.seconds, 2)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    row.scenario = "gateway-mqtt"
    row.notes["exit_code"] = proc.returncode
    text = log.read_text(errors="replace")
    row.notes["log_warnings"] = text.count(" WARNING ")
    return row


# Add (c) CoAP POST here: ("gateway-coap", scenario_coap).
SCENARIOS: list[tuple[str, Callable[[Context], Awaitable[Row]]]] = [
    ("broker", scenario_broker),
    ("gateway-mqtt", scenario_gateway_mqtt),
]


def table(rows: list[Row], base: Row) -> str:
    head = (
        f"{'scenario':<22} {'messages':>8} {'msg/s':>9} {'vs broker':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>7} {'peak MB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = f"{r.rss_mb:.1f}" if r.rss_mb is not None else "-"
        peak = f"{r.peak_rss_mb:.1f}" if r.peak_rss_mb is not None else "-"
        ratio = "-" if "@" in r.scenario else f"{r.rate / base.rate:.0%}"  # paced: rate is set
        lines.append(
            f"{r.scenario:<22} {r.messages:>8} {r.rate:>9.0f} {ratio:>9} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {rss:>7} {peak:>8}"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="streamedge-ingest-") as tmp:
        workdir = Path(tmp)
        broker, port = start_mosquitto(workdir)
        try:
            ctx = Context(
                host="127.0.0.1",
                port=port,
                payloads=make_payloads(args.messages, args.devices),
                window=args.window,
                timeout_s=args.timeout,
                workdir=workdir,
                protocol=args.protocol,
                rate=args.rate,
            )
            warm = Context(**{**asdict(ctx), "payloads": ctx.payloads[: args.warmup]})
            rows = []
            wanted = set(args.only or [name for name, _ in SCENARIOS])
            for name, scenario in SCENARIOS:
                if name not in wanted:
                    continue
                if name == "broker" and args.warmup:
                    await scenario(warm)  # connections, page cache, CPU frequency
                rows.append(await scenario(ctx))
            if args.paced_rate:
                # Latency without a backlog: the same path at a rate both keep up with.
                n = min(len(ctx.payloads), int(args.paced_rate * args.paced_s))
                paced = Context(**{**asdict(ctx), "payloads": ctx.payloads[:n]})
                paced.rate = args.paced_rate
                for name, scenario in SCENARIOS:
                    if name in wanted:
                        row = await scenario(paced)
                        row.scenario = f"{name}@{args.paced_rate:g}/s"
                        rows.append(row)
        finally:
            broker.terminate()
            broker.wait(10)
    base = next((r for r in rows if r.scenario == "broker"), rows[0])
    print(table(rows, base))
    for r in rows:
        if r.notes:
            print(f"{r.scenario}: {r.notes}")
    gw = next((r for r in rows if r.scenario == "gateway-mqtt"), None)
    result: dict[str, Any] = {
        "benchmark": "ingest",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "messages": args.messages,
        "devices": args.devices,
        "window": args.window,
        "rows": [asdict(r) for r in rows],
    }
    if gw is not None and base.scenario == "broker":
        ratio = gw.rate / base.rate
        result["gateway_vs_broker"] = round(ratio, 3)
        print(
            f"\ngateway/broker throughput: {ratio:.0%} (target >= 70 %); "
            f"sensor-only gateway RSS {gw.rss_mb} MB, peak {gw.peak_rss_mb} MB (target < 100 MB)"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="readings per scenario")
    parser.add_argument("--devices", type=int, default=50, help="distinct devices")
    parser.add_argument("--window", type=int, default=100, help="QoS 1 publishes in flight")
    parser.add_argument("--warmup", type=int, default=2000, help="warm-up messages")
    parser.add_argument("--timeout", type=float, default=300.0, help="per scenario")
    parser.add_argument(
        "--protocol", default="auto", choices=["auto", "5", "3.1.1"], help="the gateway's MQTT"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered msg/s (0: saturate; latency then is mostly queueing)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=1000.0,
        help="also run each scenario at this offered rate, for latency (0: skip)",
    )
    parser.add_argument("--paced-s", type=float, default=5.0, help="length of a paced run")
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt warns about a full window
    result = asyncio.run(run(args))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
