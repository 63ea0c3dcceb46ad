"""Send a miss to the first tier that serves the model and answers in time.

This is the foundation's router: ordered tiers with fallback. Circuit
breakers, confidence escalation and store-and-forward build on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

from streamedge.errors import AllTiersFailedError, InferenceError
from streamedge.protocols import InferenceBackend
from streamedge.records import InferenceRequest, InferenceResult

logger = logging.getLogger(__name__)


class TierRouter:
    """Tries tiers in order; the first answer wins; failures fall through."""

    def __init__(self, backends: Sequence[InferenceBackend]) -> None:
        self.backends = list(backends)
        self._stack = AsyncExitStack()
        self.failures: dict[str, int] = {}

    async def __aenter__(self) -> Self:
        await self._stack.__aenter__()
        try:
            for backend in self.backends:
                await self._stack.enter_async_context(backend)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        """Answer from the first tier that can; raise AllTiersFailedError otherwise."""
        causes: list[BaseException] = []
        for backend in self.backends:
            if not backend.serves(request.model):
                continue
            try:
                return await backend.infer(request)
            except InferenceError as exc:
                self.failures[backend.name] = self.failures.get(backend.name, 0) + 1
                logger.warning("tier %s failed for %s: %s", backend.name, request.model, exc)
                causes.append(exc)
        if not causes:
            raise AllTiersFailedError(f"no tier serves {request.model}", causes)
        raise AllTiersFailedError(f"every tier failed for {request.model}", causes)
