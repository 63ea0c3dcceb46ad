"""``streamedge demo``: the gateway on its embedded defaults with sample devices.

It starts the embedded broker, a gateway configured by :func:`demo_config`
(the MTCNN face detector, two built-in models trained on first use, three
caches, filters), a "lobby" camera playing real recorded video (vtest.avi),
three cameras watching one generated scene, and six sensor devices, and
prints live stats until Ctrl-C or ``--duration``, then a summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from streamedge.brokers.embedded import free_port, port_is_free
from streamedge.config import StreamedgeConfig, parse_config
from streamedge.devices.publishers import PublisherStats, run_cameras, run_sensors
from streamedge.pipeline.gateway import Gateway
from streamedge.records import JSON

logger = logging.getLogger(__name__)


def demo_config(*, port: int = 1883, data_dir: Path | None = None) -> dict[str, Any]:
    """The demo's gateway configuration (the same as ``gateways/demo.yaml``)."""
    cfg: dict[str, Any] = {
        "gateway": {"name": "demo"},
        "mqtt": {"port": port, "topic_prefix": "streamedge"},
        "models": [
            {"type": "builtin", "name": "tiny_presence"},
            {"type": "builtin", "name": "sensor_anomaly"},
            {"type": "mtcnn", "name": "mtcnn"},
        ],
        "caches": [
            {
                "name": "frames",
                "embedder": {"type": "downscale", "size": 16},
                "policy": {"type": "threshold", "max_distance": 0.02},
                "store": {"max_bytes": 16 * 2**20, "ttl_s": 600},
            },
            {
                "name": "lobby-frames",
                "embedder": {"type": "downscale", "size": 32},
                "policy": {"type": "threshold", "max_distance": 0.008},
                "store": {"max_bytes": 16 * 2**20, "ttl_s": 600},
            },
            {
                "name": "sensor-windows",
                "embedder": {"type": "window", "scale": {"temperature": 1.0, "humidity": 2.0}},
                "policy": {"type": "threshold", "max_distance": 0.12},
                "store": {"max_bytes": 8 * 2**20, "ttl_s": 600},
            },
        ],
        "streams": [
            {
                "match": "lobby*/camera",
                "kind": "frame",
                "queue": {"size": 2, "on_full": "drop_oldest"},
                "filters": [{"type": "frame_diff", "size": 50, "threshold": 4.0}],
                "apps": [{"name": "faces", "model": "mtcnn", "cache": "lobby-frames"}],
            },
            {
                "match": "*/camera",
                "kind": "frame",
                "queue": {"size": 4, "on_full": "drop_oldest"},
                "filters": [{"type": "frame_diff", "size": 50, "threshold": 12.0}],
                "apps": [{"name": "presence", "model": "tiny_presence", "cache": "frames"}],
            },
            {
                "match": "*/env",
                "kind": "reading",
                "queue": {"size": 64, "on_full": "block"},
                "window": {"size": 16, "fields": ["temperature", "humidity"]},
                "apps": [{"name": "anomaly", "model": "sensor_anomaly", "cache": "sensor-windows"}],
            },
            {
                "match": "*/power",
                "kind": "reading",
                "queue": {"size": 64, "on_full": "block"},
                "filters": [{"type": "deadband", "epsilon": 5.0, "max_age_s": 30}],
            },
        ],
        "stats": {"interval_s": 5},
    }
    if data_dir is not None:
        cfg["gateway"]["data_dir"] = str(data_dir)
    return cfg


def _lobby_video() -> Path | None:
    """vtest.avi (full if fetched, else the committed excerpt), if there is one."""
    from streamedge.datasets import find_video

    try:
        return find_video("vtest")
    except FileNotFoundError:
        logger.info("no sample video found; the demo runs without the lobby camera")
        return None


def _fmt_ms(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, int | float) else "-"


def stats_line(snap: JSON) -> str:
    """One line of live stats."""
    msgs = snap["messages"]
    cache = snap.get("cache", {}).get("application", {})
    hit = cache.get("hit_ratio")
    inf = snap.get("inference", {}).get("local", {})
    e2e = snap["latency_ms"]["end_to_end"]
    return (
        f"[{snap['uptime_s']:6.0f}s] in {msgs['in']:6d}  answered {msgs['answered']:6d}  "
        f"filtered {msgs['filtered']:5d}  dropped {msgs['dropped']:4d}  "
        f"cache hits {cache.get('hits', 0):5d} / misses {cache.get('misses', 0):5d}"
        f" ({'-' if hit is None else f'{hit:.0%}'})  local inferences {inf.get('calls', 0):5d}  "
        f"e2e p50 {_fmt_ms(e2e['p50'])} ms"
    )


def summary(snap: JSON, pubs: dict[str, PublisherStats]) -> str:
    """The final table."""
    msgs = snap["messages"]
    lines = [
        "",
        "streamedge demo summary",
        "=======================",
        "published by sample devices : " + ", ".join(f"{k} {v.messages}" for k, v in pubs.items()),
        f"messages in                 : {msgs['in']}",
        f"  answered                  : {msgs['answered']}",
        f"  filtered (no answer)      : {msgs['filtered']}",
        f"  dropped                   : {msgs['dropped']}  {snap['drops'] or ''}",
        f"  pending                   : {msgs['pending']}",
        f"answers by tier             : {snap['answers_by_tier']}",
    ]
    for level, c in snap.get("cache", {}).items():
        lines.append(
            f"cache ({level}) hits/misses  : {c['hits']} / {c['misses']}  (hit ratio "
            f"{'-' if c['hit_ratio'] is None else format(c['hit_ratio'], '.1%')})"
        )
    for name, f in snap.get("filters", {}).items():
        lines.append(f"filter {name:<20} : pass {f['pass']}  drop {f['drop']}  error {f['error']}")
    lines.append("per model                   :")
    for name, ms in snap.get("models", {}).items():
        lat = ms["latency_ms"]
        ratio = ms["hit_ratio"]
        lines.append(
            f"  {name:<20} cache hits {ms['hits']:5d} misses {ms['misses']:5d} "
            f"({'-' if ratio is None else format(ratio, '.0%')})  inferences {ms['calls']:5d}  "
            f"mean {_fmt_ms(lat['mean'])} ms  p95 {_fmt_ms(lat['p95'])} ms"
        )
    lines.append("mean latency per tier (ms)  :")
    for tier, t in snap.get("inference", {}).items():
        lat = t["latency_ms"]
        lines.append(
            f"  {tier:<8} calls {t['calls']:6d}  failures {t['failures']:3d}  "
            f"mean {_fmt_ms(lat['mean'])}  p50 {_fmt_ms(lat['p50'])}  p95 {_fmt_ms(lat['p95'])}"
        )
    e2e = snap["latency_ms"]["end_to_end"]
    lines.append(
        f"end-to-end latency (ms)     : mean {_fmt_ms(e2e['mean'])}  p50 {_fmt_ms(e2e['p50'])}  "
        f"p95 {_fmt_ms(e2e['p95'])}  p99 {_fmt_ms(e2e['p99'])}"
    )
    saved = snap["saved"]
    lines.append(
        f"saved                       : {saved['inference_s']:.2f} inference-s, "
        f"{saved['bytes_not_sent']} bytes not sent upstream"
    )
    acc = snap.get("accuracy", {})
    if acc.get("checked"):
        lines.append(
            f"reuse accuracy (re-checked) : {acc['agreed']} of {acc['checked']} hits agreed "
            f"with the model ({acc['agreement']:.1%})"
        )
    lines.append("cache contents              :")
    for ns, c in snap.get("caches", {}).items():
        rc = c.get("recheck") or {}
        lines.append(
            f"  {ns:<32} entries {c['entries']:5d}  {c['bytes'] / 1e6:6.2f} MB"
            + (f"  re-checked {rc.get('started', 0)}" if rc else "")
        )
    return "\n".join(lines)


async def run_demo(
    *,
    duration: float | None,
    port: int,
    every: float = 5.0,
    out: TextIO,
    data_dir: Path | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Gateway], None] | None = None,
) -> JSON:
    """Run the demo; return the final stats snapshot."""
    if not port_is_free("127.0.0.1", port):
        new_port = free_port()
        print(f"port {port} is busy; the embedded broker uses port {new_port} instead", file=out)
        port = new_port
    cfg: StreamedgeConfig = parse_config(demo_config(port=port, data_dir=data_dir))
    gateway = Gateway(cfg)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    pubs = {"cameras": PublisherStats(), "sensors": PublisherStats()}
    print(
        f"streamedge demo: embedded MQTT broker on 127.0.0.1:{port} "
        f"(watch it: mosquitto_sub -h 127.0.0.1 -p {port} -t 'streamedge/#' -v)",
        file=out,
        flush=True,
    )
    print("loading models (the built-in ones are trained on first use, ~10 s) ...", file=out)
    async with asyncio.TaskGroup() as tg:
        gw_task = tg.create_task(gateway.run(stop), name="streamedge[demo].gateway")
        ready = tg.create_task(gateway.ready.wait(), name="streamedge[demo].ready")
        done, _ = await asyncio.wait([gw_task, ready], return_when=asyncio.FIRST_COMPLETED)
        if gw_task in done:
            ready.cancel()
            return gateway.stats.snapshot()  # the gateway failed; the TaskGroup re-raises
        if on_ready is not None:
            on_ready(gateway)
        if gateway.restored_entries:
            # Snapshots make a second run start warm; say so, or its hit ratio looks made up.
            print(
                f"restored {gateway.restored_entries} cached answers saved by an earlier run "
                f"(in {gateway.cfg.gateway.data_dir}/caches; delete that folder to start cold)",
                file=out,
            )
        print(f"gateway ready; sample devices publishing for {duration or 'ever'} s", file=out)
        started = time.monotonic()
        pub_duration = None if duration is None else max(duration - 1.0, 0.5)
        cams = tg.create_task(
            run_cameras(host="127.0.0.1", port=port, duration=pub_duration, stats=pubs["cameras"]),
            name="streamedge[demo].cameras",
        )
        sens = tg.create_task(
            run_sensors(host="127.0.0.1", port=port, duration=pub_duration, stats=pubs["sensors"]),
            name="streamedge[demo].sensors",
        )
        lobby: asyncio.Task[PublisherStats] | None = None
        video = _lobby_video()
        if video is not None:
            pubs["lobby"] = PublisherStats()
            lobby = tg.create_task(
                run_cameras(
                    host="127.0.0.1",
                    port=port,
                    devices=1,
                    fps=2.0,
                    duration=pub_duration,
                    video=video,
                    device_prefix="lobby",
                    stats=pubs["lobby"],
                ),
                name="streamedge[demo].lobby",
            )
            print(f"lobby1 camera plays {video} (real video, MTCNN face detector)", file=out)
        while not stop.is_set():
            remaining = None if duration is None else duration - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                break
            wait = every if remaining is None else min(every, remaining)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await stop.wait()
            print(stats_line(gateway.stats.snapshot()), file=out, flush=True)
        cams.cancel()
        sens.cancel()
        if lobby is not None:
            lobby.cancel()
        stop.set()
    snap = gateway.stats.snapshot()
    print(summary(snap, pubs), file=out, flush=True)
    return snap
