"""The agent's configuration: one frozen, typed object, loaded from TOML plus command-line values.

Invariants:
- ``AgentConfig`` is frozen and rejects unknown fields; a config file with an unknown
  key is an error that names the key and the file.
- Types are strict (a TOML string is not a number, ``true`` is not an integer), and every
  number has bounds; units are in the field names.
- ``data_dir`` is absolute: a relative path in a config file is relative to that file's
  directory, a relative path on the command line to the working directory.
- Every failure is an ``AgentConfigError`` with a one-line message a person can act on.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from agent.backoff import Backoff
from agent.errors import AgentConfigError
from agent.facts import validate_overrides
from protos.mqtt import read_broker_ca

__all__ = [
    "AgentConfig",
    "load_config",
    "parse_byte_size",
    "parse_cpu_list",
    "parse_labels",
    "parse_mqtt_url",
    "read_mqtt_ca_file",
    "validate_labels",
]

MAX_LABELS = 32
MAX_LABEL_VALUE_CHARS = 128
MAX_CONFIG_FILE_BYTES = 1024 * 1024
_LABEL_KEY = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")


def validate_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return ``labels`` if valid. Raises ``AgentConfigError`` naming the first bad key or value.

    Keys match ``[a-z0-9][a-z0-9._/-]{0,62}``; values are at most 128 printable
    characters (may be empty); at most 32 labels.
    """
    if len(labels) > MAX_LABELS:
        raise AgentConfigError(f"too many labels: {len(labels)} (at most {MAX_LABELS})")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.fullmatch(key):
            raise AgentConfigError(
                f"label key {key!r} must be 1..63 of a-z 0-9 . _ / - and start with a letter or digit"
            )
        if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE_CHARS or not value.isprintable():
            raise AgentConfigError(
                f"label {key!r} value must be at most {MAX_LABEL_VALUE_CHARS} printable characters, got {value!r}"
            )
    return labels


def parse_labels(text: str) -> dict[str, str]:
    """Parse ``"k=v,k2=v2"`` (the ``--labels`` option) into a dict; blank text gives ``{}``.

    Whitespace around keys and values is dropped; a value may contain ``=`` but not ``,``.
    Raises ``AgentConfigError`` for an empty item, an item without ``=``, a repeated key,
    or a key or value that ``validate_labels`` rejects.
    """
    labels: dict[str, str] = {}
    if not text.strip():
        return labels
    for position, item in enumerate(text.split(","), start=1):
        if not item.strip():
            raise AgentConfigError(f"labels: item {position} is empty in {text!r} (expected k=v,k2=v2)")
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise AgentConfigError(f"labels: item {position} {item.strip()!r} is not key=value")
        if key in labels:
            raise AgentConfigError(f"labels: key {key!r} is given twice")
        labels[key] = value
    return validate_labels(labels)


MAX_CPU_INDEX = 4095
_BYTE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_BYTE_SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


def parse_cpu_list(text: str, what: str = "cpu_affinity") -> tuple[int, ...]:
    """Parse a CPU list (the ``--cpu-affinity`` option): ``"0,1"``, ``"0-3"``, ``"0-1,4"``; sorted, no duplicates.

    Raises ``AgentConfigError`` for an empty list or item, a non-number, a reversed range
    or an index over 4095, naming ``what``. Whether the CPUs exist is checked by ``AgentConfig``.
    """
    cpus: set[int] = set()
    if not text.strip():
        raise AgentConfigError(f"{what}: empty CPU list (expected e.g. 0,1 or 0-3)")
    for item in text.split(","):
        low, sep, high = (part.strip() for part in item.partition("-"))
        if not low.isdigit() or (sep and not high.isdigit()):
            raise AgentConfigError(f"{what}: {item.strip()!r} is not a CPU index or range like 0-3 in {text!r}")
        first, last = int(low), int(high) if sep else int(low)
        if first > last:
            raise AgentConfigError(f"{what}: range {item.strip()!r} is reversed")
        if last > MAX_CPU_INDEX:
            raise AgentConfigError(f"{what}: CPU index {last} is over {MAX_CPU_INDEX}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def parse_byte_size(text: str, what: str = "size") -> int:
    """Parse a size (the ``--memory-budget`` option): ``"268435456"``, ``"512KiB"``, ``"256MiB"``, ``"2GiB"``.

    Units are B, KiB, MiB, GiB (case-insensitive; a plain number is bytes). Raises
    ``AgentConfigError`` naming ``what`` for anything else, such as decimals, negatives or MB.
    """
    match = _BYTE_SIZE.fullmatch(text)
    unit = match and _BYTE_UNITS.get(match.group(2).lower())
    if not match or unit is None:
        raise AgentConfigError(f"{what}: {text!r} is not a whole number with an optional unit B, KiB, MiB or GiB")
    return int(match.group(1)) * unit


MQTT_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_mqtt_url(url: str) -> tuple[bool, str, int]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> ``(tls, host, port)``; ports default to 1883 / 8883.

    Raises ``AgentConfigError`` for another scheme, a missing host, a bad port, or a user, path or query in the URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AgentConfigError(f"MQTT URL {url!r} is invalid: {exc}") from exc
    if parts.scheme not in MQTT_DEFAULT_PORTS:
        raise AgentConfigError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise AgentConfigError(f"MQTT URL {url!r} has no host")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise AgentConfigError(f"MQTT URL {url!r} may hold only a scheme, host and port")
    return parts.scheme == "mqtts", parts.hostname, port or MQTT_DEFAULT_PORTS[parts.scheme]


def read_mqtt_ca_file(path: Path) -> str:
    """The PEM text of the MQTT broker CA file ``mqtt_ca_file``. Raises ``AgentConfigError`` (one line)."""
    try:
        return read_broker_ca(path)
    except ValueError as exc:
        raise AgentConfigError(str(exc)) from None


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        raise ValueError("CPU affinity is not supported on this platform") from None


class AgentConfig(BaseModel):
    """Everything the agent can be told. Build it with ``load_config``; tests may construct it directly."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    data_dir: Path
    heartbeat_interval_seconds: float = Field(10.0, ge=0.2, le=3600)
    connect_timeout_seconds: float = Field(10.0, gt=0, le=600)
    rpc_timeout_seconds: float = Field(15.0, gt=0, le=3600)
    reconnect_initial_seconds: float = Field(0.5, gt=0, le=3600)
    reconnect_max_seconds: float = Field(30.0, gt=0, le=86400)
    labels: dict[str, str] = Field(default_factory=dict)
    # Field name -> value replacing a measured fact, to simulate a device class (see agent.facts).
    fact_overrides: dict[str, Any] = Field(default_factory=dict)
    onnx_threads: int = Field(0, ge=0, le=256)  # 0: onnxruntime's default
    # CPUs the agent (and its acceptance children) may run on; () leaves the inherited affinity.
    # Each must be one the agent may use when the config is loaded (os.sched_getaffinity).
    cpu_affinity: tuple[int, ...] = ()
    # PEM ed25519 public keys of the publishers whose bundles this device installs.
    trusted_publisher_key_files: tuple[Path, ...] = ()
    telemetry_flush_seconds: float = Field(10.0, ge=0.05, le=3600)
    telemetry_partial_minutes: bool = False  # send the minute in progress at every flush (faster rollout gates)
    model_memory_budget_bytes: int = Field(0, ge=0, le=2**64 - 1)  # 0: no budget
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    local_api_tcp_port: int | None = Field(None, ge=0, le=65535)  # None: unix socket only; 0: any free port
    # The session's transport: the gRPC stream to the device port, or MQTT 5 through the fleet's broker.
    # Artifacts are fetched over the gRPC device port either way.
    transport: Literal["grpc", "mqtt"] = "grpc"
    mqtt_url: str | None = None  # mqtt[s]://host[:port]; None: the URL handed over at join
    # mqtts:// only: the CA file (PEM) the broker's certificate must chain to, and nothing else is trusted.
    # None: the CA pinned at enrollment (a broker certificate issued by the edgefleet CA) or the system's CAs.
    mqtt_ca_file: Path | None = None

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_mqtt_url(value)
            except AgentConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("mqtt_ca_file")
    @classmethod
    def _mqtt_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            value = value.expanduser().absolute()
            try:
                read_mqtt_ca_file(value)
            except AgentConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("data_dir", "mqtt_ca_file", mode="before")
    @classmethod
    def _path_from_text(cls, value: object) -> object:
        return Path(value) if isinstance(value, str) else value

    @field_validator("trusted_publisher_key_files", mode="before")
    @classmethod
    def _paths_from_text(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return tuple(Path(v) if isinstance(v, str) else v for v in value)
        return value

    @field_validator("cpu_affinity", mode="before")
    @classmethod
    def _tuple_from_list(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value

    @field_validator("cpu_affinity")
    @classmethod
    def _usable_cpus(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value:
            return value
        if any(cpu < 0 for cpu in value):
            raise ValueError(f"CPU indexes must be >= 0, got {list(value)}")
        allowed = _allowed_cpus()
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"CPUs {unknown} are not available to this process (available: {_ranges(allowed)})")
        return tuple(sorted(set(value)))

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f"must be an absolute path, got {str(value)!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)

    @field_validator("fact_overrides")
    @classmethod
    def _fact_overrides(cls, value: dict[str, Any]) -> dict[str, Any]:
        return validate_overrides(value)

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> AgentConfig:
        if self.mqtt_ca_file is not None and self.mqtt_url is not None and not parse_mqtt_url(self.mqtt_url)[0]:
            raise ValueError(
                f"mqtt_ca_file checks the broker's TLS certificate, but mqtt_url {self.mqtt_url!r} is not mqtts://"
            )
        return self

    @model_validator(mode="after")
    def _reconnect_range(self) -> AgentConfig:
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ValueError(
                f"reconnect_max_seconds ({self.reconnect_max_seconds}) must be >= "
                f"reconnect_initial_seconds ({self.reconnect_initial_seconds})"
            )
        return self

    def reconnect_backoff(self) -> Backoff:
        """The reconnect policy these settings describe (full jitter, doubling)."""
        return Backoff(initial_seconds=self.reconnect_initial_seconds, max_seconds=self.reconnect_max_seconds)


def _ranges(cpus: set[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"``."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


_FIELDS = tuple(AgentConfig.model_fields)


def _unknown(key: str, where: str) -> AgentConfigError:
    close = difflib.get_close_matches(key, _FIELDS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(_FIELDS)}"
    return AgentConfigError(f"unknown key {key!r} in {where}{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_FILE_BYTES + 1)
    except OSError as exc:
        raise AgentConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_FILE_BYTES:
        raise AgentConfigError(f"config file {path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise AgentConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _one_line(exc: ValidationError, sources: dict[str, str]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        loc = [str(part) for part in error["loc"]]
        if error["type"] == "missing":
            problems.append(f"{'.'.join(loc)} is required (set it in the config file or on the command line)")
            continue
        if not isinstance(error["input"], dict | BaseModel):
            message = f"{message} (got {error['input']!r:.80})"
        where = f"{'.'.join(loc)} (from {sources.get(loc[0], 'defaults')}): " if loc else ""
        problems.append(where + message)
    return "invalid agent config: " + "; ".join(problems)


def load_config(path: Path | None = None, **cli_overrides: object) -> AgentConfig:
    """Load the agent's configuration from the TOML file at ``path`` (if any) and the command line.

    ``cli_overrides`` are field names of ``AgentConfig``; a value of ``None`` means "not
    given" and leaves the file's value. A given value replaces the file's value whole
    (``labels`` are not merged). Raises ``AgentConfigError`` if the file cannot be read,
    is not TOML, has an unknown key, or any value is invalid.
    """
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    if path is not None:
        for key, value in _read_toml(path).items():
            if key not in _FIELDS:
                raise _unknown(key, str(path))
            if key == "data_dir" and isinstance(value, str):
                value = path.parent.absolute() / value  # an absolute value replaces the base
            values[key], sources[key] = value, str(path)
    for key, value in cli_overrides.items():
        if key not in _FIELDS:
            raise _unknown(key, "command-line options")
        if value is None:
            continue
        if key == "data_dir" and isinstance(value, str | Path):
            value = Path(value).absolute()
        values[key], sources[key] = value, "command line"
    try:
        return AgentConfig(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise AgentConfigError(_one_line(exc, sources)) from exc
