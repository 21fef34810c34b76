"""A bundle installs only where it can run, only as the build that was asked for, and never as a silent downgrade."""

from __future__ import annotations

import pytest

from agent.verify import VerifyError, check_compatible, check_not_downgrade, check_target
from protos.edgefleet.v1 import bundle_pb2, common_pb2

FACTS = common_pb2.DeviceFacts(
    architecture="aarch64",
    cpu_flags=["asimd", "neon"],
    onnxruntime_version="1.17.3",
    execution_providers=["CPUExecutionProvider"],
    memory_total_bytes=1 << 30,
)


def _manifest(**requirements) -> bundle_pb2.BundleManifest:
    return bundle_pb2.BundleManifest(
        name="nlu", version=3, variant="int8-dynamic", requirements=bundle_pb2.RuntimeRequirements(**requirements)
    )


def test_compatible_bundle_passes():
    check_compatible(
        _manifest(architectures=["aarch64"], cpu_features=["asimd"], min_onnxruntime_version="1.16"), FACTS
    )


@pytest.mark.parametrize(
    ("requirements", "reason"),
    [
        ({"architectures": ["x86_64"]}, "is for x86_64; this device is aarch64"),
        ({"cpu_features": ["asimddp", "asimd"]}, "needs CPU features asimddp"),
        ({"min_onnxruntime_version": "1.18.0"}, "needs onnxruntime >= 1.18.0; this device has 1.17.3"),
        ({"execution_providers": ["CUDAExecutionProvider"]}, "execution providers CUDAExecutionProvider"),
        ({"min_memory_bytes": 2 << 30}, "needs 2048 MiB of memory; this device has 1024 MiB"),
    ],
)
def test_incompatible_bundle_is_refused_with_the_reason(requirements, reason):
    with pytest.raises(VerifyError, match=reason):
        check_compatible(_manifest(**requirements), FACTS)


def test_bundle_for_another_build_is_refused():
    with pytest.raises(VerifyError, match="nlu:3:int8-dynamic, but nlu:3:fp32 was asked for"):
        check_target(_manifest(), common_pb2.ModelRef(name="nlu", version=3, variant="fp32"))


def test_downgrade_is_refused_unless_it_is_a_rollback():
    active = common_pb2.ModelRef(name="nlu", version=5)
    older = common_pb2.ModelRef(name="nlu", version=3)
    with pytest.raises(VerifyError, match="downgrade from version 5 to 3"):
        check_not_downgrade(older, active, rollback=False)
    check_not_downgrade(older, active, rollback=True)
    check_not_downgrade(common_pb2.ModelRef(name="nlu", version=5), active, rollback=False)
