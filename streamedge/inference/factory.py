"""Build the tier router from the ``inference`` config section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamedge.inference.config import (
    CloudTierConfig,
    EdgeTierConfig,
    InferenceConfig,
    LocalTierConfig,
)
from streamedge.inference.local import LocalBackend
from streamedge.inference.router import TierRouter
from streamedge.models.onnx_runtime import SessionSettings
from streamedge.protocols import InferenceBackend, Model
from streamedge.records import ModelRef

if TYPE_CHECKING:
    from streamedge.stats.metrics import Stats


@dataclass(frozen=True, slots=True)
class EdgeDefaults:
    """What an ``edge`` tier takes from the gateway when its own keys are unset."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = "streamedge"
    client_id: str = "streamedge"
    username: str | None = None
    password: str | None = None


def local_tier(cfg: InferenceConfig, model: str) -> LocalTierConfig | None:
    """The first local tier that runs ``model``, if any."""
    for tier in cfg.tiers:
        if isinstance(tier, LocalTierConfig) and (tier.models is None or model in tier.models):
            return tier
    return None


def needs_model(cfg: InferenceConfig, model: str) -> bool:
    """Whether the gateway must load ``model`` itself (a local tier runs it, or a cloud
    tier sends its preprocessed tensors); edge-only models are never loaded."""
    if local_tier(cfg, model) is not None:
        return True
    return any(
        isinstance(tier, CloudTierConfig)
        and (tier.models is None or model in tier.models)
        and any(m.name == model and m.payload == "tensor" for m in tier.remote_models)
        for tier in cfg.tiers
    )


def session_settings(tier: LocalTierConfig | None) -> SessionSettings:
    """onnxruntime tuning of a local tier (defaults without one)."""
    if tier is None:
        return SessionSettings()
    return SessionSettings(
        intra_op_threads=tier.intra_op_threads,
        graph_optimization=tier.graph_optimization,
        providers=tuple(tier.execution_providers),
    )


def build_options(cfg: InferenceConfig, model: str) -> tuple[SessionSettings, bool]:
    """``(settings, quantize)`` to build ``model`` with (its local tier's tuning)."""
    tier = local_tier(cfg, model)
    return session_settings(tier), tier is not None and model in tier.quantize


def build_router(
    cfg: InferenceConfig,
    models: Mapping[ModelRef, Model],
    *,
    stats: Stats | None = None,
    edge: EdgeDefaults | None = None,
    data_dir: Path | None = None,
) -> TierRouter:
    """One backend per configured tier, in order, behind a router."""
    from streamedge.inference.mqtt_rpc import Broker

    edge = edge or EdgeDefaults()
    backends: list[InferenceBackend] = []
    for i, tier in enumerate(cfg.tiers):
        if isinstance(tier, LocalTierConfig):
            backends.append(LocalBackend(models, tier))
        elif isinstance(tier, EdgeTierConfig):
            from streamedge.inference.edge import EdgeBackend

            password = tier.password.get_secret_value() if tier.password else edge.password
            broker = Broker(
                host=tier.host or edge.host,
                port=tier.port if tier.port is not None else edge.port,
                client_id=f"{edge.client_id}-{tier.tier_name()}-{i}",
                protocol=tier.protocol,
                username=tier.username or edge.username,
                password=password,
            )
            backends.append(
                EdgeBackend(tier, broker=broker, prefix=tier.topic_prefix or edge.topic_prefix)
            )
        else:
            from streamedge.inference.cloud import CloudBackend

            backends.append(CloudBackend(tier, models=models))
    store = None
    sf = cfg.store_and_forward
    if sf.enabled:
        from streamedge.inference.store import DeferredStore

        path = sf.path or (data_dir or Path()) / "deferred"
        store = DeferredStore(path, max_entries=sf.max_entries, max_bytes=sf.max_bytes)
    return TierRouter(backends, cfg, stats=stats, store=store)
