"""Evidence and selection on the server: benchmark jobs for devices, the evidence matrix, and choosing
the variant each device class should run.

Flow: when a model version has two or more variants (on publish, when classes change, when a device
joins a class), ``plan`` gives each class's sample devices a benchmark job per variant. The devices
download the candidate, run the acceptance test and a latency benchmark without activating it, and
answer; ``record_result`` stores the answer. ``evidence`` folds the answers into the matrix
{variant} x {class}; ``choose`` feeds it, with the class policy, the device facts and the builds'
own metrics, to the pure selector (``controlplane.selection``).

Invariants:
- A result counts only from the device the job was given to (``complete_job`` checks); anything
  else is refused, logged and changes nothing.
- Per (variant, class) at most ``benchmark_sample_size`` devices hold a pending or answered job;
  a device that could not run its job (ok=False) or let it expire is replaced by another device of
  the class, never given the same variant twice.
- Planning runs under ``Services.job_lock``: two planners cannot give out the same job twice.
- A class cell is the median over its devices of each figure (p50, p95, load time, peak RSS), so one
  noisy device does not decide; the cell says how many devices it comes from.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
import statistics
from collections.abc import Iterable, Sequence

from controlplane import classes as class_spec
from controlplane import selection
from controlplane.errors import InvalidRequest, NotFoundError
from controlplane.fleet import facts_from_dict, timestamp
from controlplane.services.classes import current_classes
from controlplane.services.context import Services
from controlplane.store import DeviceRow, JobRow, ModelBuildRow
from controlplane.store import errors as store_errors
from protos.edgefleet.v1 import admin_pb2, agent_pb2, bundle_pb2, common_pb2

log = logging.getLogger("edgefleet.server.evidence")

MAX_REASON_CHARS = 1000
MAX_LATENCY_MS = 3_600_000.0
FIELD_WINDOW = dt.timedelta(days=7)


# --- builds and devices as the selector sees them --------------------------------------------------


def selector_builds(rows: Sequence[ModelBuildRow]) -> list[selection.Build]:
    """The variants of one version; quality metrics are those every variant reports (so that a metric
    only the reference build measured cannot reject the others)."""
    manifests = [bundle_pb2.BundleManifest.FromString(row.manifest) for row in rows]
    shared = set.intersection(*(set(m.metrics.overall) for m in manifests)) if manifests else set()
    builds = []
    for row, manifest in zip(rows, manifests, strict=True):
        req = manifest.requirements
        metrics = manifest.metrics
        builds.append(
            selection.Build(
                variant=row.variant,
                task=row.task,
                total_bytes=row.total_bytes,
                quality={k: float(v) for k, v in metrics.overall.items() if k in shared},
                max_slice_gap=float(metrics.max_slice_gap) if metrics.slices else None,
                requirements=selection.Requirements(
                    min_onnxruntime_version=req.min_onnxruntime_version,
                    execution_providers=tuple(req.execution_providers),
                    cpu_features=tuple(req.cpu_features),
                    min_memory_bytes=req.min_memory_bytes,
                    architectures=tuple(req.architectures),
                ),
                build_latency_p95_ms=float(metrics.latency_p95_ms),
                build_peak_rss_bytes=int(metrics.peak_rss_bytes),
            )
        )
    return builds


def selector_device(row: DeviceRow) -> selection.Device:
    facts = facts_from_dict(row.facts)
    return selection.Device(
        device_id=row.device_id,
        architecture=facts.architecture,
        cpu_flags=frozenset(facts.cpu_flags),
        onnxruntime_version=facts.onnxruntime_version,
        execution_providers=tuple(facts.execution_providers),
        memory_total_bytes=facts.memory_total_bytes,
        model_memory_budget_bytes=facts.model_memory_budget_bytes,
    )


def selector_policy(spec: class_spec.ClassSpec) -> selection.Policy:
    policy = spec.policy
    return selection.Policy(
        class_name=spec.name,
        latency_budgets_ms=dict(policy.latency_budgets_ms),
        memory_budget_bytes=policy.model_memory_budget_bytes,
        max_accuracy_drop=policy.max_accuracy_drop,
        max_slice_gap=policy.max_slice_gap,
        objective=policy.objective,
    )


async def version_builds(s: Services, name: str, version: int) -> list[ModelBuildRow]:
    """The variants of NAME:VERSION (0: the latest). Raises NotFoundError naming what exists."""
    rows = await s.db(s.store.get_builds, name, version or None)
    if not rows:
        latest = await s.db(s.store.latest_version, name)
        if latest is None:
            raise NotFoundError(f"model {name!r} has no published builds")
        raise NotFoundError(f"model {name!r} has no version {version} (the latest is {latest})")
    return rows


# --- benchmark jobs --------------------------------------------------------------------------------


def job_message(job: JobRow, runs: int, max_bytes: int) -> agent_pb2.ControlMessage:
    ref = common_pb2.ModelRef(
        name=job.name, version=job.version, variant=job.variant, manifest_sha256=job.manifest_sha256
    )
    benchmark = agent_pb2.BenchmarkJob(model=ref, runs=runs, warmup_runs=2, max_bytes=max_bytes)
    message = agent_pb2.Job(job_id=job.job_id, benchmark=benchmark)
    message.deadline.CopyFrom(timestamp(job.deadline))
    return agent_pb2.ControlMessage(job=message)


def _counts(job: JobRow) -> bool:
    """Whether a job fills a sample slot: pending, or answered with a result."""
    if job.state == "pending":
        return True
    return job.state == "done" and bool((job.result or {}).get("ok"))


async def plan(s: Services, name: str, version: int) -> list[JobRow]:
    """Give benchmark jobs for NAME:VERSION to sample devices of every class; returns the new jobs
    (also queued on the sessions of online devices)."""
    rows = await s.db(s.store.get_builds, name, version)
    if len(rows) < 2:
        return []
    async with s.job_lock:
        now = s.clock()
        await s.db(s.store.expire_jobs, now)
        classes = await current_classes(s)
        devices = [d for d in await s.db(s.store.list_devices) if d.revoked_at is None]
        existing = await s.db(s.store.jobs_for_model, name, version)
        new = []
        for spec in classes:
            members = [d for d in devices if (d.device_class or class_spec.DEFAULT_CLASS.name) == spec.name]
            # Online devices answer soonest; then a stable order.
            members.sort(key=lambda d: (s.presence.session(d.device_id) is None, d.device_id))
            for build in rows:
                jobs = [j for j in existing if j.variant == build.variant and j.device_class == spec.name]
                tried = {j.device_id for j in jobs}
                missing = spec.policy.benchmark_sample_size - sum(1 for j in jobs if _counts(j))
                for device in members:
                    if missing <= 0:
                        break
                    if device.device_id in tried:
                        continue
                    new.append(
                        {
                            "job_id": f"bench-{secrets.token_hex(8)}",
                            "device_id": device.device_id,
                            "name": build.name,
                            "version": build.version,
                            "variant": build.variant,
                            "manifest_sha256": build.manifest_sha256,
                            "device_class": spec.name,
                            "deadline": now + dt.timedelta(seconds=s.config.benchmark_job_seconds),
                        }
                    )
                    missing -= 1
        created = await s.db(s.store.create_jobs, new, now)
    sizes = {row.variant: row.total_bytes for row in rows}
    for job in created:
        handle = s.presence.session(job.device_id)
        if handle is not None:
            try:
                handle.outbox.put_nowait(job_message(job, s.config.benchmark_runs, sizes[job.variant]))
            except Exception:  # noqa: BLE001 - a full outbox: the job goes out at the next Welcome
                log.warning("outbox of %s is full; job %s goes out when it reconnects", job.device_id, job.job_id)
    if created:
        log.info("gave %d benchmark job(s) for %s:%d", len(created), name, version)
    return created


async def plan_latest(s: Services) -> None:
    """Plan benchmarks for the latest version of every model (after classes or a device's class changed)."""
    names = sorted({row.name for row in await s.db(s.store.list_builds)})
    for name in names:
        latest = await s.db(s.store.latest_version, name)
        if latest is not None:
            await plan(s, name, latest)


async def pending_messages(s: Services, device_id: str) -> list[agent_pb2.ControlMessage]:
    """The jobs a device still owes an answer for, to send after its Welcome."""
    messages = []
    for job in await s.db(s.store.pending_jobs, device_id, s.clock()):
        sizes = {b.variant: b.total_bytes for b in await s.db(s.store.get_builds, job.name, job.version)}
        if job.variant in sizes:
            messages.append(job_message(job, s.config.benchmark_runs, sizes[job.variant]))
    return messages


def _finite(what: str, value: float, upper: float) -> float:
    if not math.isfinite(value) or value < 0 or value > upper:
        raise InvalidRequest(f"{what} {value!r} is out of range (0..{upper:g})")
    return float(value)


def result_dict(result: agent_pb2.JobResult) -> dict:
    """Validate a device's JobResult and turn it into what the store keeps. Raises InvalidRequest."""
    if len(result.error) > MAX_REASON_CHARS or len(result.benchmark.failure_reason) > MAX_REASON_CHARS:
        raise InvalidRequest(f"a job result's reason is longer than {MAX_REASON_CHARS} characters")
    b = result.benchmark
    if b.peak_rss_bytes > 2**50 or b.runs > 100_000 or b.threads > 4096:
        raise InvalidRequest("a job result's peak_rss_bytes, runs or threads is out of range")
    return {
        "ok": bool(result.ok),
        "error": result.error,
        "acceptance_passed": bool(b.acceptance_passed),
        "failure_reason": b.failure_reason,
        "latency_p50_ms": _finite("latency_p50_ms", b.latency_p50_ms, MAX_LATENCY_MS),
        "latency_p95_ms": _finite("latency_p95_ms", b.latency_p95_ms, MAX_LATENCY_MS),
        "load_time_ms": _finite("load_time_ms", b.load_time_ms, MAX_LATENCY_MS),
        "peak_rss_bytes": int(b.peak_rss_bytes),
        "runs": int(b.runs),
        "threads": int(b.threads),
    }


async def record_result(s: Services, device_id: str, result: agent_pb2.JobResult) -> bool:
    """Store a device's answer to one of its jobs; returns whether it was new. A result for a job the
    device was never given, or one out of bounds, is refused and logged (nothing stored)."""
    try:
        values = result_dict(result)
        job, recorded = await s.db(s.store.complete_job, result.job_id[:128], device_id, values, s.clock())
    except (InvalidRequest, store_errors.NotFound) as exc:
        log.warning("job result from %s refused: %s", device_id, exc)
        return False
    if recorded:
        log.info(
            "job %s (%s:%d %s) on %s: %s",
            job.job_id,
            job.name,
            job.version,
            job.variant,
            device_id,
            f"p95 {values['latency_p95_ms']:.2f} ms" if values["acceptance_passed"] else values["failure_reason"],
        )
        if not values["ok"]:  # the device could not run it: another device of the class takes it
            await plan(s, job.name, job.version)
    return recorded


# --- the evidence matrix ---------------------------------------------------------------------------


def benchmark_cells(jobs: Iterable[JobRow]) -> dict[tuple[str, str], selection.Measurement]:
    """(variant, class) -> the class's measurement, from answered jobs."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for job in jobs:
        if job.state == "done" and job.result and job.result.get("ok"):
            grouped.setdefault((job.variant, job.device_class), []).append(job.result)
    cells = {}
    for (variant, class_name), results in grouped.items():
        passed = [r for r in results if r["acceptance_passed"]]
        failed = [r for r in results if not r["acceptance_passed"]]

        def median(field: str, rows: list[dict] = passed) -> float:
            return statistics.median(r[field] for r in rows) if rows else 0.0

        cells[(variant, class_name)] = selection.Measurement(
            variant=variant,
            devices=len(results),
            latency_p50_ms=median("latency_p50_ms"),
            latency_p95_ms=median("latency_p95_ms"),
            load_time_ms=median("load_time_ms"),
            peak_rss_bytes=int(median("peak_rss_bytes")),
            acceptance_failures=len(failed),
            failure_reason=failed[0]["failure_reason"] if failed else "",
            source="benchmark",
        )
    return cells


async def evidence(s: Services, name: str, version: int) -> admin_pb2.Evidence:
    """The evidence matrix of NAME:VERSION (0: latest): benchmark cells, then field telemetry cells."""
    rows = await version_builds(s, name, version)
    version = rows[0].version
    jobs = await s.db(s.store.jobs_for_model, name, version)
    message = admin_pb2.Evidence(model=common_pb2.ModelRef(name=name, version=version))
    for (variant, class_name), cell in sorted(benchmark_cells(jobs).items()):
        message.cells.append(
            admin_pb2.EvidenceCell(
                variant=variant,
                device_class=class_name,
                devices=cell.devices,
                latency_p50_ms=cell.latency_p50_ms,
                latency_p95_ms=cell.latency_p95_ms,
                load_time_ms=cell.load_time_ms,
                peak_rss_bytes=cell.peak_rss_bytes,
                acceptance_failures=cell.acceptance_failures,
                source="benchmark",
            )
        )
    field = await s.db(s.store.latency, since=s.clock() - FIELD_WINDOW, by="variant-class", model=name, version=version)
    for row in field:
        if not row.requests:
            continue
        message.cells.append(
            admin_pb2.EvidenceCell(
                variant=row.key.get("variant", ""),
                device_class=row.key.get("class", ""),
                latency_p50_ms=row.latency.quantile(0.5),
                latency_p95_ms=row.latency.quantile(0.95),
                source="field",
                field_requests=row.requests,
            )
        )
    return message


# --- choosing --------------------------------------------------------------------------------------


async def choose(
    s: Services, name: str, version: int, *, class_name: str = "", device: DeviceRow | None = None
) -> tuple[selection.Choice, list[ModelBuildRow]]:
    """The selector's choice for a class (all its devices' facts) or one device (its facts, its class)."""
    if device is not None:
        choices, rows = await choose_for_devices(s, name, version, [device])
        return choices[device.device_id], rows
    rows = await version_builds(s, name, version)
    classes = {c.name: c for c in await current_classes(s)}
    if class_name not in classes:
        raise NotFoundError(f"no device class {class_name!r}; classes: {', '.join(classes)}")
    members = [d for d in await s.db(s.store.list_devices, device_class=class_name) if d.revoked_at is None and d.facts]
    cells = benchmark_cells(await s.db(s.store.jobs_for_model, name, rows[0].version))
    return _select(classes[class_name], rows, cells, members), rows


async def choose_for_devices(
    s: Services, name: str, version: int, devices: Sequence[DeviceRow]
) -> tuple[dict[str, selection.Choice], list[ModelBuildRow]]:
    """Each device's choice: its class's policy and evidence, its own facts. Reads the builds, the
    classes and the evidence once for all devices."""
    rows = await version_builds(s, name, version)
    classes = {c.name: c for c in await current_classes(s)}
    cells = benchmark_cells(await s.db(s.store.jobs_for_model, name, rows[0].version))
    choices = {}
    for device in devices:
        spec = classes.get(device.device_class or "") or classes[class_spec.DEFAULT_CLASS.name]
        choices[device.device_id] = _select(spec, rows, cells, [device] if device.facts else [])
    return choices, rows


def _select(
    spec: class_spec.ClassSpec,
    rows: Sequence[ModelBuildRow],
    cells: dict[tuple[str, str], selection.Measurement],
    devices: Sequence[DeviceRow],
) -> selection.Choice:
    evidence = {variant: m for (variant, class_name), m in cells.items() if class_name == spec.name}
    return selection.select(
        selector_policy(spec), selector_builds(rows), evidence, [selector_device(d) for d in devices]
    )


def selection_message(choice: selection.Choice) -> admin_pb2.Selection:
    def candidate(c: selection.Candidate) -> admin_pb2.Candidate:
        return admin_pb2.Candidate(
            variant=c.variant, eligible=c.eligible, reason=c.reason, score=0.0 if math.isnan(c.score) else c.score
        )

    return admin_pb2.Selection(
        device_class=choice.class_name,
        chosen_variant=choice.chosen or "",
        ranked=[candidate(c) for c in choice.ranked],
        rejected=[candidate(c) for c in choice.rejected],
        fallback_no_evidence=choice.fallback_no_evidence,
        summary=choice.summary,
    )
