"""What the device serves right now: one onnxruntime session per task slot, swapped atomically.

Invariants:
- A request is answered by exactly one build: it takes the slot's current
  ``LoadedModel`` once and runs on it to the end, so activation never cuts a
  request in two; new requests see the new build as soon as the swap is done.
- The new session is fully loaded before the swap; a build that fails to
  load never becomes current.
- What is active survives restarts: ``<data_dir>/models/active/<task>.json``
  (written atomically) names the build, and ``restore()`` loads it at start,
  so a device serves its last good model even while offline.
- Activation locks: apps may hold a lock (with a TTL) while a swap would be
  unsafe; the reconciler asks ``locks.held(now)`` before activating.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from protos.edgefleet.v1 import bundle_pb2, common_pb2

ACTIVE_DIR = "models/active"
MAX_LOCKS = 64
MAX_LOCK_TTL_SECONDS = 3600


@dataclass
class LoadedModel:
    task: str
    ref: common_pb2.ModelRef
    manifest: bundle_pb2.BundleManifest
    directory: Path
    session: object  # onnxruntime.InferenceSession
    recent_latency_ms: float = float("inf")  # unknown until the first run: assume slow
    output_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: dict) -> tuple[list, float]:
        """Run the model; returns (outputs, latency in ms)."""
        started = time.perf_counter()
        outputs = self.session.run(None, feeds)
        latency_ms = (time.perf_counter() - started) * 1000
        self.recent_latency_ms = latency_ms
        return outputs, latency_ms


def load_session(model_path: Path, threads: int) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


@dataclass
class ActivationLocks:
    """Leases held by apps on the device; expired leases do not count."""

    _locks: dict[str, tuple[str, float]] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, holder: str, ttl_seconds: int, now: float) -> str:
        if not 1 <= ttl_seconds <= MAX_LOCK_TTL_SECONDS:
            raise ValueError(f"ttl_seconds must be between 1 and {MAX_LOCK_TTL_SECONDS}")
        if not holder or len(holder) > 128:
            raise ValueError("holder must be 1 to 128 characters")
        with self._guard:
            self._expire(now)
            if len(self._locks) >= MAX_LOCKS:
                raise ValueError(f"too many activation locks held (max {MAX_LOCKS})")
            lock_id = secrets.token_hex(8)
            self._locks[lock_id] = (holder, now + ttl_seconds)
            return lock_id

    def release(self, lock_id: str) -> bool:
        with self._guard:
            return self._locks.pop(lock_id, None) is not None

    def held(self, now: float) -> int:
        with self._guard:
            self._expire(now)
            return len(self._locks)

    def _expire(self, now: float) -> None:
        for lock_id in [k for k, (_, until) in self._locks.items() if until <= now]:
            del self._locks[lock_id]


class Serving:
    def __init__(self, data_dir: Path, *, threads: int = 0) -> None:
        self.data_dir = data_dir
        self.threads = threads
        self.locks = ActivationLocks()
        self._slots: dict[str, LoadedModel] = {}
        self._guard = threading.Lock()

    def current(self, task: str) -> LoadedModel | None:
        with self._guard:
            return self._slots.get(task)

    def active(self) -> list[LoadedModel]:
        with self._guard:
            return list(self._slots.values())

    def activate(self, task: str, ref: common_pb2.ModelRef, directory: Path, manifest_bytes: bytes) -> LoadedModel:
        """Load the build, swap it in, and record it as active. Raises on a build that does not load."""
        manifest = bundle_pb2.BundleManifest.FromString(manifest_bytes)
        session = load_session(directory / manifest.model_file, self.threads)
        loaded = LoadedModel(task=task, ref=ref, manifest=manifest, directory=directory, session=session)
        self._write_pointer(task, ref, directory)
        with self._guard:
            self._slots[task] = loaded
        return loaded

    def restore(self) -> list[str]:
        """Load every recorded active build; returns problems (a bad pointer leaves that slot empty)."""
        problems = []
        folder = self.data_dir / ACTIVE_DIR
        for pointer in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                record = json.loads(pointer.read_text())
                directory = Path(record["directory"])
                ref = common_pb2.ModelRef(**record["ref"])
                manifest = bundle_pb2.BundleManifest.FromString((directory / "manifest.pb").read_bytes())
                session = load_session(directory / manifest.model_file, self.threads)
            except Exception as exc:  # noqa: BLE001 - a broken slot must not stop the others
                problems.append(f"{pointer.name}: {exc}")
                continue
            with self._guard:
                self._slots[record["task"]] = LoadedModel(record["task"], ref, manifest, directory, session)
        return problems

    def _write_pointer(self, task: str, ref: common_pb2.ModelRef, directory: Path) -> None:
        folder = self.data_dir / ACTIVE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "task": task,
            "directory": str(directory),
            "ref": {
                "name": ref.name,
                "version": ref.version,
                "variant": ref.variant,
                "manifest_sha256": ref.manifest_sha256,
            },
        }
        tmp = folder / f".{task}.json.tmp"
        with tmp.open("w") as file:
            json.dump(record, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, folder / f"{task}.json")
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
