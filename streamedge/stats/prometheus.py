"""Prometheus exposition of a :class:`Stats` (prometheus-client's text format).

A custom collector reads the live counters at scrape time, on the event
loop (the HTTP server runs there too), so nothing is copied per message and
no lock is needed. Names are ``streamedge_*`` with unit suffixes
(``_seconds``, ``_bytes``, ``_total`` for counters, ``_ratio``). Labels
take values from bounded vocabularies only: tiers, cache levels, drop
reasons, filter, model, cache namespace and shard names from the config;
never devices or streams (use ``stats/get`` with ``device`` for those).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from streamedge.stats.metrics import PROMETHEUS_BOUNDS, Histogram, Stats

#: The content type of :func:`render`'s output (the classic text format 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def _buckets(hist: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [
        (repr(bound), float(n)) for bound, n in hist.cumulative(PROMETHEUS_BOUNDS)
    ]
    out.append(("+Inf", float(hist.count)))
    return out


def _num(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


class StatsCollector:
    """Yields the metric families of one gateway's stats at each scrape."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on what has been seen."""
        return []

    def collect(self) -> Iterator[Metric]:
        """All metric families, read from the live stats."""
        st = self._stats
        info = GaugeMetricFamily(
            "streamedge_build_info",
            "Gateway name and streamedge version.",
            labels=["gateway", "version"],
        )
        info.add_metric([st.gateway, st.version], 1.0)
        yield info
        yield GaugeMetricFamily(
            "streamedge_start_time_seconds", "Start time (Unix epoch).", value=st.started_wall
        )
        yield GaugeMetricFamily(
            "streamedge_uptime_seconds", "Seconds since start.", value=st.uptime_s
        )

        yield CounterMetricFamily(
            "streamedge_messages_received",
            "Messages delivered by a transport.",
            value=st.messages_in,
        )
        yield CounterMetricFamily(
            "streamedge_messages_published",
            "Answers handed to the transport.",
            value=st.messages_out,
        )
        yield CounterMetricFamily(
            "streamedge_received_bytes", "Payload bytes received.", value=st.bytes_in
        )
        handled = CounterMetricFamily(
            "streamedge_messages_handled",
            "Messages by how they ended (answered, filtered, dropped).",
            labels=["outcome"],
        )
        for outcome, n in st.outcomes.items():
            handled.add_metric([outcome], n)
        yield handled
        yield GaugeMetricFamily(
            "streamedge_messages_pending",
            "Messages received and still in flight.",
            value=st.pending,
        )
        drops = CounterMetricFamily(
            "streamedge_drops", "Messages dropped, by reason.", labels=["reason"]
        )
        for reason, n in sorted(st.drops.items()):
            drops.add_metric([reason], n)
        yield drops
        filters = CounterMetricFamily(
            "streamedge_filter_verdicts",
            "Filter verdicts (pass, drop, error) per filter.",
            labels=["filter", "verdict"],
        )
        for name, per in sorted(st.filters.items()):
            for verdict, n in per.items():
                filters.add_metric([name, verdict], n)
        yield filters

        lookups = CounterMetricFamily(
            "streamedge_cache_lookups",
            "Cache lookups per level (layer, application, device) and result (hit, miss).",
            labels=["level", "result"],
        )
        ratio = GaugeMetricFamily(
            "streamedge_cache_window_hit_ratio",
            "Hit ratio per cache level over the sliding window (stats.window_s).",
            labels=["level"],
        )
        recent = st.recent.totals()
        for level, per in st.cache.items():
            lookups.add_metric([level, "hit"], per["hits"])
            lookups.add_metric([level, "miss"], per["misses"])
            rh, rm = recent.get(f"{level}.hit", 0), recent.get(f"{level}.miss", 0)
            if rh + rm:
                ratio.add_metric([level], rh / (rh + rm))
        yield lookups
        yield ratio
        checks = CounterMetricFamily(
            "streamedge_reuse_checks",
            "Re-checked cache hits per namespace: did the authoritative tier agree?",
            labels=["namespace", "level", "result"],
        )
        for ns, (level, agreement) in sorted(st.namespaces.items()):
            checks.add_metric([ns, level, "agreed"], agreement.agreed)
            checks.add_metric([ns, level, "disagreed"], agreement.checked - agreement.agreed)
        yield checks
        yield CounterMetricFamily(
            "streamedge_inference_saved_seconds",
            "Inference time saved by cache hits (the reused entries' cost).",
            value=st.inference_s_saved,
        )
        yield CounterMetricFamily(
            "streamedge_upstream_saved_bytes",
            "Input bytes that did not go upstream (filtered or answered from a cache).",
            value=st.bytes_not_sent,
        )

        answers = CounterMetricFamily(
            "streamedge_answers", "Answered messages by tier.", labels=["tier"]
        )
        for tier, n in sorted(st.answers_by_tier.items()):
            answers.add_metric([tier], n)
        yield answers
        calls = CounterMetricFamily(
            "streamedge_inference_calls", "Calls to an inference tier.", labels=["tier"]
        )
        failures = CounterMetricFamily(
            "streamedge_inference_failures", "Failed inference calls.", labels=["tier"]
        )
        tier_latency = HistogramMetricFamily(
            "streamedge_inference_latency_seconds",
            "Latency of successful inference calls per tier.",
            labels=["tier"],
        )
        for tier, ts in sorted(st.tiers.items()):
            calls.add_metric([tier], ts.calls)
            failures.add_metric([tier], ts.failures)
            tier_latency.add_metric([tier], _buckets(ts.latency), ts.latency.sum)
        yield calls
        yield failures
        yield tier_latency
        m_lookups = CounterMetricFamily(
            "streamedge_model_cache_lookups",
            "Cache lookups per model and result.",
            labels=["model", "result"],
        )
        m_calls = CounterMetricFamily(
            "streamedge_model_inference_calls", "Inference calls per model.", labels=["model"]
        )
        m_latency = HistogramMetricFamily(
            "streamedge_model_inference_latency_seconds",
            "Latency of successful inference per model.",
            labels=["model"],
        )
        for name, ms in sorted(st.models.items()):
            m_lookups.add_metric([name, "hit"], ms.hits)
            m_lookups.add_metric([name, "miss"], ms.misses)
            m_calls.add_metric([name], ms.calls)
            m_latency.add_metric([name], _buckets(ms.latency), ms.latency.sum)
        yield m_lookups
        yield m_calls
        yield m_latency
        yield HistogramMetricFamily(
            "streamedge_end_to_end_latency_seconds",
            "From receipt to the answer being queued for publication.",
            buckets=_buckets(st.end_to_end),
            sum_value=st.end_to_end.sum,
        )
        stages = HistogramMetricFamily(
            "streamedge_stage_latency_seconds",
            "Time spent per pipeline stage (decode, filter, embed, lookup, infer, publish).",
            labels=["stage"],
        )
        for stage, hist in sorted(st.stages.items()):
            stages.add_metric([stage], _buckets(hist), hist.sum)
        yield stages
        errors = CounterMetricFamily(
            "streamedge_errors", "Unexpected errors contained per stage.", labels=["stage"]
        )
        for stage, n in sorted(st.errors.items()):
            errors.add_metric([stage], n)
        yield errors
        requests = CounterMetricFamily(
            "streamedge_stats_requests", "stats/get requests by result.", labels=["result"]
        )
        for result, n in st.requests.items():
            requests.add_metric([result], n)
        yield requests
        yield GaugeMetricFamily(
            "streamedge_streams_tracked", "Streams with per-stream counters.", value=len(st.streams)
        )
        yield from self._gauges()

    def _gauges(self) -> Iterator[Metric]:
        gauges = self._stats.gauges
        if (g := gauges.get("queues")) is not None and isinstance(q := g(), dict):
            depth = GaugeMetricFamily(
                "streamedge_queue_depth", "Messages queued per shard.", labels=["shard"]
            )
            shards = q.get("shards")
            for shard, n in sorted(shards.items() if isinstance(shards, dict) else []):
                if isinstance(n, int | float):
                    depth.add_metric([str(shard)], float(n))
            yield depth
            for key, name, doc in (
                ("bytes", "streamedge_queue_size_bytes", "Bytes queued in all shards."),
                ("max_bytes", "streamedge_queue_max_bytes", "Byte cap of the shard queues."),
            ):
                if (value := _num(q, key)) is not None:
                    yield GaugeMetricFamily(name, doc, value=value)
        if (g := gauges.get("caches")) is not None and isinstance(c := g(), dict):
            entries = GaugeMetricFamily(
                "streamedge_cache_entries", "Entries per cache namespace.", labels=["namespace"]
            )
            size = GaugeMetricFamily(
                "streamedge_cache_size_bytes", "Bytes per cache namespace.", labels=["namespace"]
            )
            for ns, per in sorted(c.items()):
                if isinstance(per, dict):
                    if (n := _num(per, "entries")) is not None:
                        entries.add_metric([str(ns)], n)
                    if (b := _num(per, "bytes")) is not None:
                        size.add_metric([str(ns)], b)
            yield entries
            yield size
        yield from self._sharing()
        if (g := gauges.get("transport")) is not None and isinstance(t := g(), dict):
            for key, name, doc, family in (
                ("connected", "streamedge_transport_connected", "1 while connected.", "gauge"),
                ("out_queue", "streamedge_transport_out_queue_depth", "Answers waiting.", "gauge"),
                ("reconnects", "streamedge_transport_reconnects", "Reconnections.", "counter"),
                (
                    "stray_messages",
                    "streamedge_transport_stray_messages",
                    "Messages on topics the gateway did not subscribe to.",
                    "counter",
                ),
            ):
                if (value := _num(t, key)) is not None:
                    yield (
                        GaugeMetricFamily(name, doc, value=value)
                        if family == "gauge"
                        else CounterMetricFamily(name, doc, value=value)
                    )
            lost = CounterMetricFamily(
                "streamedge_transport_lost_messages",
                "Messages lost by the transport (full queues).",
                labels=["direction"],
            )
            for key, direction in (("lost_incoming", "in"), ("lost_outgoing", "out")):
                if (value := _num(t, key)) is not None:
                    lost.add_metric([direction], value)
            yield lost

    def _sharing(self) -> Iterator[Metric]:
        """Cache sharing between gateways (``cache.device.sharing``), when it is on."""
        g = self._stats.cache_gauges.get("device")
        doc = g() if g is not None else None
        sharing = doc.get("sharing") if isinstance(doc, dict) else None
        if not isinstance(sharing, dict):
            return
        events = CounterMetricFamily(
            "streamedge_cache_shared_entries",
            "Shared cache entries: sent, received, merged, own_ignored; skipped (not sent) "
            "and rejected (not merged) by reason.",
            labels=["event", "reason"],
        )
        for key in ("sent", "received", "merged", "own_ignored"):
            if (value := _num(sharing, key)) is not None:
                events.add_metric([key, ""], value)
        for key in ("skipped", "rejected"):
            per = sharing.get(key)
            if isinstance(per, dict):
                for reason, n in sorted(per.items()):
                    if isinstance(n, int | float):
                        events.add_metric([key, str(reason)], float(n))
        yield events
        size = CounterMetricFamily(
            "streamedge_cache_shared_bytes",
            "Bytes of shared cache entries sent and received.",
            labels=["direction"],
        )
        for key, direction in (("bytes_sent", "sent"), ("bytes_received", "received")):
            if (value := _num(sharing, key)) is not None:
                size.add_metric([direction], value)
        yield size


def render(stats: Stats) -> bytes:
    """The Prometheus text exposition of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    return generate_latest(registry)
