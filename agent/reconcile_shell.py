"""The I/O shell around the reconciler: it feeds events to ``agent.reconciler.step`` and executes the actions.

One asyncio task (``run``) owns the state. Events come from one queue: desired states
(``submit_desired``), the outcomes of running action tasks, and the single Tick timer
(``ScheduleTick``). Actions run in list order:

- ``Persist`` writes ``<data_dir>/reconcile.json`` atomically and is awaited before the
  next action, so the state on disk always names the work in flight;
- outcome actions (Download .. RollBack) start a task per ticket whose result is the
  outcome event; blocking work (hashing, staging, onnxruntime, the acceptance child)
  runs in a worker thread; ``Cancel`` cancels the ticket's task;
- ``Report``, ``Emit`` call the injected callbacks; ``Cleanup`` prunes the build store.

While a build downloads, the shell also reports progress: the current status (phase DOWNLOADING)
with ``bytes_downloaded`` (over all the build's files, bytes already on disk from an earlier attempt
included) and ``bytes_total`` (the manifest's total) set, at most once per ``PROGRESS_INTERVAL_SECONDS``
and once when every byte is on disk. The pure reconciler knows nothing of it.

Download fetches the signed manifest, checks that it is the one the target names
(``manifest_sha256`` is the sha256 of the signed ``BundleManifest`` bytes) and, once a
trusted key's signature checks out, fetches every file by hash with the manifest's size
(never more than ``target.max_bytes`` in all). A manifest whose signature does not check
out is kept and reported as downloaded: Verify refuses it, so the failure is a
VERIFY_FAILED naming the reason. Verify repeats every check (it runs again after a crash).

``RollBack(to=None)`` (the slot served nothing before) has nothing to swap back to:
``Serving`` has no way to unload a slot, so it succeeds and the slot keeps whatever
``Serving`` holds; the reconciler records the slot as empty.

A state file that does not parse is moved aside (``reconcile.json.corrupt-<epoch>``),
reported as a RECONCILE_FAILED lifecycle event, and the shell starts from a fresh state.
A failed Persist raises out of ``run``: acting on state that is not on disk is unsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc

from agent import reconcile_events as ev
from agent.acceptance import run_acceptance
from agent.fetch import FetchError, FetchResult, fetch_blob
from agent.fetch_https import ArtifactPortUnavailable, HttpsEndpoint, fetch_blob_https
from agent.reconcile_state import (
    Phase,
    ReconcileState,
    StateFileError,
    Target,
    epoch_timestamp,
    from_json,
    to_json,
)
from agent.reconciler import DEFAULT_CONFIG, ReconcilerConfig, UnexpectedEvent, recover, step
from agent.serving import Serving
from agent.staging import MANIFEST_BYTES_FILE, BuildStore, StagingError, write_state
from agent.verify import (
    VerifyError,
    check_compatible,
    check_files,
    check_not_downgrade,
    check_target,
    verified_manifest,
)
from protos.bundles import BundleError, parse_signed_manifest, verify_signed_manifest
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc, bundle_pb2, common_pb2

__all__ = ["STATE_FILE", "ArtifactSource", "GatewaySource", "ReconcileShell"]

log = logging.getLogger("edgefleet.agent.reconcile")

STATE_FILE = "reconcile.json"
MANIFEST_TIMEOUT_SECONDS = 30.0
HTTPS_RETRY_SECONDS = 300.0  # after the HTTPS artifact port gave no response, downloads use gRPC this long
PROGRESS_INTERVAL_SECONDS = 1.0


class ArtifactSource(Protocol):
    """Where manifests and blobs come from. Both raise ``FetchError`` (``retryable`` says whether to retry)."""

    async def fetch_manifest(self, ref: common_pb2.ModelRef) -> bytes: ...

    async def fetch_blob(
        self, sha256: str, size: int, directory: Path, *, progress: Callable[[int], None] | None = None
    ) -> FetchResult:
        """``progress``, if given, is called with the blob's bytes on disk so far (see ``agent.fetch``)."""
        ...


class GatewaySource:
    """``ArtifactSource`` over the control plane's ``AgentGateway``; maps gRPC errors to ``FetchError``.

    Blobs come over the HTTPS artifact port once the control plane announces one (``use_https``, from the
    Welcome), else over gRPC ``FetchArtifact``. When the HTTPS attempt gets no response at all (refused,
    unreachable, TLS handshake failed, timeout), that call fetches over gRPC instead, resuming from
    whatever is in the part file, and so do the calls of the next ``HTTPS_RETRY_SECONDS`` (a port a
    firewall drops costs one connect timeout, not one per file; logged each time it is found
    unreachable); an HTTP error status is the answer, no fallback. A newly announced port is tried at once.
    """

    def __init__(
        self,
        stub: agent_pb2_grpc.AgentGatewayStub,
        *,
        timeout_seconds: float = MANIFEST_TIMEOUT_SECONDS,
        https: HttpsEndpoint | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``https``: the artifact listener's host, TLS name and client context (``device_https_endpoint``); its
        port comes from ``use_https``. Without it, blobs always come over gRPC."""
        self.stub = stub
        self.timeout_seconds = timeout_seconds
        self._https_base = https
        self.https: HttpsEndpoint | None = None  # where blobs come from now; None: gRPC
        self._clock = clock
        self._https_retry_at = 0.0  # clock time before which an unreachable HTTPS port is not tried again
        self._warned_no_tls = False

    def use_https(self, port: int) -> None:
        """Fetch blobs over the HTTPS artifact port ``port`` from now on; 0: over gRPC."""
        if not port:
            self.https = None
        elif self._https_base is None:
            if not self._warned_no_tls:
                self._warned_no_tls = True
                log.warning(
                    "the control plane offers HTTPS artifact port %d, but this agent has no TLS "
                    "material for it; fetching over gRPC",
                    port,
                )
        elif self.https is None or self.https.port != port:
            self.https = dataclasses.replace(self._https_base, port=port)
            self._https_retry_at = 0.0
            log.info("fetching artifacts over HTTPS from %s", self.https)

    async def fetch_manifest(self, ref: common_pb2.ModelRef) -> bytes:
        try:
            response = await self.stub.FetchManifest(
                agent_pb2.FetchManifestRequest(model=ref), timeout=self.timeout_seconds
            )
        except grpc.aio.AioRpcError as exc:
            retryable = exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
            raise FetchError(f"manifest of {ref.name} v{ref.version}: {exc.details()}", retryable=retryable) from exc
        return response.signed_manifest

    async def fetch_blob(
        self, sha256: str, size: int, directory: Path, *, progress: Callable[[int], None] | None = None
    ) -> FetchResult:
        endpoint = self.https
        if endpoint is not None and self._clock() >= self._https_retry_at:
            try:
                return await fetch_blob_https(endpoint, sha256, size, directory, progress=progress)
            except ArtifactPortUnavailable as exc:
                self._https_retry_at = self._clock() + HTTPS_RETRY_SECONDS
                log.warning(
                    "HTTPS artifact port %s unreachable (%s); fetching over gRPC for the next %.0f s",
                    endpoint,
                    exc,
                    HTTPS_RETRY_SECONDS,
                )
        return await fetch_blob(self.stub, sha256, size, directory, progress=progress)


def _ref(target: Target) -> common_pb2.ModelRef:
    return target.ref.to_proto()


class ReconcileShell:
    """Runs the reconciler for one device. Collaborators are keyword-only; tests pass fakes."""

    def __init__(
        self,
        *,
        data_dir: Path,
        facts: Callable[[], common_pb2.DeviceFacts],
        trusted_keys: Mapping[str, bytes],
        source: ArtifactSource,
        serving: Serving,
        acceptance: Callable[..., Any] = run_acceptance,
        report: Callable[[agent_pb2.StatusReport], None],
        emit: Callable[[common_pb2.LifecycleEvent], None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        config: ReconcilerConfig = DEFAULT_CONFIG,
        crash_after_persisting: str = "",
    ) -> None:
        # Fault injection for crash tests: SIGKILL this process right after a state of this
        # phase is on disk (set by the EDGEFLEET_FAULT_CRASH_AFTER_PERSISTING variable).
        self.crash_after_persisting = crash_after_persisting
        self.data_dir = data_dir
        self.state_path = data_dir / STATE_FILE
        self.store = BuildStore(data_dir)
        self.facts = facts
        self.trusted_keys = dict(trusted_keys)
        self.source = source
        self.serving = serving
        self.acceptance = acceptance
        self.report = report
        self.emit = emit
        self.clock = clock
        self.monotonic = monotonic
        self.config = config
        self.state = ReconcileState()
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._tick_at: float | None = None
        self._progress_sent_at: float | None = None  # monotonic time of this download's last progress report
        self._progress_complete = False  # this download's 100% report is sent

    # --- the loop ----------------------------------------------------------------------------------

    def submit_desired(self, message: agent_pb2.DesiredState) -> None:
        """Queue a received desired state. Raises ``InvalidDesiredState`` (nothing queued) if it is malformed."""
        self._events.put_nowait(ev.desired_from_proto(message))

    async def run(self, stop: asyncio.Event) -> None:
        """Recover from the persisted state, then handle events until ``stop`` is set."""
        persisted = await asyncio.to_thread(self._load_state)
        self.state, actions = recover(persisted, now=self.clock(), config=self.config)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await self._execute(actions)
            while not stop.is_set():
                event = await self._next_event(stopping)
                if event is not None:
                    await self._handle(event)
        finally:
            stopping.cancel()
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()

    async def _next_event(self, stopping: asyncio.Future[Any]) -> ev.Event | None:
        timeout = None if self._tick_at is None else max(0.0, self._tick_at - self.clock())
        getting = asyncio.ensure_future(self._events.get())
        done, _ = await asyncio.wait({getting, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getting in done:
            return getting.result()
        getting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await getting
        if getting.done() and not getting.cancelled():  # an event arrived while cancelling
            return getting.result()
        if stopping in done:
            return None
        self._tick_at = None
        return ev.Tick()

    async def _handle(self, event: ev.Event) -> None:
        try:
            self.state, actions = step(self.state, event, now=self.clock(), config=self.config)
        except UnexpectedEvent:
            log.exception("reconciler bug: event dropped: %r", event)
            return
        await self._execute(actions)

    async def _execute(self, actions: list[ev.Action]) -> None:
        for action in actions:
            match action:
                case ev.Persist(state=state):
                    await asyncio.to_thread(write_state, self.state_path, to_json(state))
                    if self.crash_after_persisting and state.phase.name == self.crash_after_persisting:
                        log.warning("fault injection: killing the agent after persisting %s", state.phase.name)
                        os.kill(os.getpid(), signal.SIGKILL)
                case ev.Report():
                    self.report(action.to_proto())
                case ev.Emit():
                    self.emit(action.to_proto(at=self.clock()))
                case ev.ScheduleTick(at=at):
                    self._tick_at = at
                case ev.Cancel(ticket=ticket):
                    task = self._tasks.pop(ticket, None)
                    if task is not None:
                        task.cancel()
                case ev.Cleanup(keep=keep):
                    await asyncio.to_thread(self.store.cleanup, {ref.manifest_sha256 for ref in keep})
                case _:
                    self._start(action)

    def _start(self, action: ev.Action) -> None:
        runners: dict[type, Callable[[Any], Awaitable[ev.Event]]] = {
            ev.Download: self._download,
            ev.Verify: self._verify,
            ev.Stage: self._stage,
            ev.RunAcceptance: self._run_acceptance,
            ev.CheckActivationLock: self._check_lock,
            ev.Activate: self._activate,
            ev.RollBack: self._roll_back,
        }
        ticket: int = action.ticket  # type: ignore[union-attr]
        runner = runners[type(action)]

        async def outcome() -> None:
            try:
                event = await runner(action)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an unexpected error still answers the ticket
                log.exception("%s failed unexpectedly", type(action).__name__)
                event = _failure(action, f"{type(exc).__name__}: {exc}")
            finally:
                self._tasks.pop(ticket, None)
            self._events.put_nowait(event)

        self._tasks[ticket] = asyncio.create_task(outcome(), name=f"reconcile-{type(action).__name__}-{ticket}")

    # --- state file --------------------------------------------------------------------------------

    def _load_state(self) -> ReconcileState:
        try:
            text = self.state_path.read_bytes()
        except FileNotFoundError:
            return ReconcileState()
        try:
            return from_json(text)
        except StateFileError as exc:
            aside = self.state_path.with_name(f"{STATE_FILE}.corrupt-{int(self.clock())}")
            os.replace(self.state_path, aside)
            log.error("reconcile state file is unreadable (%s); kept as %s, starting fresh", exc, aside.name)
            self.emit(
                common_pb2.LifecycleEvent(
                    kind=common_pb2.LifecycleEvent.RECONCILE_FAILED,
                    at=epoch_timestamp(self.clock()),
                    reason=f"reconcile state file was unreadable ({exc}); kept as {aside.name}, started fresh",
                )
            )
            return ReconcileState()

    # --- actions -----------------------------------------------------------------------------------

    async def _download(self, action: ev.Download) -> ev.Event:
        target = action.target
        try:
            signed_bytes = await self.source.fetch_manifest(_ref(target))
        except FetchError as exc:
            return ev.DownloadFailed(action.ticket, str(exc), exc.retryable)
        try:
            signed = parse_signed_manifest(signed_bytes)
        except BundleError as exc:
            return ev.DownloadFailed(action.ticket, f"manifest: {exc}", retryable=True)
        got = hashlib.sha256(signed.manifest).hexdigest()
        if got != target.manifest_sha256:
            reason = f"manifest hashes to {got[:12]}, not {target.manifest_sha256[:12]} as the desired state says"
            return ev.DownloadFailed(action.ticket, reason, retryable=True)
        await asyncio.to_thread(self.store.write_manifest, target.manifest_sha256, signed_bytes)
        try:
            manifest = verify_signed_manifest(signed, self.trusted_keys)
        except BundleError:
            return ev.DownloadSucceeded(action.ticket)  # nothing to fetch for it: Verify refuses it, naming why
        total = sum(f.size_bytes for f in manifest.files)
        if total > target.max_bytes:
            reason = f"bundle is {total} bytes, over the desired state's max_bytes of {target.max_bytes}"
            return ev.DownloadFailed(action.ticket, reason, retryable=False)
        self._progress_sent_at, self._progress_complete = None, False
        done = 0  # bytes of the files already fetched
        for file in manifest.files:
            try:
                await self.source.fetch_blob(
                    file.sha256,
                    file.size_bytes,
                    self.store.blobs,
                    progress=lambda n, before=done: self._report_progress(before + n, total),
                )
            except FetchError as exc:
                return ev.DownloadFailed(action.ticket, f"{file.path}: {exc}", exc.retryable)
            done += file.size_bytes
        self._report_progress(total, total)  # the 100% report, even for a build with nothing to fetch
        return ev.DownloadSucceeded(action.ticket)

    def _report_progress(self, downloaded: int, total: int) -> None:
        """Report the current status with the byte counters set: at most once per ``PROGRESS_INTERVAL_SECONDS``,
        and once at 100%."""
        if self.state.phase is not Phase.DOWNLOADING:
            return
        now = self.monotonic()
        complete = downloaded >= total
        if self._progress_complete:
            return
        if (
            not complete
            and self._progress_sent_at is not None
            and now - self._progress_sent_at < PROGRESS_INTERVAL_SECONDS
        ):
            return
        self._progress_sent_at, self._progress_complete = now, complete
        report = ev.Report.of(self.state).to_proto()
        report.bytes_downloaded = min(downloaded, total)
        report.bytes_total = total
        self.report(report)

    def _verified_manifest(self, target: Target) -> tuple[bytes, bundle_pb2.BundleManifest]:
        """The target's signed manifest bytes and manifest, every check passed. Raises ``VerifyError``."""
        signed_bytes = self.store.read_manifest(target.manifest_sha256)
        if signed_bytes is None:
            raise VerifyError("the manifest is not downloaded")
        return signed_bytes, verified_manifest(signed_bytes, target.manifest_sha256, self.trusted_keys)

    def _verify_blocking(self, target: Target) -> None:
        _, manifest = self._verified_manifest(target)
        check_target(manifest, _ref(target))
        check_compatible(manifest, self.facts())
        active = next((m.ref for m in self.serving.active() if m.task == target.task), None)
        check_not_downgrade(_ref(target), active, rollback=target.rollback)
        check_files(manifest, self.store.blob_path)  # a corrupt cache entry is deleted: the next download refetches

    async def _verify(self, action: ev.Verify) -> ev.Event:
        try:
            await asyncio.to_thread(self._verify_blocking, action.target)
        except VerifyError as exc:
            return ev.VerifyFailed(action.ticket, str(exc))
        return ev.VerifySucceeded(action.ticket)

    def _stage_blocking(self, target: Target) -> None:
        signed_bytes, manifest = self._verified_manifest(target)
        self.store.stage(target.manifest_sha256, signed_bytes, manifest)

    async def _stage(self, action: ev.Stage) -> ev.Event:
        try:
            await asyncio.to_thread(self._stage_blocking, action.target)
        except (StagingError, VerifyError, OSError) as exc:
            return ev.StageFailed(action.ticket, f"staging failed: {exc}")
        return ev.StageSucceeded(action.ticket)

    def _staged(self, manifest_sha256: str) -> tuple[Path, bytes]:
        directory = self.store.build_dir(manifest_sha256)
        return directory, (directory / MANIFEST_BYTES_FILE).read_bytes()

    async def _run_acceptance(self, action: ev.RunAcceptance) -> ev.Event:
        directory, manifest_bytes = self._staged(action.target.manifest_sha256)
        facts = await asyncio.to_thread(self.facts)
        report = await asyncio.to_thread(
            self.acceptance,
            directory,
            bundle_pb2.BundleManifest.FromString(manifest_bytes),
            threads=facts.onnx_threads,
            memory_budget_bytes=facts.model_memory_budget_bytes,
            timeout_seconds=self.config.acceptance_timeout_seconds,
        )
        if not report.passed:
            return ev.AcceptanceFailed(action.ticket, report.reason)
        metrics = {
            "latency_p50_ms": report.latency_p50_ms,
            "latency_p95_ms": report.latency_p95_ms,
            "load_time_ms": report.load_time_ms,
            "peak_rss_bytes": float(report.peak_rss_bytes),
        }
        return ev.AcceptancePassed(action.ticket, metrics)

    async def _check_lock(self, action: ev.CheckActivationLock) -> ev.Event:
        if self.serving.locks.held(self.monotonic()):
            return ev.LockStillHeld(action.ticket)
        return ev.LockFree(action.ticket)

    async def _activate(self, action: ev.Activate) -> ev.Event:
        target = action.target
        try:
            directory, manifest_bytes = self._staged(target.manifest_sha256)
            await asyncio.to_thread(self.serving.activate, target.task, _ref(target), directory, manifest_bytes)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types for a build that does not load
            return ev.ActivationFailed(action.ticket, str(exc)[:300])
        return ev.ActivationSucceeded(action.ticket)

    async def _roll_back(self, action: ev.RollBack) -> ev.Event:
        if action.to is None:
            return ev.RollbackSucceeded(action.ticket)  # nothing to swap back to; see the module docstring
        try:
            directory, manifest_bytes = self._staged(action.to.manifest_sha256)
            await asyncio.to_thread(self.serving.activate, action.task, action.to.to_proto(), directory, manifest_bytes)
        except Exception as exc:  # noqa: BLE001
            return ev.RollbackFailed(action.ticket, str(exc)[:300])
        return ev.RollbackSucceeded(action.ticket)


def _failure(action: ev.Action, reason: str) -> ev.Event:
    """The failure outcome of ``action`` for an error its runner did not expect."""
    ticket: int = action.ticket  # type: ignore[union-attr]
    match action:
        case ev.Download():
            return ev.DownloadFailed(ticket, reason, retryable=True)
        case ev.Verify():
            return ev.VerifyFailed(ticket, reason)
        case ev.Stage():
            return ev.StageFailed(ticket, reason)
        case ev.RunAcceptance():
            return ev.AcceptanceFailed(ticket, reason)
        case ev.CheckActivationLock():
            return ev.LockStillHeld(ticket)
        case ev.Activate():
            return ev.ActivationFailed(ticket, reason)
        case _:
            return ev.RollbackFailed(ticket, reason)
