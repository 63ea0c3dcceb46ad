"""Build the tier router from the ``inference`` config section."""

from __future__ import annotations

from collections.abc import Mapping

from streamedge.inference.config import InferenceConfig
from streamedge.inference.local import LocalBackend
from streamedge.inference.router import TierRouter
from streamedge.protocols import InferenceBackend, Model
from streamedge.records import ModelRef


def build_router(cfg: InferenceConfig, models: Mapping[ModelRef, Model]) -> TierRouter:
    """One backend per configured tier, in order, behind a router."""
    backends: list[InferenceBackend] = [LocalBackend(models, tier) for tier in cfg.tiers]
    return TierRouter(backends)
