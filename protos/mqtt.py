"""The MQTT side of the wire contract: topic layout and payload rules, shared by agent and control plane.

Every device has one subtree, ``edgefleet/v1/<fleet>/<device>``:

- ``.../up/<kind>``: agent to control plane. The payload is a serialized ``AgentMessage`` whose body
  is ``<kind>`` (hello, facts, heartbeat, status, telemetry, job_result). ``.../up/presence`` is the
  exception: the text ``online`` (published retained after each connect) or ``offline`` (the
  retained Last Will, and a clean stop).
- ``.../down/<kind>``: control plane to agent, a serialized ``ControlMessage`` whose body is
  ``<kind>`` (welcome, desired, job, telemetry_ack, disconnect). ``desired`` is published retained
  with QoS 1, so a device that connects gets its latest desired state from the broker.

The payloads are the same protobuf messages as on the gRPC session stream. Artifacts are never
carried over MQTT: agents fetch them by content hash over the mutual-TLS gRPC device port.

A message whose topic is not in this layout, whose payload is over ``MAX_PAYLOAD_BYTES``, does not
parse, or whose body does not match its topic's kind is dropped by the receiver with a logged reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from protos.limits import MAX_SESSION_MESSAGE_BYTES

TOPIC_PREFIX = "edgefleet/v1"
UP_KINDS = ("hello", "facts", "heartbeat", "status", "telemetry", "job_result", "presence")
DOWN_KINDS = ("welcome", "desired", "job", "telemetry_ack", "disconnect")
RETAINED_DOWN = ("desired",)
PRESENCE_ONLINE = b"online"
PRESENCE_OFFLINE = b"offline"
MAX_PAYLOAD_BYTES = MAX_SESSION_MESSAGE_BYTES
SERVER_SUBSCRIPTION = f"{TOPIC_PREFIX}/+/+/up/#"
_LEVEL = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class TopicError(ValueError):
    """A topic outside the layout, or a fleet / device id that cannot be a topic level."""


@dataclass(frozen=True)
class Topic:
    fleet: str
    device_id: str
    direction: str  # "up" or "down"
    kind: str

    def __str__(self) -> str:
        return f"{device_root(self.fleet, self.device_id)}/{self.direction}/{self.kind}"


def _level(what: str, value: str) -> str:
    if not _LEVEL.fullmatch(value):
        raise TopicError(f"{what} {value!r} cannot be an MQTT topic level (want [a-z0-9][a-z0-9._-]{{0,62}})")
    return value


def device_root(fleet: str, device_id: str) -> str:
    """``edgefleet/v1/<fleet>/<device>``. Raises TopicError for ids with ``+``, ``#``, ``/`` and the like."""
    return f"{TOPIC_PREFIX}/{_level('fleet', fleet)}/{_level('device id', device_id)}"


def up(fleet: str, device_id: str, kind: str) -> str:
    if kind not in UP_KINDS:
        raise TopicError(f"unknown up kind {kind!r}; expected one of {', '.join(UP_KINDS)}")
    return f"{device_root(fleet, device_id)}/up/{kind}"


def down(fleet: str, device_id: str, kind: str) -> str:
    if kind not in DOWN_KINDS:
        raise TopicError(f"unknown down kind {kind!r}; expected one of {', '.join(DOWN_KINDS)}")
    return f"{device_root(fleet, device_id)}/down/{kind}"


def device_subscription(fleet: str, device_id: str) -> str:
    """What an agent subscribes to: its own down subtree."""
    return f"{device_root(fleet, device_id)}/down/#"


def parse(topic: str) -> Topic:
    """Split a topic of the layout. Raises TopicError naming what is wrong."""
    parts = topic.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != TOPIC_PREFIX:
        raise TopicError(f"topic {topic[:200]!r} is not {TOPIC_PREFIX}/<fleet>/<device>/up|down/<kind>")
    _, _, fleet, device_id, direction, kind = parts
    _level("fleet", fleet)
    _level("device id", device_id)
    kinds = {"up": UP_KINDS, "down": DOWN_KINDS}.get(direction)
    if kinds is None:
        raise TopicError(f"topic {topic[:200]!r}: direction must be up or down, not {direction!r}")
    if kind not in kinds:
        raise TopicError(f"topic {topic[:200]!r}: unknown {direction} kind {kind!r}")
    return Topic(fleet, device_id, direction, kind)


def check_payload(payload: bytes) -> bytes:
    """Raise TopicError if a payload is over the cap."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise TopicError(f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES} byte cap")
    return payload


MAX_CA_FILE_BYTES = 1024 * 1024


def read_broker_ca(path: Path) -> str:
    """The PEM text of a broker CA file (agent ``mqtt_ca_file``, server ``--mqtt-ca``).

    Raises:
        ValueError: unreadable, over 1 MiB, or holding no CA certificate; one line naming the file.
    """
    import ssl  # here, not at import: the agent's resident process needs ssl only for mqtts

    try:
        with path.open("rb") as file:
            data = file.read(MAX_CA_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the MQTT broker CA file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CA_FILE_BYTES:
        raise ValueError(f"the MQTT broker CA file {path} is larger than {MAX_CA_FILE_BYTES} bytes")
    try:
        text = data.decode("ascii")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=text)
        if not context.get_ca_certs():
            raise ssl.SSLError("no certificate")
    except (UnicodeDecodeError, ssl.SSLError):
        raise ValueError(
            f"the MQTT broker CA file {path} holds no PEM certificate "
            "(give the CA that issued the broker's certificate, as -----BEGIN CERTIFICATE----- text)"
        ) from None
    return text
