"""Limits and names both sides of the contract agree on.

A message over a limit is refused by whichever side receives it
(RESOURCE_EXHAUSTED on gRPC); every value here is a ceiling, not a target.
"""

from __future__ import annotations

import re

PROTOCOL_VERSION = 1

# The DNS name every control-plane certificate carries and every client
# verifies. Trust comes from the pinned private CA, so the name can be fixed:
# devices behind NAT or reaching the server by a changing address still verify.
TLS_SERVER_NAME = "edgefleet-controlplane"

# gRPC message caps (bytes).
MAX_SESSION_MESSAGE_BYTES = 1 * 1024 * 1024
MAX_ADMIN_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_ARTIFACT_CHUNK_BYTES = 1 * 1024 * 1024

# Facts and labels.
MAX_LABELS = 32
MAX_CPU_FLAGS = 512
MAX_FACT_STRING = 256

# Device ids and fleet names: also MQTT topic levels, so no '+', '#' or '/'.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
LABEL_KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,62}$")
MAX_LABEL_VALUE = 128


def check_name(kind: str, value: str) -> str:
    """Return value if it is a valid device id / fleet name, else raise ValueError."""
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} is invalid: use 1-63 characters a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Return labels if every key and value is acceptable, else raise ValueError."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"too many labels ({len(labels)} > {MAX_LABELS})")
    for key, value in labels.items():
        if not LABEL_KEY_PATTERN.fullmatch(key):
            raise ValueError(f"label key {key!r} is invalid: use a-z, 0-9, '.', '_', '/', '-' (max 63)")
        if len(value) > MAX_LABEL_VALUE or not value.isprintable():
            raise ValueError(f"label {key!r} has an invalid value (printable, at most {MAX_LABEL_VALUE} chars)")
    return labels
