"""The join string round-trips and every malformed one is refused with JoinStringError, never anything else."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protos.join import PREFIX, JoinString, JoinStringError, parse_join_string

GOOD = JoinString(server="gw.example.com:7443", ca_sha256="a" * 64, token_id="0123456789abcdef", secret="s" * 32)


def _encode(payload: dict) -> str:
    return PREFIX + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_join_string_round_trips_with_publisher_keys():
    join = JoinString(GOOD.server, GOOD.ca_sha256, GOOD.token_id, GOOD.secret, ("b" * 64,))
    assert parse_join_string(join.encode()) == join
    assert join.host == "gw.example.com" and join.port == 7443


def test_ipv6_server_address_is_accepted():
    join = JoinString("[::1]:7443", GOOD.ca_sha256, GOOD.token_id, GOOD.secret)
    assert parse_join_string(join.encode()).host == "::1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hello", "must start with"),
        (PREFIX + "!!!", "corrupted"),
        (_encode([1, 2]), "not an object"),
        (_encode({"s": "h:1", "ca": "a" * 64, "t": "0123456789"}), "lacks field"),
        (_encode({"s": "h:1", "ca": "a" * 64, "t": "0123456789", "k": "s" * 20, "x": 1}), "unknown field"),
        (_encode({"s": "h:99999", "ca": "a" * 64, "t": "0123456789", "k": "s" * 20}), "host:port"),
        (_encode({"s": "h:1", "ca": "A" * 64, "t": "0123456789", "k": "s" * 20}), "fingerprint"),
        (_encode({"s": "h:1", "ca": "a" * 64, "t": "0123456789", "k": "short"}), "secret"),
        (_encode({"s": "h:1", "ca": "a" * 64, "t": 5, "k": "s" * 20}), "wrong field types"),
        (PREFIX + "A" * 5000, "too long"),
    ],
)
def test_malformed_join_strings_are_refused_with_a_reason(text, message):
    with pytest.raises(JoinStringError, match=message):
        parse_join_string(text)


@given(st.text(max_size=300))
def test_arbitrary_text_either_parses_or_raises_join_string_error(text):
    with contextlib.suppress(JoinStringError):
        parse_join_string(PREFIX + text)


def test_trailing_newline_does_not_sneak_through_a_pattern():
    from protos.limits import check_name

    with pytest.raises(ValueError, match="invalid"):
        check_name("fleet", "lab\n")
    with pytest.raises(JoinStringError, match="fingerprint"):
        JoinString(GOOD.server, GOOD.ca_sha256 + "\n", GOOD.token_id, GOOD.secret)
