"""The I/O shell around ``protos.bundles``: publisher key files and the bundle directory an operator pushes.

Invariants:
- A private key file is written once, owner-only (0600), and never overwritten.
- Reading a bundle directory follows no symlink and opens no special file: every bundle
  file is a regular file below the directory, hashed as it is read (streamed), and the
  manifest that comes out has passed ``validate_manifest``.
- Every refusal is a ``BundleError`` naming the file at fault.
- Writing a bundle directory (``write_bundle_dir``) is whole or nothing: it is assembled beside
  its final place and renamed into it; a failure leaves the previous directory as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf import json_format

from protos.bundles import (
    MANIFEST_FILE,
    MAX_FILE_BYTES,
    MAX_SIGNED_MANIFEST_BYTES,
    TASKS,
    BundleError,
    check_path,
    key_id,
    raw_public_key,
    validate_manifest,
)
from protos.edgefleet.v1 import bundle_pb2

_HASH_CHUNK_BYTES = 1024 * 1024


# --- key files ---


def write_key_pair(out: Path) -> str:
    """Create an ed25519 key pair: ``out`` (PKCS8 PEM, mode 0600) and ``out.pub`` (SubjectPublicKeyInfo PEM).

    Returns the key id. Raises BundleError if either file exists or cannot be written; an
    existing key is never overwritten.
    """
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if path.exists() or path.is_symlink():
            raise BundleError(f"{path} already exists; a key is never overwritten (choose another --out)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new(out, private_pem, 0o600)
    try:
        _write_new(pub, public_pem, 0o644)
    except BundleError:
        out.unlink()
        raise
    return key_id(raw_public_key(key))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise BundleError(f"{path} already exists; a key is never overwritten (choose another --out)") from exc
    except OSError as exc:
        raise BundleError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def load_private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read an unencrypted PKCS8 PEM ed25519 private key. Raises BundleError."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BundleError(
            f"{path} is not an unencrypted PEM private key (make one with `edgefleet keys create`)"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{path} holds a {type(key).__name__}; publisher keys are ed25519")
    return key


def load_public_key(path: Path) -> bytes:
    """Read a PEM (SubjectPublicKeyInfo) ed25519 public key; returns its 32 raw bytes. Raises BundleError."""
    data = _read_key_file(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise BundleError(
            f"{path} is not a PEM public key (the KEYFILE.pub written by `edgefleet keys create`)"
        ) from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"{path} holds a {type(key).__name__}; publisher keys are ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path) -> bytes:
    try:
        if path.stat().st_size > 64 * 1024:
            raise BundleError(f"{path} is too large to be a key file")
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read key file {path}: {exc.strerror}") from exc


# --- the bundle directory an operator pushes ---


def write_bundle_dir(target: Path, files: Mapping[str, bytes | Path], manifest: dict[str, Any]) -> Path:
    """Write the bundle directory ``target``: every file at its bundle path, and ``manifest.json``.

    ``files`` maps a bundle path to its content (bytes) or to a local file to copy (which may lie in
    ``target`` itself: every file is copied before ``target`` is replaced). The directory is
    assembled beside ``target`` and renamed into place, replacing an older one; returns ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel, content in files.items():
            check_path(rel)
            destination = staging / rel
            destination.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, destination)
            else:
                destination.write_bytes(content)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_bundle_dir(path: Path) -> tuple[bundle_pb2.BundleManifest, dict[str, Path]]:
    """Read ``path/manifest.json`` and hash the bundle's files (streamed).

    The manifest is protobuf JSON; ``task`` may be a task name ("text-nlu") or the enum
    name. Without ``files``, every regular file below ``path`` except manifest.json is
    included (role "model" for ``model_file``, else "other"). Listed files get their size
    and sha256 filled in; a listed sha256 or size must match the file; files present but
    not listed are not part of the bundle.

    Returns the validated manifest and {path in bundle: file on disk}.

    Raises:
        BundleError: unreadable or malformed manifest.json; a symlink or special file;
            a listed file that is missing or differs from its listed sha256 or size;
            or a manifest that breaks a rule of ``validate_manifest``.
    """
    manifest = _load_manifest_json(path / MANIFEST_FILE)
    if not manifest.files:
        for rel in _walk_regular_files(path):
            manifest.files.add(path=rel, role="model" if rel == manifest.model_file else "other")
    files: dict[str, Path] = {}
    for entry in manifest.files:
        check_path(entry.path)
        local = _inside(path, entry.path)
        size, digest = _hash_file(local, entry.path)
        if entry.sha256 and entry.sha256 != digest:
            raise BundleError(f"file {entry.path!r} has sha256 {digest}, but the manifest lists {entry.sha256}")
        if entry.size_bytes and entry.size_bytes != size:
            raise BundleError(f"file {entry.path!r} is {size} bytes, but the manifest lists {entry.size_bytes}")
        entry.size_bytes, entry.sha256 = size, digest
        entry.role = entry.role or ("model" if entry.path == manifest.model_file else "other")
        files[entry.path] = local
    validate_manifest(manifest)
    return manifest, files


def _load_manifest_json(path: Path) -> bundle_pb2.BundleManifest:
    try:
        if path.is_symlink():
            raise BundleError(f"{path} is a symlink; bundle files must be regular files")
        if path.stat().st_size > MAX_SIGNED_MANIFEST_BYTES:
            raise BundleError(f"{path} is larger than 1 MiB")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path} does not exist: a bundle directory holds manifest.json and the files") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object (a BundleManifest)")
    if isinstance(data.get("task"), str) and data["task"] in TASKS:
        data["task"] = TASKS[data["task"]]
    try:
        return json_format.ParseDict(data, bundle_pb2.BundleManifest())
    except json_format.ParseError as exc:
        raise BundleError(f"{path}: {exc}") from exc


def _walk_regular_files(root: Path) -> list[str]:
    found: list[str] = []
    try:
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
            for name in sorted(dirnames + filenames):
                full = Path(dirpath, name)
                rel = full.relative_to(root).as_posix()
                mode = full.lstat().st_mode
                if stat.S_ISLNK(mode):
                    raise BundleError(f"{rel!r} in the bundle directory is a symlink; copy the file instead")
                if stat.S_ISREG(mode) and rel != MANIFEST_FILE:
                    found.append(rel)
                elif not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                    raise BundleError(f"{rel!r} in the bundle directory is not a regular file")
    except OSError as exc:
        raise BundleError(f"cannot list bundle directory {root}: {exc.strerror}") from exc
    return sorted(found)


def _raise(exc: OSError) -> None:
    raise exc


def _inside(root: Path, rel: str) -> Path:
    """The file ``rel`` below ``root``; no component may be a symlink."""
    current = root
    for segment in rel.split("/"):
        current = current / segment
        try:
            mode = current.lstat().st_mode
        except FileNotFoundError as exc:
            raise BundleError(f"file {rel!r} is listed in the manifest but missing from {root}") from exc
        except OSError as exc:
            raise BundleError(f"cannot read {current}: {exc.strerror}") from exc
        if stat.S_ISLNK(mode):
            raise BundleError(f"file {rel!r}: {current} is a symlink; bundle files must be regular files")
    if not stat.S_ISREG(mode):
        raise BundleError(f"file {rel!r} is not a regular file")
    return current


def _hash_file(path: Path, rel: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    try:
        # O_NOFOLLOW: a file swapped for a symlink after it was checked is still refused.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_FILE_BYTES:
                    raise BundleError(f"file {rel!r} is larger than 4 GiB")
                digest.update(chunk)
    except OSError as exc:
        raise BundleError(f"cannot read file {rel!r}: {exc.strerror}") from exc
    return size, digest.hexdigest()
