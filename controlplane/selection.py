"""The variant selector: which published variant of one model version a device class should run.

A pure function of its inputs (`select`): no I/O, no store, no clock, no randomness. It judges every
variant against the class's hard constraints, ranks the compliant ones by the class's objective and
explains every decision with the numbers that made it.

Invariants:

- Every build appears exactly once in the result: in `Choice.ranked` (complies) or `Choice.rejected`.
- A variant that violates a hard constraint is never chosen; each violation is in its `Candidate.reason`.
- If any variant complies, one is chosen and `chosen == ranked[0].variant`. If none complies, `chosen` is
  None, `ranked` is empty and the summary says why; that case never raises.
- A variant is never preferred for its name: ranking uses measured evidence and build metrics only. The one
  exception is the fallback tie-break (fp32, the reference, before others of equal quality). The final
  tie-break by name exists only to make the order deterministic.
- Latency is judged only from evidence measured on the class (`Measurement`); a build machine's latency is
  shown, never used. A variant that needs evidence (its task has a latency budget, or the objective is
  fastest) but has none is "unmeasured": it is not rejected for latency, but it ranks after every compliant
  variant that does not need or has evidence, and when it wins `fallback_no_evidence` is True.
- A device fact that is unknown (empty architecture, version or providers; zero memory) does not satisfy a
  requirement on it.
- Invalid input (unknown objective, duplicate variants, no builds, non-finite numbers) raises ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

OBJECTIVES = ("most-accurate", "fastest", "smallest")

REFERENCE_VARIANT = "fp32"
"""The reference variant: preferred among equals only in the no-evidence fallback."""

QUALITY_RESOLUTION = 0.001
"""Quality metrics closer than this (0.1 point) rank as equal: an int8 build whose slot F1 is 0.00003
above fp32's is not "more accurate", it is the same model measured on a finite evaluation set."""

TOLERANCE = 1e-9
"""Slack for comparing accuracy drops and slice gaps, which are differences of floats."""

_MAX_LISTED_DEVICES = 5
_OBJECTIVE_PHRASES = {"most-accurate": "most accurate", "fastest": "fastest", "smallest": "smallest"}
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}
_VERSION = re.compile(r"\s*v?(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class Policy:
    """A device class's policy."""

    class_name: str
    latency_budgets_ms: Mapping[str, float] = field(default_factory=dict)
    """task -> p95 budget in ms; a task that is missing has no budget."""
    memory_budget_bytes: int = 0
    """0 = none. Compared with the variant's memory figure (see `memory_figure`)."""
    max_accuracy_drop: float | None = None
    """Absolute (0.01 = 1 point) vs the best variant of this version, per quality metric."""
    max_slice_gap: float | None = None
    """The build's max_slice_gap must be <= this; an unmeasured gap fails it."""
    objective: str = "most-accurate"
    """most-accurate: highest mean quality; fastest: lowest measured p95; smallest: smallest bundle (what
    a device downloads and stores), then least memory. Memory itself is bounded by the memory budget:
    peak RSS of tiny models is mostly runtime overhead and too noisy to rank by."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "latency_budgets_ms", MappingProxyType(dict(self.latency_budgets_ms)))


@dataclass(frozen=True)
class Requirements:
    """What a bundle's manifest requires of the device that runs it."""

    min_onnxruntime_version: str = ""
    execution_providers: tuple[str, ...] = ()
    """Any one of these must be available; empty (or only "") = no requirement."""
    cpu_features: tuple[str, ...] = ()
    """All must be present."""
    min_memory_bytes: int = 0
    architectures: tuple[str, ...] = ()
    """Empty = any."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "execution_providers", tuple(self.execution_providers))
        object.__setattr__(self, "cpu_features", tuple(self.cpu_features))
        object.__setattr__(self, "architectures", tuple(self.architectures))


@dataclass(frozen=True)
class Device:
    """The facts about one device that matter for selection."""

    device_id: str
    architecture: str = ""
    cpu_flags: frozenset[str] = frozenset()
    onnxruntime_version: str = ""
    execution_providers: tuple[str, ...] = ()
    memory_total_bytes: int = 0
    model_memory_budget_bytes: int = 0
    """The device's own cap on model memory; 0 = none."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "cpu_flags", frozenset(self.cpu_flags))
        object.__setattr__(self, "execution_providers", tuple(self.execution_providers))


@dataclass(frozen=True)
class Build:
    """One published variant of the model version."""

    variant: str
    task: str
    total_bytes: int
    quality: Mapping[str, float]
    """Overall quality metrics from the build; higher is better."""
    max_slice_gap: float | None
    """None = not measured."""
    requirements: Requirements
    build_latency_p95_ms: float = 0.0
    """Measured on the build machine: shown only, never evidence for a class."""
    build_peak_rss_bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "quality", MappingProxyType(dict(self.quality)))


@dataclass(frozen=True)
class Measurement:
    """Evidence for one variant on this class."""

    variant: str
    devices: int
    latency_p50_ms: float
    latency_p95_ms: float
    load_time_ms: float
    peak_rss_bytes: int
    acceptance_failures: int = 0
    failure_reason: str = ""
    source: str = "benchmark"


@dataclass(frozen=True)
class Candidate:
    """One variant's verdict."""

    variant: str
    eligible: bool
    reason: str
    """Why it was rejected, with numbers; for an eligible one, why it ranks where it does."""
    score: float
    """The objective's value (mean quality, p95 ms or memory bytes); nan when not applicable."""


@dataclass(frozen=True)
class Choice:
    """The selector's answer for one class."""

    class_name: str
    chosen: str | None
    ranked: tuple[Candidate, ...]
    """Eligible variants, best first."""
    rejected: tuple[Candidate, ...]
    fallback_no_evidence: bool
    summary: str


@dataclass(frozen=True)
class _Verdict:
    build: Build
    measurement: Measurement | None
    problems: tuple[str, ...]
    unmeasured: bool
    quality: float
    """Mean of the quality metrics; nan when the build reports none."""
    memory: int
    memory_source: str

    @property
    def quality_key(self) -> float:
        """Mean quality on a grid of ``QUALITY_RESOLUTION``: closer than that counts as equal, so the
        next criterion (p95, then size) decides between builds whose accuracy differs by noise."""
        return -math.inf if math.isnan(self.quality) else round(self.quality / QUALITY_RESOLUTION)


@dataclass(frozen=True)
class _MemoryBudget:
    limit: int
    """0 = none."""
    source: str


def select(
    policy: Policy,
    builds: Sequence[Build],
    evidence: Mapping[str, Measurement],
    devices: Sequence[Device] = (),
) -> Choice:
    """Pick the variant that class `policy.class_name` should run, and say why.

    `evidence` maps a variant to what was measured for it on this class; evidence for a variant that is not
    among `builds` is ignored. `devices` are the class's known devices; when empty the runtime
    compatibility checks are skipped.
    """
    _validate_policy(policy)
    _validate_builds(builds)
    known = {build.variant for build in builds}
    measured = {variant: m for variant, m in evidence.items() if variant in known}
    for variant, measurement in measured.items():
        _validate_measurement(variant, measurement)

    best = _best_quality(builds)
    budget = _memory_budget(policy, devices)
    verdicts = [_judge(build, policy, measured.get(build.variant), best, budget, devices) for build in builds]

    eligible = sorted((v for v in verdicts if not v.problems), key=lambda v: _rank_key(v, policy.objective))
    rejected = tuple(_rejected_candidate(v) for v in verdicts if v.problems)
    ranked = tuple(_ranked_candidate(v, i, len(eligible), policy, budget) for i, v in enumerate(eligible, 1))
    if not eligible:
        reasons = " | ".join(c.reason for c in rejected)
        summary = f"no variant of this version complies with class {policy.class_name}: {reasons}"
        return Choice(policy.class_name, None, (), rejected, False, summary)

    winner = eligible[0]
    any_evidence = any(v.measurement is not None for v in verdicts)
    summary = _summary(winner, policy, budget, len(eligible), len(verdicts), any_evidence)
    return Choice(policy.class_name, winner.build.variant, ranked, rejected, winner.unmeasured, summary)


def explain_lines(choice: Choice) -> list[str]:
    """Human-readable lines for the CLI: the choice, then the ranked variants with scores, then the rejected."""
    lines = [choice.summary]
    if choice.fallback_no_evidence:
        lines.append("(fallback: chosen without latency evidence on this class)")
    if choice.ranked:
        lines.append("ranked:")
        lines.extend(
            f"  {i}. {c.variant:<18} score {_score_text(c.score):>12}  {c.reason}"
            for i, c in enumerate(choice.ranked, 1)
        )
    if choice.rejected:
        lines.append("rejected:")
        lines.extend(f"  {c.reason}" for c in choice.rejected)
    return lines


def memory_figure(build: Build, measurement: Measurement | None) -> int:
    """The memory a variant is judged by: peak RSS (evidence, else the build's), and at least its file bytes."""
    return _memory_figure(build, measurement)[0]


def parse_version(text: str) -> tuple[int, ...] | None:
    """The leading numeric part of a version ("1.20.1+cu118" -> (1, 20, 1)); None when there is none."""
    match = _VERSION.match(text)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


# --- validation ---------------------------------------------------------------------------------------------


def _validate_policy(policy: Policy) -> None:
    if policy.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {policy.objective!r}; valid: {', '.join(OBJECTIVES)}")
    for task, budget in policy.latency_budgets_ms.items():
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"class {policy.class_name}: latency budget for {task} must be > 0 ms, got {budget}")
    if policy.memory_budget_bytes < 0:
        raise ValueError(f"class {policy.class_name}: memory budget must be >= 0, got {policy.memory_budget_bytes}")
    for name in ("max_accuracy_drop", "max_slice_gap"):
        limit = getattr(policy, name)
        if limit is not None and not (math.isfinite(limit) and limit >= 0):
            raise ValueError(f"class {policy.class_name}: {name} must be a finite number >= 0, got {limit}")


def _validate_builds(builds: Sequence[Build]) -> None:
    if not builds:
        raise ValueError("no builds to choose from")
    seen: set[str] = set()
    for build in builds:
        if not build.variant:
            raise ValueError("a build has an empty variant name")
        if build.variant in seen:
            raise ValueError(f"duplicate variant {build.variant!r} in builds")
        seen.add(build.variant)
        if build.total_bytes < 0 or build.build_peak_rss_bytes < 0:
            raise ValueError(f"{build.variant}: sizes must be >= 0")
        for metric, value in build.quality.items():
            if not math.isfinite(value):
                raise ValueError(f"{build.variant}: quality metric {metric} is not a finite number: {value}")
        if build.max_slice_gap is not None and not math.isfinite(build.max_slice_gap):
            raise ValueError(f"{build.variant}: max_slice_gap is not a finite number: {build.max_slice_gap}")


def _validate_measurement(variant: str, m: Measurement) -> None:
    if m.variant != variant:
        raise ValueError(f"evidence filed under {variant!r} is for variant {m.variant!r}")
    if m.devices < 1:
        raise ValueError(f"evidence for {variant} comes from {m.devices} devices; it needs at least 1")
    if not 0 <= m.acceptance_failures <= m.devices:
        raise ValueError(f"evidence for {variant}: {m.acceptance_failures} acceptance failures on {m.devices} devices")
    for name in ("latency_p50_ms", "latency_p95_ms", "load_time_ms"):
        value = getattr(m, name)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"evidence for {variant}: {name} must be a finite number >= 0, got {value}")
    if m.peak_rss_bytes < 0:
        raise ValueError(f"evidence for {variant}: peak_rss_bytes must be >= 0, got {m.peak_rss_bytes}")


# --- hard constraints ---------------------------------------------------------------------------------------


def _judge(
    build: Build,
    policy: Policy,
    m: Measurement | None,
    best: Mapping[str, tuple[float, str]],
    budget: _MemoryBudget,
    devices: Sequence[Device],
) -> _Verdict:
    memory, memory_source = _memory_figure(build, m)
    problems = [
        *_device_problems(build.requirements, devices),
        *_memory_problems(memory, memory_source, budget),
        *_latency_problems(build, policy, m),
        *_accuracy_problems(build, policy, best),
        *_slice_gap_problems(build, policy),
        *_acceptance_problems(m),
    ]
    needs_evidence = build.task in policy.latency_budgets_ms or policy.objective == "fastest"
    quality = math.fsum(build.quality.values()) / len(build.quality) if build.quality else math.nan
    return _Verdict(build, m, tuple(problems), needs_evidence and m is None, quality, memory, memory_source)


def _device_problems(req: Requirements, devices: Sequence[Device]) -> list[str]:
    if not devices:
        return []
    problems: list[str] = []
    architectures = [a for a in req.architectures if a]
    if architectures:
        wanted = {_arch(a) for a in architectures}
        bad = [(d, d.architecture or "unknown") for d in devices if _arch(d.architecture) not in wanted]
        if bad:
            problems.append(f"needs architecture {' or '.join(architectures)}, not met on {_on(bad, devices)}")
    for feature in dict.fromkeys(f for f in req.cpu_features if f):
        bad = [(d, "") for d in devices if feature.lower() not in {flag.lower() for flag in d.cpu_flags}]
        if bad:
            problems.append(f"needs CPU feature {feature}, missing on {_on(bad, devices)}")
    problems.extend(_runtime_problems(req, devices))
    if req.min_memory_bytes > 0:
        bad = [(d, _bytes(d.memory_total_bytes) if d.memory_total_bytes else "unknown") for d in devices]
        bad = [(d, has) for d, has in bad if d.memory_total_bytes < req.min_memory_bytes]
        if bad:
            problems.append(f"needs {_bytes(req.min_memory_bytes)} device memory, less on {_on(bad, devices)}")
    return problems


def _runtime_problems(req: Requirements, devices: Sequence[Device]) -> list[str]:
    problems: list[str] = []
    minimum = req.min_onnxruntime_version.strip()
    if minimum:
        need = parse_version(minimum)
        if need is None:
            problems.append(f"unreadable min_onnxruntime_version {minimum!r}")
        else:
            bad = [(d, d.onnxruntime_version or "unknown") for d in devices if not _version_at_least(d, need)]
            if bad:
                problems.append(f"needs onnxruntime >= {minimum}, older on {_on(bad, devices)}")
    providers = [p for p in req.execution_providers if p]
    if providers:
        bad = [(d, "") for d in devices if not set(providers) & set(d.execution_providers)]
        if bad:
            wanted = providers[0] if len(providers) == 1 else "one of " + ", ".join(providers)
            problems.append(f"needs execution provider {wanted}, missing on {_on(bad, devices)}")
    return problems


def _version_at_least(device: Device, need: tuple[int, ...]) -> bool:
    have = parse_version(device.onnxruntime_version)
    if have is None:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def _memory_budget(policy: Policy, devices: Sequence[Device]) -> _MemoryBudget:
    limits = [(policy.memory_budget_bytes, f"class {policy.class_name}")]
    limits += [(d.model_memory_budget_bytes, f"device {d.device_id}'s model memory cap") for d in devices]
    nonzero = [(limit, source) for limit, source in limits if limit > 0]
    if not nonzero:
        return _MemoryBudget(0, "")
    return _MemoryBudget(*min(nonzero, key=lambda pair: pair[0]))


def _memory_figure(build: Build, m: Measurement | None) -> tuple[int, str]:
    if m is not None and m.peak_rss_bytes > 0:
        rss, source = m.peak_rss_bytes, f"peak RSS on {_count(m.devices, 'device')}"
    elif build.build_peak_rss_bytes > 0:
        rss, source = build.build_peak_rss_bytes, "peak RSS on the build machine"
    else:
        return build.total_bytes, "file size; no peak RSS measured"
    if build.total_bytes > rss:
        return build.total_bytes, f"file size, above its {source}"
    return rss, source


def _memory_problems(memory: int, source: str, budget: _MemoryBudget) -> list[str]:
    if budget.limit == 0 or memory <= budget.limit:
        return []
    have, limit = _bytes(memory), _bytes(budget.limit)
    if have == limit:
        have, limit = f"{memory} B", f"{budget.limit} B"
    return [f"peak memory {have} > budget {limit} ({budget.source}; {source})"]


def _latency_problems(build: Build, policy: Policy, m: Measurement | None) -> list[str]:
    budget = policy.latency_budgets_ms.get(build.task)
    if budget is None or m is None or m.latency_p95_ms <= budget:
        return []
    p95 = _above(m.latency_p95_ms, budget)
    return [f"p95 {p95} ms > budget {budget:g} ms on class {policy.class_name} ({_count(m.devices, 'device')})"]


def _best_quality(builds: Sequence[Build]) -> dict[str, tuple[float, str]]:
    best: dict[str, tuple[float, str]] = {}
    for build in builds:
        for metric, value in build.quality.items():
            if metric not in best or value > best[metric][0]:
                best[metric] = (value, build.variant)
    return best


def _accuracy_problems(build: Build, policy: Policy, best: Mapping[str, tuple[float, str]]) -> list[str]:
    limit = policy.max_accuracy_drop
    if limit is None:
        return []
    problems = [
        f"does not report {metric} (best {value:.3f} by {by})"
        for metric, (value, by) in sorted(best.items())
        if metric not in build.quality
    ]
    drops = sorted(((best[metric][0] - value, metric) for metric, value in build.quality.items()), reverse=True)
    if drops and drops[0][0] > limit + TOLERANCE:
        drop, metric = drops[0]
        value, by = best[metric]
        problems.append(
            f"accuracy drop {_above(drop, limit, 3)} on {metric} > max {_fixed(limit, 3)} (best {value:.3f} by {by})"
        )
    return problems


def _slice_gap_problems(build: Build, policy: Policy) -> list[str]:
    limit = policy.max_slice_gap
    if limit is None:
        return []
    if build.max_slice_gap is None:
        return [f"slice gap not measured; class requires max {_fixed(limit, 3)}"]
    if build.max_slice_gap > limit + TOLERANCE:
        return [f"slice gap {_above(build.max_slice_gap, limit, 3)} > max {_fixed(limit, 3)}"]
    return []


def _acceptance_problems(m: Measurement | None) -> list[str]:
    if m is None or m.acceptance_failures == 0:
        return []
    problem = f"acceptance test failed on {m.acceptance_failures} of {_count(m.devices, 'device')}"
    return [f"{problem}: {m.failure_reason}" if m.failure_reason else problem]


# --- ranking and explanation --------------------------------------------------------------------------------


def _rank_key(v: _Verdict, objective: str) -> tuple[object, ...]:
    """Sort key, smaller first. Unmeasured variants form a second tier ordered by the fallback rule."""
    build = v.build
    if v.unmeasured:
        return (1, -v.quality_key, build.variant != REFERENCE_VARIANT, build.total_bytes, build.variant)
    p95 = v.measurement.latency_p95_ms if v.measurement is not None else math.inf
    if objective == "fastest":
        return (0, p95, -v.quality_key, build.total_bytes, build.variant)
    if objective == "smallest":
        return (0, build.total_bytes, v.memory, -v.quality_key, build.variant)
    return (0, -v.quality_key, p95, build.total_bytes, build.variant)


def _score(v: _Verdict, objective: str) -> float:
    if objective == "fastest":
        return v.measurement.latency_p95_ms if v.measurement is not None else math.nan
    if objective == "smallest":
        return float(v.build.total_bytes)
    return v.quality


def _rejected_candidate(v: _Verdict) -> Candidate:
    return Candidate(v.build.variant, False, f"{v.build.variant}: {'; '.join(v.problems)}", math.nan)


def _ranked_candidate(v: _Verdict, rank: int, of: int, policy: Policy, budget: _MemoryBudget) -> Candidate:
    parts = [_quality_text(v), _latency_text(v, policy), _memory_text(v, budget)]
    order = policy.objective
    if v.unmeasured:
        order = "no-evidence fallback"
        parts.append(
            f"not measured on class {policy.class_name}: ranked after measured variants,"
            f" by quality, then {REFERENCE_VARIANT} first, then size"
        )
    why = f"{v.build.variant}: rank {rank} of {of} by {order}: {'; '.join(p for p in parts if p)}"
    return Candidate(v.build.variant, True, why, _score(v, policy.objective))


def _summary(
    winner: _Verdict, policy: Policy, budget: _MemoryBudget, eligible: int, total: int, any_evidence: bool
) -> str:
    variant, name = winner.build.variant, policy.class_name
    if winner.unmeasured and not any_evidence:
        return (
            f"no evidence yet on class {name}; chose {variant}, the most accurate build that fits,"
            " until benchmarks report"
        )
    if winner.unmeasured:
        return (
            f"no measured variant complies with class {name}; chose {variant}, the most accurate unmeasured build"
            " that fits, until benchmarks report"
        )
    latency_budget = policy.latency_budgets_ms.get(winner.build.task)
    within = "within budget" if latency_budget is not None or budget.limit else f"of {eligible} compliant"
    details = [_latency_text(winner, policy, short=True), _objective_text(winner, policy.objective, budget)]
    details.append(f"{eligible} of {total} variants comply")
    shown = "; ".join(d for d in details if d)
    return f"{variant} for class {name}: {_OBJECTIVE_PHRASES[policy.objective]} {within} ({shown})"


def _objective_text(v: _Verdict, objective: str, budget: _MemoryBudget) -> str:
    if objective == "smallest":
        return f"bundle {_bytes(v.build.total_bytes)}; {_memory_text(v, budget)}"
    if objective == "most-accurate":
        return _quality_text(v, short=True)
    return ""


def _quality_text(v: _Verdict, short: bool = False) -> str:
    if not v.build.quality:
        return "no quality metrics reported"
    if short:
        return f"mean quality {v.quality:.3f}"
    metrics = ", ".join(f"{metric} {value:.3f}" for metric, value in sorted(v.build.quality.items()))
    return f"mean quality {v.quality:.3f} ({metrics})"


def _latency_text(v: _Verdict, policy: Policy, short: bool = False) -> str:
    m = v.measurement
    if m is None:
        return ""
    budget = policy.latency_budgets_ms.get(v.build.task)
    devices = _count(m.devices, "device")
    if short:
        bound = f" <= {budget:g} ms" if budget is not None else ""
        return f"p95 {_ms(m.latency_p95_ms)} ms{bound}, {devices}"
    bound = f" <= budget {budget:g} ms" if budget is not None else ""
    return f"p95 {_ms(m.latency_p95_ms)} ms{bound} ({devices}, {m.source})"


def _ms(value: float) -> str:
    """Milliseconds with the places a reader needs: '163.8', '4.12', '0.013'."""
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _memory_text(v: _Verdict, budget: _MemoryBudget) -> str:
    bound = f" <= budget {_bytes(budget.limit)}" if budget.limit else ""
    return f"memory {_bytes(v.memory)}{bound} ({v.memory_source})"


# --- formatting ---------------------------------------------------------------------------------------------


def _on(bad: Sequence[tuple[Device, str]], devices: Sequence[Device]) -> str:
    """'2 of 3 devices (gw-1, gw-2)', with each device's own value when there is one."""
    named = [f"{d.device_id} {detail}" if detail else d.device_id for d, detail in bad[:_MAX_LISTED_DEVICES]]
    if len(bad) > _MAX_LISTED_DEVICES:
        named.append(f"and {len(bad) - _MAX_LISTED_DEVICES} more")
    return f"{len(bad)} of {_count(len(devices), 'device')} ({', '.join(named)})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _above(value: float, limit: float, decimals: int = 1) -> str:
    """`value` with enough decimals that it visibly exceeds `limit` (20.04 vs 20 -> '20.04', not '20.0')."""
    for places in range(decimals, 10):
        text = f"{value:.{places}f}"
        if float(text) > limit + TOLERANCE:
            return text
    return repr(value)


def _fixed(value: float, decimals: int) -> str:
    """`value` with at least `decimals` places, more when needed to show it exactly (0.0125 -> '0.0125')."""
    for places in range(decimals, 10):
        text = f"{value:.{places}f}"
        if float(text) == value:
            return text
    return repr(value)


def _bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.1f} KiB"
    if n < 1024**3:
        return f"{n / 1024**2:.1f} MiB"
    return f"{n / 1024**3:.2f} GiB"


def _score_text(score: float) -> str:
    if math.isnan(score):
        return "n/a"
    if score.is_integer() and abs(score) >= 10_000:
        return str(int(score))
    return f"{score:.4g}"


def _arch(name: str) -> str:
    lowered = name.strip().lower()
    return _ARCH_ALIASES.get(lowered, lowered)
