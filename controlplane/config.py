"""The control plane's configuration: one frozen, typed object with units in the names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_API_PORT = 7443
DEFAULT_DEVICE_PORT = 7444
DEFAULT_ARTIFACT_PORT = 7445
MQTT_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt[s]://[user[:password]@]host[:port]``, split."""

    tls: bool
    host: str
    port: int
    username: str
    password: str

    def without_credentials(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """Split a broker URL. Raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in MQTT_SCHEMES:
        raise ValueError(f"broker URL {url!r} must start with mqtt:// or mqtts://")
    try:
        port = parts.port or MQTT_SCHEMES[parts.scheme]
    except ValueError as exc:
        raise ValueError(f"broker URL {url!r} has a bad port") from exc
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must be mqtt[s]://[user:password@]host[:port], with no path or query")
    return BrokerUrl(
        tls=parts.scheme == "mqtts",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
    )


class ServerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path
    db_url: str = ""  # empty = SQLite file in data_dir
    listen_host: str = "0.0.0.0"
    api_port: int = Field(DEFAULT_API_PORT, ge=0, le=65535)  # 0 = pick a free port
    device_port: int = Field(DEFAULT_DEVICE_PORT, ge=0, le=65535)
    advertise_host: str = ""  # host put in join strings; empty = this machine's name
    artifact_bytes_per_second: int = Field(0, ge=0)  # per download stream; 0 = no cap
    # HTTPS artifact downloads (controlplane.artifact_https; mutual TLS), announced to devices in Welcome:
    # None = off (devices fetch over the device port's gRPC), 0 = any free port.
    artifact_port: int | None = Field(DEFAULT_ARTIFACT_PORT, ge=0, le=65535)
    device_advertise: str = ""  # host:port devices dial for sessions (NAT); empty = join host + device_port
    extra_tls_names: tuple[str, ...] = ()
    heartbeat_interval_seconds: int = Field(10, ge=1, le=3600)
    missed_heartbeats_offline: int = Field(3, ge=2, le=100)
    hello_timeout_seconds: float = Field(10.0, gt=0, le=300)
    last_seen_flush_seconds: float = Field(2.0, gt=0, le=60)
    join_token_default_ttl_seconds: int = Field(3600, ge=60)
    join_token_max_ttl_seconds: int = Field(30 * 24 * 3600, ge=60)
    shutdown_grace_seconds: float = Field(5.0, ge=0, le=120)
    max_blob_bytes: int = Field(4 * 1024**3, ge=1)  # largest bundle file the blob store accepts
    blob_upload_idle_seconds: float = Field(60.0, gt=0, le=3600)  # an upload silent this long is dropped
    benchmark_job_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)  # a job unanswered this long goes elsewhere
    benchmark_runs: int = Field(50, ge=5, le=1000)  # timed inferences per benchmark job
    rollout_tick_seconds: float = Field(2.0, gt=0, le=60)  # how often rollout controllers look at their devices
    rollout_remeasure_seconds: float = Field(60.0, gt=0, le=3600)  # a gate without enough data measures again
    # Retention (see TelemetryStore.roll_up): model minutes older than minute_retention_days become hourly
    # rows, kept hour_retention_days; telemetry de-dup keys are kept as long as the minutes.
    rollup_interval_seconds: float = Field(300.0, gt=0, le=24 * 3600)
    minute_retention_days: int = Field(7, ge=1, le=3650)
    hour_retention_days: int = Field(90, ge=1, le=3650)
    event_retention_days: int = Field(30, ge=1, le=3650)
    resource_retention_days: int = Field(7, ge=1, le=3650)
    # Prometheus metrics over HTTP on listen_host: None = off, 0 = any free port.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_cache_seconds: float = Field(5.0, ge=0, le=300)  # a scrape within this reuses the last queries
    # MQTT 5 transport (controlplane.mqtt_bridge): the broker the control plane bridges, mqtt[s]://[user:pass@]host[:port];
    # empty = no bridge. mqtt_device_url is what enrollment tells devices; empty = mqtt_url without its credentials.
    mqtt_url: str = ""
    mqtt_device_url: str = ""
    # Give each device its own broker account at enrollment (controlplane.mqtt_accounts; Mosquitto's dynamic
    # security plugin, with mqtt_url's account holding its admin role) and delete it at revocation.
    mqtt_provision_devices: bool = False
    # The CA file the broker's certificate must chain to (mqtts:// only; controlplane.mqtt_tls); None = the
    # edgefleet CA or the system's CAs.
    mqtt_ca_file: Path | None = None

    @model_validator(mode="after")
    def _hours_outlive_minutes(self) -> ServerConfig:
        if self.hour_retention_days < self.minute_retention_days:
            raise ValueError("hour_retention_days must be at least minute_retention_days")
        return self

    @model_validator(mode="after")
    def _provisioning_needs_a_broker(self) -> ServerConfig:
        if self.mqtt_provision_devices and not self.mqtt_url:
            raise ValueError("mqtt_provision_devices needs mqtt_url (the broker whose accounts it manages)")
        return self

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> ServerConfig:
        if self.mqtt_ca_file is not None and not (self.mqtt_url and parse_broker_url(self.mqtt_url).tls):
            raise ValueError("mqtt_ca_file needs an mqtts:// mqtt_url (the CA checks the broker's TLS certificate)")
        return self

    @field_validator("mqtt_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        from controlplane.mqtt_tls import read_ca_file

        value = value.expanduser().absolute()
        read_ca_file(value)  # raises ValueError naming the file and what is wrong
        return value

    @field_validator("mqtt_url", "mqtt_device_url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if value:
            parse_broker_url(value)  # raises ValueError naming what is wrong
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def offline_after_seconds(self) -> int:
        return self.heartbeat_interval_seconds * self.missed_heartbeats_offline

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'edgefleet.db'}"
