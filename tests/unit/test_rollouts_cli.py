"""`edgefleet rollouts`: parsing of its options, rows from a Rollout message, and the commands over a fake stub."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from typer.testing import CliRunner

from controlplane.cli import rollouts
from controlplane.cli.errors import CliError
from edgefleet.cli import app, run
from protos.edgefleet.v1 import admin_pb2, common_pb2

# --- parsing ---


def test_rollout_ref_is_name_and_version():
    assert rollouts.parse_rollout_ref("kws:3") == ("kws", 3)


@pytest.mark.parametrize("text", ["kws", "kws:0", "kws:x", "kws:3:", "a:b:c:d"])
def test_malformed_rollout_ref_is_refused(text):
    with pytest.raises(CliError, match="NAME:VERSION"):
        rollouts.parse_rollout_ref(text)
    with pytest.raises(CliError, match="model name 'KWS' is invalid"):
        rollouts.parse_rollout_ref("KWS:3")


def test_rollout_ref_with_a_variant_is_refused_with_the_reason():
    with pytest.raises(CliError, match="chooses the variant per device class") as info:
        rollouts.parse_rollout_ref("kws:3:int8-dynamic")
    assert "kws:3" in str(info.value)


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200)])
def test_durations(text, seconds):
    assert rollouts.parse_seconds("--bake", text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-5m", "1.5h", "m", "5 minutes"])
def test_malformed_duration_names_the_option(text):
    with pytest.raises(CliError, match="^--bake: duration"):
        rollouts.parse_seconds("--bake", text)


def test_duration_out_of_range():
    with pytest.raises(CliError, match="--step-timeout must be between 1s and 7d"):
        rollouts.parse_seconds("--step-timeout", "0", minimum=1, maximum=7 * 86400)
    with pytest.raises(CliError, match="--bake must be between 0s and 7d"):
        rollouts.parse_seconds("--bake", "8d")


@pytest.mark.parametrize(("text", "waves"), [("1,10,50,100", [1, 10, 50, 100]), ("100", [100]), (" 5, 100 ", [5, 100])])
def test_waves(text, waves):
    assert rollouts.parse_waves(text) == waves


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not a comma-separated list"),
        ("1,,100", "not a comma-separated list"),
        ("1,x,100", "not a comma-separated list"),
        ("-1,100", "not a comma-separated list"),
        ("0,100", "between 1 and 100"),
        ("1,101", "between 1 and 100"),
        ("10,10,100", "not strictly increasing"),
        ("50,10,100", "not strictly increasing"),
        ("1,10,50", "must end at 100"),
    ],
)
def test_malformed_waves(text, why):
    with pytest.raises(CliError, match=why):
        rollouts.parse_waves(text)


def test_selector():
    assert rollouts.parse_selector(None) == {}
    assert rollouts.parse_selector(["tier=edge", "site = a", "tier=edge"]) == {"tier": "edge", "site": "a"}
    assert rollouts.parse_selector(["empty="]) == {"empty": ""}


@pytest.mark.parametrize(
    ("items", "why"),
    [
        (["tier"], "not key=value"),
        (["=edge"], "not key=value"),
        (["tier=edge", "tier=core"], "twice"),
        (["Tier=edge"], "label key 'Tier' is invalid"),
    ],
)
def test_malformed_selector(items, why):
    with pytest.raises(CliError, match=why):
        rollouts.parse_selector(items)


def test_gates_left_out_are_zero_so_the_server_applies_its_defaults():
    assert rollouts.build_gates() == admin_pb2.GateThresholds()


def test_gates_given_are_sent():
    gates = rollouts.build_gates(
        min_requests=50,
        min_devices=2,
        max_install_failure_rate=0.1,
        max_error_rate_increase=0.02,
        max_error_rate=0.3,
        max_latency_ratio=1.5,
        max_confidence_drop=0.05,
        max_low_confidence_rate=0.4,
        max_low_confidence_rate_increase=0.1,
        max_crashes=0,
        max_rollbacks=1,
        on_breach="pause",
    )
    assert gates.min_requests == 50 and gates.min_devices == 2
    assert gates.max_install_failure_rate == pytest.approx(0.1)
    assert gates.max_latency_p95_ratio == pytest.approx(1.5)
    assert gates.max_low_confidence_rate_increase == pytest.approx(0.1)
    assert gates.max_crashes == 0 and gates.max_rollbacks == 1 and gates.on_breach == "pause"


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"max_install_failure_rate": 0.0}, "--max-install-failure-rate must be above 0"),
        ({"max_error_rate": 1.5}, "--max-error-rate must be above 0 and at most 1"),
        ({"max_confidence_drop": -0.1}, "--max-confidence-drop"),
        ({"max_latency_ratio": 0.9}, "--max-latency-ratio must be at least 1"),
        ({"min_devices": 0}, "--min-devices must be a whole number of at least 1"),
        ({"max_crashes": -1}, "--max-crashes"),
        ({"on_breach": "explode"}, "--on-breach must be one of rollback, pause"),
    ],
)
def test_bad_gates(kwargs, why):
    with pytest.raises(CliError, match=why):
        rollouts.build_gates(**kwargs)


# --- rendering ---


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def sample(state: str = "baking", current_wave: int = 1) -> admin_pb2.Rollout:
    return admin_pb2.Rollout(
        rollout_id="r-1",
        model=common_pb2.ModelRef(name="kws", version=3),
        fleet="lab",
        state=state,
        current_wave=current_wave,
        waves_percent=[1, 10, 50, 100],
        progress=[
            admin_pb2.WaveProgress(wave=1, percent=10, device_class="pi", targeted=4, updated=2, failed=1, pending=1),
            admin_pb2.WaveProgress(wave=0, percent=1, device_class="x86", targeted=1, updated=1),
            admin_pb2.WaveProgress(wave=0, percent=1, device_class="pi", targeted=1, updated=1),
        ],
        decisions=[
            admin_pb2.GateDecision(
                wave=0, verdict="advance", at=ts(1_700_000_000), canary={"error_rate": 0.01}, reasons=[]
            ),
            admin_pb2.GateDecision(
                wave=1, verdict="rollback", at=ts(1_700_000_600), reasons=["error rate +5 points", "2 crashes"]
            ),
        ],
        created_at=ts(1_699_999_000),
        updated_at=ts(1_700_000_600),
        reason="gate breached in wave 2",
        selector={"tier": "edge", "site": "a"},
        bake_seconds=300,
        max_parallel=0,
    )


def test_wave_label_is_one_based_with_the_cumulative_percentage():
    assert rollouts.wave_label(sample(current_wave=0)) == "1/4 (1%)"
    assert rollouts.wave_label(sample(current_wave=1)) == "2/4 (10%)"
    assert rollouts.wave_label(sample(current_wave=9)) == "4/4 (100%)"
    assert rollouts.wave_label(admin_pb2.Rollout()) == "-"


def test_list_row_sums_progress():
    row = rollouts.list_row(sample())
    assert row[:6] == ["r-1", "kws:3", "lab", "baking", "2/4 (10%)", "4/6"]
    assert row[6].startswith("2023-11-") and len(row) == len(rollouts.LIST_COLUMNS)
    assert rollouts.list_row(admin_pb2.Rollout(rollout_id="r-2"))[1:] == ["-", "", "", "-", "0/0", "-"]


def test_progress_rows_in_wave_then_class_order():
    assert rollouts.progress_rows(sample()) == [
        ["1", "1%", "pi", "1", "1", "0", "0", "0"],
        ["1", "1%", "x86", "1", "1", "0", "0", "0"],
        ["2", "10%", "pi", "4", "2", "1", "1", "0"],
    ]


def test_decision_rows_put_each_reason_on_its_own_line():
    rows = rollouts.decision_rows(sample())
    assert [r[1:] for r in rows] == [["1", "advance", "-"], ["2", "rollback", "error rate +5 points\n2 crashes"]]
    assert rows[0][0].startswith("2023-11-1")


def test_header_rows():
    header = dict(rollouts.header_rows(sample()))
    assert header["model"] == "kws:3" and header["state"] == "baking" and header["wave"] == "2/4 (10%)"
    assert header["selector"] == "site=a,tier=edge" and header["bake"] == "5m" and header["max parallel"] == "no cap"
    assert header["reason"] == "gate breached in wave 2"
    assert dict(rollouts.header_rows(admin_pb2.Rollout()))["selector"] == "(every device)"


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (90, "90s"), (300, "5m"), (3600, "1h"), (86400, "1d")])
def test_format_seconds(seconds, text):
    assert rollouts.format_seconds(seconds) == text


def test_summary_line():
    assert rollouts.summary_line(sample()) == (
        "r-1: kws:3 to fleet lab: baking, wave 2/4 (10%), 4/6 updated (gate breached in wave 2)"
    )


# --- commands, over a fake Admin stub ---


class FakeStub:
    def __init__(self, rollouts_seq: list[admin_pb2.Rollout] | None = None):
        self.requests: list[tuple[str, object]] = []
        self.seq = list(rollouts_seq or [sample()])

    def _next(self, name, request):
        self.requests.append((name, request))
        return self.seq.pop(0) if len(self.seq) > 1 else self.seq[0]

    def StartRollout(self, request, **_):  # noqa: N802 - gRPC method names
        return self._next("StartRollout", request)

    def GetRollout(self, request, **_):  # noqa: N802
        return self._next("GetRollout", request)

    def ControlRollout(self, request, **_):  # noqa: N802
        return self._next("ControlRollout", request)

    def ListRollouts(self, request, **_):  # noqa: N802
        self.requests.append(("ListRollouts", request))
        return admin_pb2.ListRolloutsResponse(rollouts=self.seq)


@pytest.fixture
def stub(monkeypatch):
    fake = FakeStub()

    @contextmanager
    def fake_admin(_conn):
        yield fake, [("authorization", "Bearer t")]

    monkeypatch.setattr(rollouts, "resolve", lambda *_: None)
    monkeypatch.setattr(rollouts, "admin", fake_admin)
    monkeypatch.setattr(rollouts.time, "sleep", lambda _: None)
    return fake


def test_variant_is_refused_before_any_connection(stub):
    result = CliRunner().invoke(app, ["rollouts", "start", "kws:3:int8-dynamic", "--fleet", "lab"])
    assert isinstance(result.exception, CliError)
    assert "chooses the variant per device class" in str(result.exception)
    assert stub.requests == []


def test_variant_refusal_is_a_usage_error_line(stub, capsys):
    assert run(["rollouts", "start", "kws:3:fp16", "--fleet", "lab"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 'kws:3:fp16' names variant 'fp16': a rollout chooses the variant per device class")
    assert err.count("\n") == 1


def test_bad_waves_are_a_usage_error(stub, capsys):
    assert run(["rollouts", "start", "kws:3", "--fleet", "lab", "--waves", "10,5,100"]) == 2
    assert "not strictly increasing" in capsys.readouterr().err and stub.requests == []


def test_start_sends_the_request_and_prints_id_summary_and_status(stub):
    args = ["rollouts", "start", "kws:3", "--fleet", "lab", "--selector", "tier=edge", "-l", "site=a"]
    args += ["--waves", "10,50,100", "--bake", "0", "--max-parallel", "5", "--step-timeout", "30m"]
    args += ["--min-requests", "50", "--max-latency-ratio", "1.25", "--on-breach", "pause"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [(name, request)] = stub.requests
    assert name == "StartRollout"
    assert (request.name, request.version, request.fleet) == ("kws", 3, "lab")
    assert dict(request.selector) == {"tier": "edge", "site": "a"}
    assert list(request.waves_percent) == [10, 50, 100]
    assert (request.bake_seconds, request.max_parallel, request.step_timeout_seconds) == (0, 5, 1800)
    assert request.gates.min_requests == 50 and request.gates.on_breach == "pause"
    assert request.gates.max_latency_p95_ratio == pytest.approx(1.25)
    lines = result.output.splitlines()
    assert lines[0] == "r-1"
    assert lines[1].startswith("started r-1: kws:3 to fleet lab: baking")
    assert "gate decisions" in result.output and "x86" in result.output and "2 crashes" in result.output


def test_start_json(stub):
    result = CliRunner().invoke(app, ["rollouts", "start", "kws:3", "--fleet", "lab", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["rollout_id"] == "r-1" and doc["waves_percent"] == [1, 10, 50, 100]
    assert list(stub.requests[0][1].waves_percent) == [1, 10, 50, 100]
    assert stub.requests[0][1].gates == admin_pb2.GateThresholds()


def test_list(stub):
    result = CliRunner().invoke(app, ["rollouts", "list", "--fleet", "lab", "--active"])
    assert result.exit_code == 0, result.output
    assert stub.requests == [("ListRollouts", admin_pb2.ListRolloutsRequest(fleet="lab", active_only=True))]
    assert "UPDATED/TARGETED" in result.output and "2/4 (10%)" in result.output and "4/6" in result.output


@pytest.mark.parametrize("action", ["pause", "resume", "abort", "rollback"])
def test_control_actions(stub, action):
    stub.seq = [sample(state="paused")]
    result = CliRunner().invoke(app, ["rollouts", action, "r-1"])
    assert result.exit_code == 0, result.output
    assert stub.requests == [("ControlRollout", admin_pb2.ControlRolloutRequest(rollout_id="r-1", action=action))]
    assert result.output.startswith("r-1: kws:3 to fleet lab: paused, wave 2/4 (10%)")


def test_status_once(stub):
    result = CliRunner().invoke(app, ["rollouts", "status", "r-1"])
    assert result.exit_code == 0, result.output
    assert stub.requests == [("GetRollout", admin_pb2.GetRolloutRequest(rollout_id="r-1"))]
    assert "rollout r-1" in result.output and "site=a,tier=edge" in result.output


def test_watch_stops_at_a_terminal_state(stub):
    stub.seq = [sample("running"), sample("baking"), sample("rolled_back")]
    result = CliRunner().invoke(app, ["rollouts", "status", "r-1", "--watch", "--interval", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["state"] for line in result.output.splitlines()] == ["running", "baking", "rolled_back"]


def test_watch_stops_quietly_on_ctrl_c(stub, monkeypatch):
    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(rollouts.time, "sleep", interrupt)
    assert run(["rollouts", "status", "r-1", "--watch"]) == 0
    assert len(stub.requests) == 1


def test_watch_interval_is_checked(stub, capsys):
    assert run(["rollouts", "status", "r-1", "--watch", "--interval", "0.1"]) == 2
    assert "--interval must be at least 0.5 seconds" in capsys.readouterr().err
