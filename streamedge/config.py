"""The root configuration model and the loader (``streamedge check-config``).

One YAML (or TOML, or JSON) file configures one daemon. Every key is
documented by its ``description``; ``streamedge check-config --explain``
prints them all.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator
from pydantic_core import to_jsonable_python

from streamedge.caches.config import CacheConfig, SharingConfig
from streamedge.confbase import Model, RelPath
from streamedge.errors import ConfigError
from streamedge.filters.config import FilterConfig, RecalibrationConfig
from streamedge.gateways.config import CoapConfig, MqttConfig
from streamedge.inference.config import InferenceConfig, ModelConfig
from streamedge.stats.config import StatsConfig


def _default_data_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "streamedge"


class GatewayConfig(Model):
    """Identity and local state of this daemon."""

    name: str = Field(
        "streamedge",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Gateway name: in logs, task names, the client id and stats.",
    )
    data_dir: RelPath = Field(
        default_factory=_default_data_dir,
        description="Where built models and cache snapshots are kept.",
        json_schema_extra={"explain_default": "$XDG_STATE_HOME/streamedge (~/.local/state)"},
    )


class LimitsConfig(Model):
    """Bounds on input; anything beyond is dropped with a counted reason."""

    max_payload_bytes: int = Field(
        4 * 2**20, ge=64, description="Larger payloads are dropped as 'too_large'."
    )
    max_frame_pixels: int = Field(
        4096 * 4096, ge=64, description="Decoded frames larger than this are dropped."
    )
    max_streams: int = Field(
        10_000, ge=1, description="Distinct device/stream pairs tracked at once."
    )


class QueueConfig(Model):
    """The bounded queue in front of one stream."""

    size: int = Field(16, ge=1, description="Messages waiting per stream.")
    on_full: Literal["drop_oldest", "drop_newest", "block"] = Field(
        "drop_oldest",
        description=(
            "drop_oldest: the newest input wins (video); drop_newest: keep the "
            "backlog; block: make the transport wait (QoS 1 readings, no loss)."
        ),
    )


class WindowConfig(Model):
    """Readings collected into a window for a model that takes one."""

    size: int = Field(16, ge=1, le=4096, description="Readings per window.")
    fields: list[str] | None = Field(
        None, description="Fields in the window (default: numeric fields of the first reading)."
    )


class AppConfig(Model):
    """An application: a model asked about a stream, with an optional cache."""

    name: str = Field(description="Application name; carried in each answer.")
    model: str = Field(description="Name of an entry in 'models'.")
    cache: str | None = Field(None, description="Name of an entry in 'caches'; none: always infer.")


class StreamConfig(Model):
    """How the streams whose ``device/stream`` matches ``match`` are processed."""

    match: str = Field(
        "*", description="Glob on 'device/stream'; the first matching entry applies."
    )
    kind: Literal["auto", "reading", "frame"] = Field(
        "auto",
        description="What the payloads are; auto decides from the content type and bytes.",
    )
    queue: QueueConfig = Field(default_factory=QueueConfig)
    filters: list[FilterConfig] = Field(
        default_factory=list, description="Filters tried in order; the first DROP wins."
    )
    republish_on_filter: bool = Field(
        True, description="A filtered input republishes the stream's last answer (tier=filter)."
    )
    window: WindowConfig | None = Field(
        None, description="Collect readings into windows for the applications' models."
    )
    apps: list[AppConfig] = Field(
        default_factory=list,
        description="Applications run on each input; none: readings are forwarded as is.",
    )
    recalibrate: RecalibrationConfig | None = Field(
        None,
        description=(
            "Re-choose the video filters' thresholds per stream while running "
            "(checks of dropped frames, windows answered by the full model); None: never."
        ),
    )

    def matches(self, key: str) -> bool:
        """Whether ``device/stream`` matches this entry."""
        return fnmatch.fnmatchcase(key, self.match)


class PipelineConfig(Model):
    """Workers and shutdown."""

    shards: int = Field(
        4, ge=1, le=256, description="Worker tasks; each owns a set of streams (per-stream order)."
    )
    max_queued_bytes: int = Field(
        64 * 2**20, ge=2**16, description="Byte cap on all queued input together."
    )
    drain_s: float = Field(5.0, ge=0, description="Time given to queued input at shutdown.")


class LoggingConfig(Model):
    """Log levels (the CLI's --verbose raises the default)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Default level of streamedge's loggers."
    )
    loggers: dict[str, Literal["debug", "info", "warning", "error"]] = Field(
        default_factory=dict, description="Per-logger levels, e.g. {streamedge.caches: debug}."
    )
    throttle_s: float = Field(
        30.0, ge=0, description="Repeats of one warning are summarised once per interval."
    )


def _default_streams() -> list[StreamConfig]:
    return [StreamConfig()]


class StreamedgeConfig(Model):
    """The configuration of one streamedge gateway daemon."""

    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    coap: CoapConfig = Field(default_factory=CoapConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    models: list[ModelConfig] = Field(default_factory=list, description="Models by name.")
    caches: list[CacheConfig] = Field(default_factory=list, description="Cache profiles by name.")
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    sharing: SharingConfig = Field(default_factory=SharingConfig)
    streams: list[StreamConfig] = Field(
        default_factory=_default_streams,
        description="Stream rules, first match wins; unmatched streams are dropped.",
    )
    stats: StatsConfig = Field(default_factory=StatsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _check_references(self) -> StreamedgeConfig:
        model_names = [m.name for m in self.models]
        cache_names = [c.name for c in self.caches]
        for kind, names in (("model", model_names), ("cache", cache_names)):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                msg = f"duplicate {kind} names: {', '.join(dupes)}"
                raise ValueError(msg)
        for i, stream in enumerate(self.streams):
            for app in stream.apps:
                if app.model not in model_names:
                    msg = (
                        f"streams[{i}].apps[{app.name}].model: no model named "
                        f"{app.model!r} (known: {', '.join(model_names) or 'none'})"
                    )
                    raise ValueError(msg)
                if app.cache is not None and app.cache not in cache_names:
                    msg = (
                        f"streams[{i}].apps[{app.name}].cache: no cache named "
                        f"{app.cache!r} (known: {', '.join(cache_names) or 'none'})"
                    )
                    raise ValueError(msg)
        return self

    def stream_for(self, key: str) -> StreamConfig | None:
        """The first stream rule matching ``device/stream``, if any."""
        return next((s for s in self.streams if s.matches(key)), None)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from exc
    try:
        if path.suffix == ".toml":
            data: object = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"not valid YAML: {where}{problem}", source=str(path)) from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"not valid {kind}: {exc}", source=str(path)) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of keys", source=str(path))
    return data


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _include_cache_profiles(data: dict[str, Any], base_dir: Path, source: str) -> dict[str, Any]:
    """Expand ``caches: [{name: x, profile: ../caches/y.yaml, ...}]``.

    The profile file holds cache keys (embedder, index, policy, store); keys
    given next to ``profile`` override it. Paths are relative to the file
    that names them.
    """
    caches = data.get("caches")
    if not isinstance(caches, list):
        return data
    expanded: list[Any] = []
    for i, entry in enumerate(caches):
        if isinstance(entry, dict) and "profile" in entry:
            ref = entry["profile"]
            if not isinstance(ref, str):
                raise ConfigError(f"caches.{i}.profile: must be a file path", source=source)
            path = Path(ref).expanduser()
            if not path.is_absolute():
                path = base_dir / path
            profile = _read_mapping(path)
            rest = {k: v for k, v in entry.items() if k != "profile"}
            expanded.append(_deep_merge(profile, rest))
        else:
            expanded.append(entry)
    return {**data, "caches": expanded}


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the key path: ``mqtt.port: ...``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def parse_config(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
) -> StreamedgeConfig:
    """Validate a mapping; raise :class:`ConfigError` naming each bad key."""
    context = {"base_dir": base_dir, "env": dict(env) if env is not None else None}
    data = _include_cache_profiles(dict(data), base_dir or Path.cwd(), source)
    try:
        return StreamedgeConfig.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise ConfigError("\n" + format_validation_error(exc), source=source) from exc


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> StreamedgeConfig:
    """Read and validate a config file (YAML, TOML or JSON by extension)."""
    path = Path(path)
    data = _read_mapping(path)
    return parse_config(data, base_dir=path.resolve().parent, env=env, source=str(path))


def _annotation_name(annotation: object) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _annotation_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_annotation_name(a) for a in args)
    if origin is not None:
        inner = ", ".join(_annotation_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _is_section(annotation: object) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _walk(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        extra = field.json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("explain_default"), str):
            default = str(extra["explain_default"])
        elif field.is_required():
            default = "(required)"
        elif _is_section(field.annotation):
            default = ""
        else:
            value = field.get_default(call_default_factory=True)
            default = json.dumps(to_jsonable_python(value), default=str)
            if len(default) > 60:
                default = default[:57] + "..."
        yield key, _annotation_name(field.annotation), default, field.description or ""
        for inner in _models_in(field.annotation):
            label = getattr(inner.model_fields.get("type"), "default", None)
            suffix = f"[type={label}]" if isinstance(label, str) else ""
            yield from _walk(inner, f"{key}{suffix}.")


def _models_in(annotation: object) -> Iterator[type[BaseModel]]:
    if _is_section(annotation):
        yield annotation  # type: ignore[misc]  # narrowed by _is_section
        return
    for arg in get_args(annotation):
        yield from _models_in(arg)


def explain() -> str:
    """A reference of every configuration key, its type, default and meaning."""
    rows = list(_walk(StreamedgeConfig, ""))
    out = ["# streamedge configuration keys", ""]
    seen: set[str] = set()
    for key, kind, default, desc in rows:
        if key in seen:
            continue
        seen.add(key)
        line = f"{key}  ({kind})"
        if default:
            line += f"  default {default}"
        out.append(line)
        if desc:
            out.append(f"    {desc}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """``docs/config-reference.md``: :func:`explain` wrapped for the docs."""
    return (
        "# Configuration reference\n\n"
        "Generated by `streamedge check-config --explain` (`make docs` rewrites this file;\n"
        "a test checks it is current). Every key, its type, its default and what it does.\n\n"
        "```text\n" + explain() + "```\n"
    )
