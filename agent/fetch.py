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
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
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
    final = directory / sha256
    if final.exists():
        if progress is not None:
            progress(size)
        return FetchResult(final, 0, size)
    directory.mkdir(parents=True, exist_ok=True)
    part = directory / f"{sha256}.part"
    offset = part.stat().st_size if part.exists() else 0
    if offset > size:
        part.unlink()
        offset = 0
    resumed_from = offset
    if progress is not None:
        progress(offset)
    # The hash runs as bytes arrive; on a resume, the partial file is hashed once first.
    digest = await asyncio.to_thread(_sha256_prefix, part) if offset else hashlib.sha256()
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
                try:
                    while True:
                        try:
                            async with asyncio.timeout(policy.stall_seconds):
                                chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                        except TimeoutError as exc:
                            raise FetchError(
                                f"download of {sha256[:12]} stalled: no data for {policy.stall_seconds:.0f} s",
                                retryable=True,
                            ) from exc
                        if chunk.offset != offset:
                            raise FetchError(f"server sent offset {chunk.offset}, expected {offset}", retryable=True)
                        data = chunk.data  # each access of a bytes field copies it: once
                        del chunk
                        if offset + len(data) > size:
                            raise FetchError(
                                f"server sent more than the manifest's {size} bytes for {sha256[:12]}: refused",
                                retryable=False,
                            )
                        if writing is not None:
                            await asyncio.shield(writing)  # cancelled, the finally below still waits for it
                        writing = loop.run_in_executor(None, _write_and_hash, out, digest, data)
                        offset += len(data)
                        received += len(data)
                        del data
                        if progress is not None:
                            progress(offset)
                        elapsed = time.monotonic() - started
                        if (
                            elapsed > policy.throughput_grace_seconds
                            and received / elapsed < policy.min_bytes_per_second
                        ):
                            raise FetchError(
                                f"download of {sha256[:12]} too slow: {received / elapsed:.0f} B/s "
                                f"< {policy.min_bytes_per_second:.0f} B/s",
                                retryable=True,
                            )
                    if writing is not None:
                        await asyncio.shield(writing)
                        writing = None
                finally:  # never close the file under a write still running
                    if writing is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.shield(writing)
                await asyncio.to_thread(_flush_and_sync, out)
        except grpc.aio.AioRpcError as exc:
            retryable = exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
            raise FetchError(f"download of {sha256[:12]} failed: {exc.details()}", retryable=retryable) from exc
        finally:
            call.cancel()
    if offset != size:
        raise FetchError(f"download of {sha256[:12]} ended at {offset} of {size} bytes", retryable=True)
    actual = digest.hexdigest()
    if actual != sha256:
        part.unlink()
        raise FetchError(f"downloaded bytes hash to {actual[:12]}, not {sha256[:12]}: discarded", retryable=True)
    os.replace(part, final)
    return FetchResult(final, received, resumed_from)
