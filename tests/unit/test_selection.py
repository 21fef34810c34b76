"""The variant selector: hard constraints first, then the class's objective, every decision explained."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controlplane.selection import (
    OBJECTIVES,
    Build,
    Choice,
    Device,
    Measurement,
    Policy,
    Requirements,
    explain_lines,
    select,
)

MIB = 1 << 20
GIB = 1 << 30
TASK = "text-nlu"
CLASS = "edge-small"
VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8-static-qdq", "int8-static-qop", "int4-weight")
METRICS = ("intent_accuracy", "slot_f1")
FEATURES = ("avx2", "avx512_fp16", "neon")
PROVIDERS = ("CPUExecutionProvider", "XnnpackExecutionProvider")
ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64"}

settings.register_profile("selection", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS = settings.get_profile("selection")


# --- generated scenarios ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    policy: Policy
    builds: tuple[Build, ...]
    evidence: Mapping[str, Measurement]
    devices: tuple[Device, ...]

    def run(self) -> Choice:
        return select(self.policy, self.builds, self.evidence, self.devices)


def hundredths(low: int, high: int) -> st.SearchStrategy[float]:
    """Values on a 0.01 grid, so that ties and exact-limit cases are common and the oracle can count in ints."""
    return st.integers(low, high).map(lambda i: i / 100)


def mostly(usual: object, *others: object) -> st.SearchStrategy[object]:
    """`usual` about three times in four, so that some variants comply and some do not."""
    return st.sampled_from([usual] * (3 * len(others)) + list(others))


requirements = st.builds(
    Requirements,
    min_onnxruntime_version=mostly("", "1.17.0", "1.20.1"),
    execution_providers=mostly((), ("",), ("CPUExecutionProvider",), PROVIDERS),
    cpu_features=mostly((), ("avx2",), ("avx512_fp16",), ("neon", "avx2")),
    min_memory_bytes=mostly(0, GIB),
    architectures=mostly((), ("x86_64",), ("aarch64",), ("x86_64", "aarch64")),
)


@st.composite
def builds_named(draw: st.DrawFn, name: str, total_bytes: int, lenient: bool) -> Build:
    metrics = METRICS if lenient else draw(mostly(METRICS, METRICS[:1], METRICS[1:], ()))
    return Build(
        variant=name,
        task=TASK,
        total_bytes=total_bytes,
        quality={metric: draw(hundredths(90, 100)) for metric in metrics},
        max_slice_gap=draw(mostly("measured", None)) and draw(hundredths(0, 20)),
        requirements=Requirements() if lenient else draw(requirements),
        build_latency_p95_ms=draw(st.integers(0, 1000)) / 10,
        build_peak_rss_bytes=draw(st.sampled_from([0]) | st.integers(1, 400).map(lambda m: m * MIB)),
    )


@st.composite
def measurements_for(draw: st.DrawFn, name: str, lenient: bool) -> Measurement:
    devices = draw(st.integers(1, 5))
    p95 = draw(st.integers(1, 600)) / 10
    failures = 0 if lenient else draw(st.sampled_from([0, 0, 0, 1]))
    return Measurement(
        variant=name,
        devices=devices,
        latency_p50_ms=p95 / 2,
        latency_p95_ms=p95,
        load_time_ms=5.0,
        peak_rss_bytes=draw(st.integers(0, 400)) * MIB,
        acceptance_failures=failures,
        failure_reason="wrong intent on 'turn on the lights'" if failures else "",
        source=draw(st.sampled_from(["benchmark", "field"])),
    )


@st.composite
def devices_numbered(draw: st.DrawFn, index: int) -> Device:
    return Device(
        device_id=f"gw-{index}",
        architecture=draw(st.sampled_from(["x86_64", "aarch64", "arm64", "amd64", ""])),
        cpu_flags=draw(mostly(frozenset(FEATURES), frozenset(), frozenset({"avx2"}), frozenset({"neon"}))),
        onnxruntime_version=draw(mostly("1.21.0", "1.9.0", "1.16.3", "1.17.0", "1.20.1", "")),
        execution_providers=draw(mostly(PROVIDERS, (), PROVIDERS[:1], PROVIDERS[1:])),
        memory_total_bytes=draw(mostly(4 * GIB, 0, 512 * MIB, GIB)),
        model_memory_budget_bytes=draw(mostly(0, "cap")) and draw(st.integers(50, 400)) * MIB,
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    budget_required: bool = False,
    objective: str | None = None,
    lenient: bool = False,
    distinct_sizes: bool = False,
    all_measured: bool = False,
) -> Scenario:
    """Random builds, evidence, devices and policy. `lenient` leaves only latency and memory to decide."""
    min_builds = 2 if all_measured else 1
    names = draw(st.lists(st.sampled_from(VARIANTS), min_size=min_builds, max_size=len(VARIANTS), unique=True))
    sizes = draw(st.lists(st.integers(1, 300), min_size=len(names), max_size=len(names), unique=distinct_sizes))
    builds = tuple(draw(builds_named(name, size * MIB, lenient)) for name, size in zip(names, sizes, strict=True))
    evidence = {name: draw(measurements_for(name, lenient)) for name in names if all_measured or draw(st.booleans())}
    if draw(st.booleans()):  # evidence for a variant that is not published: ignored
        evidence["ghost"] = Measurement("ghost", 1, 0.1, 0.1, 1.0, 1)

    budget = draw(st.integers(5, 40)) if budget_required else draw(st.none() | st.integers(5, 40))
    budgets = {TASK: float(budget)} if budget is not None else draw(st.sampled_from([{}, {"vad": 1.0}]))
    policy = Policy(
        class_name=CLASS,
        latency_budgets_ms=budgets,
        memory_budget_bytes=draw(mostly(0, "budget")) and draw(st.integers(50, 400)) * MIB,
        max_accuracy_drop=None if lenient else draw(st.none() | hundredths(0, 8)),
        max_slice_gap=None if lenient else draw(mostly(None, "max")) and draw(hundredths(0, 20)),
        objective=objective or draw(st.sampled_from(OBJECTIVES)),
    )
    device_count = 0 if lenient else draw(st.integers(0, 3))
    devices = tuple(draw(devices_numbered(i)) for i in range(1, device_count + 1))
    return Scenario(policy, builds, evidence, devices)


# --- an independent oracle for the hard constraints ---------------------------------------------------------


def cents(value: float) -> int:
    return round(value * 100)


def version(text: str) -> tuple[int, ...]:
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (3 - len(parts))


def device_fits(req: Requirements, device: Device) -> bool:
    arch = ARCH_ALIASES.get(device.architecture, device.architecture)
    if req.architectures and arch not in {ARCH_ALIASES.get(a, a) for a in req.architectures}:
        return False
    if not set(req.cpu_features) <= device.cpu_flags:
        return False
    if req.min_onnxruntime_version and (
        not device.onnxruntime_version or version(device.onnxruntime_version) < version(req.min_onnxruntime_version)
    ):
        return False
    wanted = {p for p in req.execution_providers if p}
    if wanted and not wanted & set(device.execution_providers):
        return False
    return device.memory_total_bytes >= req.min_memory_bytes


def memory_of(build: Build, m: Measurement | None) -> int:
    rss = m.peak_rss_bytes if m is not None and m.peak_rss_bytes else build.build_peak_rss_bytes
    return max(rss, build.total_bytes)


def violations(s: Scenario) -> dict[str, list[str]]:
    """Which hard constraints each variant breaks, computed without the selector's code."""
    policy, out = s.policy, {}
    caps = [policy.memory_budget_bytes, *(d.model_memory_budget_bytes for d in s.devices)]
    cap = min((c for c in caps if c), default=0)
    best: dict[str, int] = {}
    for build in s.builds:
        for metric, value in build.quality.items():
            best[metric] = max(best.get(metric, 0), cents(value))
    for build in s.builds:
        m = s.evidence.get(build.variant)
        broken = []
        if not all(device_fits(build.requirements, d) for d in s.devices):
            broken.append("device")
        if cap and memory_of(build, m) > cap:
            broken.append("memory")
        budget = policy.latency_budgets_ms.get(build.task)
        if budget is not None and m is not None and m.latency_p95_ms > budget:
            broken.append("latency")
        if policy.max_accuracy_drop is not None:
            limit = cents(policy.max_accuracy_drop)
            if set(best) - set(build.quality) or any(best[k] - cents(v) > limit for k, v in build.quality.items()):
                broken.append("accuracy")
        if policy.max_slice_gap is not None and (
            build.max_slice_gap is None or cents(build.max_slice_gap) > cents(policy.max_slice_gap)
        ):
            broken.append("slice gap")
        if m is not None and m.acceptance_failures:
            broken.append("acceptance")
        out[build.variant] = broken
    return out


def needs_evidence(s: Scenario) -> bool:
    return TASK in s.policy.latency_budgets_ms or s.policy.objective == "fastest"


def mean_quality(build: Build) -> float:
    return math.fsum(build.quality.values()) / len(build.quality) if build.quality else math.nan


# --- properties ---------------------------------------------------------------------------------------------


@SETTINGS
@given(scenarios())
def test_never_chooses_a_variant_that_breaks_a_hard_constraint(s: Scenario) -> None:
    """Ranked is exactly the oracle's compliant set; something is chosen whenever anything complies."""
    choice = s.run()
    broken = violations(s)
    compliant = {variant for variant, problems in broken.items() if not problems}

    assert {c.variant for c in choice.ranked} == compliant
    assert [c.variant for c in choice.rejected] == [b.variant for b in s.builds if b.variant not in compliant]
    assert all(c.eligible for c in choice.ranked) and not any(c.eligible for c in choice.rejected)
    if compliant:
        assert choice.chosen in compliant
        assert choice.chosen == choice.ranked[0].variant
        assert choice.summary
    else:
        assert choice.chosen is None


@SETTINGS
@given(scenarios())
def test_measured_compliant_variants_win_over_unmeasured_ones(s: Scenario) -> None:
    """When latency matters, an unmeasured variant wins only if no measured one complies, and is flagged."""
    choice = s.run()
    assume(choice.chosen is not None)
    measured_compliant = [c.variant for c in choice.ranked if c.variant in s.evidence]
    chosen_measured = choice.chosen in s.evidence
    if not needs_evidence(s):
        assert not choice.fallback_no_evidence
        return
    assert choice.fallback_no_evidence == (not chosen_measured)
    assert chosen_measured == bool(measured_compliant)
    if choice.fallback_no_evidence:
        assert "until benchmarks report" in choice.summary and CLASS in choice.summary


@dataclass(frozen=True)
class Breaker:
    name: str

    def apply(self, s: Scenario) -> Scenario:
        names = [b.variant for b in s.builds]
        if self.name == "memory":
            return replace(s, policy=replace(s.policy, memory_budget_bytes=1))
        if self.name == "acceptance":
            failing = {n: Measurement(n, 2, 1.0, 2.0, 1.0, MIB, 1, "crashed on load") for n in names}
            return replace(s, evidence=failing)
        if self.name == "latency":
            slow = {n: Measurement(n, 3, 40.0, 50.0, 1.0, MIB) for n in names}
            return replace(s, policy=replace(s.policy, latency_budgets_ms={TASK: 5.0}), evidence=slow)
        needs_sve = tuple(replace(b, requirements=Requirements(cpu_features=("sve2",))) for b in s.builds)
        return replace(s, builds=needs_sve, devices=s.devices or (Device("gw-1"),))


@SETTINGS
@given(scenarios(), st.sampled_from(["memory", "acceptance", "latency", "cpu-feature"]).map(Breaker))
def test_when_nothing_complies_nothing_is_chosen_and_every_variant_says_why(s: Scenario, breaker: Breaker) -> None:
    s = breaker.apply(s)
    choice = s.run()

    assert choice.chosen is None and choice.ranked == () and not choice.fallback_no_evidence
    assert [c.variant for c in choice.rejected] == [b.variant for b in s.builds]
    for candidate in choice.rejected:
        assert candidate.reason.startswith(f"{candidate.variant}: ")
        assert len(candidate.reason) > len(candidate.variant) + 2
        assert candidate.reason in choice.summary
    assert choice.summary.startswith(f"no variant of this version complies with class {CLASS}: ")


@SETTINGS
@given(scenarios(budget_required=True), st.integers(1, 1000))
def test_evidence_over_the_budget_moves_the_choice_away(s: Scenario, excess_tenths: int) -> None:
    first = s.run()
    assume(first.chosen is not None)
    loser = first.chosen
    budget = s.policy.latency_budgets_ms[TASK]
    p95 = budget + excess_tenths / 10
    slow = Measurement(loser, 3, p95 / 2, p95, 10.0, 0)
    second = replace(s, evidence={**s.evidence, loser: slow}).run()

    assert second.chosen != loser
    (reason,) = [c.reason for c in second.rejected if c.variant == loser]
    assert f"> budget {budget:g} ms on class {CLASS} (3 devices)" in reason


@SETTINGS
@given(scenarios(objective="fastest", lenient=True, all_measured=True), st.data())
def test_for_fastest_evidence_that_the_winner_is_slower_than_another_moves_the_choice(
    s: Scenario, data: st.DataObject
) -> None:
    first = s.run()
    measured = [c.variant for c in first.ranked if c.variant in s.evidence]
    assume(len(measured) >= 2)
    winner = first.chosen
    assert winner == measured[0]
    rival = data.draw(st.sampled_from(measured[1:]))
    p95 = s.evidence[rival].latency_p95_ms + data.draw(st.integers(1, 100)) / 10
    slower = replace(s.evidence[winner], latency_p95_ms=p95, latency_p50_ms=p95 / 2)
    second = replace(s, evidence={**s.evidence, winner: slower}).run()

    assert second.chosen is not None and second.chosen != winner


def numbers(build: Build, m: Measurement | None) -> tuple[object, ...]:
    """A build and its evidence without their name."""
    fields = [f.name for f in dataclasses.fields(Build) if f.name not in ("variant", "quality")]
    described = (*(getattr(build, name) for name in fields), tuple(sorted(build.quality.items())))
    return described, replace(m, variant="") if m else None


@SETTINGS
@given(scenarios(distinct_sizes=True), st.permutations(VARIANTS))
def test_renaming_variants_does_not_change_which_build_wins(s: Scenario, shuffled: Sequence[str]) -> None:
    """No preference by name. Sizes are distinct, so the final by-name tie-break never decides; the one
    documented name rule (fp32 first among equally accurate unmeasured builds) may pick another build
    of the same quality."""
    rename = dict(zip(VARIANTS, shuffled, strict=True))
    renamed = replace(
        s,
        builds=tuple(replace(b, variant=rename[b.variant]) for b in s.builds),
        evidence={rename.get(v, v): replace(m, variant=rename.get(v, v)) for v, m in s.evidence.items()},
    )
    before, after = s.run(), renamed.run()

    def tier(scenario: Scenario, choice: Choice, unmeasured: bool) -> list[tuple[Build, Measurement | None]]:
        """The ranked builds of one tier: the head ranked by the objective, or the unmeasured fallback tail."""
        by_name = {b.variant: b for b in scenario.builds}
        lacking = {
            b.variant for b in scenario.builds if needs_evidence(scenario) and b.variant not in scenario.evidence
        }
        rows = [c.variant for c in choice.ranked if (c.variant in lacking) == unmeasured]
        return [(by_name[v], scenario.evidence.get(v)) for v in rows]

    def described(rows: list[tuple[Build, Measurement | None]]) -> list[tuple[object, ...]]:
        return [numbers(build, m) for build, m in rows]

    def qualities(rows: list[tuple[Build, Measurement | None]]) -> list[str]:
        return [repr(mean_quality(build)) for build, _ in rows]  # repr: nan == nan

    assert (before.chosen is None) == (after.chosen is None)
    assert before.fallback_no_evidence == after.fallback_no_evidence
    assert described(tier(s, before, False)) == described(tier(renamed, after, False))
    tail_before, tail_after = tier(s, before, True), tier(renamed, after, True)
    if "fp32" in {b.variant for b in s.builds} | {b.variant for b in renamed.builds}:
        # The fp32-first rule may reorder equally accurate unmeasured builds, and only those.
        assert qualities(tail_before) == qualities(tail_after)
    else:
        assert described(tail_before) == described(tail_after)


# --- examples -----------------------------------------------------------------------------------------------

REF = Requirements()


def nlu(variant: str, mib: int, intent: float, slot: float, gap: float | None = 0.02, **kw: object) -> Build:
    return Build(variant, TASK, mib * MIB, {"intent_accuracy": intent, "slot_f1": slot}, gap, REF, **kw)  # type: ignore[arg-type]


def measured(variant: str, p95: float, rss_mib: int = 40, devices: int = 3, **kw: object) -> Measurement:
    return Measurement(variant, devices, p95 / 2, p95, 12.0, rss_mib * MIB, **kw)  # type: ignore[arg-type]


def reason_of(choice: Choice, variant: str) -> str:
    (reason,) = [c.reason for c in (*choice.ranked, *choice.rejected) if c.variant == variant]
    return reason


def test_rejection_reasons_carry_the_numbers_and_the_class() -> None:
    policy = Policy("vehicle-arm-1g", {TASK: 20.0}, 128 * MIB, max_accuracy_drop=0.01, max_slice_gap=0.05)
    builds = [
        nlu("fp32", 200, 0.95, 0.918, build_peak_rss_bytes=212 * MIB),
        replace(nlu("fp16", 100, 0.95, 0.917), requirements=Requirements(cpu_features=("avx512_fp16",))),
        nlu("int8-dynamic", 50, 0.94, 0.91),
        nlu("int8-static-qop", 50, 0.945, 0.912),
        nlu("int8-static-qdq", 50, 0.945, 0.912, gap=0.12),
        nlu("int4-weight", 30, 0.93, 0.884),
    ]
    evidence = {
        "int8-dynamic": measured("int8-dynamic", 4.1),
        "int8-static-qop": measured("int8-static-qop", 31.2),
    }
    devices = [Device("gw-1", cpu_flags=frozenset({"avx2"})), Device("gw-2"), Device("gw-3", cpu_flags={"avx512_fp16"})]

    choice = select(policy, builds, evidence, devices)

    assert (
        reason_of(choice, "int8-static-qop")
        == "int8-static-qop: p95 31.2 ms > budget 20 ms on class vehicle-arm-1g (3 devices)"
    )
    assert reason_of(choice, "fp16") == "fp16: needs CPU feature avx512_fp16, missing on 2 of 3 devices (gw-1, gw-2)"
    assert (
        reason_of(choice, "int4-weight")
        == "int4-weight: accuracy drop 0.034 on slot_f1 > max 0.010 (best 0.918 by fp32)"
    )
    assert reason_of(choice, "fp32").startswith("fp32: peak memory 212.0 MiB > budget 128.0 MiB (class vehicle-arm-1g;")
    assert reason_of(choice, "int8-static-qdq") == "int8-static-qdq: slice gap 0.120 > max 0.050"
    assert choice.chosen == "int8-dynamic" and not choice.fallback_no_evidence
    assert choice.summary.startswith(
        "int8-dynamic for class vehicle-arm-1g: most accurate within budget (p95 4.10 ms <= 20 ms, 3 devices"
    )
    assert choice.ranked[0].score == pytest.approx((0.94 + 0.91) / 2)


def test_every_violation_is_listed_and_close_calls_show_enough_digits() -> None:
    policy = Policy(CLASS, {TASK: 20.0}, max_slice_gap=0.05)
    builds = [nlu("fp32", 10, 0.9, 0.9, gap=None), nlu("int8-dynamic", 5, 0.9, 0.9)]
    evidence = {
        "fp32": measured("fp32", 20.04, acceptance_failures=1, failure_reason="output shape mismatch"),
        "int8-dynamic": measured("int8-dynamic", 3.0, acceptance_failures=2, devices=2),
    }
    choice = select(policy, builds, evidence)

    assert reason_of(choice, "fp32") == (
        f"fp32: p95 20.04 ms > budget 20 ms on class {CLASS} (3 devices); "
        "slice gap not measured; class requires max 0.050; "
        "acceptance test failed on 1 of 3 devices: output shape mismatch"
    )
    assert reason_of(choice, "int8-dynamic") == "int8-dynamic: acceptance test failed on 2 of 2 devices"
    assert choice.chosen is None
    assert choice.summary.startswith(f"no variant of this version complies with class {CLASS}: fp32: p95 20.04 ms")


def test_without_any_evidence_the_most_accurate_build_that_fits_is_chosen_with_fp32_first_among_equals() -> None:
    policy = Policy(CLASS, {TASK: 20.0}, memory_budget_bytes=300 * MIB)
    builds = [
        nlu("int8-dynamic", 50, 0.93, 0.90),
        nlu("fp16", 100, 0.95, 0.91),
        nlu("fp32", 200, 0.95, 0.91),
        nlu("huge", 400, 0.99, 0.99),
    ]
    choice = select(policy, builds, {})

    assert choice.chosen == "fp32" and choice.fallback_no_evidence
    assert [c.variant for c in choice.ranked] == ["fp32", "fp16", "int8-dynamic"]
    assert choice.summary == (
        f"no evidence yet on class {CLASS}; chose fp32, the most accurate build that fits, until benchmarks report"
    )
    assert reason_of(choice, "huge").startswith("huge: peak memory 400.0 MiB > budget 300.0 MiB")


def test_a_measured_compliant_variant_beats_a_more_accurate_unmeasured_one() -> None:
    policy = Policy(CLASS, {TASK: 20.0})
    builds = [nlu("fp32", 200, 0.95, 0.92), nlu("int8-dynamic", 50, 0.93, 0.90)]

    choice = select(policy, builds, {"int8-dynamic": measured("int8-dynamic", 8.0)})
    assert choice.chosen == "int8-dynamic" and not choice.fallback_no_evidence
    assert [c.variant for c in choice.ranked] == ["int8-dynamic", "fp32"]
    assert "not measured on class edge-small" in choice.ranked[1].reason

    slow = select(policy, builds, {"int8-dynamic": measured("int8-dynamic", 25.0)})
    assert slow.chosen == "fp32" and slow.fallback_no_evidence
    assert slow.summary.startswith(f"no measured variant complies with class {CLASS}; chose fp32")


def test_without_a_latency_budget_most_accurate_needs_no_evidence() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92), nlu("int8-dynamic", 50, 0.93, 0.90)]
    choice = select(Policy(CLASS), builds, {"int8-dynamic": measured("int8-dynamic", 8.0)})
    assert choice.chosen == "fp32" and not choice.fallback_no_evidence
    assert choice.summary.startswith(f"fp32 for class {CLASS}: most accurate of 2 compliant")


def test_fastest_goes_by_measured_latency_not_by_name() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92), nlu("int8-dynamic", 50, 0.93, 0.90), nlu("fp16", 100, 0.95, 0.92)]
    evidence = {"fp32": measured("fp32", 3.0), "int8-dynamic": measured("int8-dynamic", 6.5)}
    choice = select(Policy(CLASS, objective="fastest"), builds, evidence)

    assert [c.variant for c in choice.ranked] == ["fp32", "int8-dynamic", "fp16"]
    assert [c.score for c in choice.ranked[:2]] == [3.0, 6.5] and math.isnan(choice.ranked[2].score)
    assert not choice.fallback_no_evidence


def test_smallest_goes_by_bundle_size_then_memory() -> None:
    """Smallest means the smallest bundle (download and disk), whatever the noisy RSS figures say; memory
    is bounded by the memory budget and only breaks ties."""
    builds = [
        nlu("fp32", 200, 0.95, 0.92),
        nlu("int8-dynamic", 50, 0.93, 0.90, build_peak_rss_bytes=300 * MIB),
        nlu("int4-weight", 30, 0.90, 0.88),
        nlu("int8-static-qop", 30, 0.91, 0.88),
    ]
    evidence = {
        "fp32": measured("fp32", 9.0, rss_mib=150),
        "int4-weight": measured("int4-weight", 9.0, rss_mib=40),
        "int8-static-qop": measured("int8-static-qop", 9.0, rss_mib=35),
    }
    choice = select(Policy(CLASS, objective="smallest"), builds, evidence)

    assert [(c.variant, c.score) for c in choice.ranked] == [
        ("int8-static-qop", 30 * MIB),  # as small as int4-weight, less memory
        ("int4-weight", 30 * MIB),
        ("int8-dynamic", 50 * MIB),  # 300 MiB build-machine RSS does not matter without a budget
        ("fp32", 200 * MIB),
    ]
    assert "bundle 30.0 MiB" in choice.summary


def test_a_device_cap_tighter_than_the_class_budget_applies() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92), nlu("int8-dynamic", 50, 0.93, 0.90)]
    devices = [Device("gw-1", model_memory_budget_bytes=100 * MIB), Device("gw-2", model_memory_budget_bytes=0)]
    choice = select(Policy(CLASS, memory_budget_bytes=GIB), builds, {}, devices)

    assert choice.chosen == "int8-dynamic"
    assert reason_of(choice, "fp32") == (
        "fp32: peak memory 200.0 MiB > budget 100.0 MiB"
        " (device gw-1's model memory cap; file size; no peak RSS measured)"
    )


def test_device_incompatibility_is_counted_and_versions_compare_numerically() -> None:
    needs = Requirements(
        min_onnxruntime_version="1.17.0",
        execution_providers=("XnnpackExecutionProvider",),
        cpu_features=("neon",),
        min_memory_bytes=GIB,
        architectures=("aarch64",),
    )
    build = replace(nlu("int8-dynamic", 50, 0.93, 0.90), requirements=needs)
    fine = dict(cpu_flags={"neon"}, execution_providers=("XnnpackExecutionProvider",), memory_total_bytes=2 * GIB)
    devices = [
        Device("gw-1", architecture="arm64", onnxruntime_version="1.20.1", **fine),  # type: ignore[arg-type]
        Device("gw-2", architecture="aarch64", onnxruntime_version="1.9.0", **fine),  # type: ignore[arg-type]
        Device(
            "gw-3",
            architecture="x86_64",
            cpu_flags=frozenset({"avx2"}),
            onnxruntime_version="",
            memory_total_bytes=GIB // 2,
        ),
    ]
    choice = select(Policy(CLASS), [build], {}, devices)

    assert choice.chosen is None
    assert reason_of(choice, "int8-dynamic") == (
        "int8-dynamic: needs architecture aarch64, not met on 1 of 3 devices (gw-3 x86_64); "
        "needs CPU feature neon, missing on 1 of 3 devices (gw-3); "
        "needs onnxruntime >= 1.17.0, older on 2 of 3 devices (gw-2 1.9.0, gw-3 unknown); "
        "needs execution provider XnnpackExecutionProvider, missing on 1 of 3 devices (gw-3); "
        "needs 1.00 GiB device memory, less on 1 of 3 devices (gw-3 512.0 MiB)"
    )
    assert select(Policy(CLASS), [build], {}, devices[:1]).chosen == "int8-dynamic"
    assert select(Policy(CLASS), [build], {}).chosen == "int8-dynamic"  # no known devices: not checked


def test_a_variant_missing_a_quality_metric_is_rejected_when_drops_are_bounded() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92), Build("int8-dynamic", TASK, 50 * MIB, {"intent_accuracy": 0.95}, 0.0, REF)]
    choice = select(Policy(CLASS, max_accuracy_drop=0.05), builds, {})
    assert reason_of(choice, "int8-dynamic") == "int8-dynamic: does not report slot_f1 (best 0.920 by fp32)"
    assert select(Policy(CLASS, objective="smallest"), builds, {}).chosen == "int8-dynamic"


def test_evidence_for_an_unpublished_variant_is_ignored() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92)]
    choice = select(Policy(CLASS, {TASK: 20.0}), builds, {"int8-dynamic": measured("int8-dynamic", 1.0)})
    assert choice.chosen == "fp32" and choice.fallback_no_evidence
    assert choice.summary.startswith(f"no evidence yet on class {CLASS}")


def test_unknown_objective_is_an_error_that_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown objective 'cheapest'; valid: most-accurate, fastest, smallest"):
        select(Policy(CLASS, objective="cheapest"), [nlu("fp32", 1, 0.9, 0.9)], {})


def test_duplicate_variants_and_empty_builds_are_errors() -> None:
    with pytest.raises(ValueError, match="duplicate variant 'fp32'"):
        select(Policy(CLASS), [nlu("fp32", 1, 0.9, 0.9), nlu("fp32", 2, 0.8, 0.8)], {})
    with pytest.raises(ValueError, match="no builds to choose from"):
        select(Policy(CLASS), [], {})


@pytest.mark.parametrize(
    ("evidence", "message"),
    [
        ({"fp32": measured("int8", 1.0)}, "filed under 'fp32' is for variant 'int8'"),
        ({"fp32": measured("fp32", math.nan)}, "must be a finite number >= 0"),
        ({"fp32": measured("fp32", 1.0, devices=0)}, "comes from 0 devices"),
    ],
)
def test_malformed_evidence_is_an_error(evidence: dict[str, Measurement], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select(Policy(CLASS), [nlu("fp32", 1, 0.9, 0.9)], evidence)


def test_explain_lines_give_the_choice_then_ranked_then_rejected() -> None:
    builds = [nlu("fp32", 200, 0.95, 0.92), nlu("int8-dynamic", 50, 0.93, 0.90), nlu("int4-weight", 30, 0.80, 0.70)]
    choice = select(Policy(CLASS, max_accuracy_drop=0.05), builds, {})
    lines = explain_lines(choice)

    assert lines[0] == choice.summary
    assert lines[1] == "ranked:"
    assert lines[2].startswith("  1. fp32") and "score        0.935" in lines[2]
    assert lines[3].startswith("  2. int8-dynamic")
    assert lines[4:] == ["rejected:", "  " + reason_of(choice, "int4-weight")]


def test_limits_are_inclusive_even_when_float_subtraction_is_noisy() -> None:
    """p95 == budget, memory == budget and a drop of exactly the max (0.95 - 0.94 is 0.010000000000000009) pass."""
    policy = Policy(CLASS, {TASK: 20.0}, memory_budget_bytes=40 * MIB, max_accuracy_drop=0.01, max_slice_gap=0.02)
    builds = [nlu("fp32", 30, 0.95, 0.95, gap=0.02), nlu("int8-dynamic", 20, 0.94, 0.94, gap=0.02)]
    evidence = {"fp32": measured("fp32", 20.0, rss_mib=40), "int8-dynamic": measured("int8-dynamic", 20.0, rss_mib=40)}
    choice = select(policy, builds, evidence)

    assert [c.variant for c in choice.ranked] == ["fp32", "int8-dynamic"] and choice.rejected == ()


def test_accuracy_closer_than_a_tenth_of_a_point_is_a_tie_decided_by_speed() -> None:
    """int8-dynamic's slot F1 0.00003 above fp32's does not make it "more accurate"; fp32 is faster here."""
    builds = [nlu("fp32", 200, 0.99129, 0.878664), nlu("int8-dynamic", 50, 0.99129, 0.878697)]
    evidence = {"fp32": measured("fp32", 0.13), "int8-dynamic": measured("int8-dynamic", 0.30)}
    choice = select(Policy(CLASS, latency_budgets_ms={TASK: 5.0}), builds, evidence)
    assert choice.chosen == "fp32"

    clearly_better = [nlu("fp32", 200, 0.99129, 0.878664), nlu("int8-dynamic", 50, 0.99129, 0.881)]
    assert select(Policy(CLASS, latency_budgets_ms={TASK: 5.0}), clearly_better, evidence).chosen == "int8-dynamic"
