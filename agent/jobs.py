"""Benchmark jobs: measure a model build on this device without installing it.

The control plane sends ``Job(benchmark=BenchmarkJob(model, runs, warmup_runs, max_bytes))``
on the session stream; ``JobRunner.submit`` takes it and one worker task (``run``) carries
jobs out one at a time, in arrival order:

1. fetch the signed manifest; it must hash to ``model.manifest_sha256``, be signed by a
   pinned publisher key, name the build asked for, and suit this device's facts; the
   bundle may not exceed ``max_bytes`` (0: ``DEFAULT_MAX_BYTES``);
2. fetch its files (resumable) and check their sha256s;
3. run the acceptance test (golden cases, then the latency benchmark) in a child
   process with the device's thread cap, memory budget and acceptance timeout;
4. answer ``JobResult(ok=True, benchmark=BenchmarkResult(...))`` and emit a
   ``BENCHMARK_DONE`` lifecycle event with the numbers.

Nothing is activated and the reconciler's build store is not touched: each job works in
``<data_dir>/jobs/<job_id>/``, which is deleted when the job ends (however it ends); what is
left there at start (a crash) is deleted when the runner is created.

Results. A build that fails a check, does not suit the device or fails acceptance is still
a result (``ok=True``, ``acceptance_passed=False``, ``failure_reason`` saying why): it is
evidence about the build. ``ok=False`` with ``error`` means the job could not be carried out:
a malformed job (nothing is fetched or run), a passed deadline, a full queue (at most
``MAX_QUEUED`` jobs wait), a manifest or file that could not be fetched.

Delivery. The protocol has no acknowledgement of a job result, and a result may be sent
while the link is down. Instead the control plane re-sends, at every session start, each
job it has no result for, and the runner answers a job id it has finished with the stored
result, without running it again. Finished results (those with a benchmark, and failures
that trying again cannot fix) are kept in ``<data_dir>/job-results.jsonl`` (the last
``KEEP_RESULTS``), so this holds across agent restarts. Failures that may pass on a second
try (a fetch that timed out, a full queue, a passed deadline) are not stored: a re-sent
job is tried again. A job id that is queued or running is not queued twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.acceptance import run_acceptance
from agent.fetch import FetchError
from agent.reconcile_shell import ArtifactSource
from agent.reconcile_state import BuildRef, InvalidDesiredState, epoch_timestamp
from agent.staging import BuildStore, StagingError, write_state
from agent.verify import VerifyError, check_compatible, check_files, check_target, verified_manifest
from protos.edgefleet.v1 import agent_pb2, common_pb2

__all__ = ["JOBS_DIR", "RESULTS_FILE", "JobRunner", "validate_job"]

log = logging.getLogger("edgefleet.agent.jobs")

JOBS_DIR = "jobs"
RESULTS_FILE = "job-results.jsonl"
MAX_QUEUED = 32
KEEP_RESULTS = 256
MAX_RUNS = 1000
DEFAULT_MAX_BYTES = 1 << 30  # a job without max_bytes may still not fill the disk
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class JobError(Exception):
    """The job could not be carried out. ``final``: trying again cannot help, so the answer is stored."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


def validate_job(job: agent_pb2.Job) -> None:
    """Raise ``ValueError`` naming the first malformed field of ``job``."""
    if not _JOB_ID.fullmatch(job.job_id) or job.job_id in (".", ".."):
        raise ValueError(f"job_id must be 1..64 of A-Z a-z 0-9 . _ - (not '.' or '..'), got {job.job_id[:80]!r}")
    if job.WhichOneof("kind") != "benchmark":
        raise ValueError(f"job {job.job_id}: unknown job kind {job.WhichOneof('kind')!r} (this agent runs benchmark)")
    benchmark = job.benchmark
    if not benchmark.HasField("model"):
        raise ValueError(f"job {job.job_id}: benchmark names no model")
    ref = benchmark.model
    try:
        BuildRef(ref.name, ref.version, ref.variant, ref.manifest_sha256)
    except InvalidDesiredState as exc:
        raise ValueError(f"job {job.job_id}: {exc}") from None
    for name in ("runs", "warmup_runs"):
        value = getattr(benchmark, name)
        if value > MAX_RUNS:
            raise ValueError(f"job {job.job_id}: {name} must be 0..{MAX_RUNS} (0: default), got {value}")


def _error(job_id: str, message: str) -> agent_pb2.JobResult:
    return agent_pb2.JobResult(job_id=job_id, ok=False, error=message)


def _deadline(job: agent_pb2.Job) -> float | None:
    """The job's deadline in epoch seconds, or None if it has none."""
    if not job.HasField("deadline"):
        return None
    return job.deadline.seconds + job.deadline.nanos / 1e9


class JobRunner:
    """Runs benchmark jobs for one device. Collaborators are keyword-only; tests pass fakes.

    ``send`` queues a message on the session (False: not sent, no session); ``emit`` takes
    lifecycle events for telemetry; ``facts`` is called from a worker thread.
    Creating a runner reads the stored results and deletes leftover job directories.
    """

    def __init__(
        self,
        *,
        data_dir: Path,
        facts: Callable[[], common_pb2.DeviceFacts],
        trusted_keys: Mapping[str, bytes],
        source: ArtifactSource,
        send: Callable[[agent_pb2.AgentMessage], bool],
        emit: Callable[[common_pb2.LifecycleEvent], None],
        acceptance: Callable[..., Any] = run_acceptance,
        clock: Callable[[], float] = time.time,
        acceptance_timeout_seconds: float = 600.0,
        fetch_attempts: int = 3,
        retry_delay_seconds: float = 2.0,
        max_queued: int = MAX_QUEUED,
        keep_results: int = KEEP_RESULTS,
    ) -> None:
        self.root = data_dir / JOBS_DIR
        self.results_path = data_dir / RESULTS_FILE
        self.facts = facts
        self.trusted_keys = dict(trusted_keys)
        self.source = source
        self.send = send
        self.emit = emit
        self.acceptance = acceptance
        self.clock = clock
        self.acceptance_timeout_seconds = acceptance_timeout_seconds
        self.fetch_attempts = fetch_attempts
        self.retry_delay_seconds = retry_delay_seconds
        self.keep_results = keep_results
        self._queue: asyncio.Queue[agent_pb2.Job] = asyncio.Queue(maxsize=max_queued)
        self._pending: set[str] = set()  # queued or running
        self._results: OrderedDict[str, agent_pb2.JobResult] = self._load_results()
        self._remove_leftovers()

    # --- intake (called from the session's receive loop) --------------------------------------------

    def submit(self, job: agent_pb2.Job) -> None:
        """Take a job from the control plane: queue it, or answer at once (stored result, malformed, ...)."""
        try:
            validate_job(job)
        except ValueError as exc:
            log.warning("job refused: %s", exc)
            self._answer(_error(job.job_id[:64], f"malformed job: {exc}"))
            return
        stored = self._results.get(job.job_id)
        if stored is not None:
            log.info("job %s is done: sending its result again", job.job_id)
            self._answer(stored)
            return
        if job.job_id in self._pending:
            return  # the result goes out when it is done
        deadline = _deadline(job)
        if deadline is not None and deadline <= self.clock():
            self._answer(_error(job.job_id, "deadline passed"))
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._answer(_error(job.job_id, f"job queue full ({self._queue.maxsize} jobs waiting)"))
            return
        self._pending.add(job.job_id)

    # --- the worker -----------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Carry out queued jobs one at a time until ``stop`` is set (a running job is cancelled)."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                getting = asyncio.ensure_future(self._queue.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                job = getting.result()
                working = asyncio.ensure_future(self.carry_out(job))
                await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not working.done():
                    working.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await working
                    break
                self._pending.discard(job.job_id)
                try:
                    result = working.result()
                except Exception as exc:  # noqa: BLE001 - a bug or a full disk fails the job, not the agent
                    log.exception("job %s failed unexpectedly", job.job_id)
                    result = _error(job.job_id, f"the agent could not run the job: {type(exc).__name__}: {exc}")
                self._answer(result)
        finally:
            stopping.cancel()

    async def carry_out(self, job: agent_pb2.Job) -> agent_pb2.JobResult:
        """Run one validated job now and return its result (stored if final; not sent)."""
        stored = self._results.get(job.job_id)
        if stored is not None:
            return stored
        deadline = _deadline(job)
        if deadline is not None and deadline <= self.clock():
            return _error(job.job_id, "deadline passed")
        directory = self.root / job.job_id
        try:
            benchmark = await self._benchmark(job.benchmark, directory, deadline)
        except JobError as exc:
            log.warning("job %s could not be carried out: %s", job.job_id, exc)
            result = _error(job.job_id, str(exc))
            if exc.final:
                await asyncio.to_thread(self._store, result)
            return result
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, ignore_errors=True)
        result = agent_pb2.JobResult(job_id=job.job_id, ok=True, benchmark=benchmark)
        await asyncio.to_thread(self._store, result)
        self.emit(self._event(job.job_id, benchmark))
        if benchmark.acceptance_passed:
            log.info("job %s: %s passed, p95 %.2f ms", job.job_id, benchmark.model.name, benchmark.latency_p95_ms)
        else:
            log.info("job %s: %s failed: %s", job.job_id, benchmark.model.name, benchmark.failure_reason)
        return result

    async def _benchmark(
        self, job: agent_pb2.BenchmarkJob, directory: Path, deadline: float | None
    ) -> agent_pb2.BenchmarkResult:
        ref = job.model
        facts = await asyncio.to_thread(self.facts)
        result = agent_pb2.BenchmarkResult(model=ref, threads=facts.onnx_threads)
        store = BuildStore(directory)  # the build store's layout and path checks, in the job's own directory
        remaining = None if deadline is None else deadline - self.clock()
        try:
            async with asyncio.timeout(remaining):
                signed_bytes = await self._fetch(lambda: self.source.fetch_manifest(ref), "manifest")
                manifest = verified_manifest(signed_bytes, ref.manifest_sha256, self.trusted_keys)
                check_target(manifest, ref)
                check_compatible(manifest, facts)
                max_bytes = job.max_bytes or DEFAULT_MAX_BYTES
                total = sum(f.size_bytes for f in manifest.files)
                if total > max_bytes:
                    raise VerifyError(f"bundle is {total} bytes, over the job's max_bytes of {max_bytes}")
                for file in manifest.files:
                    await self._fetch(
                        lambda f=file: self.source.fetch_blob(f.sha256, f.size_bytes, store.blobs), file.path
                    )
        except TimeoutError as exc:
            raise JobError("deadline passed while fetching the bundle", final=False) from exc
        except VerifyError as exc:
            result.failure_reason = str(exc)
            return result
        try:
            build = await asyncio.to_thread(self._stage, store, ref.manifest_sha256, signed_bytes, manifest)
        except (VerifyError, StagingError) as exc:
            result.failure_reason = str(exc)
            return result
        timeout = self.acceptance_timeout_seconds
        if deadline is not None:
            timeout = max(1.0, min(timeout, deadline - self.clock()))
        report = await asyncio.to_thread(
            self.acceptance,
            build,
            manifest,
            threads=facts.onnx_threads,
            memory_budget_bytes=facts.model_memory_budget_bytes,
            timeout_seconds=timeout,
            runs=job.runs,
            warmup_runs=job.warmup_runs,
        )
        if not report.passed and deadline is not None and self.clock() >= deadline:
            raise JobError(f"deadline passed while the benchmark ran ({report.reason})", final=False)
        result.acceptance_passed = report.passed
        result.failure_reason = report.reason
        result.latency_p50_ms = report.latency_p50_ms
        result.latency_p95_ms = report.latency_p95_ms
        result.load_time_ms = report.load_time_ms
        result.peak_rss_bytes = report.peak_rss_bytes
        result.runs = report.runs
        result.threads = report.threads or facts.onnx_threads
        return result

    async def _fetch(self, fetch: Callable[[], Any], what: str) -> Any:
        """Await ``fetch()``, trying again after a retryable ``FetchError``. Raises ``JobError``."""
        for attempt in range(1, self.fetch_attempts + 1):
            try:
                return await fetch()
            except FetchError as exc:
                if not exc.retryable or attempt == self.fetch_attempts:
                    tries = f" (after {attempt} tries)" if attempt > 1 else ""
                    raise JobError(f"could not fetch {what}{tries}: {exc}", final=not exc.retryable) from exc
                log.info("fetching %s failed (%s); trying again", what, exc)
                await asyncio.sleep(self.retry_delay_seconds * attempt)
        raise AssertionError("unreachable")

    @staticmethod
    def _stage(store: BuildStore, manifest_sha256: str, signed_bytes: bytes, manifest) -> Path:
        check_files(manifest, store.blob_path)
        return store.stage(manifest_sha256, signed_bytes, manifest)

    def _event(self, job_id: str, benchmark: agent_pb2.BenchmarkResult) -> common_pb2.LifecycleEvent:
        details = {"job_id": job_id, "passed": str(benchmark.acceptance_passed).lower()}
        if benchmark.acceptance_passed:
            details.update(
                latency_p50_ms=f"{benchmark.latency_p50_ms:.3f}",
                latency_p95_ms=f"{benchmark.latency_p95_ms:.3f}",
                load_time_ms=f"{benchmark.load_time_ms:.1f}",
                peak_rss_bytes=str(benchmark.peak_rss_bytes),
                runs=str(benchmark.runs),
                threads=str(benchmark.threads),
            )
        return common_pb2.LifecycleEvent(
            kind=common_pb2.LifecycleEvent.BENCHMARK_DONE,
            at=epoch_timestamp(self.clock()),
            model=benchmark.model,
            reason=benchmark.failure_reason,
            details=details,
        )

    def _answer(self, result: agent_pb2.JobResult) -> None:
        if not self.send(agent_pb2.AgentMessage(job_result=result)):
            log.info("job %s: no session; the result goes out when the control plane asks again", result.job_id)

    # --- stored results and the job directories -------------------------------------------------------

    def _store(self, result: agent_pb2.JobResult) -> None:
        self._results[result.job_id] = result
        self._results.move_to_end(result.job_id)
        while len(self._results) > self.keep_results:
            self._results.popitem(last=False)
        lines = (
            json.dumps({"job_id": r.job_id, "result": base64.b64encode(r.SerializeToString()).decode()})
            for r in self._results.values()
        )
        try:
            write_state(self.results_path, "".join(line + "\n" for line in lines))
        except OSError as exc:  # the result still goes out; after a restart the job would run again
            log.error("could not store the result of job %s: %s", result.job_id, exc)

    def _load_results(self) -> OrderedDict[str, agent_pb2.JobResult]:
        results: OrderedDict[str, agent_pb2.JobResult] = OrderedDict()
        try:
            text = self.results_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return results
        except OSError as exc:
            log.error("cannot read stored job results %s: %s", self.results_path, exc)
            return results
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                entry = json.loads(line)
                result = agent_pb2.JobResult.FromString(base64.b64decode(entry["result"], validate=True))
                if result.job_id != entry["job_id"]:
                    raise ValueError("job ids differ")
            except Exception as exc:  # noqa: BLE001 - a bad line costs one stored result, not the rest
                log.warning("%s line %d is unreadable (%s); skipped", self.results_path.name, number, exc)
                continue
            results[result.job_id] = result
            results.move_to_end(result.job_id)
        while len(results) > self.keep_results:
            results.popitem(last=False)
        return results

    def _remove_leftovers(self) -> None:
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            log.info("removing leftover job directory %s", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
