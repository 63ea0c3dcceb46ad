"""Configuration of the transports (MQTT; CoAP arrives with its own model)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from streamedge.confbase import EnvStr, Model, RelPath, env_substituted


class ReconnectConfig(Model):
    """Reconnection with jittered exponential backoff."""

    min_s: float = Field(0.5, gt=0, description="First delay before reconnecting.")
    max_s: float = Field(30.0, gt=0, description="Longest delay between attempts.")
    jitter: float = Field(0.5, ge=0, le=1, description="Random share of each delay (0 = none).")


class TlsConfig(Model):
    """TLS towards the broker (usually port 8883)."""

    enabled: bool = Field(False, description="Connect with TLS.")
    ca_file: RelPath | None = Field(
        None, description="CA certificate(s) to verify the broker with; empty: the system store."
    )
    cert_file: RelPath | None = Field(
        None, description="Client certificate (PEM) for brokers that require one."
    )
    key_file: RelPath | None = Field(None, description="Private key (PEM) of cert_file.")
    insecure: bool = Field(
        False,
        description=(
            "Skip the broker's certificate and host name checks (testing only: "
            "anyone on the path can then read and forge traffic)."
        ),
    )


class EmbeddedBrokerConfig(Model):
    """The amqtt broker started when ``mqtt.host`` is empty."""

    bind: str = Field("127.0.0.1", description="Address the embedded broker binds.")
    start_timeout_s: float = Field(
        20.0, gt=0, description="How long to wait for the broker to accept connections."
    )


class MqttConfig(Model):
    """The MQTT connection of a gateway."""

    host: EnvStr | None = Field(
        None,
        description=(
            "Broker host name. Empty: start an embedded amqtt broker on "
            "loopback (MQTT 3.1.1 only) and connect to it."
        ),
    )
    port: int = Field(1883, ge=0, le=65535, description="Broker TCP port.")
    topic_prefix: str = Field(
        "streamedge", min_length=1, description="Root of every topic (Frigate style)."
    )
    client_id: EnvStr | None = Field(
        None,
        description=(
            "MQTT client id; default 'streamedge-<gateway name>'. It must be stable "
            "(the broker keeps the persistent session under it) and unique per instance."
        ),
    )
    clean_start: bool = Field(
        False,
        description=(
            "Start a fresh session on every connect. False (default) keeps a persistent "
            "session: QoS 1 input published while the gateway is down or reconnecting "
            "is delivered when it comes back."
        ),
    )
    session_expiry_s: int = Field(
        86_400,
        ge=0,
        le=2**32 - 1,
        description=(
            "MQTT 5: how long the broker keeps the session after a disconnect "
            "(3.1.1 brokers keep it by their own settings)."
        ),
    )
    receive_maximum: int = Field(
        100,
        ge=1,
        le=65_535,
        description=(
            "MQTT 5: unacknowledged QoS 1 messages the broker may send at once. Input is "
            "acknowledged only once the gateway has taken it, so this bounds what is in flight."
        ),
    )
    share_group: str | None = Field(
        None,
        pattern=r"^[^/#+$\s]{1,64}$",
        description=(
            "Subscribe to the input as MQTT 5 shared subscription "
            "'$share/<group>/<prefix>/in/+/+', so several instances (each with its own "
            "client_id) split the devices' messages. Ignored with one log line on MQTT 3.1.1."
        ),
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS settings.")
    username: EnvStr | None = Field(None, description="User name, if the broker needs one.")
    password: SecretStr | None = Field(
        None, description="Password; write '${MQTT_PASSWORD}' to take it from the environment."
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        "auto",
        description="MQTT version. 'auto' tries 5 and falls back to 3.1.1.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keep-alive interval.")
    qos_in: Literal[0, 1] = Field(1, description="QoS of the input subscription.")
    qos_out: Literal[0, 1] = Field(0, description="QoS of published answers.")
    max_queued_incoming: int = Field(
        1000,
        ge=1,
        description="Messages aiomqtt may hold before the gateway takes them.",
    )
    out_queue_size: int = Field(
        10_000, ge=1, description="Answers waiting to be published (while disconnected)."
    )
    out_queue_max_bytes: int = Field(
        32 * 2**20, ge=1024, description="Byte cap of the answers waiting to be published."
    )
    publish_timeout_s: float = Field(10.0, gt=0, description="Deadline of one publish.")
    reconnect: ReconnectConfig = Field(default_factory=ReconnectConfig)
    embedded: EmbeddedBrokerConfig = Field(default_factory=EmbeddedBrokerConfig)

    @field_validator("password", mode="before")
    @classmethod
    def _password_env(cls, value: object, info: ValidationInfo) -> object:
        # SecretStr cannot carry the EnvStr annotation, so substitute here.
        return env_substituted(value, info)

    @property
    def embedded_broker(self) -> bool:
        """Whether the gateway starts its own broker."""
        return not self.host


class CoapConfig(Model):
    """The CoAP server of a gateway (RFC 7252 + Observe + block-wise), the same topic
    tree as MQTT under ``/ps/<mqtt.topic_prefix>/...``."""

    enabled: bool = Field(
        False,
        description=(
            "Serve CoAP. Off by default: CoAP over UDP has no authentication here "
            "(no DTLS/OSCORE), so opt in and keep it on a trusted network."
        ),
    )
    bind: EnvStr = Field(
        "127.0.0.1",
        description="Address the UDP server binds; '::' or '0.0.0.0' to accept devices on the LAN.",
    )
    port: int = Field(5683, ge=1, le=65535, description="UDP port (5683 is CoAP's default).")
    min_notify_interval_s: float = Field(
        1.0,
        ge=0,
        description=(
            "Least time between two Observe notifications of one resource; updates in "
            "between are coalesced into one notification carrying the latest value."
        ),
    )
    max_out_resources: int = Field(
        1000,
        ge=1,
        description=(
            "Out resources (latest answer per stream) kept; the least recently "
            "updated go first and their observers get a final 4.04."
        ),
    )
    max_out_bytes: int = Field(
        8 * 2**20, ge=1024, description="Byte cap of the latest answers held by out resources."
    )
    max_observers: int = Field(
        256,
        ge=0,
        description="Observations held at once over all resources; more are served a plain GET.",
    )
    max_inflight: int = Field(
        64,
        ge=1,
        description="POSTs admitted at once (each holds its payload); more get 5.03 + Max-Age.",
    )
    max_uploads: int = Field(
        16,
        ge=1,
        description="Block-wise uploads being reassembled at once; a new one beyond gets 5.03.",
    )
    retry_after_s: int = Field(
        2, ge=0, le=3600, description="Max-Age of a 5.03 answer: when the device should retry."
    )
    admit_timeout_s: float = Field(
        1.0,
        gt=0,
        description="How long a POST may wait for room in a blocking stream queue before 5.03.",
    )
    response_timeout_s: float = Field(
        10.0,
        gt=0,
        description=(
            "How long a POST waits for its pipeline outcome; after that it is answered "
            "2.04 without a body (accepted, still queued)."
        ),
    )
