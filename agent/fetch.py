"""Downloading artifacts by content hash: resumable, size-capped, with stall and throughput rules.

Invariants:
- Bytes land in ``<sha>.part`` and only a file whose sha256 matches appears
  under its final name ``<sha>`` (atomic rename): a crash or a cut link
  leaves at most a partial file, from which the next attempt resumes.
- The server can never make the device store more than the manifest's size
  ("endless data"), nor keep a download hanging ("slow retrieval"): a chunk
  must arrive within ``stall_seconds`` and, after a grace period, the average
  rate must stay above ``min_bytes_per_second``.
- ``progress`` (optional) is called with the bytes of the blob on disk so far, a resumed
  partial file included: once at the start, after each chunk, and with ``size`` at the end.

``fetch_blob`` fetches over gRPC (``AgentGateway.FetchArtifact``); ``agent.fetch_https`` over the
control plane's HTTPS artifact port. Both keep these invariants with the shared steps below:
``stored_blob``, ``resume_part``, ``check_throughput`` and ``finish_part``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.errors import AgentError
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc
from protos.limits import MAX_ARTIFACT_CHUNK_BYTES


class FetchError(AgentError):
    """A download failed; ``retryable`` says whether trying again can help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class FetchPolicy:
    stall_seconds: float = 30.0
    min_bytes_per_second: float = 1024.0
    throughput_grace_seconds: float = 20.0
    chunk_bytes: int = MAX_ARTIFACT_CHUNK_BYTES


@dataclass(frozen=True)
class FetchResult:
    path: Path
    bytes_transferred: int  # this attempt only: a resume transfers just the rest
    resumed_from: int


@dataclass
class PartialBlob:
    """A download in progress: its part file, the bytes already in it, and their running sha256."""

    path: Path
    offset: int
    digest: hashlib._Hash


# --- the steps every transport shares ---------------------------------------------------------------


def stored_blob(sha256: str, size: int, directory: Path, progress: Callable[[int], None] | None) -> FetchResult | None:
    """The blob's result if it is already whole under its final name (``progress`` is told ``size``), else None."""
    final = directory / sha256
    if not final.exists():
        return None
    if progress is not None:
        progress(size)
    return FetchResult(final, 0, size)


async def resume_part(sha256: str, size: int, directory: Path, progress: Callable[[int], None] | None) -> PartialBlob:
    """Open the download of ``sha256``: the part file's bytes are kept (a part longer than ``size`` is
    discarded), ``progress`` is told how many, and they are hashed once, in a worker thread."""
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{sha256}.part"
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    if progress is not None:
        progress(offset)
    digest = await asyncio.to_thread(_sha256_prefix, part) if offset else hashlib.sha256()
    return PartialBlob(part, offset, digest)


def stall_error(sha256: str, policy: FetchPolicy) -> FetchError:
    return FetchError(
        f"download of {sha256[:12]} stalled: no data for {policy.stall_seconds:g} s",
        retryable=True,
    )


def oversize_error(sha256: str, size: int) -> FetchError:
    return FetchError(f"server sent more than the manifest's {size} bytes for {sha256[:12]}: refused", retryable=False)


def check_throughput(sha256: str, received: int, elapsed: float, policy: FetchPolicy) -> None:
    """Raise ``FetchError`` (retryable) if, past the grace period, the average rate is under the policy's minimum."""
    if elapsed > policy.throughput_grace_seconds and received / elapsed < policy.min_bytes_per_second:
        raise FetchError(
            f"download of {sha256[:12]} too slow: {received / elapsed:.0f} B/s < {policy.min_bytes_per_second:.0f} B/s",
            retryable=True,
        )


def finish_part(partial: PartialBlob, sha256: str, size: int, directory: Path) -> Path:
    """Check the (synced) part file's size and hash, and rename it to its final name, which is returned.

    Raises ``FetchError`` (retryable): short (the part is kept for a resume), or bytes that do not hash
    to ``sha256`` (the part is deleted).
    """
    if partial.offset != size:
        raise FetchError(f"download of {sha256[:12]} ended at {partial.offset} of {size} bytes", retryable=True)
    actual = partial.digest.hexdigest()
    if actual != sha256:
        partial.path.unlink()
        raise FetchError(f"downloaded bytes hash to {actual[:12]}, not {sha256[:12]}: discarded", retryable=True)
    final = directory / sha256
    os.replace(partial.path, final)
    return final


SYNC_EVERY_BYTES = 8 << 20  # a download asks BackgroundSync for a sync after this many bytes written
_fdatasync = getattr(os, "fdatasync", os.fsync)


class BackgroundSync:
    """``fdatasync`` of a part file in a thread of its own, started whenever ``request`` is called: the disk
    writes what arrived while more arrives, and the final ``fsync`` has little left to wait for; the writer
    never waits for it. ``stop`` must be called before the file is closed: it waits for a sync in progress
    and returns the first sync error (Linux reports a writeback error to one sync call only, so it must not
    be lost here)."""

    def __init__(self, fd: int, sha256: str) -> None:
        self._fd = fd
        self._wanted = threading.Event()
        self._stopping = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=f"fetch-{sha256[:12]}-sync", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> OSError | None:
        """End the thread once a sync in progress is done; returns the first sync error, if any."""
        self._stopping = True
        self._wanted.set()
        self._thread.join()
        return self._error

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                _fdatasync(self._fd)
            except OSError as exc:
                self._error = self._error or exc


async def wait_out(future: asyncio.Future) -> None:
    """Wait until ``future`` (work in a thread on an open file) is done, even when this task is cancelled
    meanwhile: the file must not be closed under a write or a sync still running. A cancellation that came
    is raised once it is done; the future's own outcome is left to the caller."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _flush_and_sync(out) -> None:
    out.flush()
    os.fsync(out.fileno())


def _write_and_hash(out, digest, data: bytes) -> None:
    """Append ``data`` to the unbuffered file ``out`` (all of it) and add it to ``digest``."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]
    digest.update(data)


def _sha256_prefix(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest


# --- over gRPC ---------------------------------------------------------------------------------------


async def fetch_blob(
    stub: agent_pb2_grpc.AgentGatewayStub,
    sha256: str,
    size: int,
    directory: Path,
    *,
    policy: FetchPolicy = FetchPolicy(),
    progress: Callable[[int], None] | None = None,
) -> FetchResult:
    """Fetch blob sha256 of exactly size bytes into directory. Raises FetchError."""
    if (stored := stored_blob(sha256, size, directory, progress)) is not None:
        return stored
    # The hash runs as bytes arrive; on a resume, the partial file is hashed once first.
    partial = await resume_part(sha256, size, directory, progress)
    part, digest = partial.path, partial.digest
    resumed_from = offset = partial.offset
    started = time.monotonic()
    received = 0
    if offset < size:
        call = stub.FetchArtifact(
            agent_pb2.FetchArtifactRequest(sha256=sha256, offset=offset, chunk_bytes=policy.chunk_bytes)
        )
        chunks = call.__aiter__()
        # While the next chunk arrives, the previous one is written and hashed in a worker thread
        # (one call: write, then hash, both without the GIL); a new chunk waits for it, so order holds.
        loop = asyncio.get_running_loop()
        writing: asyncio.Future | None = None
        try:
            with part.open("ab", buffering=0) as out:
                syncer = BackgroundSync(out.fileno(), sha256)
                unsynced = 0
                try:
                    while True:
                        try:
                            async with asyncio.timeout(policy.stall_seconds):
                                chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                        except TimeoutError as exc:
                            raise stall_error(sha256, policy) from exc
                        if chunk.offset != offset:
                            raise FetchError(f"server sent offset {chunk.offset}, expected {offset}", retryable=True)
                        data = chunk.data  # each access of a bytes field copies it: once
                        del chunk
                        if offset + len(data) > size:
                            raise oversize_error(sha256, size)
                        if writing is not None:
                            await asyncio.shield(writing)  # cancelled, the finally below still waits for it
                        writing = loop.run_in_executor(None, _write_and_hash, out, digest, data)
                        offset += len(data)
                        received += len(data)
                        unsynced += len(data)
                        if unsynced >= SYNC_EVERY_BYTES:  # what is written by now reaches the disk meanwhile
                            syncer.request()
                            unsynced = 0
                        del data
                        if progress is not None:
                            progress(offset)
                        check_throughput(sha256, received, time.monotonic() - started, policy)
                    if writing is not None:
                        await asyncio.shield(writing)
                        writing = None
                finally:  # never close the file under a write or a sync still running
                    if writing is not None:
                        await wait_out(writing)
                        if not writing.cancelled():
                            writing.exception()  # retrieved: the exception on its way out is the one to see
                    stopping = asyncio.ensure_future(asyncio.to_thread(syncer.stop))
                    await wait_out(stopping)
                if (error := stopping.result()) is not None:
                    raise error
                await asyncio.to_thread(_flush_and_sync, out)
        except grpc.aio.AioRpcError as exc:
            retryable = exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
            raise FetchError(f"download of {sha256[:12]} failed: {exc.details()}", retryable=retryable) from exc
        finally:
            call.cancel()
    partial.offset = offset
    final = finish_part(partial, sha256, size, directory)
    return FetchResult(final, received, resumed_from)
