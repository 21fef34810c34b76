"""The whole path on real parts: publish, deploy, serve on the device, count every request in the
control plane's telemetry — across an agent restart, with nothing lost and nothing counted twice."""

from __future__ import annotations

import grpc
import pytest

from protos.edgefleet.v1 import admin_pb2
from tests.integration.harness import wait_for
from tests.integration.shipping import LocalClient, deploy, publish, register_key


def _latency(cp) -> list[admin_pb2.LatencyRow]:
    stub, meta, channel = cp.admin()
    with channel:
        return list(
            stub.QueryLatency(
                admin_pb2.QueryLatencyRequest(device_id="gw-1", by="variant", since_seconds=3600),
                metadata=meta,
                timeout=10,
            ).rows
        )


def test_requests_served_on_the_device_are_counted_once_in_the_fleet_telemetry(cp, agents, tmp_path):
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    config = tmp_path / "agent.toml"
    config.write_text("telemetry_flush_seconds = 0.2\n")
    args = ("--trust", f"{key}.pub", "--config", str(config), "--heartbeat-seconds", "0.5")
    first = agents("gw", *args, join=cp.join_string(), device_id="gw-1")
    wait_for(lambda: cp.is_online("gw-1"), what="gw-1 online")
    deploy(cp, "gw-1", version=1)
    client = LocalClient(tmp_path / "gw")
    try:
        wait_for(lambda: client.serving_version() == 1, what="v1 serving")
        assert cp.running.artifacts.served >= 1  # the model's files came over the HTTPS artifact port
        for _ in range(20):
            assert client.infer()[0] == 1
        assert first.terminate() == 0  # the minute in progress is spooled on the way out
        second = agents("gw", *args)
        wait_for(lambda: client.serving_version() == 1, what="v1 serving after the restart")
        for _ in range(5):
            client.infer()
        assert second.terminate() == 0
        agents("gw", *args)  # sends what the second run spooled
        wait_for(lambda: client.serving_version() == 1, what="v1 serving after the second restart")
    finally:
        client.close()
    expected = 1 + 20 + 1 + 5  # probes and calls of the first two runs; the third run's minute is still open
    rows = wait_for(lambda: [r for r in _latency(cp) if r.requests >= expected], timeout=30, what="all counted")
    [row] = rows
    assert dict(row.key)["variant"] == "fp32"
    # The third run's probe joins only if its minute ends meanwhile; a duplicate batch would add 21 or 6.
    assert expected <= row.requests <= expected + 1, "a request was lost or counted twice"
    assert row.errors == 0 and 0 < row.p50_ms <= row.p95_ms <= row.p99_ms
    device = cp.device("gw-1")
    assert [a.model.version for a in device.active] == [1]


def test_publisher_key_pinned_at_join_lets_the_device_install_without_local_trust(cp, agents, tmp_path):
    """The operator pins the key in the join string; the server hands it over; the agent checks the pin."""
    from protos.bundle_io import load_public_key
    from protos.bundles import key_id

    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    pinned = key_id(load_public_key(key.with_name(key.name + ".pub")))
    stub, meta, channel = cp.admin()
    with channel:
        join = stub.CreateJoinToken(
            admin_pb2.CreateJoinTokenRequest(fleet="lab", publisher_key_ids=[pinned]), metadata=meta, timeout=10
        ).join_string
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(fleet="lab", publisher_key_ids=["ab" * 32]), metadata=meta, timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND and "not registered" in refused.value.details()
    agents("gw", "--heartbeat-seconds", "0.5", join=join, device_id="gw-1")  # no --trust
    wait_for(lambda: cp.is_online("gw-1"), what="gw-1 online")
    identity = (tmp_path / "gw" / "identity" / "identity.json").read_text()
    assert load_public_key(key.with_name(key.name + ".pub")).hex() in identity
    deploy(cp, "gw-1", version=1)
    client = LocalClient(tmp_path / "gw")
    try:
        wait_for(lambda: client.serving_version() == 1, what="v1 serving with the key pinned at join")
    finally:
        client.close()


def test_server_cannot_hand_a_device_keys_the_join_string_did_not_pin(cp, tmp_path):
    """A join string without pins: whatever keys a (hijacked) server sends, the device trusts none;
    a join string with pins: a server sending other keys is refused."""
    import asyncio

    from agent.enroll import enroll
    from agent.errors import EnrollmentError
    from agent.facts import collect_facts
    from protos.join import JoinString, parse_join_string

    key = register_key(cp, tmp_path)
    from protos.bundle_io import load_public_key
    from protos.bundles import key_id

    real = key_id(load_public_key(key.with_name(key.name + ".pub")))
    facts = collect_facts(data_dir=tmp_path, labels={})
    stub, meta, channel = cp.admin()
    with channel:
        # The server was asked to hand over `real`, but this join string pins nothing.
        pinned_join = parse_join_string(
            stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(fleet="lab", publisher_key_ids=[real]), metadata=meta, timeout=10
            ).join_string
        )
        other_join = parse_join_string(
            stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(fleet="lab", publisher_key_ids=[real]), metadata=meta, timeout=10
            ).join_string
        )
    unpinned = JoinString(pinned_join.server, pinned_join.ca_sha256, pinned_join.token_id, pinned_join.secret)
    identity = asyncio.run(enroll(unpinned, data_dir=tmp_path / "a", device_id="dev-a", facts=facts))
    assert identity.trusted_publisher_keys == []
    wrong_pin = JoinString(
        other_join.server, other_join.ca_sha256, other_join.token_id, other_join.secret, ("cd" * 32,)
    )
    with pytest.raises(EnrollmentError, match="differ from those pinned"):
        asyncio.run(enroll(wrong_pin, data_dir=tmp_path / "b", device_id="dev-b", facts=facts))
    assert not (tmp_path / "b" / "identity").exists()
