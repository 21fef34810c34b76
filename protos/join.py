"""The join string: how an operator hands a device everything it needs to enroll.

Format: ``efjoin1.<base64url(JSON)>`` with the JSON object
``{"s": "host:port", "ca": "<sha256 hex of the CA certificate DER>",
"t": "<token id>", "k": "<secret>", "p": ["<publisher key id>", ...]}``.

Invariants: the CA fingerprint and the publisher key ids come from the
operator (via the CLI), so a device never trusts the server's word alone for
either; the secret is single-use and only its hash is stored by the server.
This module is part of the contract: the control plane writes join strings and
the agent reads them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field

PREFIX = "efjoin1."
MAX_LENGTH = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_ID = re.compile(r"^[A-Za-z0-9_-]{6,64}$")
_SECRET = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$")


class JoinStringError(ValueError):
    """The join string is malformed; the message says which part and why."""


@dataclass(frozen=True)
class JoinString:
    server: str
    ca_sha256: str
    token_id: str
    secret: str
    publisher_key_ids: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        match = _HOSTPORT.fullmatch(self.server)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise JoinStringError(f"join string: server address {self.server!r} is not host:port")
        if not _HEX64.fullmatch(self.ca_sha256):
            raise JoinStringError("join string: CA fingerprint must be 64 lowercase hex characters")
        if not _TOKEN_ID.fullmatch(self.token_id):
            raise JoinStringError("join string: token id is malformed")
        if not _SECRET.fullmatch(self.secret):
            raise JoinStringError("join string: secret is malformed")
        for key_id in self.publisher_key_ids:
            if not _HEX64.fullmatch(key_id):
                raise JoinStringError(f"join string: publisher key id {key_id!r} is not a sha256 hex digest")

    @property
    def host(self) -> str:
        return self.server.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def encode(self) -> str:
        payload = {"s": self.server, "ca": self.ca_sha256, "t": self.token_id, "k": self.secret}
        if self.publisher_key_ids:
            payload["p"] = list(self.publisher_key_ids)
        raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_join_string(text: str) -> JoinString:
    """Parse and validate a join string.

    Raises JoinStringError with a message naming what is wrong.
    """
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise JoinStringError(f"join string is too long ({len(text)} > {MAX_LENGTH} characters)")
    if not text.startswith(PREFIX):
        raise JoinStringError(f"not an edgefleet join string (it must start with {PREFIX!r})")
    body = text[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise JoinStringError("join string is corrupted (not base64url JSON); copy it again") from exc
    if not isinstance(payload, dict):
        raise JoinStringError("join string is corrupted (payload is not an object)")
    unknown = set(payload) - {"s", "ca", "t", "k", "p"}
    missing = {"s", "ca", "t", "k"} - set(payload)
    if missing:
        raise JoinStringError(f"join string lacks field(s) {sorted(missing)}; copy it again")
    if unknown:
        raise JoinStringError(f"join string has unknown field(s) {sorted(unknown)}: made by a newer server?")
    keys = payload.get("p", [])
    values = [payload["s"], payload["ca"], payload["t"], payload["k"]]
    if not all(isinstance(v, str) for v in values) or not (
        isinstance(keys, list) and all(isinstance(k, str) for k in keys)
    ):
        raise JoinStringError("join string is corrupted (wrong field types)")
    return JoinString(
        server=payload["s"],
        ca_sha256=payload["ca"],
        token_id=payload["t"],
        secret=payload["k"],
        publisher_key_ids=tuple(keys),
    )
