"""Benchmark jobs: a build is measured on the device without being installed, every outcome is answered, and a
finished job is never run twice, not even across an agent restart.

An in-memory artifact source serves real tiny ONNX bundles with real ed25519 signatures; tests about results
run the real acceptance child process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.acceptance import AcceptanceReport, run_acceptance
from agent.fetch import FetchError
from agent.jobs import JOBS_DIR, RESULTS_FILE, JobRunner
from protos.edgefleet.v1 import agent_pb2, common_pb2
from tests.agent.test_reconcile_shell import TRUSTED, FakeSource, device_facts

WAIT_SECONDS = 60.0


@dataclasses.dataclass
class CountingSource(FakeSource):
    manifest_calls: int = 0
    manifest_faults: list[BaseException] = dataclasses.field(default_factory=list)

    async def fetch_manifest(self, ref: common_pb2.ModelRef) -> bytes:
        self.manifest_calls += 1
        if self.manifest_faults:
            raise self.manifest_faults.pop(0)
        return await super().fetch_manifest(ref)


class Harness:
    """A runner over ``data_dir`` that records what it sends and emits, and how often acceptance ran."""

    def __init__(self, data_dir: Path, source: CountingSource, *, facts=None, **options) -> None:
        self.sent: list[agent_pb2.JobResult] = []
        self.events: list[common_pb2.LifecycleEvent] = []
        self.acceptance_calls = 0
        self.data_dir = data_dir

        def acceptance(*args, **kwargs) -> AcceptanceReport:
            self.acceptance_calls += 1
            return run_acceptance(*args, **kwargs)

        self.runner = JobRunner(
            data_dir=data_dir,
            facts=lambda: facts or device_facts(),
            trusted_keys=TRUSTED,
            source=source,
            send=lambda message: self.sent.append(message.job_result) is None,
            emit=self.events.append,
            acceptance=acceptance,
            acceptance_timeout_seconds=120.0,
            retry_delay_seconds=0.01,
            **options,
        )

    async def results(self, *jobs: agent_pb2.Job, expect: int | None = None) -> list[agent_pb2.JobResult]:
        """Submit ``jobs`` with the worker running; wait for ``expect`` (default: one per job) results."""
        stop = asyncio.Event()
        worker = asyncio.create_task(self.runner.run(stop))
        for job in jobs:
            self.runner.submit(job)
        async with asyncio.timeout(WAIT_SECONDS):
            while len(self.sent) < (len(jobs) if expect is None else expect):
                await asyncio.sleep(0.01)
        stop.set()
        await worker
        return self.sent


def job(
    ref: common_pb2.ModelRef,
    job_id: str = "job-1",
    *,
    runs: int = 5,
    max_bytes: int = 10_000_000,
    deadline: float | None = None,
) -> agent_pb2.Job:
    message = agent_pb2.Job(
        job_id=job_id, benchmark=agent_pb2.BenchmarkJob(model=ref, runs=runs, warmup_runs=1, max_bytes=max_bytes)
    )
    message.deadline.FromNanoseconds(round((deadline or time.time() + 300) * 1e9))
    return message


def publish(source: CountingSource, tmp_path: Path, **options) -> common_pb2.ModelRef:
    return source.publish(tmp_path, 1, **options).model


def leftovers(data_dir: Path) -> list[Path]:
    jobs = data_dir / JOBS_DIR
    return list(jobs.iterdir()) if jobs.exists() else []


def run(coroutine):
    return asyncio.run(coroutine)


def only(results: list[agent_pb2.JobResult]) -> agent_pb2.JobResult:
    assert len(results) == 1, results
    return results[0]


def test_good_build_is_measured_and_nothing_is_installed(tmp_path: Path) -> None:
    """A sound build: ok, acceptance passed, real latencies, a BENCHMARK_DONE event, no trace left on disk."""
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source)
    result = only(run(harness.results(job(ref, runs=7))))
    assert result.ok and result.job_id == "job-1" and not result.error
    bench = result.benchmark
    assert bench.acceptance_passed, bench.failure_reason
    assert bench.model == ref and bench.runs == 7 and bench.threads == 1
    assert 0 < bench.latency_p50_ms <= bench.latency_p95_ms and bench.load_time_ms > 0
    (event,) = harness.events
    assert event.kind == common_pb2.LifecycleEvent.BENCHMARK_DONE and event.model == ref
    assert event.details["job_id"] == "job-1" and event.details["passed"] == "true"
    assert float(event.details["latency_p95_ms"]) == pytest.approx(bench.latency_p95_ms, abs=1e-3)
    assert leftovers(tmp_path / "data") == []  # the job directory is gone
    assert not (tmp_path / "data" / "models").exists()  # the reconciler's build store is untouched


@pytest.mark.parametrize(
    ("options", "tiny_budget", "needle"),
    [
        ({"key": Ed25519PrivateKey.generate()}, False, "not signed by a trusted publisher key"),
        ({"break_signature": True}, False, "is invalid: the manifest was changed after signing"),
        ({"tamper_blob": True}, False, "sha256 mismatch for model.onnx"),
        ({"golden_scale": 3.0}, False, "golden case 'ramp': output 'y' differs"),
        ({"requirements": {"cpu_features": ["avx512_vnni"]}}, False, "needs CPU features avx512_vnni"),
        ({}, True, "over the budget"),  # the device's model memory budget is 1 byte
    ],
    ids=["untrusted-key", "bad-signature", "file-hash-mismatch", "wrong-golden-output", "cpu-feature", "memory"],
)
def test_a_build_that_fails_a_check_is_a_result_with_the_reason(tmp_path: Path, options, tiny_budget, needle) -> None:
    """Verification, compatibility and acceptance failures are evidence: ok=True, acceptance_passed=False."""
    source = CountingSource()
    ref = publish(source, tmp_path / "src", **options)
    device = device_facts()
    if tiny_budget:
        device.model_memory_budget_bytes = 1
    harness = Harness(tmp_path / "data", source, facts=device)
    result = only(run(harness.results(job(ref))))
    assert result.ok and not result.benchmark.acceptance_passed
    assert needle in result.benchmark.failure_reason
    assert harness.events[0].details["passed"] == "false" and needle in harness.events[0].reason
    assert leftovers(tmp_path / "data") == []


def test_bundle_over_max_bytes_is_refused_before_any_file_is_fetched(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    result = only(run(Harness(tmp_path / "data", source).results(job(ref, max_bytes=10))))
    assert result.ok and not result.benchmark.acceptance_passed
    assert "over the job's max_bytes of 10" in result.benchmark.failure_reason
    assert source.blob_calls == 0


def test_manifest_of_another_build_is_refused(tmp_path: Path) -> None:
    """The manifest must hash to the job's manifest_sha256."""
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    other = hashlib.sha256(b"other").hexdigest()
    source.manifests[other] = source.manifests[ref.manifest_sha256]
    ref.manifest_sha256 = other
    result = only(run(Harness(tmp_path / "data", source).results(job(ref))))
    assert result.ok and "does not hash to" in result.benchmark.failure_reason


def test_job_past_its_deadline_is_answered_not_run(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source)
    result = only(run(harness.results(job(ref, deadline=time.time() - 1))))
    assert not result.ok and result.error == "deadline passed"
    assert source.manifest_calls == 0 and harness.acceptance_calls == 0


def _valid_job(tmp_path: Path) -> tuple[CountingSource, agent_pb2.Job]:
    source = CountingSource()
    return source, job(publish(source, tmp_path / "src"))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda j: setattr(j, "job_id", ""), "job_id must be"),
        (lambda j: setattr(j, "job_id", "a/b"), "job_id must be"),
        (lambda j: setattr(j, "job_id", ".."), "job_id must be"),
        (lambda j: setattr(j, "job_id", "x" * 65), "job_id must be"),
        (lambda j: setattr(j.benchmark, "runs", 1001), "runs must be 0..1000"),
        (lambda j: setattr(j.benchmark, "warmup_runs", 5000), "warmup_runs must be 0..1000"),
        (lambda j: setattr(j.benchmark.model, "manifest_sha256", "ab" * 31), "manifest_sha256 must be 64"),
        (lambda j: setattr(j.benchmark.model, "manifest_sha256", "G" * 64), "manifest_sha256 must be 64"),
        (lambda j: setattr(j.benchmark.model, "name", ""), "name must be"),
        (lambda j: setattr(j.benchmark.model, "variant", ""), "variant must be"),
        (lambda j: j.benchmark.ClearField("model"), "names no model"),
        (lambda j: j.ClearField("benchmark"), "unknown job kind"),
    ],
    ids=[
        "empty-id",
        "slash-id",
        "dotdot-id",
        "long-id",
        "runs",
        "warmup",
        "short-sha",
        "non-hex-sha",
        "no-name",
        "no-variant",
        "no-model",
        "no-kind",
    ],  # fmt: skip
)
def test_malformed_job_is_answered_at_once_and_nothing_is_fetched(tmp_path: Path, change, needle) -> None:
    source, message = _valid_job(tmp_path)
    change(message)
    harness = Harness(tmp_path / "data", source)
    harness.runner.submit(message)  # answered without a worker
    result = only(harness.sent)
    assert not result.ok and result.error.startswith("malformed job") and needle in result.error
    assert source.manifest_calls == 0 and source.blob_calls == 0


def test_runs_zero_means_the_default(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    result = only(run(Harness(tmp_path / "data", source).results(job(ref, runs=0))))
    assert result.benchmark.acceptance_passed and result.benchmark.runs > 0


def test_same_job_twice_runs_once_and_is_answered_twice(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source)

    async def scenario() -> list[agent_pb2.JobResult]:
        await harness.results(job(ref))
        harness.runner.submit(job(ref))  # the control plane re-sends it (e.g. at a new session)
        return harness.sent

    first, second = run(scenario())
    assert first == second and first.benchmark.acceptance_passed
    assert harness.acceptance_calls == 1 and source.manifest_calls == 1


def test_a_job_sent_again_while_queued_is_queued_once(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source)

    async def scenario() -> list[agent_pb2.JobResult]:
        results = await harness.results(job(ref), job(ref), job(ref, "job-2"), expect=2)
        await asyncio.sleep(0.1)
        return results

    results = run(scenario())
    assert [r.job_id for r in results] == ["job-1", "job-2"]
    assert harness.acceptance_calls == 2


def test_after_a_restart_a_resent_job_gets_the_stored_result(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    first = only(run(Harness(tmp_path / "data", source).results(job(ref))))
    assert (tmp_path / "data" / RESULTS_FILE).is_file()

    restarted = Harness(tmp_path / "data", source)  # a new agent process on the same data dir
    restarted.runner.submit(job(ref))
    assert restarted.sent == [first]
    assert restarted.acceptance_calls == 0 and source.manifest_calls == 1


def test_stored_results_are_bounded_and_an_unreadable_line_is_skipped(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    source.blob_faults.extend(FetchError("gone", retryable=False) for _ in range(3))  # quick final failures
    harness = Harness(tmp_path / "data", source, keep_results=2)
    run(harness.results(*(job(ref, f"job-{n}") for n in range(3))))
    path = tmp_path / "data" / RESULTS_FILE
    assert len(path.read_text().splitlines()) == 2
    path.write_text("not json\n" + path.read_text())
    restarted = Harness(tmp_path / "data", source, keep_results=2)
    restarted.runner.submit(job(ref, "job-2"))
    restarted.runner.submit(job(ref, "job-1"))
    assert [r.job_id for r in restarted.sent] == ["job-2", "job-1"]
    assert all(not r.ok and "could not fetch model.onnx" in r.error for r in restarted.sent)


def test_job_directory_is_removed_after_a_failure_and_leftovers_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / "data" / JOBS_DIR / "crashed-job"
    (leftover / "models").mkdir(parents=True)
    (leftover / "models" / "part").write_bytes(b"x")
    source = CountingSource()
    ref = publish(source, tmp_path / "src", tamper_blob=True)
    harness = Harness(tmp_path / "data", source)
    assert not leftover.exists()
    result = only(run(harness.results(job(ref))))
    assert result.ok and not result.benchmark.acceptance_passed
    assert leftovers(tmp_path / "data") == []


def test_queue_holds_at_most_max_queued_jobs(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source, max_queued=2)

    async def scenario() -> None:
        for n in range(3):  # no worker yet: two wait, the third is refused
            harness.runner.submit(job(ref, f"job-{n}"))
        assert [(r.job_id, r.ok, r.error) for r in harness.sent] == [
            ("job-2", False, "job queue full (2 jobs waiting)")
        ]
        await harness.results(expect=3)

    run(scenario())
    assert [r.job_id for r in harness.sent] == ["job-2", "job-0", "job-1"]
    assert all(r.ok for r in harness.sent[1:])


def test_manifest_that_cannot_be_fetched_is_an_error_stored_only_if_final(tmp_path: Path) -> None:
    """NOT_FOUND-like failures are final (stored); transient ones are retried, then answered but not stored."""
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    source.manifest_faults.append(FetchError("no such build", retryable=False))
    source.manifest_faults.extend(FetchError("unavailable", retryable=True) for _ in range(3))
    harness = Harness(tmp_path / "data", source)

    async def scenario() -> tuple[list[agent_pb2.JobResult], list[agent_pb2.JobResult]]:
        first = list(await harness.results(job(ref, "job-a"), job(ref, "job-b")))
        harness.sent.clear()  # the control plane re-sends both at the next session
        return first, await harness.results(job(ref, "job-a"), job(ref, "job-b"))

    (final, transient), (again_final, again_transient) = run(scenario())
    assert not final.ok and final.error == "could not fetch manifest: no such build"
    assert not transient.ok and transient.error == "could not fetch manifest (after 3 tries): unavailable"
    assert again_final == final  # stored: not fetched again
    assert again_transient.ok and again_transient.benchmark.acceptance_passed  # tried again, now it works
    assert source.manifest_calls == 5


def test_transient_fetch_failure_of_a_file_is_retried(tmp_path: Path) -> None:
    source = CountingSource()
    ref = publish(source, tmp_path / "src")
    source.blob_faults.append(FetchError("stalled", retryable=True))
    result = only(run(Harness(tmp_path / "data", source).results(job(ref))))
    assert result.ok and result.benchmark.acceptance_passed and source.blob_calls == 2


def test_stop_cancels_the_running_job_and_removes_its_directory(tmp_path: Path) -> None:
    source = CountingSource(hang_blobs=True)
    ref = publish(source, tmp_path / "src")
    harness = Harness(tmp_path / "data", source)

    async def scenario() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(harness.runner.run(stop))
        harness.runner.submit(job(ref))
        async with asyncio.timeout(WAIT_SECONDS):
            while source.blob_calls == 0:
                await asyncio.sleep(0.01)
        stop.set()
        await worker

    run(scenario())
    assert harness.sent == [] and leftovers(tmp_path / "data") == []
