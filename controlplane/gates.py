"""The health gate of a rollout wave: canary cohort vs control cohort, a pure function.

``evaluate(canary, control, thresholds)`` says whether a wave may advance, must wait for more
data, or breached a threshold (then ``thresholds.on_breach``: rollback or pause). No I/O, no
clock: the server measures both cohorts from telemetry over the bake window and calls it.

Invariants:

- Every verdict carries reasons a person can act on, with the numbers that made them, and
  ``numbers`` holds the same figures (finite floats only, so they persist as JSON).
- Install failures, crashes and device-side rollbacks breach regardless of request volume:
  a broken build is stopped even on a quiet wave.
- Otherwise a canary with fewer than ``min_requests`` requests or ``min_devices`` devices
  gives "wait", saying how many of how many.
- Relative thresholds (error rate increase, p95 ratio, confidence drop, low-confidence
  increase) need a control cohort with at least ``min_requests`` requests. Without one (no
  device on the old version, or too little traffic there) only the absolute thresholds are
  compared, and the reasons say so.
- A metric that a cohort did not measure (p95 or confidence ``None``) is not judged; the
  reasons say so when it was not measured on the canary.
- Invalid input (negative counts, errors > requests, rates outside [0, 1], non-finite
  numbers) raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Literal

__all__ = ["ON_BREACH", "VERDICTS", "CohortStats", "GateVerdict", "Thresholds", "evaluate"]

Verdict = Literal["advance", "pause", "rollback", "wait"]
VERDICTS: tuple[str, ...] = ("advance", "pause", "rollback", "wait")
ON_BREACH: tuple[str, ...] = ("rollback", "pause")
TOLERANCE = 1e-9
"""Slack for comparing differences and ratios of floats with their limits."""


@dataclass(frozen=True)
class CohortStats:
    """One cohort's figures over the gate window (counts summed over its devices)."""

    devices: int = 0
    requests: int = 0
    errors: int = 0
    latency_p95_ms: float | None = None
    mean_confidence: float | None = None
    low_confidence_rate: float | None = None
    """Share of requests whose confidence was below the model's threshold; None = not measured."""
    install_failures: int = 0
    installs: int = 0
    """Install attempts that finished, failed ones included (``install_failures <= installs``)."""
    crashes: int = 0
    rollbacks: int = 0
    """Device-side automatic rollbacks (activation or post-activation failure)."""

    def __post_init__(self) -> None:
        for name in ("devices", "requests", "errors", "install_failures", "installs", "crashes", "rollbacks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.errors > self.requests:
            raise ValueError(f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        if self.install_failures > self.installs:
            raise ValueError(f"install_failures ({self.install_failures}) cannot exceed installs ({self.installs})")
        _check_optional(self, "latency_p95_ms", 0.0, math.inf)
        _check_optional(self, "mean_confidence", 0.0, 1.0)
        _check_optional(self, "low_confidence_rate", 0.0, 1.0)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class Thresholds:
    """Gate limits. Raises ``ValueError`` on construction if a value is out of range."""

    min_requests: int = 200
    min_devices: int = 1
    max_install_failure_rate: float = 0.2
    max_error_rate_increase: float = 0.02
    """Absolute: 0.02 = the canary's error rate may exceed the control's by 2 percentage points."""
    max_latency_p95_ratio: float = 1.5
    latency_slack_ms: float = 1.0
    """The p95 ratio breaches only when the canary is also this much slower in absolute terms: for
    sub-millisecond models, 0.04 ms vs 0.02 ms is scheduling noise, not a regression."""
    max_confidence_drop: float = 0.05
    """Absolute drop of mean confidence vs the control."""
    max_low_confidence_rate_increase: float = 0.1
    max_crashes: int = 0
    max_rollbacks: int = 0
    max_error_rate: float | None = None
    """Absolute ceilings, judged with or without a control; None = none."""
    max_latency_p95_ms: float | None = None
    min_mean_confidence: float | None = None
    max_low_confidence_rate: float | None = None
    on_breach: str = "rollback"

    def __post_init__(self) -> None:
        for name, low in (("min_requests", 0), ("min_devices", 1), ("max_crashes", 0), ("max_rollbacks", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("max_install_failure_rate", "max_error_rate_increase", "max_confidence_drop"):
            _check_number(self, name, 0.0, 1.0)
        _check_number(self, "max_low_confidence_rate_increase", 0.0, 1.0)
        _check_number(self, "max_latency_p95_ratio", 1.0, math.inf)
        _check_number(self, "latency_slack_ms", 0.0, math.inf)
        for name in ("max_error_rate", "min_mean_confidence", "max_low_confidence_rate"):
            _check_optional(self, name, 0.0, 1.0)
        _check_optional(self, "max_latency_p95_ms", 0.0, math.inf)
        if self.on_breach not in ON_BREACH:
            raise ValueError(f"on_breach must be one of {', '.join(ON_BREACH)}, got {self.on_breach!r}")


@dataclass(frozen=True)
class GateVerdict:
    verdict: Verdict
    reasons: tuple[str, ...]
    numbers: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        object.__setattr__(self, "reasons", tuple(self.reasons))
        object.__setattr__(self, "numbers", MappingProxyType(dict(sorted(self.numbers.items()))))


def evaluate(canary: CohortStats, control: CohortStats | None, t: Thresholds) -> GateVerdict:
    """The gate verdict for ``canary`` (devices on the new version) against ``control`` (on the old one).

    ``control`` None: no device runs the old version (a single-class fleet's last wave, or a first
    install); only absolute thresholds are compared.
    """
    numbers: dict[str, float] = {}
    _put(numbers, "canary", canary)
    if control is not None:
        _put(numbers, "control", control)
    breaches = _hard_breaches(canary, t, numbers)
    short = _shortfalls(canary, t)
    if breaches:
        return GateVerdict(t.on_breach, tuple(breaches), numbers)  # type: ignore[arg-type]
    if short:
        return GateVerdict("wait", tuple(short), numbers)
    passes: list[str] = []
    usable = control is not None and control.requests >= t.min_requests and control.devices >= 1
    if control is None:
        passes.append("no control cohort: compared with absolute thresholds only")
    elif not usable:
        passes.append(
            f"control cohort has {control.requests} of {t.min_requests} requests needed to compare:"
            " compared with absolute thresholds only"
        )
    else:
        assert control is not None
        breaches += _relative(canary, control, t, numbers, passes)
    breaches += _absolute(canary, t, passes)
    if breaches:
        return GateVerdict(t.on_breach, tuple(breaches), numbers)  # type: ignore[arg-type]
    return GateVerdict("advance", tuple(passes), numbers)


# --- the checks ---------------------------------------------------------------------------------------


def _hard_breaches(c: CohortStats, t: Thresholds, numbers: dict[str, float]) -> list[str]:
    breaches: list[str] = []
    if c.installs:
        rate = c.install_failures / c.installs
        numbers["install_failure_rate"] = rate
        if rate > t.max_install_failure_rate + TOLERANCE:
            breaches.append(
                f"install failure rate {_pct(rate)} ({c.install_failures} of {c.installs} installs)"
                f" > max {_pct(t.max_install_failure_rate)}"
            )
    if c.crashes > t.max_crashes:
        breaches.append(f"{_count(c.crashes, 'crash', 'crashes')} on the canary > max {t.max_crashes}")
    if c.rollbacks > t.max_rollbacks:
        breaches.append(f"{_count(c.rollbacks, 'device-side rollback')} on the canary > max {t.max_rollbacks}")
    return breaches


def _shortfalls(c: CohortStats, t: Thresholds) -> list[str]:
    short: list[str] = []
    if c.devices < t.min_devices:
        short.append(f"canary has {c.devices} of {_count(t.min_devices, 'device')} needed")
    if c.requests < t.min_requests:
        short.append(f"canary has {c.requests} of {_count(t.min_requests, 'request')} needed")
    return short


def _relative(c: CohortStats, k: CohortStats, t: Thresholds, numbers: dict[str, float], passes: list[str]) -> list[str]:
    breaches: list[str] = []
    ce, ke = c.error_rate, k.error_rate
    assert ce is not None and ke is not None
    increase = ce - ke
    numbers["error_rate_increase"] = increase
    text = f"error rate {_pct(ce)} vs the control's {_pct(ke)} ({_points(increase)})"
    if increase > t.max_error_rate_increase + TOLERANCE:
        breaches.append(f"{text} > max {_points(t.max_error_rate_increase)}")
    else:
        passes.append(f"{text} <= max {_points(t.max_error_rate_increase)}")

    if c.latency_p95_ms is None:
        passes.append("p95 latency not measured on the canary: not judged")
    elif k.latency_p95_ms is None or k.latency_p95_ms <= 0:
        passes.append("p95 latency not measured on the control: ratio not judged")
    else:
        ratio = c.latency_p95_ms / k.latency_p95_ms
        numbers["latency_p95_ratio"] = ratio
        text = f"p95 latency {_ms(c.latency_p95_ms)} ms is {ratio:.2f}x the control's {_ms(k.latency_p95_ms)} ms"
        slower_by = c.latency_p95_ms - k.latency_p95_ms
        if ratio > t.max_latency_p95_ratio + TOLERANCE and slower_by > t.latency_slack_ms + TOLERANCE:
            breaches.append(f"{text} > max {t.max_latency_p95_ratio:.2f}x")
        elif ratio > t.max_latency_p95_ratio + TOLERANCE:
            passes.append(
                f"{text}, but only {_ms(slower_by)} ms slower (within the {_ms(t.latency_slack_ms)} ms slack)"
            )
        else:
            passes.append(f"{text} <= max {t.max_latency_p95_ratio:.2f}x")

    if c.mean_confidence is None:
        passes.append("mean confidence not measured on the canary: not judged")
    elif k.mean_confidence is not None:
        drop = k.mean_confidence - c.mean_confidence
        numbers["confidence_drop"] = drop
        text = f"mean confidence {c.mean_confidence:.3f} vs the control's {k.mean_confidence:.3f} (drop {drop:.3f})"
        if drop > t.max_confidence_drop + TOLERANCE:
            breaches.append(f"{text} > max {t.max_confidence_drop:.3f}")
        else:
            passes.append(f"{text} <= max {t.max_confidence_drop:.3f}")

    if c.low_confidence_rate is not None and k.low_confidence_rate is not None:
        rise = c.low_confidence_rate - k.low_confidence_rate
        numbers["low_confidence_rate_increase"] = rise
        text = (
            f"low-confidence rate {_pct(c.low_confidence_rate)} vs the control's {_pct(k.low_confidence_rate)}"
            f" ({_points(rise)})"
        )
        limit = t.max_low_confidence_rate_increase
        if rise > limit + TOLERANCE:
            breaches.append(f"{text} > max {_points(limit)}")
        else:
            passes.append(f"{text} <= max {_points(limit)}")
    return breaches


def _absolute(c: CohortStats, t: Thresholds, passes: list[str]) -> list[str]:
    breaches: list[str] = []
    checks = (
        ("error rate", c.error_rate, t.max_error_rate, _pct, 1),
        ("p95 latency", c.latency_p95_ms, t.max_latency_p95_ms, lambda v: f"{_ms(v)} ms", 1),
        ("mean confidence", c.mean_confidence, t.min_mean_confidence, lambda v: f"{v:.3f}", -1),
        ("low-confidence rate", c.low_confidence_rate, t.max_low_confidence_rate, _pct, 1),
    )
    for label, value, limit, show, sign in checks:
        if limit is None or value is None:
            continue
        bound = "max" if sign > 0 else "min"
        if sign * (value - limit) > TOLERANCE:
            breaches.append(f"{label} {show(value)} {'>' if sign > 0 else '<'} {bound} {show(limit)}")
        else:
            passes.append(f"{label} {show(value)} within {bound} {show(limit)}")
    return breaches


# --- helpers ------------------------------------------------------------------------------------------


def _put(numbers: dict[str, float], prefix: str, s: CohortStats) -> None:
    for f in fields(s):
        value = getattr(s, f.name)
        if value is not None:
            numbers[f"{prefix}_{f.name}"] = float(value)
    if s.error_rate is not None:
        numbers[f"{prefix}_error_rate"] = s.error_rate


def _check_number(obj: object, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {value!r}")


def _check_optional(obj: object, name: str, low: float, high: float) -> None:
    if getattr(obj, name) is not None:
        _check_number(obj, name, low, high)


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _points(delta: float) -> str:
    return f"{'+' if delta >= 0 else '-'}{abs(delta) * 100:.2f} points"


def _ms(value: float) -> str:
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"
