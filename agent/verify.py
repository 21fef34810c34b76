"""Pure checks that a downloaded bundle is the one asked for and can run on this device.

Signature checks live in protos.bundles (shared with the control plane);
this module adds what only the device knows: its facts, and what it was told
to install. Each check raises VerifyError with a reason an operator can act on.
``verified_manifest`` and ``check_files`` are shared by the reconcile shell and
the benchmark job runner; ``check_files`` is the only function here that reads files.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from protos.bundles import BundleError, parse_signed_manifest, verify_signed_manifest
from protos.edgefleet.v1 import bundle_pb2, common_pb2


class VerifyError(ValueError):
    """The bundle must not be installed here; the message says why."""


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)
    if not parts:
        raise VerifyError(f"version {text!r} has no numbers")
    return tuple(int(p) for p in parts[:4])


def check_target(manifest: bundle_pb2.BundleManifest, target: common_pb2.ModelRef) -> None:
    """The manifest is the build the desired state names (mix-and-match defence)."""
    got = (manifest.name, manifest.version, manifest.variant)
    want = (target.name, target.version, target.variant)
    if got != want:
        raise VerifyError(f"bundle is {got[0]}:{got[1]}:{got[2]}, but {want[0]}:{want[1]}:{want[2]} was asked for")


def check_compatible(manifest: bundle_pb2.BundleManifest, facts: common_pb2.DeviceFacts) -> None:
    """The device can run the build: architecture, CPU features, runtime, providers, memory."""
    req = manifest.requirements
    if req.architectures and facts.architecture not in req.architectures:
        raise VerifyError(
            f"bundle is for {', '.join(req.architectures)}; this device is {facts.architecture or 'unknown'}"
        )
    missing = sorted(set(req.cpu_features) - set(facts.cpu_flags))
    if missing:
        raise VerifyError(f"bundle needs CPU features {', '.join(missing)}, which this device lacks")
    if req.min_onnxruntime_version:
        if not facts.onnxruntime_version:
            raise VerifyError("bundle needs onnxruntime, which this device does not have")
        if _version_tuple(facts.onnxruntime_version) < _version_tuple(req.min_onnxruntime_version):
            raise VerifyError(
                f"bundle needs onnxruntime >= {req.min_onnxruntime_version}; "
                f"this device has {facts.onnxruntime_version}"
            )
    if req.execution_providers and not set(req.execution_providers) & set(facts.execution_providers):
        raise VerifyError(f"bundle needs one of the execution providers {', '.join(req.execution_providers)}")
    if req.min_memory_bytes and facts.memory_total_bytes and req.min_memory_bytes > facts.memory_total_bytes:
        raise VerifyError(
            f"bundle needs {req.min_memory_bytes / 2**20:.0f} MiB of memory; "
            f"this device has {facts.memory_total_bytes / 2**20:.0f} MiB"
        )


def check_not_downgrade(target: common_pb2.ModelRef, active: common_pb2.ModelRef | None, *, rollback: bool) -> None:
    """No silent downgrade: an older version installs only when the desired state says rollback."""
    if active is not None and active.name == target.name and target.version < active.version and not rollback:
        raise VerifyError(f"downgrade from version {active.version} to {target.version} refused (not a rollback)")


def verified_manifest(
    signed_bytes: bytes, manifest_sha256: str, trusted_keys: Mapping[str, bytes]
) -> bundle_pb2.BundleManifest:
    """The manifest inside ``signed_bytes`` (a serialized ``SignedManifest``), every check passed.

    It must hash to ``manifest_sha256`` (the sha256 of the signed ``BundleManifest`` bytes) and
    carry a valid signature by one of ``trusted_keys`` (key id -> raw ed25519 key).
    Raises ``VerifyError`` naming the failed check.
    """
    try:
        signed = parse_signed_manifest(signed_bytes)
        if hashlib.sha256(signed.manifest).hexdigest() != manifest_sha256:
            raise VerifyError(f"the manifest does not hash to {manifest_sha256[:12]}")
        return verify_signed_manifest(signed, trusted_keys)
    except BundleError as exc:
        raise VerifyError(str(exc)) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_files(manifest: bundle_pb2.BundleManifest, blob_path: Callable[[str], Path]) -> None:
    """Every file of the manifest is on disk (at ``blob_path(sha256)``) with the right sha256.

    A file with the wrong content is deleted (a corrupt download: the next fetch gets it again).
    Raises ``VerifyError`` naming the file.
    """
    for file in manifest.files:
        blob = blob_path(file.sha256)
        try:
            actual = sha256_file(blob)
        except FileNotFoundError as exc:
            raise VerifyError(f"file {file.path!r} is not downloaded") from exc
        if actual != file.sha256:
            blob.unlink(missing_ok=True)
            raise VerifyError(f"sha256 mismatch for {file.path}: got {actual[:12]}, manifest says {file.sha256[:12]}")
