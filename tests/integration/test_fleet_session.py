"""A device joins, holds its session, is listed with its facts, survives restarts, goes offline, is revoked."""

from __future__ import annotations

from tests.integration.harness import wait_for


def test_joined_agent_is_listed_online_with_its_facts_and_token_labels(cp, agents):
    agent = agents("gw1", "--heartbeat-seconds", "0.5", join=cp.join_string("lab", site="berlin"), device_id="gw-1")
    device = wait_for(lambda: next((d for d in cp.devices() if d.online), None), what="gw-1 online")
    assert device.device_id == "gw-1"
    assert device.fleet == "lab"
    assert dict(device.labels) == {"site": "berlin"}
    assert device.facts.architecture and device.facts.cpu_cores >= 1
    assert device.facts.memory_total_bytes > 0 and device.facts.onnxruntime_version
    assert device.HasField("last_seen") and device.HasField("enrolled_at")
    assert agent.process.poll() is None


def test_agent_restarts_with_its_stored_identity_without_a_join_string(cp, agents, tmp_path):
    first = agents("gw2", "--heartbeat-seconds", "0.5", join=cp.join_string(), device_id="gw-2")
    wait_for(lambda: cp.is_online("gw-2"), what="gw-2 online")
    assert first.terminate() == 0
    wait_for(lambda: not cp.is_online("gw-2"), what="gw-2 offline after SIGTERM")
    agents("gw2", "--heartbeat-seconds", "0.5")  # same data dir, no --join
    wait_for(lambda: cp.is_online("gw-2"), what="gw-2 online again")
    assert [d.device_id for d in cp.devices()] == ["gw-2"]


def test_killed_agent_is_marked_offline_after_missed_heartbeats(cp, agents):
    agent = agents("gw3", "--heartbeat-seconds", "0.5", join=cp.join_string(), device_id="gw-3")
    wait_for(lambda: cp.is_online("gw-3"), what="gw-3 online")
    agent.kill()  # no goodbye: the server must notice on its own
    wait_for(lambda: not cp.is_online("gw-3"), timeout=20, what="gw-3 offline after kill -9")


def test_revoked_device_has_its_stream_closed_and_cannot_come_back(cp, agents):
    agent = agents("gw4", "--heartbeat-seconds", "0.5", join=cp.join_string(), device_id="gw-4")
    wait_for(lambda: cp.is_online("gw-4"), what="gw-4 online")
    from protos.edgefleet.v1 import admin_pb2

    stub, meta, channel = cp.admin()
    with channel:
        stub.RevokeDevice(admin_pb2.RevokeDeviceRequest(device_id="gw-4", reason="stolen"), metadata=meta, timeout=10)
    assert agent.wait(timeout=20) == 3
    assert "revoked: stolen" in agent.output()
    restarted = agents("gw4", "--heartbeat-seconds", "0.5")
    assert restarted.wait(timeout=30) == 3
    assert "was revoked" in restarted.output()
    device = cp.device("gw-4")
    assert device.HasField("revoked_at") and not device.online


def test_frozen_agent_is_marked_offline_by_missed_heartbeats_and_comes_back(cp, agents):
    """SIGSTOP keeps the TCP connection open but silent: only the heartbeat deadline can notice."""
    import signal

    agent = agents("gw5", "--heartbeat-seconds", "0.5", join=cp.join_string(), device_id="gw-5")
    wait_for(lambda: cp.is_online("gw-5"), what="gw-5 online")
    agent.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: not cp.is_online("gw-5"), timeout=20, what="gw-5 offline while frozen")
    finally:
        agent.process.send_signal(signal.SIGCONT)
    wait_for(lambda: cp.is_online("gw-5"), timeout=30, what="gw-5 online after it thaws")
