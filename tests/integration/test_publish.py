"""Publishing signed model bundles to a real control plane: keys, blobs, builds, and every refusal."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from controlplane.cli.models import push_bundle
from protos import bundle_io, bundles
from protos.edgefleet.v1 import admin_pb2, bundle_pb2
from protos.limits import MAX_ARTIFACT_CHUNK_BYTES
from protos.tensors import to_numpy
from tests.bundles import make_bundle_dir
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread


@pytest.fixture
def key(cli, tmp_path: Path) -> Path:
    """A publisher key made with `keys create` and registered with `keys register`."""
    path = tmp_path / "keys" / "release.key"
    path.parent.mkdir()
    code, created, _ = cli("keys", "create", "--out", str(path))
    assert code == 0
    code, registered, _ = cli("keys", "register", f"{path}.pub", "--name", "release")
    assert code == 0 and registered == created
    return path


class CountingStub:
    """An Admin stub that counts the calls made through it."""

    def __init__(self, stub) -> None:
        self.stub = stub
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self.stub, name)

        def call(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return call


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_operator_publishes_a_real_model_and_reads_it_back(cli, cp, key, tmp_path) -> None:
    """A pushed bundle is listed and shown, and the stored model file runs and meets its golden case."""
    bundle = make_bundle_dir(tmp_path, "tiny", 1, extra_files={"labels.txt": b"low\nhigh\n"})
    code, out, err = cli("models", "push", str(bundle), "--key", str(key), "--json")
    assert code == 0, err
    pushed = json.loads(out)
    assert (pushed["name"], pushed["version"], pushed["variant"], pushed["task"]) == ("tiny", 1, "fp32", "generic")
    assert sorted(pushed["uploaded"]) == ["labels.txt", "model.onnx"] and pushed["already_present"] == []

    code, out, _ = cli("models", "list", "--json")
    [listed] = json.loads(out)
    assert listed == {k: pushed[k] for k in listed}
    code, out, _ = cli("models", "show", "tiny:1", "--json")
    [shown] = json.loads(out)
    assert [f["path"] for f in shown["manifest"]["files"]] == ["labels.txt", "model.onnx"]
    assert shown["manifest"]["golden"][0]["name"] == "ramp"
    assert shown["manifest_sha256"] == pushed["manifest_sha256"]
    code, out, _ = cli("models", "show", "tiny")
    assert code == 0 and "tiny:1 fp32" in out and "model.onnx" in out and "metric accuracy" in out

    stub, meta, channel = cp.admin()
    with channel:
        [build] = stub.GetModel(admin_pb2.GetModelRequest(name="tiny"), metadata=meta, timeout=10).builds
    manifest = bundle_pb2.BundleManifest.FromString(build.manifest)
    model = next(f for f in manifest.files if f.path == manifest.model_file)
    blob = cp.config.data_dir / "blobs" / model.sha256[:2] / model.sha256
    golden = manifest.golden[0]
    session = ort.InferenceSession(str(blob), providers=["CPUExecutionProvider"])
    [output] = session.run(None, {"x": to_numpy(golden.inputs[0])})
    np.testing.assert_allclose(output, to_numpy(golden.expected_outputs[0]), atol=golden.abs_tolerance)


def test_pushing_the_same_bundle_again_uploads_nothing_and_changes_nothing(cli, cp, key, tmp_path) -> None:
    """A re-push asks which blobs exist, uploads none, and publishing returns the stored build."""
    bundle = make_bundle_dir(tmp_path)
    code, out, _ = cli("models", "push", str(bundle), "--key", str(key), "--json")
    first = json.loads(out)
    stub, meta, channel = cp.admin()
    with channel:
        counting = CountingStub(stub)
        again = push_bundle(counting, meta, bundle, key)
        present = stub.StatBlobs(
            admin_pb2.StatBlobsRequest(sha256=[first["manifest_sha256"], *[f.sha256 for f in _files(bundle)]]),
            metadata=meta,
        ).present
    assert "UploadBlob" not in counting.calls and counting.calls[-1] == "PublishBundle"
    assert again.uploaded == [] and again.already_present == ["model.onnx"]
    assert again.build.ref.manifest_sha256 == first["manifest_sha256"]
    assert list(present) == [f.sha256 for f in _files(bundle)]
    code, out, _ = cli("models", "list", "--json")
    assert [b["published_at"] for b in json.loads(out)] == [first["published_at"]]


def _files(bundle: Path) -> list[bundle_pb2.BundleFile]:
    return list(bundle_io.read_bundle_dir(bundle)[0].files)


def test_a_file_changed_after_listing_is_refused_locally_and_by_the_server(cli, cp, key, tmp_path) -> None:
    """A file that no longer matches its listed hash is refused before upload; bytes that do not match their
    declared hash are refused by the server and not stored."""
    bundle = make_bundle_dir(tmp_path, extra_files={"labels.txt": b"a\n"})
    manifest, _ = bundle_io.read_bundle_dir(bundle)
    data = json.loads((bundle / "manifest.json").read_text())
    data["files"] = [{"path": f.path, "sha256": f.sha256} for f in manifest.files]
    (bundle / "manifest.json").write_text(json.dumps(data))
    (bundle / "labels.txt").write_bytes(b"b\n")
    code, _, err = cli("models", "push", str(bundle), "--key", str(key))
    assert code == 2 and err.startswith("error: file 'labels.txt' has sha256 ") and err.count("\n") == 1

    declared = hashlib.sha256(b"a\n").hexdigest()
    stub, meta, channel = cp.admin()
    with channel:
        refused = rpc_error(
            lambda: stub.UploadBlob(
                iter([admin_pb2.BlobChunk(sha256=declared, total_bytes=2, data=b"b\n")]), metadata=meta
            )
        )
        present = stub.StatBlobs(admin_pb2.StatBlobsRequest(sha256=[declared]), metadata=meta).present
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "hashes to" in refused.details()
    assert list(present) == []
    assert list((cp.config.data_dir / "blobs" / "tmp").iterdir()) == []


def test_a_tampered_or_incomplete_bundle_is_not_published(cli, cp, key, tmp_path) -> None:
    """Manifest bytes changed after signing are INVALID_ARGUMENT; a manifest whose files were never
    uploaded is FAILED_PRECONDITION; nothing is published."""
    manifest, _ = bundle_io.read_bundle_dir(make_bundle_dir(tmp_path))
    signed = bundles.sign_manifest(manifest, bundle_io.load_private_key(key))
    tampered = bundle_pb2.SignedManifest()
    tampered.CopyFrom(signed)
    tampered.manifest = signed.manifest.replace(b"tiny", b"tinx")
    stub, meta, channel = cp.admin()
    with channel:

        def publish(s: bundle_pb2.SignedManifest):
            request = admin_pb2.PublishBundleRequest(signed_manifest=s.SerializeToString())
            return lambda: stub.PublishBundle(request, metadata=meta)

        forged = rpc_error(publish(tampered))
        incomplete = rpc_error(publish(signed))
        builds = stub.ListModels(admin_pb2.ListModelsRequest(), metadata=meta).builds
    assert forged.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        forged.details()
        == f"signature by key {signed.signatures[0].key_id} is invalid: the manifest was changed after signing"
    )
    assert incomplete.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert incomplete.details().startswith("file 'model.onnx' (sha256 ") and "is not uploaded" in incomplete.details()
    assert list(builds) == []


def test_a_bundle_signed_by_an_unregistered_key_is_refused(cli, cp, tmp_path) -> None:
    """The CLI refuses before uploading; the server refuses too, naming `edgefleet keys register`."""
    stray = tmp_path / "stray.key"
    code, key_id, _ = cli("keys", "create", "--out", str(stray))
    bundle = make_bundle_dir(tmp_path)
    code, _, err = cli("models", "push", str(bundle), "--key", str(stray))
    assert code == 2 and f"publisher key {key_id.strip()} is not registered" in err
    assert f"edgefleet keys register {stray}.pub --name NAME" in err

    manifest, _ = bundle_io.read_bundle_dir(bundle)
    signed = bundles.sign_manifest(manifest, bundle_io.load_private_key(stray))
    stub, meta, channel = cp.admin()
    with channel:
        refused = rpc_error(
            lambda: stub.PublishBundle(
                admin_pb2.PublishBundleRequest(signed_manifest=signed.SerializeToString()), metadata=meta
            )
        )
        present = stub.StatBlobs(admin_pb2.StatBlobsRequest(sha256=[f.sha256 for f in manifest.files]), metadata=meta)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not a registered publisher key" in refused.details() and "edgefleet keys register" in refused.details()
    assert list(present.present) == []


def test_versions_only_move_forward_but_a_version_may_gain_variants(cli, cp, key, tmp_path) -> None:
    """After version 5, version 3 is refused with both numbers; another variant of version 5 is accepted."""
    assert cli("models", "push", str(make_bundle_dir(tmp_path, "kws", 5)), "--key", str(key))[0] == 0
    code, _, err = cli("models", "push", str(make_bundle_dir(tmp_path, "kws", 3)), "--key", str(key))
    assert code == 1 and "version 3 < latest 5" in err and "[FAILED_PRECONDITION]" in err
    bundle = make_bundle_dir(tmp_path, "kws", 5, "int8-dynamic", scale=2.0)
    code, out, err = cli("models", "push", str(bundle), "--key", str(key))
    assert code == 0, err
    assert out.startswith("published kws:5 int8-dynamic")
    code, out, _ = cli("models", "list", "--json")
    assert [(b["version"], b["variant"]) for b in json.loads(out)] == [(5, "fp32"), (5, "int8-dynamic")]
    code, _, err = cli("models", "show", "kws:3")
    assert code == 1 and err == "error: model 'kws' has no version 3 (the latest is 5) [NOT_FOUND]\n"


def test_a_changed_build_cannot_replace_a_published_one(cli, key, tmp_path) -> None:
    """Re-publishing name:version:variant with another model is ALREADY_EXISTS; the first build stays."""
    assert cli("models", "push", str(make_bundle_dir(tmp_path, "kws", 1)), "--key", str(key))[0] == 0
    changed = make_bundle_dir(tmp_path / "changed", "kws", 1, scale=3.0)
    code, _, err = cli("models", "push", str(changed), "--key", str(key))
    assert code == 1 and "already published with another manifest" in err and "[ALREADY_EXISTS]" in err


def test_a_viewer_can_read_models_but_not_publish(cli, key, tmp_path) -> None:
    """A viewer token lists keys and models; registering, uploading and publishing need the operator role."""
    assert cli("models", "push", str(make_bundle_dir(tmp_path, "kws", 1)), "--key", str(key))[0] == 0
    _, viewer, _ = cli("operators", "create", "vera", "--role", "viewer")
    viewer = viewer.strip()
    new_model = make_bundle_dir(tmp_path, "kws", 2, scale=5.0)
    code, _, err = cli("models", "push", str(new_model), "--key", str(key), token=viewer)
    assert code == 1
    assert err == "error: uploading blobs needs the operator role; this token is viewer [PERMISSION_DENIED]\n"
    same_blobs = make_bundle_dir(tmp_path, "kws", 1, "fp16")  # every file is on the server already
    code, _, err = cli("models", "push", str(same_blobs), "--key", str(key), token=viewer)
    assert code == 1
    assert err == "error: publishing a bundle needs the operator role; this token is viewer [PERMISSION_DENIED]\n"
    code, _, err = cli("keys", "register", f"{key}.pub", "--name", "other", token=viewer)
    assert code == 1 and "registering a publisher key needs the operator role" in err
    code, out, _ = cli("models", "list", "--json", token=viewer)
    assert code == 0 and [b["version"] for b in json.loads(out)] == [1]
    code, out, _ = cli("keys", "list", "--json", token=viewer)
    assert code == 0 and [k["name"] for k in json.loads(out)] == ["release"]


def test_upload_protocol_refusals(cp_sqlite) -> None:
    """Chunks over the limit, a first chunk without its declaration, a chunk changing it, and oversized
    StatBlobs requests are refused with specific codes; a stored blob answers at once."""
    data = b"x" * 10
    sha = hashlib.sha256(data).hexdigest()
    stub, meta, channel = cp_sqlite.admin()
    with channel:

        def upload(*chunks: admin_pb2.BlobChunk):
            return stub.UploadBlob(iter(chunks), metadata=meta, timeout=30)

        big = admin_pb2.BlobChunk(
            sha256=sha, total_bytes=MAX_ARTIFACT_CHUNK_BYTES + 1, data=b"y" * (MAX_ARTIFACT_CHUNK_BYTES + 1)
        )
        cases = {
            "chunk": rpc_error(lambda: upload(big)),
            "undeclared": rpc_error(lambda: upload(admin_pb2.BlobChunk(data=data))),
            "empty": rpc_error(lambda: upload()),
            "switch": rpc_error(
                lambda: upload(
                    admin_pb2.BlobChunk(sha256=sha, total_bytes=10, data=data[:5]),
                    admin_pb2.BlobChunk(sha256="cd" * 32, data=data[5:]),
                )
            ),
            "long": rpc_error(lambda: upload(admin_pb2.BlobChunk(sha256=sha, total_bytes=5, data=data))),
            "stat": rpc_error(lambda: stub.StatBlobs(admin_pb2.StatBlobsRequest(sha256=[sha] * 1001), metadata=meta)),
            "malformed": rpc_error(lambda: stub.StatBlobs(admin_pb2.StatBlobsRequest(sha256=["../x"]), metadata=meta)),
        }
        first = upload(admin_pb2.BlobChunk(sha256=sha, total_bytes=10, data=data))
        second = upload(*[admin_pb2.BlobChunk(sha256=sha, total_bytes=10, data=data[i : i + 1]) for i in range(10)])
        bad_key = rpc_error(
            lambda: stub.AddPublisherKey(
                admin_pb2.AddPublisherKeyRequest(public_key=b"k" * 31, name="x"), metadata=meta
            )
        )
    codes = {name: error.code() for name, error in cases.items()}
    assert codes == {
        "chunk": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "undeclared": grpc.StatusCode.INVALID_ARGUMENT,
        "empty": grpc.StatusCode.INVALID_ARGUMENT,
        "switch": grpc.StatusCode.INVALID_ARGUMENT,
        "long": grpc.StatusCode.INVALID_ARGUMENT,
        "stat": grpc.StatusCode.INVALID_ARGUMENT,
        "malformed": grpc.StatusCode.INVALID_ARGUMENT,
    }
    assert (first.already_present, second.already_present, second.size_bytes) == (False, True, 10)
    assert bad_key.code() == grpc.StatusCode.INVALID_ARGUMENT and "32 raw ed25519 bytes" in bad_key.details()
    assert list((cp_sqlite.config.data_dir / "blobs" / "tmp").iterdir()) == []


@pytest.fixture
def small_cp(tmp_path: Path) -> Iterator[ServerThread]:
    """A control plane with a 1 KiB blob cap and a 1 s upload idle timeout."""
    server = ServerThread(server_config(tmp_path / "small", max_blob_bytes=1024, blob_upload_idle_seconds=1.0))
    yield server
    server.stop()


def test_oversized_and_stalled_uploads_are_dropped(small_cp: ServerThread) -> None:
    """A blob over the cap is RESOURCE_EXHAUSTED before any byte is stored; an upload that stops sending is
    DEADLINE_EXCEEDED after the idle timeout, and leaves no temporary file."""
    sha = hashlib.sha256(b"z" * 10).hexdigest()

    released = threading.Event()

    def stalls() -> Iterator[admin_pb2.BlobChunk]:
        yield admin_pb2.BlobChunk(sha256=sha, total_bytes=10, data=b"z" * 5)
        released.wait(30)  # silent past the server's idle timeout, until the test is done

    stub, meta, channel = small_cp.admin()
    with channel:
        over = rpc_error(
            lambda: stub.UploadBlob(iter([admin_pb2.BlobChunk(sha256=sha, total_bytes=1025)]), metadata=meta)
        )
        try:
            stalled = rpc_error(lambda: stub.UploadBlob(stalls(), metadata=meta, timeout=30))
        finally:
            released.set()
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "cap of 1024 bytes" in over.details()
    assert stalled.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no upload data for 1 s" in stalled.details()
    assert list((small_cp.config.data_dir / "blobs" / "tmp").iterdir()) == []
