"""gRPC channels to the control plane, and the one place where grpc errors
become agent errors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from agent.errors import AgentError, EnrollmentError, TransportError
from protos.limits import MAX_SESSION_MESSAGE_BYTES

if TYPE_CHECKING:
    from agent.identity import Identity

# Codes after which retrying with the same credentials cannot help.
FATAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_SESSION_MESSAGE_BYTES * 2),
    ("grpc.max_send_message_length", MAX_SESSION_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnection is ours (capped backoff with jitter), not the library's.
    ("grpc.enable_retries", 0),
]


def secure_channel(
    target: str, *, ca_pem: bytes, server_name: str, key_pem: bytes | None = None, cert_pem: bytes | None = None
) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)]
    return grpc.aio.secure_channel(target, credentials, options=options)


def device_channel(identity: Identity) -> grpc.aio.Channel:
    """A mutual-TLS channel to the device port, as the device named by identity."""
    return secure_channel(
        identity.device_endpoint,
        ca_pem=identity.ca_pem,
        server_name=identity.tls_server_name,
        key_pem=identity.key_pem,
        cert_pem=identity.cert_pem,
    )


def translate(exc: grpc.aio.AioRpcError, action: str) -> AgentError:
    """Map a gRPC error to the agent's tree: fatal ones to EnrollmentError, the rest to TransportError."""
    message = f"{action}: {exc.details() or exc.code().name} ({exc.code().name})"
    if exc.code() in FATAL_CODES:
        return EnrollmentError(message)
    return TransportError(message)
