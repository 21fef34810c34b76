"""The on-device build store under ``<data_dir>/models/``: downloaded blobs, manifests and staged builds.

Layout:

    models/blobs/<sha256>                 download cache, content-addressed (what ``fetch_blob`` writes)
    models/manifests/<manifest_sha256>    a downloaded signed manifest (serialized ``SignedManifest``)
    models/builds/<manifest_sha256>/      one staged build: ``manifest.pb`` (the exact signed
                                          ``BundleManifest`` bytes), ``signed.pb`` and every file
                                          at its bundle path

Invariants:
- A build directory exists only complete: it is assembled in a temporary directory next
  to it and renamed into place, so a crash leaves at most a ``.tmp-*`` directory, which
  the next ``stage`` or ``cleanup`` removes. Staging a build that exists is a no-op.
- Every file path is checked with ``protos.bundles.check_path`` and must resolve inside
  the build directory; a refused path leaves nothing behind.
- Files are hard links to the blob cache when the file system allows, copies otherwise.
- ``write_state`` and ``write_manifest`` replace files atomically (temp file, fsync,
  rename, fsync of the directory).

Every function blocks (file I/O, fsync); the shell calls them from a worker thread.
Errors: ``StagingError`` (refused path, missing blob); ``OSError`` for disk trouble.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from agent.errors import AgentError
from protos.bundles import BundleError, check_path
from protos.edgefleet.v1 import bundle_pb2

__all__ = ["BuildStore", "StagingError", "write_state"]

MANIFEST_BYTES_FILE = "manifest.pb"
SIGNED_MANIFEST_FILE = "signed.pb"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TMP_PREFIX = ".tmp-"


class StagingError(AgentError):
    """A build cannot be staged: a refused file path or a missing blob; the message names it."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_state(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably. Raises ``OSError``."""
    _write_atomic(path, text.encode())


def _check_sha(sha256: str) -> str:
    if not _SHA256.fullmatch(sha256):
        raise StagingError(f"{sha256[:80]!r} is not a lower-case hex sha256")
    return sha256


class BuildStore:
    """The build store of one data dir; see the module docstring for the layout."""

    def __init__(self, data_dir: Path) -> None:
        self.root = data_dir / "models"
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.builds = self.root / "builds"

    def build_dir(self, manifest_sha256: str) -> Path:
        return self.builds / _check_sha(manifest_sha256)

    def blob_path(self, sha256: str) -> Path:
        return self.blobs / _check_sha(sha256)

    def is_staged(self, manifest_sha256: str) -> bool:
        return (self.build_dir(manifest_sha256) / SIGNED_MANIFEST_FILE).is_file()

    def write_manifest(self, manifest_sha256: str, signed_bytes: bytes) -> None:
        """Keep a downloaded signed manifest until its build is staged or cleaned up."""
        _write_atomic(self.manifests / _check_sha(manifest_sha256), signed_bytes)

    def read_manifest(self, manifest_sha256: str) -> bytes | None:
        """The downloaded (or staged) signed manifest, or None if there is none."""
        downloaded = self.manifests / _check_sha(manifest_sha256)
        for path in (downloaded, self.build_dir(manifest_sha256) / SIGNED_MANIFEST_FILE):
            with contextlib.suppress(FileNotFoundError):
                return path.read_bytes()
        return None

    def stage(self, manifest_sha256: str, signed_bytes: bytes, manifest: bundle_pb2.BundleManifest) -> Path:
        """Materialise the build from the blob cache; returns its directory. Idempotent.

        ``manifest`` must be the verified manifest inside ``signed_bytes``. Raises
        ``StagingError`` for a refused path or a missing blob (nothing is left behind).
        """
        final = self.build_dir(manifest_sha256)
        if self.is_staged(manifest_sha256):
            return final
        signed = bundle_pb2.SignedManifest.FromString(signed_bytes)
        self.builds.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{manifest_sha256[:12]}-", dir=self.builds))
        try:
            for file in manifest.files:
                self._place(tmp, file)
            for name, data in ((MANIFEST_BYTES_FILE, signed.manifest), (SIGNED_MANIFEST_FILE, signed_bytes)):
                with (tmp / name).open("wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            if final.exists():  # a partial or foreign directory where the build belongs
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.builds)
        with contextlib.suppress(FileNotFoundError):
            (self.manifests / manifest_sha256).unlink()
        return final

    def _place(self, build: Path, file: bundle_pb2.BundleFile) -> None:
        try:
            check_path(file.path)
        except BundleError as exc:
            raise StagingError(f"refused to stage: {exc}") from exc
        if file.path in (MANIFEST_BYTES_FILE, SIGNED_MANIFEST_FILE):
            raise StagingError(f"refused to stage: file path {file.path!r} is reserved for the manifest")
        target = build / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        resolved_build = build.resolve()
        if not target.parent.resolve().is_relative_to(resolved_build) or target.is_symlink():
            raise StagingError(f"refused to stage: file path {file.path!r} leaves the build directory")
        blob = self.blob_path(file.sha256)
        if not blob.is_file():
            raise StagingError(f"blob {file.sha256[:12]} for {file.path!r} is not downloaded")
        try:
            os.link(blob, target)
        except OSError:  # another file system, or links not supported: copy
            shutil.copyfile(blob, target)

    def cleanup(self, keep: Iterable[str]) -> None:
        """Delete builds and manifests not in ``keep`` (manifest sha256s) and blobs no kept build uses."""
        keep = {_check_sha(sha) for sha in keep}
        referenced: set[str] = set()
        if self.builds.is_dir():
            for entry in self.builds.iterdir():
                if entry.name in keep and entry.is_dir() and not entry.is_symlink():
                    with contextlib.suppress(OSError, ValueError):
                        manifest = bundle_pb2.BundleManifest.FromString((entry / MANIFEST_BYTES_FILE).read_bytes())
                        referenced.update(f.sha256 for f in manifest.files)
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        for folder, used in ((self.manifests, keep), (self.blobs, referenced)):
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.name not in used and not entry.is_dir():
                        entry.unlink(missing_ok=True)

    def _remove_temporaries(self) -> None:
        for entry in self.builds.glob(f"{_TMP_PREFIX}*"):
            shutil.rmtree(entry, ignore_errors=True)
