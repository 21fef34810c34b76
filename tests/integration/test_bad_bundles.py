"""Builds that must not run are refused on the device with a specific reason in its events, and the
previous build keeps serving. (Bundles the control plane already refuses at publish — bad paths,
files that do not match the manifest, bad signatures — are tested in test_publish.py; the agent's
own checks against a misbehaving server are in tests/agent.)"""

from __future__ import annotations

import pytest

from protos.bundle_io import write_key_pair
from tests.bundles import make_tiny_model
from tests.integration.harness import wait_for
from tests.integration.shipping import LocalClient, deploy, events, publish, register_key


@pytest.fixture
def fleet(cp_sqlite, agents, tmp_path):
    """A device serving tiny:1 (y = 2x + 1); returns (key, start_agent)."""
    cp = cp_sqlite
    key = register_key(cp, tmp_path)
    publish(cp, key, tmp_path, version=1, scale=2.0)
    config = tmp_path / "agent.toml"
    config.write_text("telemetry_flush_seconds = 0.2\n")

    def start(budget_bytes: int = 0, join: str | None = None):
        if budget_bytes:
            config.write_text(f"telemetry_flush_seconds = 0.2\nmodel_memory_budget_bytes = {budget_bytes}\n")
        return agents(
            "gw", "--trust", f"{key}.pub", "--config", str(config), "--heartbeat-seconds", "0.5",
            join=join, device_id="gw-1" if join else None,
        )  # fmt: skip

    first = start(join=cp.join_string())
    wait_for(lambda: cp.is_online("gw-1"), what="gw-1 online")
    deploy(cp, "gw-1", version=1)
    client = LocalClient(tmp_path / "gw")
    wait_for(lambda: client.serving_version() == 1, what="v1 serving")
    yield key, start, first, client
    client.close()


def _refused(cp, kind: str, reason: str) -> bool:
    return any(k == kind and reason in r for k, r in events(cp, "gw-1"))


CASES = {
    "untrusted publisher key": ("VERIFY_FAILED", "not signed by a trusted publisher key"),
    "built for another architecture": ("VERIFY_FAILED", "is for riscv64"),
    "model that does not load": ("ACCEPTANCE_FAILED", "does not load in onnxruntime"),
    "golden outputs that do not match": ("ACCEPTANCE_FAILED", "differs by up to"),
    "over the memory budget": ("ACCEPTANCE_FAILED", "over the budget"),
    "blob tampered on the server": ("RECONCILE_FAILED", "hash to"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_build_is_refused_with_its_reason_and_v1_keeps_serving(cp_sqlite, fleet, tmp_path, case):
    cp, (key, start, first, client) = cp_sqlite, fleet
    kind, reason = CASES[case]
    if case == "untrusted publisher key":
        other = tmp_path / "keys" / "other.key"
        write_key_pair(other)
        from protos.bundle_io import load_public_key
        from protos.edgefleet.v1 import admin_pb2

        stub, meta, channel = cp.admin()
        with channel:
            stub.AddPublisherKey(
                admin_pb2.AddPublisherKeyRequest(public_key=load_public_key(other.with_name("other.key.pub")),
                                                 name="other"), metadata=meta)  # fmt: skip
        publish(cp, other, tmp_path, version=2, scale=3.0)
    elif case == "built for another architecture":
        publish(cp, key, tmp_path, version=2, scale=3.0, manifest={"requirements": {"architectures": ["riscv64"]}})
    elif case in ("model that does not load", "golden outputs that do not match"):
        from tests.bundles import make_bundle_dir

        bundle = make_bundle_dir(tmp_path / "bad", "tiny", 2, "fp32", scale=3.0)
        if case == "model that does not load":
            (bundle / "model.onnx").write_bytes(b"this is not an onnx graph")
        else:
            make_tiny_model(bundle / "model.onnx", 5.0, 1.0)  # the golden case still expects 3x + 1
        from controlplane.cli.models import push_bundle

        stub, meta, channel = cp.admin()
        with channel:
            push_bundle(stub, meta, bundle, key)
    elif case == "blob tampered on the server":
        build = publish(cp, key, tmp_path, version=2, scale=3.0, extra_files={"vocab.txt": b"a\nb\nc\n"})
        from protos.edgefleet.v1 import bundle_pb2

        manifest = bundle_pb2.BundleManifest.FromString(build.manifest)
        sha = next(f.sha256 for f in manifest.files if f.path == "vocab.txt")
        blob = cp.config.data_dir / "blobs" / sha[:2] / sha
        blob.write_bytes(b"x\ny\nz\n")  # same size, other bytes: only the hash can tell
    else:
        first.terminate()
        start(budget_bytes=1024 * 1024)
        wait_for(lambda: client.serving_version() == 1, what="v1 serving after the restart")
        publish(cp, key, tmp_path, version=2, scale=3.0)
    deploy(cp, "gw-1", version=2)
    wait_for(lambda: _refused(cp, kind, reason), timeout=60, what=f"{kind} with {reason!r} in the events")
    assert client.serving_version() == 1
    device = cp.device("gw-1")
    assert reason in device.status.failure_reason
    assert [a.model.version for a in device.active] == [1]
