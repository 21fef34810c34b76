"""Joining a fleet: turn a join string into a stored device identity."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from agent.channel import secure_channel, translate
from agent.errors import AgentConfigError, EnrollmentError
from agent.identity import Identity, fetch_pinned_ca, generate_key_and_csr, mqtt_fields, save_identity
from protos.edgefleet.v1 import common_pb2, enrollment_pb2, enrollment_pb2_grpc
from protos.join import JoinString
from protos.limits import TLS_SERVER_NAME, check_name


async def enroll(
    join: JoinString,
    *,
    data_dir: Path,
    device_id: str,
    facts: common_pb2.DeviceFacts,
    timeout_seconds: float = 15.0,
) -> Identity:
    """Enroll this device and store its identity in data_dir.

    Raises AgentConfigError (invalid device id), EnrollmentError (the join was
    refused: do not retry with the same join string), TransportError (the server could not be reached: retry), or
    IdentityError (data_dir already holds an identity).
    """
    try:
        check_name("device id", device_id)
    except ValueError as exc:
        raise AgentConfigError(str(exc)) from exc
    ca_pem = await asyncio.to_thread(fetch_pinned_ca, join.host, join.port, join.ca_sha256, timeout_seconds)
    key_pem, csr_pem = generate_key_and_csr(device_id)
    request = enrollment_pb2.EnrollRequest(
        token_id=join.token_id, secret=join.secret, device_id=device_id, csr_pem=csr_pem, facts=facts
    )
    async with secure_channel(join.server, ca_pem=ca_pem, server_name=TLS_SERVER_NAME) as channel:
        try:
            response = await enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=timeout_seconds)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc, "enrollment refused") from exc
    # Trust only keys the operator pinned in the join string: the server alone can add none.
    pinned = set(join.publisher_key_ids)
    keys = [key.hex() for key in response.trusted_publisher_keys] if pinned else []
    if pinned and {_key_id(k) for k in keys} != pinned:
        raise EnrollmentError("the server sent publisher keys that differ from those pinned in the join string")
    host_port = response.device_endpoint
    if host_port.startswith(":"):
        host_port = f"{join.server.rsplit(':', 1)[0]}{host_port}"
    identity = Identity(
        device_id=response.device_id,
        fleet=response.fleet,
        device_endpoint=host_port,
        api_endpoint=join.server,
        tls_server_name=response.tls_server_name or TLS_SERVER_NAME,
        heartbeat_interval_seconds=response.heartbeat_interval_seconds or 10,
        labels=dict(response.labels),
        trusted_publisher_keys=keys,
        key_pem=key_pem,
        cert_pem=bytes(response.certificate_pem),
        ca_pem=ca_pem,
        **mqtt_fields(response.mqtt if response.HasField("mqtt") else None),
    )
    save_identity(data_dir, identity)
    return identity


def _key_id(hex_key: str) -> str:
    import hashlib

    return hashlib.sha256(bytes.fromhex(hex_key)).hexdigest()
