"""The blob store: only complete, verified blobs become visible, each stored once."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controlplane.blobs import BlobMismatch, BlobNotFound, BlobStore, BlobTooLarge

DATA = bytes(range(256)) * 40  # 10 KiB
SHA = hashlib.sha256(DATA).hexdigest()
UPLOADERS = 4


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", max_blob_bytes=64 * 1024)


def stored_files(store: BlobStore) -> list[Path]:
    """Every file under the store's root, temporary ones included."""
    return sorted(p for p in store.root.rglob("*") if p.is_file())


def upload(store: BlobStore, data: bytes, sha256: str = SHA, total: int | None = None, chunk: int = 4096) -> bool:
    with store.writer(sha256, len(data) if total is None else total) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
        return writer.commit()


def test_an_uploaded_blob_is_stored_under_its_hash_and_reads_back(blobs: BlobStore) -> None:
    """A complete upload lands at <sha[:2]>/<sha>, with its size, readable from any offset."""
    assert upload(blobs, DATA) is False
    assert blobs.has(SHA) and blobs.size(SHA) == len(DATA)
    assert stored_files(blobs) == [blobs.root / SHA[:2] / SHA]
    with blobs.open_at(SHA, 1000) as f:
        assert f.read() == DATA[1000:]


def test_nothing_is_visible_under_the_final_name_before_commit(blobs: BlobStore) -> None:
    """While an upload is in progress, the blob does not exist for readers."""
    with blobs.writer(SHA, len(DATA)) as writer:
        writer.write(DATA[:5000])
        assert not blobs.has(SHA) and blobs.size(SHA) is None
        writer.write(DATA[5000:])
        assert not blobs.has(SHA)
        writer.commit()
    assert blobs.has(SHA)


def test_a_second_upload_of_a_stored_blob_is_deduplicated(blobs: BlobStore) -> None:
    """The writer of a stored blob says so at once, writes nothing and keeps one copy."""
    upload(blobs, DATA)
    with blobs.writer(SHA, len(DATA)) as writer:
        assert writer.already_present
        writer.write(b"ignored")
        assert writer.commit() is True
    assert stored_files(blobs) == [blobs.root / SHA[:2] / SHA]


@pytest.mark.parametrize(
    ("data", "total", "why"),
    [
        (DATA[:-1] + b"X", None, "hashes to"),
        (DATA + b"extra", len(DATA), "more than the 10240 bytes declared"),
        (DATA[:-100], len(DATA), "ended after 10140 of the 10240 bytes"),
    ],
    ids=["wrong-content", "too-long", "too-short"],
)
def test_a_mismatching_upload_leaves_nothing_behind(blobs: BlobStore, data: bytes, total: int | None, why: str) -> None:
    """Wrong content, more bytes or fewer bytes than declared: BlobMismatch, and no file remains."""
    with pytest.raises(BlobMismatch, match=why):
        upload(blobs, data, total=total)
    assert not blobs.has(SHA)
    assert stored_files(blobs) == []


def test_an_abandoned_upload_leaves_nothing_behind(blobs: BlobStore) -> None:
    """Leaving the writer without commit (a dropped connection) removes its temporary file."""
    with blobs.writer(SHA, len(DATA)) as writer:
        writer.write(DATA[:100])
    assert stored_files(blobs) == []


def test_declared_sizes_are_bounded(blobs: BlobStore) -> None:
    """Over the cap is BlobTooLarge, zero bytes or a size other than the stored blob's is BlobMismatch."""
    with pytest.raises(BlobTooLarge, match="over this server's cap of 65536 bytes"):
        blobs.writer(SHA, 64 * 1024 + 1)
    with pytest.raises(BlobMismatch, match="at least 1"):
        blobs.writer(SHA, 0)
    upload(blobs, DATA)
    with pytest.raises(BlobMismatch, match="stored with 10240 bytes, not the 10 declared"):
        blobs.writer(SHA, 10)


@pytest.mark.parametrize("sha256", ["", "AB" * 32, "ab" * 31, "../../etc/passwd", "g" * 64])
def test_malformed_blob_ids_are_refused(blobs: BlobStore, sha256: str) -> None:
    """A blob id that is not a lowercase sha256 never becomes a path."""
    with pytest.raises(ValueError, match="not a sha256 digest"):
        blobs.writer(sha256, 10)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        blobs.has(sha256)


def test_reading_a_missing_blob_or_past_the_end_is_refused(blobs: BlobStore) -> None:
    """open_at raises BlobNotFound for an unknown blob and ValueError for an offset past its end."""
    with pytest.raises(BlobNotFound):
        blobs.open_at(SHA)
    upload(blobs, DATA)
    with blobs.open_at(SHA, len(DATA)) as f:
        assert f.read() == b""
    with pytest.raises(ValueError, match="outside"):
        blobs.open_at(SHA, len(DATA) + 1)


def test_concurrent_identical_uploads_all_succeed_with_one_copy(blobs: BlobStore) -> None:
    """Several clients uploading the same blob at once all succeed; one verified copy remains."""
    barrier = threading.Barrier(UPLOADERS)

    def upload_together() -> bool:
        with blobs.writer(SHA, len(DATA)) as writer:
            writer.write(DATA)
            barrier.wait(timeout=30)
            return writer.commit()

    with ThreadPoolExecutor(max_workers=UPLOADERS) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(upload_together) for _ in range(UPLOADERS)]]
    assert False in results
    assert stored_files(blobs) == [blobs.root / SHA[:2] / SHA]
    assert hashlib.sha256((blobs.root / SHA[:2] / SHA).read_bytes()).hexdigest() == SHA


def test_leftovers_of_a_crash_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    """A temporary file left by a killed server is gone after the next start; stored blobs stay."""
    first = BlobStore(tmp_path / "blobs", max_blob_bytes=64 * 1024)
    upload(first, DATA)
    writer = first.writer(hashlib.sha256(b"partial").hexdigest(), 7)
    writer.write(b"par")  # the process "dies" here: no commit, no abort
    second = BlobStore(tmp_path / "blobs", max_blob_bytes=64 * 1024)
    assert stored_files(second) == [second.root / SHA[:2] / SHA]
    writer.abort()
