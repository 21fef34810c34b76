"""Pure checks that a downloaded bundle is the one asked for and can run on this device.

Signature checks live in protos.bundles (shared with the control plane);
this module adds what only the device knows: its facts, and what it was told
to install. Each check raises VerifyError with a reason an operator can act on.
"""

from __future__ import annotations

import re

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
