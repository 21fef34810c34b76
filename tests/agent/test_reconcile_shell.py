"""Workflow tests of the reconcile shell: an in-memory artifact source, real tiny ONNX bundles with real
ed25519 signatures, the real ``Serving`` and the real acceptance test.

Each test states the behaviour it checks; a failed install must leave the previous build serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.acceptance import run_acceptance
from agent.backoff import Backoff
from agent.fetch import FetchError, FetchResult
from agent.reconcile_shell import STATE_FILE, GatewaySource, ReconcileShell
from agent.reconcile_state import SETTLED, Phase
from agent.reconciler import ReconcilerConfig
from agent.serving import Serving
from protos.bundle_io import read_bundle_dir
from protos.bundles import key_id, raw_public_key, sign_manifest
from protos.edgefleet.v1 import agent_pb2, bundle_pb2, common_pb2
from tests.bundles import GOLDEN_INPUT, golden_case, make_bundle_dir

TASK = "generic"
SETTLE_SECONDS = 60.0
CONFIG = ReconcilerConfig(
    download_backoff=Backoff(initial_seconds=0.05, max_seconds=0.2, multiplier=2.0, jitter=0.0),
    acceptance_timeout_seconds=120.0,
)
PUBLISHER = Ed25519PrivateKey.generate()
TRUSTED = {key_id(raw_public_key(PUBLISHER)): raw_public_key(PUBLISHER)}


def device_facts(architecture: str = "x86_64") -> common_pb2.DeviceFacts:
    return common_pb2.DeviceFacts(
        architecture=architecture,
        onnxruntime_version=onnxruntime.__version__,
        execution_providers=["CPUExecutionProvider"],
        onnx_threads=1,
    )


@dataclass
class FakeSource:
    """The control plane's artifact service, in memory, with injectable faults."""

    manifests: dict[str, bytes] = field(default_factory=dict)  # manifest_sha256 -> serialized SignedManifest
    blobs: dict[str, bytes] = field(default_factory=dict)
    blob_faults: list[BaseException] = field(default_factory=list)  # raised by the next fetch_blob calls
    blob_calls: int = 0
    hang_blobs: bool = False
    on_manifest: list = field(default_factory=list)  # callables run at each fetch_manifest
    # Progress simulation: blobs arrive in chunks of chunk_bytes, each advancing clock[0] by chunk_seconds;
    # on_disk[sha] bytes of a blob are already on disk (a resumed download).
    chunk_bytes: int = 0
    chunk_seconds: float = 0.0
    clock: list[float] = field(default_factory=lambda: [0.0])
    on_disk: dict[str, int] = field(default_factory=dict)
    progress_calls: int = 0

    async def fetch_manifest(self, ref: common_pb2.ModelRef) -> bytes:
        for hook in self.on_manifest:
            hook()
        return self.manifests[ref.manifest_sha256]

    async def fetch_blob(self, sha256: str, size: int, directory: Path, *, progress=None) -> FetchResult:
        self.blob_calls += 1
        if self.hang_blobs:
            await asyncio.Event().wait()
        if self.blob_faults:
            raise self.blob_faults.pop(0)
        if progress is not None:
            offset = self.on_disk.get(sha256, 0)
            while True:
                progress(offset)
                self.progress_calls += 1
                if offset >= size:
                    break
                self.clock[0] += self.chunk_seconds
                offset = min(size, offset + (self.chunk_bytes or size))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / sha256).write_bytes(self.blobs[sha256][:size])
        return FetchResult(directory / sha256, size, 0)

    def publish(
        self,
        tmp: Path,
        version: int,
        *,
        scale: float = 2.0,
        key: Ed25519PrivateKey = PUBLISHER,
        golden_scale: float | None = None,
        break_signature: bool = False,
        tamper_blob: bool = False,
        requirements: dict | None = None,
    ) -> agent_pb2.DesiredModel:
        """Build, sign and serve a tiny bundle; returns the desired model that names it."""
        extra = {} if requirements is None else {"requirements": {"opset": 13, **requirements}}
        bundle = make_bundle_dir(tmp / f"bundle-{version}-{scale}", version=version, scale=scale, manifest=extra)
        manifest, files = read_bundle_dir(bundle)
        if golden_scale is not None:
            del manifest.golden[:]
            manifest.golden.append(golden_case(golden_scale, 1.0))
        signed = sign_manifest(manifest, key)
        if break_signature:
            signed.signatures[0].signature = bytes(64)
        for file in manifest.files:
            data = files[file.path].read_bytes()
            self.blobs[file.sha256] = data[:-1] + bytes([data[-1] ^ 1]) if tamper_blob else data
        sha = hashlib.sha256(signed.manifest).hexdigest()
        self.manifests[sha] = signed.SerializeToString()
        ref = common_pb2.ModelRef(name=manifest.name, version=version, variant=manifest.variant, manifest_sha256=sha)
        return agent_pb2.DesiredModel(task=TASK, model=ref, max_bytes=10_000_000)


class Device:
    """One agent process: a shell over ``data_dir`` with a real Serving, recording reports and events."""

    def __init__(
        self, data_dir: Path, source: FakeSource, *, facts=None, acceptance=run_acceptance, monotonic=None
    ) -> None:
        self.serving = Serving(data_dir, threads=1)
        self.serving.restore()
        self.reports: list[agent_pb2.StatusReport] = []
        self.events: list[common_pb2.LifecycleEvent] = []
        self.shell = ReconcileShell(
            data_dir=data_dir,
            facts=lambda: facts or device_facts(),
            trusted_keys=TRUSTED,
            source=source,
            serving=self.serving,
            acceptance=acceptance,
            report=self.reports.append,
            emit=self.events.append,
            config=CONFIG,
            **({} if monotonic is None else {"monotonic": monotonic}),
        )
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.shell.run(self.stop))

    async def settle(self, generation: int) -> Phase:
        """Wait (up to SETTLE_SECONDS) until ``generation`` is settled; returns its phase."""
        async with asyncio.timeout(SETTLE_SECONDS):
            while not (self.shell.state.generation == generation and self.shell.state.phase in SETTLED):
                await asyncio.sleep(0.02)
        return self.shell.state.phase

    async def deploy(self, generation: int, *models: agent_pb2.DesiredModel) -> Phase:
        self.shell.submit_desired(agent_pb2.DesiredState(generation=generation, models=models))
        return await self.settle(generation)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)

    def answer(self) -> list[float]:
        loaded = self.serving.current(TASK)
        assert loaded is not None
        outputs, _ = loaded.run({"x": GOLDEN_INPUT})
        return np.asarray(outputs[0]).ravel().tolist()

    def kinds(self) -> list[str]:
        return [common_pb2.LifecycleEvent.Kind.Name(e.kind) for e in self.events]


def _y(scale: float) -> list[float]:
    return (GOLDEN_INPUT * np.float32(scale) + np.float32(1.0)).ravel().tolist()


def test_happy_path_activates_the_build_and_it_answers(tmp_path):
    """A signed, compatible, accepted build becomes active, answers, and is reported COMMITTED."""

    async def scenario():
        source = FakeSource()
        device = Device(tmp_path / "data", source)
        phase = await device.deploy(1, source.publish(tmp_path, 1))
        await device.close()
        return device, phase

    device, phase = asyncio.run(scenario())
    assert phase is Phase.COMMITTED
    assert device.answer() == _y(2.0)
    assert device.kinds() == ["DOWNLOAD_STARTED", "DOWNLOADED", "STAGED", "ACCEPTANCE_PASSED", "ACTIVATED"]
    assert device.reports[-1].phase == agent_pb2.COMMITTED
    assert device.reports[-1].active[0].model.version == 1
    state = json.loads((tmp_path / "data" / STATE_FILE).read_text())
    assert state["phase"] == "COMMITTED"


def test_download_progress_is_reported_rate_limited_up_to_100_percent(tmp_path):
    """While a build downloads, the shell reports DOWNLOADING with the bytes on disk over all the build's
    files (a resumed file's bytes included) against the manifest's total: at most once a second, and
    once at 100%."""

    async def scenario():
        source = FakeSource(chunk_bytes=16, chunk_seconds=0.3)
        device = Device(tmp_path / "data", source, monotonic=lambda: source.clock[0])
        model = source.publish(tmp_path, 1)
        manifest = bundle_pb2.BundleManifest.FromString(
            bundle_pb2.SignedManifest.FromString(source.manifests[model.model.manifest_sha256]).manifest
        )
        first = manifest.files[0]
        source.on_disk[first.sha256] = first.size_bytes // 2  # half of it survived an earlier attempt
        phase = await device.deploy(1, model)
        await device.close()
        return device, source, phase, sum(f.size_bytes for f in manifest.files), first.size_bytes // 2

    device, source, phase, total, resumed = asyncio.run(scenario())
    assert phase is Phase.COMMITTED
    progress = [r for r in device.reports if r.bytes_total]
    assert all(r.phase == agent_pb2.DOWNLOADING and r.generation == 1 for r in progress)
    assert all(r.bytes_total == total for r in progress)
    downloaded = [r.bytes_downloaded for r in progress]
    assert downloaded[0] == resumed  # the first report counts the bytes already on disk
    assert downloaded == sorted(downloaded) and downloaded[-1] == total
    assert downloaded.count(total) == 1  # 100% once
    # Rate-limited: each chunk takes 0.3 s, a report goes out at most once a second (plus the 100% one).
    elapsed = source.clock[0]
    assert 2 <= len(progress) <= elapsed / 1.0 + 2 < source.progress_calls
    # The reports after the download carry no byte counters.
    after = device.reports[device.reports.index(progress[-1]) + 1 :]
    assert after and all(r.bytes_total == 0 and r.phase != agent_pb2.DOWNLOADING for r in after)


@pytest.mark.parametrize(
    ("publish_v2", "kind", "reason"),
    [
        ({"break_signature": True}, "VERIFY_FAILED", "is invalid: the manifest was changed after signing"),
        ({"key": Ed25519PrivateKey.generate()}, "VERIFY_FAILED", "not signed by a trusted publisher key"),
        ({"tamper_blob": True}, "VERIFY_FAILED", "sha256 mismatch for model.onnx"),
        ({"golden_scale": 5.0}, "ACCEPTANCE_FAILED", "golden case 'ramp': output 'y' differs"),
        ({"requirements": {"architectures": ["armv7l"]}}, "VERIFY_FAILED", "bundle is for armv7l"),
    ],
    ids=["bad-signature", "untrusted-key", "tampered-blob", "wrong-golden-outputs", "incompatible-device"],
)
def test_refused_build_leaves_the_previous_one_serving(tmp_path, publish_v2, kind, reason):
    """A refused v2 fails the generation with an event naming the reason; v1 keeps serving."""

    async def scenario():
        source = FakeSource()
        device = Device(tmp_path / "data", source)
        assert await device.deploy(1, source.publish(tmp_path, 1, scale=2.0)) is Phase.COMMITTED
        phase = await device.deploy(2, source.publish(tmp_path, 2, scale=3.0, **publish_v2))
        await device.close()
        return device, phase

    device, phase = asyncio.run(scenario())
    assert phase is Phase.FAILED
    assert device.kinds()[-1] == kind
    assert reason in device.events[-1].reason
    assert device.events[-1].model.version == 2
    assert device.serving.current(TASK).ref.version == 1
    assert device.answer() == _y(2.0)
    assert device.reports[-1].phase == agent_pb2.FAILED and reason in device.reports[-1].failure_reason


def test_downgrade_is_refused_and_the_newer_build_keeps_serving(tmp_path):
    """Asking for v1 while v2 is active (without rollback) fails VERIFY_FAILED; v2 keeps serving."""

    async def scenario():
        source = FakeSource()
        device = Device(tmp_path / "data", source)
        assert await device.deploy(1, source.publish(tmp_path, 2, scale=3.0)) is Phase.COMMITTED
        phase = await device.deploy(2, source.publish(tmp_path, 1, scale=2.0))
        await device.close()
        return device, phase

    device, phase = asyncio.run(scenario())
    assert phase is Phase.FAILED
    assert device.kinds()[-1] == "VERIFY_FAILED"
    assert "downgrade from v2 to v1 refused" in device.events[-1].reason
    assert device.answer() == _y(3.0)


def test_retryable_fetch_failure_is_retried_and_then_succeeds(tmp_path):
    """A cut download is retried after the backoff and the build is then activated."""

    async def scenario():
        source = FakeSource(blob_faults=[FetchError("connection reset", retryable=True)])
        device = Device(tmp_path / "data", source)
        phase = await device.deploy(1, source.publish(tmp_path, 1))
        await device.close()
        return device, source, phase

    device, source, phase = asyncio.run(scenario())
    assert phase is Phase.COMMITTED
    assert source.blob_calls == 2
    assert device.answer() == _y(2.0)


def test_non_retryable_fetch_failure_fails_the_generation(tmp_path):
    """A download the server refuses for good fails RECONCILE_FAILED with its reason."""

    async def scenario():
        source = FakeSource(blob_faults=[FetchError("sent more than the manifest's bytes", retryable=False)])
        device = Device(tmp_path / "data", source)
        phase = await device.deploy(1, source.publish(tmp_path, 1))
        await device.close()
        return device, phase

    device, phase = asyncio.run(scenario())
    assert phase is Phase.FAILED
    assert device.kinds()[-1] == "RECONCILE_FAILED"
    assert "sent more than the manifest's bytes" in device.events[-1].reason


def test_crash_in_the_middle_of_a_download_converges_after_restart(tmp_path):
    """A process stopped mid-download resumes from the persisted state in a new process and converges."""
    data_dir = tmp_path / "data"

    async def first_life():
        source = FakeSource(hang_blobs=True)
        device = Device(data_dir, source)
        device.shell.submit_desired(agent_pb2.DesiredState(generation=1, models=[source.publish(tmp_path, 1)]))
        async with asyncio.timeout(SETTLE_SECONDS):
            while source.blob_calls == 0:
                await asyncio.sleep(0.01)
        await device.close()  # the "crash": nothing after the download started runs
        return source

    async def second_life(source: FakeSource):
        source.hang_blobs = False
        device = Device(data_dir, source)
        phase = await device.settle(1)
        await device.close()
        return device, phase

    source = asyncio.run(first_life())
    persisted = json.loads((data_dir / STATE_FILE).read_text())
    assert persisted["phase"] == "DOWNLOADING"
    device, phase = asyncio.run(second_life(source))
    assert phase is Phase.COMMITTED
    assert device.kinds()[0] == "AGENT_CRASH_RECOVERED"
    assert device.answer() == _y(2.0)


def test_state_is_persisted_before_each_action_runs(tmp_path):
    """When a collaborator is called, the state file already names the phase and ticket it works for."""
    data_dir = tmp_path / "data"
    seen: list[tuple[str, int | None]] = []

    def record() -> None:
        state = json.loads((data_dir / STATE_FILE).read_text())
        seen.append((state["phase"], state["awaiting"]))

    def acceptance(*args, **kwargs):
        record()
        return run_acceptance(*args, **kwargs)

    async def scenario():
        source = FakeSource(on_manifest=[record])
        device = Device(data_dir, source, acceptance=acceptance)
        phase = await device.deploy(1, source.publish(tmp_path, 1))
        await device.close()
        return phase

    assert asyncio.run(scenario()) is Phase.COMMITTED
    assert [phase for phase, _ in seen] == ["DOWNLOADING", "ACCEPTANCE_TESTING"]
    assert all(awaiting is not None for _, awaiting in seen)


def test_corrupt_state_file_is_kept_aside_and_the_shell_starts_fresh(tmp_path):
    """An unreadable state file is moved aside, reported as an event, and a desired state still converges."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / STATE_FILE).write_text('{"schema": 1, "phase": "DOWNLO')

    async def scenario():
        source = FakeSource()
        device = Device(data_dir, source)
        phase = await device.deploy(1, source.publish(tmp_path, 1))
        await device.close()
        return device, phase

    device, phase = asyncio.run(scenario())
    assert phase is Phase.COMMITTED
    assert device.kinds()[0] == "RECONCILE_FAILED"
    assert "reconcile state file was unreadable" in device.events[0].reason
    aside = [p.name for p in data_dir.iterdir() if p.name.startswith(f"{STATE_FILE}.corrupt-")]
    assert len(aside) == 1


@pytest.mark.parametrize(
    ("code", "retryable"), [(grpc.StatusCode.NOT_FOUND, False), (grpc.StatusCode.UNAVAILABLE, True)]
)
def test_gateway_source_maps_grpc_errors_to_fetch_errors(code, retryable):
    """A gRPC failure of FetchManifest becomes a FetchError whose retryable flag follows the status code."""

    class Stub:
        async def FetchManifest(self, request, timeout):
            raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="no such build")

    ref = common_pb2.ModelRef(name="tiny", version=1, variant="fp32", manifest_sha256="a" * 64)
    with pytest.raises(FetchError, match="no such build") as caught:
        asyncio.run(GatewaySource(Stub()).fetch_manifest(ref))
    assert caught.value.retryable is retryable
