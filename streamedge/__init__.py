"""streamedge: an asyncio edge gateway that skips, reuses and forwards DNN inference.

The public surface is small: the records that flow through the pipeline, the
interfaces plugins implement, the error hierarchy, and :data:`__version__`.
Everything else is reached through the ``streamedge`` command or its modules.
"""

from streamedge.errors import (
    CacheError,
    ConfigError,
    DecodeError,
    InferenceError,
    MissingDependencyError,
    StreamedgeError,
    TransportError,
)
from streamedge.records import (
    Frame,
    InferenceResult,
    ModelRef,
    RawMessage,
    Reading,
    StreamKey,
    Tier,
    Verdict,
    Window,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ConfigError",
    "DecodeError",
    "Frame",
    "InferenceError",
    "InferenceResult",
    "MissingDependencyError",
    "ModelRef",
    "RawMessage",
    "Reading",
    "StreamKey",
    "StreamedgeError",
    "Tier",
    "TransportError",
    "Verdict",
    "Window",
    "__version__",
]
