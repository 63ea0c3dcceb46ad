"""The one exception hierarchy of streamedge.

Foreign exceptions (aiomqtt, aiocoap, onnxruntime, httpx, faiss, OSError) are
mapped into these classes once, in the module that wraps the foreign library,
with ``raise ... from exc``.

::

    StreamedgeError
    ├── ConfigError                invalid file, unknown plugin, bad value
    │   └── MissingDependencyError a configured plugin needs a package
    ├── TransportError             MQTT / CoAP / socket failures
    │   ├── ConnectError
    │   └── PublishError
    ├── DecodeError                a payload that cannot be decoded (has .reason)
    ├── CacheError
    ├── InferenceError             a model or tier failed
    │   ├── BackendUnavailableError
    │   ├── InferenceTimeoutError
    │   ├── AllTiersFailedError
    │   └── DeferredError          stored for later (store-and-forward)
    └── PluginError                a plugin broke its contract
"""

from __future__ import annotations


class StreamedgeError(Exception):
    """Base class of every error raised by streamedge."""


class ConfigError(StreamedgeError):
    """A configuration file or value is invalid. The daemon refuses to start."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        if source:
            lines = [ln for ln in message.splitlines() if ln.strip()] or [""]
            message = "\n".join(f"{source}: {ln}" for ln in lines)
        super().__init__(message)


class MissingDependencyError(ConfigError):
    """A configured plugin needs a package that is not installed."""

    def __init__(self, plugin: str, package: str) -> None:
        self.plugin = plugin
        self.package = package
        super().__init__(f"{plugin!r} needs the package {package!r}: pip install {package}")


class TransportError(StreamedgeError):
    """A transport (MQTT, CoAP) failed to connect, publish or receive."""


class ConnectError(TransportError):
    """The connection to a broker or peer could not be made."""


class PublishError(TransportError):
    """A message could not be published."""


class DecodeError(StreamedgeError):
    """A payload could not be decoded. ``reason`` is the counted drop reason."""

    def __init__(self, message: str, *, reason: str = "decode_error") -> None:
        self.reason = reason
        super().__init__(message)


class CacheError(StreamedgeError):
    """A cache operation failed; the pipeline treats it as a miss."""


class InferenceError(StreamedgeError):
    """A model or inference tier failed to answer."""


class BackendUnavailableError(InferenceError):
    """A tier is not ready or its circuit breaker is open."""


class InferenceTimeoutError(InferenceError):
    """A tier did not answer within its deadline."""


class AllTiersFailedError(InferenceError):
    """Every configured tier failed. ``causes`` holds each tier's error.

    ``reason`` is a short machine-readable word for error answers
    (``no_tier``, ``all_tiers_failed``, ``store_full``).
    """

    def __init__(
        self, message: str, causes: list[BaseException], *, reason: str = "all_tiers_failed"
    ) -> None:
        self.causes = causes
        self.reason = reason
        super().__init__(message)


class DeferredError(InferenceError):
    """No tier could answer now; a non-urgent request was stored to be answered later."""

    def __init__(self, message: str, *, entry: str) -> None:
        self.entry = entry
        super().__init__(message)


class PluginError(StreamedgeError):
    """A plugin violated its contract (wrong shape, wrong type)."""
