"""The wave health gate: each threshold, the wait cases, the no-control case."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.gates import CohortStats, GateVerdict, Thresholds, evaluate

T = Thresholds()
CONTROL = CohortStats(
    devices=10,
    requests=5000,
    errors=50,
    latency_p95_ms=13.0,
    mean_confidence=0.90,
    low_confidence_rate=0.05,
)
CANARY = CohortStats(
    devices=2,
    requests=1000,
    errors=11,
    latency_p95_ms=14.0,
    mean_confidence=0.89,
    low_confidence_rate=0.06,
    installs=2,
)


def test_a_healthy_canary_advances_with_every_check_explained() -> None:
    v = evaluate(CANARY, CONTROL, T)
    assert v.verdict == "advance"
    assert any("error rate 1.10% vs the control's 1.00%" in r for r in v.reasons)
    assert any("p95 latency 14.0 ms is 1.08x the control's 13.0 ms <= max 1.50x" in r for r in v.reasons)
    assert v.numbers["latency_p95_ratio"] == pytest.approx(14 / 13)
    assert v.numbers["canary_requests"] == 1000.0
    assert all(math.isfinite(x) for x in v.numbers.values())


def test_latency_regression_breaches_with_the_numbers() -> None:
    v = evaluate(replace(CANARY, latency_p95_ms=31.2), CONTROL, T)
    assert v.verdict == "rollback"
    assert v.reasons == ("p95 latency 31.2 ms is 2.40x the control's 13.0 ms > max 1.50x",)


def test_error_rate_increase_breaches() -> None:
    v = evaluate(replace(CANARY, errors=40), CONTROL, T)
    assert v.verdict == "rollback"
    assert v.reasons == ("error rate 4.00% vs the control's 1.00% (+3.00 points) > max +2.00 points",)
    assert v.numbers["error_rate_increase"] == pytest.approx(0.03)


def test_confidence_drop_breaches() -> None:
    v = evaluate(replace(CANARY, mean_confidence=0.80), CONTROL, T)
    assert v.verdict == "rollback"
    assert v.reasons == ("mean confidence 0.800 vs the control's 0.900 (drop 0.100) > max 0.050",)


def test_low_confidence_rate_increase_breaches() -> None:
    v = evaluate(replace(CANARY, low_confidence_rate=0.30), CONTROL, T)
    assert v.verdict == "rollback"
    assert "low-confidence rate 30.00% vs the control's 5.00% (+25.00 points) > max +10.00 points" in v.reasons


def test_on_breach_pause() -> None:
    v = evaluate(replace(CANARY, errors=100), CONTROL, replace(T, on_breach="pause"))
    assert v.verdict == "pause"


def test_several_breaches_are_all_reported() -> None:
    v = evaluate(replace(CANARY, errors=100, latency_p95_ms=40.0, mean_confidence=0.5), CONTROL, T)
    assert v.verdict == "rollback"
    assert len(v.reasons) == 3


def test_exactly_at_the_limit_passes() -> None:
    v = evaluate(replace(CANARY, latency_p95_ms=19.5, errors=30), CONTROL, T)  # 1.5x, +2.00 points
    assert v.verdict == "advance", v.reasons


def test_wait_says_how_many_of_how_many() -> None:
    v = evaluate(replace(CANARY, requests=12, errors=0), CONTROL, T)
    assert v.verdict == "wait"
    assert v.reasons == ("canary has 12 of 200 requests needed",)
    v = evaluate(replace(CANARY, devices=0, requests=0, errors=0), CONTROL, replace(T, min_devices=2))
    assert v.reasons == ("canary has 0 of 2 devices needed", "canary has 0 of 200 requests needed")


def test_install_failures_breach_without_traffic() -> None:
    v = evaluate(CohortStats(devices=3, installs=4, install_failures=1), CONTROL, T)
    assert v.verdict == "rollback"
    assert v.reasons == ("install failure rate 25.00% (1 of 4 installs) > max 20.00%",)


def test_crashes_and_device_rollbacks_breach_without_traffic() -> None:
    v = evaluate(CohortStats(devices=1, crashes=2, rollbacks=1), None, T)
    assert v.verdict == "rollback"
    assert v.reasons == ("2 crashes on the canary > max 0", "1 device-side rollback on the canary > max 0")
    assert evaluate(CohortStats(devices=1, requests=500, crashes=2), None, replace(T, max_crashes=2)).verdict == (
        "advance"
    )


def test_no_control_compares_absolute_thresholds_only_and_says_so() -> None:
    bad_relative = replace(CANARY, errors=100, latency_p95_ms=99.0)
    v = evaluate(bad_relative, None, T)
    assert v.verdict == "advance"
    assert v.reasons[0] == "no control cohort: compared with absolute thresholds only"
    v = evaluate(bad_relative, None, replace(T, max_error_rate=0.05, max_latency_p95_ms=50.0))
    assert v.verdict == "rollback"
    assert v.reasons == ("error rate 10.00% > max 5.00%", "p95 latency 99.0 ms > max 50.0 ms")


def test_a_quiet_control_is_not_compared() -> None:
    v = evaluate(replace(CANARY, errors=100), replace(CONTROL, requests=20, errors=0), T)
    assert v.verdict == "advance"
    assert "control cohort has 20 of 200 requests needed to compare" in v.reasons[0]


def test_min_mean_confidence_is_absolute() -> None:
    v = evaluate(replace(CANARY, mean_confidence=0.6), None, replace(T, min_mean_confidence=0.7))
    assert v.reasons == ("mean confidence 0.600 < min 0.700",)


def test_unmeasured_metrics_are_not_judged() -> None:
    v = evaluate(replace(CANARY, latency_p95_ms=None, mean_confidence=None), CONTROL, T)
    assert v.verdict == "advance"
    assert "p95 latency not measured on the canary: not judged" in v.reasons


@pytest.mark.parametrize(
    "changes",
    [
        {"requests": -1},
        {"errors": 5, "requests": 4},
        {"install_failures": 2, "installs": 1},
        {"latency_p95_ms": math.nan},
        {"mean_confidence": 1.5},
        {"devices": True},
    ],
)
def test_invalid_stats_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CohortStats(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"min_devices": 0},
        {"max_latency_p95_ratio": 0.5},
        {"max_error_rate_increase": math.inf},
        {"on_breach": "ignore"},
        {"max_latency_p95_ms": -1.0},
    ],
)
def test_invalid_thresholds_raise(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Thresholds(**changes)  # type: ignore[arg-type]


def cohorts() -> st.SearchStrategy[CohortStats]:
    @st.composite
    def build(draw: st.DrawFn) -> CohortStats:
        requests = draw(st.integers(0, 2000))
        installs = draw(st.integers(0, 20))
        return CohortStats(
            devices=draw(st.integers(0, 20)),
            requests=requests,
            errors=draw(st.integers(0, requests)),
            latency_p95_ms=draw(st.none() | st.floats(0, 500)),
            mean_confidence=draw(st.none() | st.floats(0, 1)),
            low_confidence_rate=draw(st.none() | st.floats(0, 1)),
            installs=installs,
            install_failures=draw(st.integers(0, installs)),
            crashes=draw(st.integers(0, 2)),
            rollbacks=draw(st.integers(0, 2)),
        )

    return build()


@settings(max_examples=300, deadline=None)
@given(cohorts(), st.none() | cohorts(), st.sampled_from(["rollback", "pause"]))
def test_every_verdict_is_explained_and_consistent(canary: CohortStats, control: CohortStats | None, on: str) -> None:
    t = replace(T, on_breach=on)
    v = evaluate(canary, control, t)
    assert isinstance(v, GateVerdict)
    assert v.verdict in ("advance", "wait", on)
    assert v.reasons and all(isinstance(r, str) and r for r in v.reasons)
    assert all(math.isfinite(x) for x in v.numbers.values())
    hard = canary.crashes > t.max_crashes or canary.rollbacks > t.max_rollbacks
    hard = hard or (canary.installs > 0 and canary.install_failures / canary.installs > t.max_install_failure_rate)
    if hard:
        assert v.verdict == on
    elif canary.requests < t.min_requests or canary.devices < t.min_devices:
        assert v.verdict == "wait"


def test_a_sub_millisecond_p95_ratio_within_the_slack_is_noise_not_a_regression() -> None:
    from controlplane.gates import CohortStats, Thresholds, evaluate

    control = CohortStats(devices=2, requests=500, latency_p95_ms=0.02)
    noisy = CohortStats(devices=1, requests=500, latency_p95_ms=0.06)  # 3x, but 0.04 ms slower
    verdict = evaluate(noisy, control, Thresholds())
    assert verdict.verdict == "advance", verdict.reasons
    assert any("slack" in r for r in verdict.reasons)
    slow = CohortStats(devices=1, requests=500, latency_p95_ms=20.0)
    assert evaluate(slow, control, Thresholds()).verdict == "rollback"
    assert evaluate(noisy, control, Thresholds(latency_slack_ms=0.0)).verdict == "rollback"
