"""Enrollment: a one-time join secret and a CSR become a device certificate.

Invariants: a refused enrollment changes nothing (the token stays unused, no
device row, no certificate recorded); a token is used at most once, enforced
by the store's conditional update, so two racing devices cannot both join.

With ``mqtt_provision_devices``, the device's broker account (``controlplane.mqtt_accounts``) is created
before the device row is committed and deleted again if the commit fails: a broker that does not answer
fails the enrollment (FAILED_PRECONDITION) with no device row and no account.
"""

from __future__ import annotations

import logging

import grpc

from controlplane.auth import secret_matches
from controlplane.config import parse_broker_url
from controlplane.errors import AlreadyExistsError, InvalidRequest, Unauthenticated
from controlplane.fleet import facts_to_dict, validate_facts
from controlplane.grpc_errors import handle_errors
from controlplane.services.context import Services
from controlplane.store import errors as store_errors
from protos import mqtt
from protos.edgefleet.v1 import enrollment_pb2, enrollment_pb2_grpc
from protos.limits import TLS_SERVER_NAME, check_name

log = logging.getLogger("edgefleet.server.enrollment")


class EnrollmentService(enrollment_pb2_grpc.EnrollmentServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @handle_errors
    async def Enroll(self, request, context: grpc.aio.ServicerContext):  # noqa: N802 - gRPC name
        s = self.s
        try:
            check_name("device id", request.device_id)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        if request.device_id == TLS_SERVER_NAME:
            raise InvalidRequest(f"device id {TLS_SERVER_NAME!r} is reserved for the control plane")
        validate_facts(request.facts)
        token = await s.db(s.store.get_join_token, request.token_id) if len(request.token_id) <= 64 else None
        if token is None or not secret_matches(request.secret, token.secret_sha256):
            raise Unauthenticated("join secret is wrong or unknown: ask the operator for a new join string")
        now = s.clock()
        if token.used_at is not None:
            raise Unauthenticated("this join string was already used: ask the operator for a new one")
        if token.expires_at <= now:
            raise Unauthenticated(
                f"this join string expired at {token.expires_at:%Y-%m-%d %H:%M:%S} UTC: "
                "create a new one with `edgefleet tokens create`"
            )
        existing = await s.db(s.store.get_device, request.device_id)
        if existing is not None:
            raise AlreadyExistsError(f"device id {request.device_id!r} is taken: choose another --device-id")
        keys = await s.db(s.store.get_publisher_keys, token.publisher_key_ids) if token.publisher_key_ids else {}
        cert_pem, serial, fingerprint = s.ca.sign_device_csr(bytes(request.csr_pem), request.device_id, now)
        creds = mqtt_credentials(s, token.fleet, request.device_id)
        accounts = None
        if s.config.mqtt_provision_devices:
            from controlplane import mqtt_tls
            from controlplane.mqtt_accounts import RESERVED_PREFIX, BrokerAccounts

            if creds is None:  # ids that cannot be topic levels (the name pattern keeps these out already)
                raise InvalidRequest(f"device id {request.device_id!r} cannot be an MQTT client id and topic level")
            if request.device_id.startswith(RESERVED_PREFIX):
                raise InvalidRequest(f"device ids starting with {RESERVED_PREFIX!r} are the control plane's")
            accounts = BrokerAccounts(s.config.mqtt_url, tls=mqtt_tls.for_config(s.config, s.ca.cert_pem))
            creds.password = await accounts.create_device(token.fleet, request.device_id)
        try:
            await s.db(
                s.store.enroll_device,
                token_id=token.token_id,
                device_id=request.device_id,
                fleet=token.fleet,
                labels=dict(token.labels),
                certificate_sha256=fingerprint,
                certificate_serial=serial,
                facts=facts_to_dict(request.facts),
                agent_version=request.facts.agent_version,
                now=now,
            )
        except BaseException as exc:
            if accounts is not None:  # nothing half-created: the device is not enrolled, so neither is its account
                await accounts.delete_device(request.device_id, quiet=True)
            if isinstance(exc, store_errors.Conflict):
                raise Unauthenticated("this join string was already used: ask the operator for a new one") from exc
            raise
        log.info("enrolled device %s in fleet %s", request.device_id, token.fleet)
        return enrollment_pb2.EnrollResponse(
            device_id=request.device_id,
            fleet=token.fleet,
            certificate_pem=cert_pem,
            ca_certificate_pem=s.ca.cert_pem,
            device_endpoint=s.device_endpoint,
            tls_server_name=TLS_SERVER_NAME,
            # Keys the operator pinned in the join string; the agent checks them against its pins.
            trusted_publisher_keys=[bytes.fromhex(keys[k].public_key) for k in token.publisher_key_ids if k in keys],
            heartbeat_interval_seconds=s.config.heartbeat_interval_seconds,
            labels=dict(token.labels),
            mqtt=creds,
        )


def mqtt_credentials(s: Services, fleet: str, device_id: str) -> enrollment_pb2.MqttCredentials | None:
    """How the device reaches the bridged MQTT broker; None when the server bridges none (or the ids cannot be
    topic levels). The password is empty here; with ``mqtt_provision_devices`` Enroll fills in the one it created."""
    if not s.config.mqtt_url:
        return None
    try:
        root = mqtt.device_root(fleet, device_id)
    except mqtt.TopicError as exc:
        log.warning("device %s gets no MQTT settings: %s", device_id, exc)
        return None
    url = s.config.mqtt_device_url or parse_broker_url(s.config.mqtt_url).without_credentials()
    # The operator's broker CA (--mqtt-ca), checked at start-up: devices trust it besides their pinned CA.
    ca_pem = b""
    if s.config.mqtt_ca_file:
        try:
            ca_pem = mqtt.read_broker_ca(s.config.mqtt_ca_file).encode()
        except ValueError as exc:  # changed since start-up: the device can still be given mqtt_ca_file
            log.warning("device %s gets no broker CA: %s", device_id, exc)
    return enrollment_pb2.MqttCredentials(
        url=url, username=device_id, client_id=device_id, topic_root=root, ca_pem=ca_pem
    )
