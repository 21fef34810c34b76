"""Helpers for tests that ship models: register a publisher key, publish tiny bundles, deploy, ask the agent."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from controlplane.cli.models import push_bundle
from protos.bundle_io import write_key_pair
from protos.edgefleet.v1 import admin_pb2, bundle_pb2, inference_pb2, inference_pb2_grpc
from protos.tensors import from_numpy, to_numpy
from tests.bundles import GOLDEN_INPUT, make_bundle_dir


def register_key(cp, tmp_path: Path, name: str = "release") -> Path:
    """Create a publisher key pair, register its public half; returns the private key path."""
    from protos.bundle_io import load_public_key

    path = tmp_path / "keys" / f"{name}.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_key_pair(path)
    stub, meta, channel = cp.admin()
    with channel:
        stub.AddPublisherKey(
            admin_pb2.AddPublisherKeyRequest(public_key=load_public_key(Path(f"{path}.pub")), name=name),
            metadata=meta,
            timeout=10,
        )
    return path


def publish(cp, key: Path, tmp_path: Path, name="tiny", version=1, variant="fp32", **kw) -> admin_pb2.ModelBuild:
    bundle = make_bundle_dir(tmp_path / "bundles", name, version, variant, **kw)
    stub, meta, channel = cp.admin()
    with channel:
        return push_bundle(stub, meta, bundle, key).build


def deploy(cp, device_id: str, *, name="tiny", version=1, variant="fp32") -> admin_pb2.DeployResponse:
    stub, meta, channel = cp.admin()
    with channel:
        return stub.Deploy(
            admin_pb2.DeployRequest(name=name, version=version, variant=variant, device_id=device_id),
            metadata=meta,
            timeout=10,
        )


def device_with_a_blob(cp, tmp_path: Path, size: int, device_id: str = "dev-1"):
    """A device enrolled in ``tmp_path / "dev"`` and told to install a build with a file of ``size`` random
    bytes; returns (its Identity, the file's sha256, the bytes)."""
    import asyncio
    import hashlib
    import os

    from agent.enroll import enroll
    from agent.facts import collect_facts
    from protos.join import parse_join_string

    key = register_key(cp, tmp_path)
    payload = os.urandom(size)
    publish(cp, key, tmp_path, extra_files={"weights.bin": payload})
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(cp.join_string())
    identity = asyncio.run(enroll(join, data_dir=tmp_path / "dev", device_id=device_id, facts=facts))
    deploy(cp, device_id)
    return identity, hashlib.sha256(payload).hexdigest(), payload


def manifest_of(build: admin_pb2.ModelBuild) -> bundle_pb2.BundleManifest:
    return bundle_pb2.BundleManifest.FromString(build.manifest)


class LocalClient:
    """An app on the device: asks the agent's local API for inferences."""

    def __init__(self, data_dir: Path) -> None:
        self.channel = grpc.insecure_channel(f"unix://{data_dir / 'inference.sock'}")
        self.stub = inference_pb2_grpc.LocalInferenceStub(self.channel)

    def infer(self) -> tuple[int, np.ndarray]:
        """(version that served, output) for GOLDEN_INPUT. Raises grpc.RpcError."""
        response = self.stub.Infer(
            inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", GOLDEN_INPUT)]), timeout=5
        )
        return response.served_by.model.version, to_numpy(response.outputs[0])

    def serving_version(self) -> int | None:
        try:
            return self.infer()[0]
        except grpc.RpcError:
            return None

    def close(self) -> None:
        self.channel.close()


def events(cp, device_id: str) -> list[tuple[str, str]]:
    """The device's lifecycle events as (kind name, reason), oldest first, through the admin API."""
    from protos.edgefleet.v1 import common_pb2

    stub, meta, channel = cp.admin()
    with channel:
        rows = stub.QueryEvents(
            admin_pb2.QueryEventsRequest(device_id=device_id, since_seconds=3600, limit=1000), metadata=meta, timeout=10
        ).rows
    return [(common_pb2.LifecycleEvent.Kind.Name(r.event.kind), r.event.reason) for r in rows]
