"""Stats requests, device follows, Prometheus text, the HTTP endpoint, plots and the CLI view."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from streamedge.errors import TransportError
from streamedge.stats.config import HttpConfig
from streamedge.stats.publisher import DeviceFollows, parse_request
from tests.unit.test_stats import Clock, full_stats, make_stats


# -- requests and follows ---------------------------------------------------------
def test_parse_request_fields_and_errors() -> None:
    req = parse_request(
        json.dumps(
            {
                "reply_to": "r/1",
                "device": "cam1",
                "model": "m",
                "window_s": 30,
                "follow_s": 0,
                "correlation": [1, 2],
                "future_field": True,
            }
        ).encode()
    )
    assert (req.reply_to, req.device, req.model, req.window_s, req.follow_s) == (
        "r/1",
        "cam1",
        "m",
        30.0,
        0.0,
    )
    assert req.has_correlation and req.correlation == [1, 2]
    assert parse_request(b"", "resp/topic").reply_to == "resp/topic"
    assert parse_request(b"  ").reply_to is None
    for bad, message in (
        (b"{nope", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"reply_to": "a/#"}', "wildcards"),
        (b'{"device": 3}', "'device'"),
        (b'{"window_s": 0}', "'window_s' must be > 0"),
        (b'{"window_s": true}', "number of seconds"),
        (b'{"follow_s": -1}', "'follow_s' must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_request(bad)


def test_device_follows_are_bounded_capped_and_expire() -> None:
    follows = DeviceFollows(max_devices=2, default_s=60, max_s=100)
    assert follows.follow("a", None, now=0) == 60
    assert follows.follow("b", 1000, now=0) == 100  # capped
    with pytest.raises(ValueError, match="already following 2"):
        follows.follow("c", 10, now=1)
    assert follows.follow("a", 90, now=1) == 90  # renewing is always allowed
    for reserved in ("get", "history", "reply", "a/b", "x#"):
        with pytest.raises(ValueError, match="cannot be a stats topic level"):
            follows.follow(reserved, 10, now=1)
    assert follows.devices(now=50) == ["a", "b"]
    assert follows.devices(now=95) == ["b"]  # a expired at 91
    assert follows.follow("b", 0, now=96) == 0  # stop
    assert follows.devices(now=96) == []
    assert follows.follow("c", 10, now=96) == 10  # room again


# -- Prometheus -----------------------------------------------------------------
def families(text: str) -> dict[str, Any]:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str, **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((family, name, labels))


def test_prometheus_text_parses_and_carries_the_counters() -> None:
    from streamedge.stats.prometheus import render

    st = full_stats()
    fams = families(render(st).decode())
    assert all(name.startswith("streamedge_") for name in fams)
    assert sample(fams, "streamedge_messages_received", "streamedge_messages_received_total") == 2
    assert sample(fams, "streamedge_drops", "streamedge_drops_total", reason="bad_payload") == 1
    assert (
        sample(
            fams,
            "streamedge_cache_lookups",
            "streamedge_cache_lookups_total",
            level="device",
            result="hit",
        )
        == 1
    )
    assert (
        sample(
            fams,
            "streamedge_filter_verdicts",
            "streamedge_filter_verdicts_total",
            filter="deadband",
            verdict="drop",
        )
        == 1
    )
    assert sample(fams, "streamedge_queue_depth", "streamedge_queue_depth", shard="shard0") == 1
    assert (
        sample(
            fams,
            "streamedge_cache_size_bytes",
            "streamedge_cache_size_bytes",
            namespace="m@1/e@1",
        )
        == 300
    )
    assert sample(fams, "streamedge_transport_connected", "streamedge_transport_connected") == 1
    hist = "streamedge_inference_latency_seconds"
    assert fams[hist].type == "histogram"
    # 20 ms observed once: not under 10 ms, under 25 ms, exactly.
    assert sample(fams, hist, f"{hist}_bucket", tier="local", le="0.01") == 0
    assert sample(fams, hist, f"{hist}_bucket", tier="local", le="0.025") == 1
    assert sample(fams, hist, f"{hist}_count", tier="local") == 1
    assert sample(fams, "streamedge_build_info", "streamedge_build_info", gateway="g") == 1


def test_prometheus_labels_never_carry_devices() -> None:
    from streamedge.stats.prometheus import render

    st = make_stats(Clock(), max_streams=10_000)
    for i in range(500):
        key = f"dev{i}/cam"
        st.received(key, 1)
        st.cache_result("application", hit=i % 2 == 0, stream=key)
        st.answered(key, "cache", 0.001)
    text = render(st).decode()
    assert "dev1" not in text
    series = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(series) < 200, len(series)  # independent of the 500 streams


# -- the HTTP endpoint ----------------------------------------------------------
async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_http_endpoint_serves_metrics_health_and_readiness() -> None:
    from streamedge.stats.http import StatsHttpServer

    st = full_stats()
    ready = [False, "starting"]
    server = StatsHttpServer(
        HttpConfig(port=0), stats=st, readiness=lambda: (bool(ready[0]), str(ready[1]))
    )
    async with server, asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve(), name="test-http")
        status, headers, body = await http_get(server.port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert int(headers["Content-Length"]) == len(body)
        assert "streamedge_messages_received" in families(body.decode())
        assert (await http_get(server.port, "/healthz"))[:1] == (200,)
        status, _, body = await http_get(server.port, "/readyz")
        assert status == 503 and json.loads(body) == {"ready": False, "reason": "starting"}
        ready[:] = [True, "ok"]
        assert (await http_get(server.port, "/readyz?verbose=1"))[0] == 200
        status, headers, body = await http_get(server.port, "/metrics", "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        assert (await http_get(server.port, "/nope"))[0] == 404
        assert (await http_get(server.port, "/metrics", "POST"))[0] == 405
        # Garbage and silence do not hurt the server.
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.write(b"garbage\r\n\r\n")
        assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 400")
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", server.port)
        w.close()
        assert (await http_get(server.port, "/healthz"))[0] == 200
        task.cancel()


async def test_http_endpoint_bounds_connections_and_reports_a_taken_port() -> None:
    from streamedge.stats.http import StatsHttpServer

    st = make_stats(Clock())
    cfg = HttpConfig(port=0, max_connections=1, timeout_s=30)
    server = StatsHttpServer(cfg, stats=st, readiness=lambda: (True, "ok"))
    async with server, asyncio.TaskGroup() as tg:
        task = tg.create_task(server.serve(), name="test-http")
        # A client that connects and says nothing holds the only slot ...
        _r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        await asyncio.sleep(0)
        async with asyncio.timeout(10):
            while server._active < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # ... so the next one is closed at once, and counted.
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(r2.read(), 10) == b""
        assert server.refused == 1
        w1.close()
        w2.close()
        async with asyncio.timeout(10):
            while server._active:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert (await http_get(server.port, "/healthz"))[0] == 200
        with pytest.raises(TransportError, match="cannot listen"):
            async with StatsHttpServer(
                HttpConfig(port=server.port), stats=st, readiness=lambda: (True, "")
            ):
                pass
        task.cancel()
    with socket.socket() as s:  # nothing listens on the port after the server left
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server.port))
        s.listen()


# -- the plot -------------------------------------------------------------------
def history_doc() -> dict[str, Any]:
    from streamedge.stats.history import History

    clock = Clock()
    st = make_stats(clock)
    hist = History(st, points=30, interval_s=10)
    for i in range(12):
        for j in range(20):
            st.received("d/s", 10)
            hit = j < i
            st.cache_result("application", hit=hit)
            if hit:
                st.answered("d/s", "cache", 0.001)
            else:
                st.inference("local", 0.02 + i / 1000, ok=True)
                st.answered("d/s", "local", 0.03)
        if i % 3 == 0:
            st.dropped("bad_payload")
        clock.t += 10
        hist.sample(1.7e9 + 10 * i)
    return hist.document(gateway="g", version="0", ts=1.7e9 + 120)


def test_plot_series_are_derived_from_the_history() -> None:
    from streamedge.stats.plot import series

    data = series(history_doc())
    assert data.minutes[-1] == 0.0 and data.minutes[0] == pytest.approx(-11 * 10 / 60)
    assert data.rates["in"][0] == pytest.approx(2.0)  # 20 messages in 10 s
    assert data.hit_ratio["application"][0] == 0.0
    assert data.hit_ratio["application"][5] == pytest.approx(5 / 20)
    assert data.hit_ratio["reused answers"][5] == pytest.approx(5 / 20)
    assert data.drops["bad_payload"][:4] == [1, 0, 0, 1]
    assert "local p95" in data.latency_ms and "end_to_end p50" in data.latency_ms


def test_plot_history_writes_an_image(tmp_path: Path) -> None:
    from streamedge.errors import StreamedgeError
    from streamedge.stats.plot import plot_history

    out = plot_history(history_doc(), tmp_path / "h.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = history_doc()
    for key in ("t", "dt", "queue_depth"):
        empty[key] = []
    empty["counts"] = {}
    with pytest.raises(StreamedgeError, match="no points"):
        plot_history(empty, tmp_path / "e.png")


# -- the CLI view ---------------------------------------------------------------
def test_table_and_live_view_show_every_section() -> None:
    from rich.console import Console

    from streamedge.commands.stats import Trend, dashboard, format_stats, sparkline

    snap = full_stats().snapshot(device="d")
    text = format_stats(snap)
    for needle in (
        "cache layer",
        "cache device",
        "reuse accuracy",
        "tier local",
        "end-to-end",
        "cache size m@1/e@1",
        "queues",
        "transport",
        "d/s",
        "filter deadband",
    ):
        assert needle in text, needle
    trend = Trend(points=3)
    for i in range(5):
        doc = dict(snap, ts=snap["ts"] + i, messages={**snap["messages"], "in": 10 * i})
        trend.add(doc)
    assert list(trend.rate) == [10.0, 10.0, 10.0]  # bounded to 3 points
    console = Console(record=True, width=200)
    console.print(dashboard(snap, trend))
    out = console.export_text()
    assert "input rate" in out and "10.0/s" in out and "cache application" in out
    assert sparkline([0.0, 0.5, 1.0, None], top=1.0) == "▁▅█ "


def test_stats_schema_and_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from streamedge.cli import main

    assert main(["stats", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["schema_version"]["const"] == 2
    assert main(["stats", "--follow", "10"]) == 1
    assert "--follow needs --device" in capsys.readouterr().err
