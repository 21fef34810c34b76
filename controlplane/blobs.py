"""The content-addressed blob store: bundle files, kept once each, under ``<root>/<sha[:2]>/<sha>``.

Invariants:
- A blob is visible under its final name only once it is complete: a writer fills a
  temporary file in ``<root>/tmp`` (same filesystem), hashes while writing, checks the
  declared size and sha256, fsyncs, then renames it into place and fsyncs the directory.
- What is stored under a name always hashes to that name; a blob is never rewritten,
  so a second upload of the same content is dropped (deduplicated), never copied.
- A refused or abandoned upload leaves nothing behind (its temporary file is removed);
  leftovers of a crash are removed when the store is opened.
- Every method is blocking; asyncio callers run them in a thread.

Errors::

    BlobError              base; an unexpected I/O failure of the store itself
    ├── BlobMismatch       the upload differs from what was declared (INVALID_ARGUMENT)
    ├── BlobTooLarge       over the size cap, or no space left (RESOURCE_EXHAUSTED)
    ├── BlobNotFound       no blob has this sha256 (NOT_FOUND)
    └── BlobStalled        the uploader stopped sending (DEADLINE_EXCEEDED)

A malformed sha256 is a ``ValueError``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

log = logging.getLogger("edgefleet.server.blobs")

_SHA256 = re.compile(r"[0-9a-f]{64}")
TMP_DIR = "tmp"


class BlobError(Exception):
    """Base of the blob store's errors."""


class BlobMismatch(BlobError):
    """The uploaded bytes do not match the declared size or sha256; nothing was stored."""


class BlobTooLarge(BlobError):
    """The blob is over the store's cap (or the disk is full); nothing was stored."""


class BlobNotFound(BlobError):
    """No blob has this sha256."""


class BlobStalled(BlobError):
    """The uploader stopped sending before the blob was complete; nothing was stored."""


def check_sha256(sha256: str) -> str:
    """Return sha256 if it is 64 lowercase hex characters, else raise ValueError."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"blob id {sha256[:80]!r} is not a sha256 digest (64 lowercase hex characters)")
    return sha256


class BlobStore:
    """Blobs under ``root``, each at most ``max_blob_bytes``."""

    def __init__(self, root: Path, *, max_blob_bytes: int) -> None:
        """Create ``root`` (owner-only) if needed and remove temporary files left by a crash."""
        self.root = root
        self.max_blob_bytes = max_blob_bytes
        self._tmp = root / TMP_DIR
        self._tmp.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            log.info("removing unfinished upload %s", leftover.name)
            leftover.unlink(missing_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the blob lives (whether or not it exists). Raises ValueError for a malformed sha256."""
        check_sha256(sha256)
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        """The blob's size in bytes, or None if it is not stored."""
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def open_at(self, sha256: str, offset: int = 0) -> BinaryIO:
        """Open the blob for reading from ``offset``; the caller closes it.

        Raises:
            BlobNotFound: no such blob.
            ValueError: a malformed sha256, or an offset outside 0..size.
        """
        try:
            handle = self.path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(f"blob {sha256} is not stored") from exc
        size = os.fstat(handle.fileno()).st_size
        if not 0 <= offset <= size:
            handle.close()
            raise ValueError(f"offset {offset} is outside blob {sha256} ({size} bytes)")
        handle.seek(offset)
        return handle

    def writer(self, sha256: str, total_bytes: int) -> BlobWriter:
        """A writer for a blob of ``total_bytes`` whose content hashes to ``sha256``.

        Raises:
            ValueError: a malformed sha256.
            BlobMismatch: ``total_bytes`` is 0, or the blob is stored with another size.
            BlobTooLarge: ``total_bytes`` is over the cap.
        """
        final = self.path(sha256)
        if total_bytes < 1:
            raise BlobMismatch("total_bytes must be at least 1 (declare the blob's size in the first chunk)")
        if total_bytes > self.max_blob_bytes:
            raise BlobTooLarge(f"blob of {total_bytes} bytes is over this server's cap of {self.max_blob_bytes} bytes")
        stored = self.size(sha256)
        if stored is not None and stored != total_bytes:
            raise BlobMismatch(f"blob {sha256} is stored with {stored} bytes, not the {total_bytes} declared")
        return BlobWriter(final, self._tmp, sha256, total_bytes, present=stored is not None)


class BlobWriter:
    """One upload: ``write`` the chunks, then ``commit``; ``abort`` (or leaving the ``with`` block) discards it.

    If the blob is already stored (``already_present``), nothing is written: the caller
    may stop reading and ``commit`` at once.
    """

    def __init__(self, final: Path, tmp_dir: Path, sha256: str, total_bytes: int, *, present: bool) -> None:
        self.sha256 = sha256
        self.total_bytes = total_bytes
        self.already_present = present
        self.received = 0
        self._final = final
        self._hash = hashlib.sha256()
        self._file: BinaryIO | None = None
        self._tmp_path: Path | None = None
        self._done = present
        if not present:
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=sha256[:16] + ".", suffix=".part")
            self._tmp_path = Path(name)
            self._file = os.fdopen(fd, "wb")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

    def write(self, data: bytes) -> None:
        """Append a chunk. Raises BlobMismatch (more bytes than declared) or BlobTooLarge (disk full)."""
        if self._done or self._file is None:
            if self.already_present:
                return
            raise RuntimeError("write after commit or abort")
        if self.received + len(data) > self.total_bytes:
            self.abort()
            raise BlobMismatch(
                f"blob {self.sha256}: received more than the {self.total_bytes} bytes declared "
                f"({self.received + len(data)} so far)"
            )
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "writing") from exc
        self._hash.update(data)
        self.received += len(data)

    def commit(self) -> bool:
        """Check size and sha256, make the blob durable and visible. Returns whether it was already present.

        Raises:
            BlobMismatch: fewer bytes than declared, or the content hashes to another sha256.
            BlobTooLarge: the disk is full.
        """
        if self.already_present:
            self._done = True
            return True
        if self._done or self._file is None or self._tmp_path is None:
            raise RuntimeError("commit after commit or abort")
        if self.received != self.total_bytes:
            self.abort()
            raise BlobMismatch(
                f"blob {self.sha256}: upload ended after {self.received} of the {self.total_bytes} bytes declared"
            )
        actual = self._hash.hexdigest()
        if actual != self.sha256:
            self.abort()
            raise BlobMismatch(f"blob content hashes to {actual}, not the sha256 {self.sha256} declared")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._final.parent.mkdir(mode=0o700, exist_ok=True)
            if self._final.exists():
                # A concurrent upload of the same content won: keep its copy.
                self.abort()
                self.already_present = True
                return True
            os.replace(self._tmp_path, self._final)
            self._done = True
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise _io_error(exc, "storing") from exc
        return False

    def abort(self) -> None:
        """Discard the upload (idempotent); a committed blob is left alone."""
        if self._done:
            return
        self._done = True
        if self._file is not None:
            self._file.close()
        if self._tmp_path is not None:
            self._tmp_path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(exc: OSError, doing: str) -> BlobError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BlobTooLarge(f"no space left for blobs ({doing} failed: {exc.strerror})")
    return BlobError(f"blob store failed {doing} a blob: {exc.strerror or exc}")
