"""Every refused enrollment gives a clear reason and changes nothing on the server or the device."""

from __future__ import annotations

import asyncio
import datetime as dt
import os

import grpc
import pytest

from agent.enroll import enroll
from agent.errors import AgentConfigError, EnrollmentError
from agent.facts import collect_facts
from agent.identity import generate_key_and_csr
from protos.edgefleet.v1 import enrollment_pb2, enrollment_pb2_grpc
from protos.join import JoinString, parse_join_string
from protos.limits import TLS_SERVER_NAME


def _enroll(cp, join: str | JoinString, data_dir, device_id="dev-1"):
    parsed = join if isinstance(join, JoinString) else parse_join_string(join)
    facts = collect_facts(data_dir=data_dir.parent, labels={})
    return asyncio.run(enroll(parsed, data_dir=data_dir, device_id=device_id, facts=facts, timeout_seconds=10))


def _nothing_enrolled(cp, data_dir) -> None:
    assert cp.devices() == []
    assert not (data_dir / "identity").exists()


def test_malformed_join_string_is_refused_by_the_agent_before_any_network_call(cp_sqlite, agents):
    agent = agents("bad", join="efjoin1.not-base64-json!!", device_id="dev-1")
    assert agent.wait() == 2
    assert "join string is corrupted" in agent.output()
    assert cp_sqlite.devices() == []


def test_wrong_secret_is_refused_and_the_token_stays_usable(cp, tmp_path):
    good = parse_join_string(cp.join_string())
    wrong = JoinString(good.server, good.ca_sha256, good.token_id, "x" * 32)
    with pytest.raises(EnrollmentError, match="join secret is wrong"):
        _enroll(cp, wrong, tmp_path / "dev")
    _nothing_enrolled(cp, tmp_path / "dev")
    _enroll(cp, good, tmp_path / "dev")
    assert [d.device_id for d in cp.devices()] == ["dev-1"]


def test_expired_join_string_is_refused(cp, tmp_path):
    join = cp.join_string(ttl_seconds=120)
    cp.set_clock(lambda: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    with pytest.raises(EnrollmentError, match="expired"):
        _enroll(cp, join, tmp_path / "dev")
    _nothing_enrolled(cp, tmp_path / "dev")


def test_used_join_string_is_refused_the_second_time(cp, tmp_path):
    join = cp.join_string()
    _enroll(cp, join, tmp_path / "first", device_id="dev-1")
    with pytest.raises(EnrollmentError, match="already used"):
        _enroll(cp, join, tmp_path / "second", device_id="dev-2")
    assert [d.device_id for d in cp.devices()] == ["dev-1"]
    assert not (tmp_path / "second" / "identity").exists()


def test_taken_device_id_is_refused_and_the_token_stays_usable(cp, tmp_path):
    _enroll(cp, cp.join_string(), tmp_path / "first", device_id="dev-1")
    join = cp.join_string()
    with pytest.raises(EnrollmentError, match="is taken"):
        _enroll(cp, join, tmp_path / "second", device_id="dev-1")
    _enroll(cp, join, tmp_path / "second", device_id="dev-2")
    assert sorted(d.device_id for d in cp.devices()) == ["dev-1", "dev-2"]


@pytest.mark.parametrize("device_id", ["a/b", "a+b", "a#b", "UPPER", "", "x" * 64])
def test_device_id_that_could_widen_a_topic_pattern_is_refused(cp_sqlite, tmp_path, device_id):
    """The agent refuses such an id itself, and the server refuses it from any client."""
    with pytest.raises(AgentConfigError, match="device id"):
        _enroll(cp_sqlite, cp_sqlite.join_string(), tmp_path / "dev", device_id=device_id)
    join = parse_join_string(cp_sqlite.join_string())
    channel = grpc.secure_channel(
        cp_sqlite.api_address,
        grpc.ssl_channel_credentials(cp_sqlite.ca_pem),
        options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
    )
    _key, csr = generate_key_and_csr("placeholder")
    request = enrollment_pb2.EnrollRequest(token_id=join.token_id, secret=join.secret, device_id=device_id, csr_pem=csr)
    with channel, pytest.raises(grpc.RpcError) as refused:
        enrollment_pb2_grpc.EnrollmentStub(channel).Enroll(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "device id" in refused.value.details()
    _nothing_enrolled(cp_sqlite, tmp_path / "dev")


def test_ca_fingerprint_mismatch_is_refused_as_a_possible_man_in_the_middle(cp_sqlite, tmp_path):
    good = parse_join_string(cp_sqlite.join_string())
    pinned_elsewhere = JoinString(good.server, "ab" * 32, good.token_id, good.secret)
    with pytest.raises(EnrollmentError, match="man in the middle"):
        _enroll(cp_sqlite, pinned_elsewhere, tmp_path / "dev")
    _nothing_enrolled(cp_sqlite, tmp_path / "dev")
    _enroll(cp_sqlite, good, tmp_path / "dev")  # the secret was never sent, so it still works


def test_agent_join_refusal_exits_2_with_one_line_and_keeps_the_data_dir_empty(cp_sqlite, agents, tmp_path):
    join = cp_sqlite.join_string()
    _enroll(cp_sqlite, join, tmp_path / "first")
    agent = agents("second", join=join, device_id="dev-2")
    assert agent.wait() == 2
    assert "error: enrollment refused: this join string was already used" in agent.output()
    assert "Traceback" not in agent.output()
    assert not (tmp_path / "second" / "identity").exists()


def test_identity_files_are_owner_only_for_the_private_key(cp_sqlite, tmp_path):
    _enroll(cp_sqlite, cp_sqlite.join_string(), tmp_path / "dev")
    key = tmp_path / "dev" / "identity" / "device.key"
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    assert "PRIVATE KEY" in key.read_text()
