"""Configuration of ``streamedge worker`` (one YAML file per worker process)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator

from streamedge.confbase import EnvStr, Model, RelPath, env_substituted
from streamedge.config import (
    LoggingConfig,
    _default_data_dir,
    _read_mapping,
    _walk,
    format_validation_error,
)
from streamedge.errors import ConfigError
from streamedge.inference.config import LocalTierConfig, ModelConfig


def _default_name() -> str:
    # Host and process id: a second worker started from the same file gets its own
    # name and MQTT client id, and so joins the shared subscription with no change.
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSection(Model):
    """Identity and local state of the worker."""

    name: str = Field(
        default_factory=_default_name,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Worker name (MQTT client id, status topic, answers).",
        json_schema_extra={"explain_default": "<hostname>-<pid>"},
    )
    data_dir: RelPath = Field(
        default_factory=_default_data_dir,
        description="Where built-in and quantised models are kept.",
        json_schema_extra={"explain_default": "$XDG_STATE_HOME/streamedge (~/.local/state)"},
    )


class WorkerMqttConfig(Model):
    """The broker the gateways send edge requests through."""

    host: EnvStr = Field(description="Broker host name.")
    port: int = Field(1883, ge=0, le=65535, description="Broker TCP port.")
    username: EnvStr | None = Field(None, description="User name, if the broker needs one.")
    password: SecretStr | None = Field(
        None, description="Password; write '${MQTT_PASSWORD}' to take it from the environment."
    )
    topic_prefix: str = Field(
        "streamedge", min_length=1, description="Requests arrive on <prefix>/infer/{model}."
    )
    group: str = Field(
        "streamedge-workers",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Shared subscription group ($share/<group>/...): workers in one group "
        "split the requests (MQTT 5 only).",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto", description="MQTT version; 3.1.1 has no shared subscriptions."
    )
    qos: Literal[0, 1] = Field(0, description="QoS of requests and replies.")
    max_pending: int = Field(
        64, ge=1, description="Requests held at once; beyond, 'overloaded' is answered at once."
    )

    @field_validator("password", mode="before")
    @classmethod
    def _password_env(cls, value: object, info: ValidationInfo) -> object:
        return env_substituted(value, info)


class WorkerHttpConfig(Model):
    """The KServe Open Inference Protocol v2 HTTP server."""

    enabled: bool = Field(True, description="Serve OIP v2 over HTTP.")
    bind: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port (0: any free port).")
    reuse_port: bool = Field(
        True,
        description="SO_REUSEPORT: a second worker on the same host shares the port "
        "(the kernel spreads connections).",
    )
    max_request_bytes: int = Field(
        64 * 2**20, ge=2**16, description="Largest request body accepted."
    )


class WorkerConfig(Model):
    """The configuration of one ``streamedge worker`` process."""

    worker: WorkerSection = Field(default_factory=WorkerSection)
    mqtt: WorkerMqttConfig | None = Field(
        None, description="MQTT request/response (the edge tier); none: HTTP only."
    )
    http: WorkerHttpConfig = Field(default_factory=WorkerHttpConfig)
    models: list[ModelConfig] = Field(
        min_length=1, description="Models served (the same entries as a gateway's 'models')."
    )
    runtime: LocalTierConfig = Field(
        default_factory=LocalTierConfig,
        description="How models run: concurrency, batching, threads, providers, int8 "
        "(the keys of a local tier; its name, models and breaker are ignored).",
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def parse_worker_config(
    data: dict[str, Any], *, base_dir: Path | None = None, source: str = "<config>"
) -> WorkerConfig:
    """Validate a mapping; raise ConfigError naming each bad key."""
    try:
        return WorkerConfig.model_validate(data, context={"base_dir": base_dir, "env": None})
    except ValidationError as exc:
        raise ConfigError("\n" + format_validation_error(exc), source=source) from exc


def load_worker_config(path: str | Path) -> WorkerConfig:
    """Read and validate a worker config file (YAML, TOML or JSON)."""
    path = Path(path)
    data = _read_mapping(path)
    return parse_worker_config(data, base_dir=path.resolve().parent, source=str(path))


def worker_reference_markdown() -> str:
    """``docs/worker-config-reference.md``: every worker key, its type, default and meaning."""
    out = ["# streamedge worker configuration keys", ""]
    seen: set[str] = set()
    for key, kind, default, desc in _walk(WorkerConfig, ""):
        if key in seen:
            continue
        seen.add(key)
        line = f"{key}  ({kind})"
        if default:
            line += f"  default {default}"
        out.append(line)
        if desc:
            out.append(f"    {desc}")
    return (
        "# Worker configuration reference\n\n"
        "Keys of a `streamedge worker` config file (`make docs` rewrites this file; a test\n"
        "checks it is current). `models` takes the same entries as a gateway's `models`.\n\n"
        "```text\n" + "\n".join(out) + "\n```\n"
    )
