"""Operator tokens and roles, and device identity from the peer certificate.

Invariants: only sha256 digests of secrets are stored; comparisons of
secrets are constant-time; a device's identity is its client certificate
(CN and fingerprint checked against the store), never a field in a message.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from controlplane.errors import PermissionDenied, Unauthenticated
from controlplane.pki import certificate_sha256

TOKEN_PREFIX = "efop_"


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"unknown role {value!r}: use viewer, operator or admin") from None


def new_operator_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def secret_matches(secret: str, expected_sha256: str) -> bool:
    return hmac.compare_digest(sha256_hex(secret), expected_sha256)


def bearer_token(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    """Extract the bearer token from call metadata. Raises Unauthenticated."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            break
    raise Unauthenticated("no operator token: pass --token or set EDGEFLEET_TOKEN")


def require_role(actual: Role, needed: Role, action: str) -> None:
    if actual < needed:
        raise PermissionDenied(f"{action} needs the {needed.name.lower()} role; this token is {actual.name.lower()}")


def peer_certificate(auth_context: dict[str, list[bytes]]) -> tuple[str, str]:
    """Return (common name, sha256 fingerprint) of the verified client certificate.

    Raises Unauthenticated when the connection carries no client certificate.
    """
    pems = auth_context.get("x509_pem_cert") or []
    names = auth_context.get("x509_common_name") or []
    if not pems or not names:
        raise Unauthenticated("a device certificate is required on this port")
    return names[0].decode(), certificate_sha256(pems[0])
