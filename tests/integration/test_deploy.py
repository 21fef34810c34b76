"""Direct deployment on a real control plane: devices are told their desired state on the open session and
after every Welcome, and may download only the manifests and blobs of the builds they were told to install."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import grpc
import pytest

from agent.channel import device_channel
from agent.enroll import enroll
from agent.facts import collect_facts
from agent.fetch import fetch_blob
from controlplane.cli.models import push_bundle
from protos import bundles
from protos.edgefleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, bundle_pb2, common_pb2
from protos.join import parse_join_string
from tests.bundles import make_bundle_dir

EXTRA_BYTES = 600 * 1024  # more than two default chunks of 256 KiB


@pytest.fixture
def key(cli, tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "release.key"
    path.parent.mkdir()
    assert cli("keys", "create", "--out", str(path))[0] == 0
    assert cli("keys", "register", f"{path}.pub", "--name", "release")[0] == 0
    return path


def publish(cp, key: Path, tmp_path: Path, name: str = "tiny", version: int = 1, variant: str = "fp32", **kw):
    """Push a tiny bundle; returns (ModelBuild, BundleManifest, {path: bytes})."""
    bundle = make_bundle_dir(tmp_path / "bundles", name, version, variant, **kw)
    stub, meta, channel = cp.admin()
    with channel:
        build = push_bundle(stub, meta, bundle, key).build
    manifest = bundle_pb2.BundleManifest.FromString(build.manifest)
    return build, manifest, {f.path: (bundle / f.path).read_bytes() for f in manifest.files}


def identity(cp, tmp_path: Path, device_id: str, fleet: str = "lab"):
    facts = collect_facts(data_dir=tmp_path, labels={})
    join = parse_join_string(cp.join_string(fleet))
    return asyncio.run(enroll(join, data_dir=tmp_path / device_id, device_id=device_id, facts=facts))


def deploy(cp, device_id: str = "", fleet: str = "", *, name="tiny", version=1, variant="", token=None):
    stub, meta, channel = cp.admin(token)
    with channel:
        return stub.Deploy(
            admin_pb2.DeployRequest(name=name, version=version, variant=variant, device_id=device_id, fleet=fleet),
            metadata=meta,
            timeout=10,
        )


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def ref_of(build: admin_pb2.ModelBuild) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(
        name=build.ref.name,
        version=build.ref.version,
        variant=build.ref.variant,
        manifest_sha256=build.ref.manifest_sha256,
    )


def hello(device_id: str) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id=device_id, boot_id="b1", protocol_version=1))


def test_deploys_reach_the_open_session_and_every_new_session(cp, cli, key, tmp_path) -> None:
    """Each deploy bumps the generation and is pushed on the open session; a new session gets the
    current state right after Welcome; deploying an older version again is marked as a rollback."""
    v1, _, _ = publish(cp, key, tmp_path, version=1)
    v2, _, _ = publish(cp, key, tmp_path, version=2, scale=3.0)
    dev = identity(cp, tmp_path, "dev-a")

    async def converse():
        async with device_channel(dev) as channel:
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session(timeout=30)
            await call.write(hello("dev-a"))
            welcome = await call.read()
            states = []
            for version in (1, 2):
                await asyncio.to_thread(deploy, cp, "dev-a", version=version)
                states.append((await asyncio.wait_for(call.read(), 10)).desired)
            code, out, err = await asyncio.to_thread(cli, "deploy", "tiny:1:fp32", "--device", "dev-a")
            states.append((await asyncio.wait_for(call.read(), 10)).desired)
            call.cancel()
            return welcome, states, (code, out, err)

    welcome, states, (code, out, err) = asyncio.run(converse())
    assert welcome.HasField("welcome")
    assert [s.generation for s in states] == [1, 2, 3]
    assert [len(s.models) for s in states] == [1, 1, 1]
    first = states[0].models[0]
    assert first.model == ref_of(v1) and first.task == "generic" and first.max_bytes == v1.total_bytes
    assert not first.rollback
    assert states[1].models[0].model == ref_of(v2) and not states[1].models[0].rollback
    assert states[2].models[0].model == ref_of(v1) and states[2].models[0].rollback
    assert code == 0 and err == ""
    assert out == "dev-a: tiny:1:fp32 generation 3 (sent)\n"

    async def reconnect():
        async with device_channel(dev) as channel:
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session(timeout=30)
            await call.write(hello("dev-a"))
            received = [await call.read(), await asyncio.wait_for(call.read(), 10)]
            call.cancel()
            return received

    welcome, desired = asyncio.run(reconnect())
    assert welcome.HasField("welcome")
    assert desired.desired.generation == 3 and desired.desired.models[0].model == ref_of(v1)
    assert cp.device("dev-a").desired_generation == 3


def test_devices_fetch_only_what_they_were_told_to_install(cp, key, tmp_path) -> None:
    """The deployed device gets the signed manifest and every byte of its files, from any offset; other
    blobs, other devices and offsets past the end are refused."""
    extra = os.urandom(EXTRA_BYTES)
    build, manifest, files = publish(cp, key, tmp_path, extra_files={"vocab.bin": extra})
    _, other_manifest, _ = publish(cp, key, tmp_path, name="other", extra_files={"other.bin": b"x" * 1000})
    dev_a = identity(cp, tmp_path, "dev-a")
    dev_b = identity(cp, tmp_path, "dev-b")
    [assignment] = deploy(cp, "dev-a").assignments
    assert assignment.generation == 1 and assignment.reason.startswith(
        "offline: sent when it connects; fp32 for class default"
    )
    vocab = next(f for f in manifest.files if f.path == "vocab.bin")
    other_blob = next(f for f in other_manifest.files if f.path == "other.bin").sha256

    async def fetch(ident, sha256: str, offset: int = 0, chunk_bytes: int = 0):
        async with device_channel(ident) as channel:
            stub = agent_pb2_grpc.AgentGatewayStub(channel)
            return [
                c
                async for c in stub.FetchArtifact(
                    agent_pb2.FetchArtifactRequest(sha256=sha256, offset=offset, chunk_bytes=chunk_bytes), timeout=30
                )
            ]

    async def fetch_error(ident, sha256: str, offset: int = 0):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await fetch(ident, sha256, offset)
        return caught.value.code(), caught.value.details()

    async def manifest_of(ident):
        async with device_channel(ident) as channel:
            return await agent_pb2_grpc.AgentGatewayStub(channel).FetchManifest(
                agent_pb2.FetchManifestRequest(model=ref_of(build)), timeout=10
            )

    # The signed manifest checks out against the key the server knows.
    response = asyncio.run(manifest_of(dev_a))
    trusted = {bundles.key_id(raw): raw for raw in response.publisher_keys}
    verified = bundles.verify_signed_manifest(bundles.parse_signed_manifest(response.signed_manifest), trusted)
    assert hashlib.sha256(bundles.parse_signed_manifest(response.signed_manifest).manifest).hexdigest() == (
        build.ref.manifest_sha256
    )
    assert verified == manifest

    # Every file, from offset 0 in default-sized chunks that say where they are.
    for entry in manifest.files:
        chunks = asyncio.run(fetch(dev_a, entry.sha256))
        data = b"".join(c.data for c in chunks)
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and data == files[entry.path]
        assert all(c.total_bytes == entry.size_bytes for c in chunks)
        assert [c.offset for c in chunks] == [sum(len(p.data) for p in chunks[:i]) for i in range(len(chunks))]
        assert max(len(c.data) for c in chunks) <= 256 * 1024
    middle = vocab.size_bytes // 2 + 7
    rest = asyncio.run(fetch(dev_a, vocab.sha256, offset=middle, chunk_bytes=100_000))
    assert b"".join(c.data for c in rest) == extra[middle:] and rest[0].offset == middle
    assert max(len(c.data) for c in rest) == 100_000

    code, details = asyncio.run(fetch_error(dev_a, vocab.sha256, offset=vocab.size_bytes + 1))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    code, details = asyncio.run(fetch_error(dev_a, other_blob))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == f"blob {other_blob} is not part of a build this device was told to install"
    code, _ = asyncio.run(fetch_error(dev_b, vocab.sha256))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(manifest_of(dev_b))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # The agent's own downloader resumes from a partial file and transfers only the rest.
    half = vocab.size_bytes // 2
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{vocab.sha256}.part").write_bytes(extra[:half])

    async def agent_fetch():
        async with device_channel(dev_a) as channel:
            return await fetch_blob(agent_pb2_grpc.AgentGatewayStub(channel), vocab.sha256, vocab.size_bytes, downloads)

    result = asyncio.run(agent_fetch())
    assert result.resumed_from == half and result.bytes_transferred == vocab.size_bytes - half
    assert result.path.read_bytes() == extra


def test_refused_deploys_say_why_and_change_nothing(cp, cli, key, tmp_path) -> None:
    """Malformed references, unknown builds, a version no variant of which can run, bad targets and a
    viewer token are refused with a specific error, and no device's generation moves."""
    publish(cp, key, tmp_path, variant="fp32")
    publish(cp, key, tmp_path, variant="int8-dynamic")
    identity(cp, tmp_path, "dev-a")
    for bad in ("tiny", "tiny:x", "tiny:0", ":1", "tiny:1:", "tiny:1:fp32:x", "Bad Name:1"):
        code, out, err = cli("deploy", bad, "--device", "dev-a")
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), bad
    code, _, err = cli("deploy", "tiny:1:fp32")
    assert code == 2 and "exactly one target" in err

    def refusal(**kw) -> tuple[grpc.StatusCode, str]:
        error = rpc_error(lambda: deploy(cp, **kw))
        return error.code(), error.details()

    assert refusal(device_id="dev-a", version=9) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'tiny' has no version 9 (the latest is 1)",
    )
    assert refusal(device_id="dev-a", name="nope") == (
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' has no published builds",
    )
    assert refusal(device_id="dev-a", variant="int4")[0] == grpc.StatusCode.NOT_FOUND
    assert refusal(device_id="ghost", variant="fp32")[0] == grpc.StatusCode.NOT_FOUND
    assert refusal(device_id="dev-a", fleet="lab", variant="fp32")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert refusal(fleet="empty", variant="fp32")[0] == grpc.StatusCode.FAILED_PRECONDITION

    stub, meta, channel = cp.admin()
    with channel:
        viewer = stub.CreateOperatorToken(
            admin_pb2.CreateOperatorTokenRequest(name="watcher", role=admin_pb2.VIEWER), metadata=meta, timeout=10
        ).token
    assert refusal(device_id="dev-a", variant="fp32", token=viewer)[0] == grpc.StatusCode.PERMISSION_DENIED
    # Without a variant the selector chooses; a version whose every variant needs a CPU feature the
    # device lacks is refused, naming why, and nothing is deployed.
    publish(
        cp, key, tmp_path, version=2, variant="fp32", manifest={"requirements": {"opset": 13, "cpu_features": ["sve2"]}}
    )
    code, _, err = cli("deploy", "tiny:2", "--device", "dev-a")
    assert code == 1 and "no variant complies" in err and "sve2" in err and "[FAILED_PRECONDITION]" in err, err
    assert cp.device("dev-a").desired_generation == 0

    [assignment] = deploy(cp, fleet="lab", variant="int8-dynamic").assignments
    assert (assignment.device_id, assignment.model.variant, assignment.generation) == ("dev-a", "int8-dynamic", 1)
