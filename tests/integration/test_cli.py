"""The operator CLI against a real control plane: roles, JSON output, and one-line errors."""

from __future__ import annotations

import json

import pytest

from edgefleet.cli import run
from tests.integration.harness import wait_for


def test_operator_enrolls_a_device_and_lists_it_as_json(cli, cp, agents):
    code, join, _ = cli("tokens", "create", "--fleet", "lab", "--ttl", "10m", "--labels", "site=a,tier=edge")
    assert code == 0 and join.startswith("efjoin1.")
    agents("gw", "--heartbeat-seconds", "0.5", join=join.strip(), device_id="gw-1")
    wait_for(lambda: cp.is_online("gw-1"), what="gw-1 online")
    code, out, _ = cli("devices", "list", "--json")
    assert code == 0
    [device] = json.loads(out)
    assert device["device_id"] == "gw-1" and device["online"] is True
    assert device["labels"] == {"site": "a", "tier": "edge"}
    code, out, _ = cli("devices", "show", "gw-1", "--json")
    assert code == 0 and json.loads(out)["facts"]["architecture"]
    code, out, _ = cli("devices", "list")
    assert code == 0 and "gw-1" in out and "online" in out


def test_viewer_cannot_revoke_or_create_join_tokens_and_nothing_changes(cli, cp, agents):
    agents("gw", "--heartbeat-seconds", "0.5", join=cp.join_string(), device_id="gw-1")
    wait_for(lambda: cp.is_online("gw-1"), what="gw-1 online")
    code, viewer, _ = cli("operators", "create", "alice", "--role", "viewer")
    assert code == 0
    code, _, err = cli("devices", "revoke", "gw-1", token=viewer.strip())
    assert code == 1
    assert err == "error: revoking a device needs the operator role; this token is viewer [PERMISSION_DENIED]\n"
    code, _, err = cli("tokens", "create", "--fleet", "lab", token=viewer.strip())
    assert code == 1 and "PERMISSION_DENIED" in err
    code, out, _ = cli("devices", "list", "--json", token=viewer.strip())
    assert code == 0 and json.loads(out)[0]["online"] is True
    assert not cp.device("gw-1").HasField("revoked_at")


def test_operator_role_can_revoke_but_cannot_manage_operator_tokens(cli, cp):
    cp.join_string()
    code, operator, _ = cli("operators", "create", "bob", "--role", "operator")
    assert code == 0
    code, _, err = cli("operators", "create", "mallory", "--role", "admin", token=operator.strip())
    assert code == 1 and "needs the admin role" in err
    code, out, _ = cli("operators", "list", "--json")
    assert [t["name"] for t in json.loads(out)] == ["admin", "bob"]


def test_revoked_operator_token_is_refused(cli):
    _, token, _ = cli("operators", "create", "carol", "--role", "operator")
    assert cli("operators", "revoke", "carol")[0] == 0
    code, _, err = cli("devices", "list", token=token.strip())
    assert code == 1 and err == "error: operator token is unknown or revoked [UNAUTHENTICATED]\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tokens", "create", "--fleet", "Bad/Fleet"), "fleet 'Bad/Fleet' is invalid"),
        (("tokens", "create", "--fleet", "lab", "--ttl", "soon"), "duration 'soon' is not understood"),
        (("tokens", "create", "--fleet", "lab", "--labels", "novalue"), "label 'novalue' is not key=value"),
        (("devices", "show", "nope"), "device 'nope' not found [NOT_FOUND]"),
        (("operators", "create", "x", "--role", "god"), "role 'god' is unknown"),
    ],
)
def test_bad_arguments_give_one_line_errors_and_change_nothing(cli, cp, args, message):
    code, out, err = cli(*args)
    assert code != 0 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert cp.devices() == []


def test_unreachable_server_is_one_line_error(cli, monkeypatch):
    monkeypatch.setenv("EDGEFLEET_SERVER", "127.0.0.1:1")
    code, _, err = cli("devices", "list")
    assert code == 1 and err.startswith("error: control plane unavailable") and err.count("\n") == 1


def test_missing_configuration_names_what_to_set(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("EDGEFLEET_CONFIG", str(tmp_path / "missing.toml"))
    assert run(["devices", "list"]) == 2
    assert "config file" in capsys.readouterr().err
