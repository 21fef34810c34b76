"""The device port and the contract: only current device certificates get in, messages are bounded and
validated, unknown fields are tolerated, and the standard health and reflection services answer."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.channel import device_channel, secure_channel
from agent.enroll import enroll
from agent.facts import collect_facts
from agent.identity import generate_key_and_csr
from controlplane.pki import create_ca
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc, common_pb2
from protos.join import parse_join_string
from protos.limits import MAX_SESSION_MESSAGE_BYTES, TLS_SERVER_NAME
from tests.integration.harness import wait_for


def _identity(cp, tmp_path, device_id):
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(cp.join_string())
    return asyncio.run(enroll(join, data_dir=tmp_path / device_id, device_id=device_id, facts=facts))


async def _session(identity, messages, *, key_pem=None, cert_pem=None, expect=1):
    """Open a session as identity, send messages, return (control messages received, final status)."""
    received = []
    async with secure_channel(
        identity.device_endpoint,
        ca_pem=identity.ca_pem,
        server_name=TLS_SERVER_NAME,
        key_pem=key_pem or identity.key_pem,
        cert_pem=cert_pem or identity.cert_pem,
    ) as channel:
        call = agent_pb2_grpc.AgentGatewayStub(channel).Session(iter(messages), timeout=10)
        try:
            async for message in call:
                received.append(message)
                if len(received) >= expect:
                    break
            code = grpc.StatusCode.OK
            details = ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
        call.cancel()
    return received, code, details


def _hello(device_id):
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id=device_id, boot_id="b1", protocol_version=1))


def test_session_with_a_valid_certificate_gets_a_welcome(cp_sqlite, tmp_path):
    identity = _identity(cp_sqlite, tmp_path, "dev-a")
    received, code, _ = asyncio.run(_session(identity, [_hello("dev-a")]))
    assert code == grpc.StatusCode.OK
    assert received[0].welcome.device_id == "dev-a" and received[0].welcome.fleet == "lab"


def test_agent_claiming_another_devices_id_is_refused(cp_sqlite, tmp_path):
    a = _identity(cp_sqlite, tmp_path, "dev-a")
    _identity(cp_sqlite, tmp_path, "dev-b")
    received, code, details = asyncio.run(_session(a, [_hello("dev-b")]))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "certificate is 'dev-a'" in details
    assert received == []
    assert not cp_sqlite.device("dev-b").HasField("last_seen")


def test_client_certificate_from_another_ca_is_refused_at_the_handshake(cp_sqlite, tmp_path):
    real = _identity(cp_sqlite, tmp_path, "dev-a")
    rogue_ca = create_ca("rogue", dt.datetime.now(dt.UTC))
    key_pem, csr_pem = generate_key_and_csr("dev-a")
    cert_pem, _, _ = rogue_ca.sign_device_csr(csr_pem, "dev-a", dt.datetime.now(dt.UTC))
    received, code, _ = asyncio.run(_session(real, [_hello("dev-a")], key_pem=key_pem, cert_pem=cert_pem))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert received == []
    assert not cp_sqlite.device("dev-a").HasField("last_seen")


def test_first_message_other_than_hello_is_refused(cp_sqlite, tmp_path):
    identity = _identity(cp_sqlite, tmp_path, "dev-a")
    heartbeat = agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(sequence=1))
    _, code, details = asyncio.run(_session(identity, [heartbeat]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be Hello" in details


def test_oversized_message_is_refused_and_the_server_keeps_serving(cp_sqlite, tmp_path):
    identity = _identity(cp_sqlite, tmp_path, "dev-a")
    before = cp_sqlite.device("dev-a").facts
    huge = common_pb2.DeviceFacts(cpu_model="x" * (MAX_SESSION_MESSAGE_BYTES + 1))
    _, code, _ = asyncio.run(_session(identity, [_hello("dev-a"), agent_pb2.AgentMessage(facts=huge)], expect=2))
    # gRPC refuses the message with RESOURCE_EXHAUSTED; when the client is still writing the
    # rest of it as the server resets the stream, the client sees the reset (INTERNAL) instead.
    # Either way the message is refused and nothing of it is stored.
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
    assert cp_sqlite.device("dev-a").facts == before
    received, code, _ = asyncio.run(_session(identity, [_hello("dev-a")]))
    assert code == grpc.StatusCode.OK and received[0].HasField("welcome")


def test_out_of_bounds_facts_are_refused_and_not_stored(cp_sqlite, tmp_path):
    identity = _identity(cp_sqlite, tmp_path, "dev-a")
    before = cp_sqlite.device("dev-a").facts
    bad = common_pb2.DeviceFacts(architecture="x86_64", cpu_flags=["f"] * 10_000)
    _, code, details = asyncio.run(_session(identity, [_hello("dev-a"), agent_pb2.AgentMessage(facts=bad)], expect=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "cpu_flags" in details
    assert cp_sqlite.device("dev-a").facts == before


def test_malformed_bytes_on_the_stream_are_refused_and_the_server_keeps_serving(cp_sqlite, tmp_path):
    identity = _identity(cp_sqlite, tmp_path, "dev-a")

    async def send_garbage():
        async with device_channel(identity) as channel:
            raw = channel.stream_stream(
                "/edgefleet.v1.AgentGateway/Session", request_serializer=None, response_deserializer=None
            )
            call = raw(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            return refused.value.code()

    code = asyncio.run(send_garbage())
    assert code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNKNOWN)
    received, code, _ = asyncio.run(_session(identity, [_hello("dev-a")]))
    assert code == grpc.StatusCode.OK and received[0].HasField("welcome")


def test_unknown_fields_from_a_newer_agent_are_tolerated(cp_sqlite, tmp_path):
    """Field 999 (varint 1) appended to a Hello and to facts, as a future agent might send."""
    identity = _identity(cp_sqlite, tmp_path, "dev-a")
    future_field = b"\xb8\x3e\x01"  # tag (999 << 3 | 0) as varint, value 1
    hello = agent_pb2.Hello.FromString(_hello("dev-a").hello.SerializeToString() + future_field)
    facts = common_pb2.DeviceFacts.FromString(
        common_pb2.DeviceFacts(architecture="riscv64", cpu_cores=4).SerializeToString() + future_field
    )

    async def converse():
        async with device_channel(identity) as channel:
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session(timeout=30)
            await call.write(agent_pb2.AgentMessage(hello=hello))
            welcome = await call.read()
            await call.write(agent_pb2.AgentMessage(facts=facts))
            stored = await asyncio.to_thread(
                wait_for, lambda: cp_sqlite.device("dev-a").facts.architecture == "riscv64", what="facts stored"
            )
            call.cancel()
            return welcome, stored

    welcome, stored = asyncio.run(converse())
    assert welcome.HasField("welcome") and stored


def test_health_and_reflection_services_answer(cp_sqlite):
    channel = grpc.secure_channel(
        cp_sqlite.api_address,
        grpc.ssl_channel_credentials(cp_sqlite.ca_pem),
        options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
    )
    with channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "edgefleet.v1.Admin", "edgefleet.v1.Enrollment"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for s in next(iter(responses)).list_services_response.service}
    assert {"edgefleet.v1.Admin", "edgefleet.v1.Enrollment", "grpc.health.v1.Health"} <= names
