"""The download rules against a misbehaving server: endless data is cut at the manifest's size, a
stalled or crawling transfer is abandoned (retryably), bad offsets and wrong bytes are refused."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from agent.fetch import FetchError, FetchPolicy, fetch_blob
from protos.edgefleet.v1 import agent_pb2

DATA = bytes(range(256)) * 64  # 16 KiB
SHA = hashlib.sha256(DATA).hexdigest()


class FakeCall:
    """What a FetchArtifact stream call looks like to fetch_blob: async iteration plus cancel()."""

    def __init__(self, chunks, *, delay: float = 0.0, stall_after: int | None = None) -> None:
        self.chunks, self.delay, self.stall_after = chunks, delay, stall_after

    def __aiter__(self):
        return self._gen()

    async def _gen(self):
        for index, chunk in enumerate(self.chunks):
            if self.stall_after is not None and index >= self.stall_after:
                await asyncio.sleep(3600)
            await asyncio.sleep(self.delay)
            yield chunk

    def cancel(self) -> None:
        pass


class FakeStub:
    def __init__(self, call: FakeCall) -> None:
        self.call = call

    def FetchArtifact(self, request):  # noqa: N802 - gRPC name
        return self.call


def _chunks(data: bytes, size: int = 4096, start: int = 0):
    return [
        agent_pb2.ArtifactChunk(offset=start + i, data=data[i : i + size], total_bytes=len(DATA))
        for i in range(0, len(data), size)
    ]


SIZE = len(DATA)
DEFAULT_POLICY = FetchPolicy()


def _fetch(call, tmp_path, *, size=SIZE, sha=SHA, policy=DEFAULT_POLICY):
    return asyncio.run(fetch_blob(FakeStub(call), sha, size, tmp_path, policy=policy))


def test_whole_blob_is_stored_under_its_hash(tmp_path):
    result = _fetch(FakeCall(_chunks(DATA)), tmp_path)
    assert result.path == tmp_path / SHA and result.path.read_bytes() == DATA
    assert not (tmp_path / f"{SHA}.part").exists()


def test_endless_data_is_cut_at_the_manifest_size(tmp_path):
    with pytest.raises(FetchError, match="more than the manifest's") as refused:
        _fetch(FakeCall(_chunks(DATA + b"x" * 8192)), tmp_path)
    assert not refused.value.retryable
    assert not (tmp_path / SHA).exists()


def test_stalled_download_is_abandoned_and_can_be_retried(tmp_path):
    policy = FetchPolicy(stall_seconds=0.2)
    with pytest.raises(FetchError, match="stalled") as stalled:
        _fetch(FakeCall(_chunks(DATA), stall_after=2), tmp_path, policy=policy)
    assert stalled.value.retryable
    assert (tmp_path / f"{SHA}.part").stat().st_size == 8192  # kept for the resume
    result = _fetch(FakeCall(_chunks(DATA[8192:], start=8192)), tmp_path)
    assert result.bytes_transferred == len(DATA) - 8192 and result.path.read_bytes() == DATA


def test_crawling_download_is_abandoned(tmp_path):
    policy = FetchPolicy(stall_seconds=5, min_bytes_per_second=1_000_000, throughput_grace_seconds=0.05)
    with pytest.raises(FetchError, match="too slow") as slow:
        _fetch(FakeCall(_chunks(DATA, 512), delay=0.02), tmp_path, policy=policy)
    assert slow.value.retryable


def test_chunk_at_the_wrong_offset_is_refused(tmp_path):
    chunks = _chunks(DATA)
    chunks[1].offset = 0
    with pytest.raises(FetchError, match="offset"):
        _fetch(FakeCall(chunks), tmp_path)


def test_bytes_that_do_not_hash_to_the_name_are_discarded(tmp_path):
    wrong = bytes(reversed(DATA))
    with pytest.raises(FetchError, match="hash to"):
        _fetch(FakeCall(_chunks(wrong)), tmp_path)
    assert not (tmp_path / SHA).exists() and not (tmp_path / f"{SHA}.part").exists()


def test_short_stream_leaves_a_partial_to_resume(tmp_path):
    with pytest.raises(FetchError, match="ended at 4096"):
        _fetch(FakeCall(_chunks(DATA)[:1]), tmp_path)
    assert (tmp_path / f"{SHA}.part").stat().st_size == 4096


def test_progress_counts_the_bytes_on_disk_a_resumed_part_included(tmp_path):
    """progress gets the blob's bytes on disk: the resumed partial first, then after each chunk, up to size."""
    (tmp_path / f"{SHA}.part").write_bytes(DATA[:8192])
    seen: list[int] = []
    call = FakeCall(_chunks(DATA[8192:], start=8192))
    result = asyncio.run(fetch_blob(FakeStub(call), SHA, SIZE, tmp_path, progress=seen.append))
    assert result.resumed_from == 8192 and result.path.read_bytes() == DATA
    assert seen == [8192, 12288, SIZE]
    again: list[int] = []
    asyncio.run(fetch_blob(FakeStub(FakeCall([])), SHA, SIZE, tmp_path, progress=again.append))
    assert again == [SIZE]  # already whole: 100% at once


def test_background_sync_keeps_its_first_error_for_stop(tmp_path, monkeypatch):
    """Linux reports a writeback error to one sync call only: the background sync must hand it on."""
    import agent.fetch as fetch

    calls = []

    def failing(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    with (tmp_path / "f").open("wb") as out:
        quiet = fetch.BackgroundSync(out.fileno(), SHA)
        quiet.request()
        assert quiet.stop() is None
        monkeypatch.setattr(fetch, "_fdatasync", failing)
        syncer = fetch.BackgroundSync(out.fileno(), SHA)
        syncer.request()
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        syncer.request()
        error = syncer.stop()
    assert isinstance(error, OSError) and error.errno == 5 and calls


def test_a_failed_background_sync_fails_the_download(tmp_path, monkeypatch):
    import agent.fetch as fetch

    monkeypatch.setattr(fetch, "SYNC_EVERY_BYTES", 4096)
    monkeypatch.setattr(fetch, "_fdatasync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space left"):
        _fetch(FakeCall(_chunks(DATA), delay=0.05), tmp_path)  # time for the sync thread between chunks
    assert not (tmp_path / SHA).exists()  # never renamed into place


def test_wait_out_waits_for_the_work_through_a_cancel_and_then_raises_it():
    """A cancelled download must neither close its file under work still running nor forget the cancel."""
    import threading

    import agent.fetch as fetch

    release = threading.Event()

    async def scenario() -> tuple[bool, bool]:
        work = asyncio.ensure_future(asyncio.to_thread(release.wait, 5))
        waiter = asyncio.ensure_future(fetch.wait_out(work))
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.sleep(0.05)
        still_waiting = not waiter.done()  # the cancel did not end it while the work runs
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return still_waiting, work.done()

    assert asyncio.run(scenario()) == (True, True)
