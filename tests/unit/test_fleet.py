"""Pure fleet logic: online is derived from the session and last-seen; facts are bounded."""

from __future__ import annotations

import datetime as dt

import pytest

from controlplane.errors import InvalidRequest
from controlplane.fleet import facts_from_dict, facts_to_dict, is_online, validate_facts
from protos.edgefleet.v1 import common_pb2

NOW = dt.datetime(2026, 11, 29, 12, tzinfo=dt.UTC)
WINDOW = dt.timedelta(seconds=30)


@pytest.mark.parametrize(
    ("connected", "last_seen", "online"),
    [
        (True, NOW - dt.timedelta(seconds=5), True),
        (True, NOW - dt.timedelta(seconds=31), False),  # half-open: missed heartbeats
        (False, NOW, False),  # closed session
        (True, None, False),
    ],
)
def test_online_needs_an_open_session_and_a_recent_heartbeat(connected, last_seen, online):
    assert is_online(connected=connected, last_seen=last_seen, now=NOW, offline_after=WINDOW) is online


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        (common_pb2.DeviceFacts(cpu_model="x" * 300), "cpu_model"),
        (common_pb2.DeviceFacts(cpu_flags=["a"] * 600), "cpu_flags"),
        (common_pb2.DeviceFacts(cpu_flags=["a" * 65]), "cpu flag"),
        (common_pb2.DeviceFacts(labels={"Bad Key": "v"}), "label key"),
        (common_pb2.DeviceFacts(cpu_cores=100_000), "implausible"),
    ],
)
def test_out_of_bounds_facts_are_refused(facts, message):
    with pytest.raises(InvalidRequest, match=message):
        validate_facts(facts)


def test_facts_round_trip_through_the_stored_json_form():
    facts = common_pb2.DeviceFacts(architecture="aarch64", cpu_flags=["asimd", "neon"], memory_total_bytes=2**30)
    validate_facts(facts)
    assert facts_from_dict(facts_to_dict(facts)) == facts
