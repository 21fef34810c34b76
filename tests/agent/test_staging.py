"""The build store stages a build complete or not at all, refuses paths outside it,
and cleans up what no kept build uses."""

from __future__ import annotations

import hashlib
import os
import tempfile

import pytest

from agent.staging import BuildStore, StagingError, write_state
from protos.edgefleet.v1 import bundle_pb2


def _put_blob(store: BuildStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.blobs.mkdir(parents=True, exist_ok=True)
    (store.blobs / sha).write_bytes(data)
    return sha


def _build(store: BuildStore, files: dict[str, bytes]) -> tuple[str, bytes, bundle_pb2.BundleManifest]:
    manifest = bundle_pb2.BundleManifest(name="tiny", version=1, variant="fp32", model_file=next(iter(files)))
    for path, data in files.items():
        manifest.files.add(path=path, size_bytes=len(data), sha256=_put_blob(store, data))
    body = manifest.SerializeToString(deterministic=True)
    signed = bundle_pb2.SignedManifest(manifest=body).SerializeToString()
    return hashlib.sha256(body).hexdigest(), signed, manifest


def test_stage_materialises_every_file_and_the_manifest(tmp_path):
    store = BuildStore(tmp_path)
    sha, signed, manifest = _build(store, {"model.onnx": b"model", "labels/intents.txt": b"a\nb\n"})
    directory = store.stage(sha, signed, manifest)
    assert directory == tmp_path / "models" / "builds" / sha
    assert (directory / "model.onnx").read_bytes() == b"model"
    assert (directory / "labels" / "intents.txt").read_bytes() == b"a\nb\n"
    assert (directory / "manifest.pb").read_bytes() == bundle_pb2.SignedManifest.FromString(signed).manifest
    assert (directory / "signed.pb").read_bytes() == signed
    assert store.read_manifest(sha) == signed


def test_stage_is_idempotent(tmp_path):
    store = BuildStore(tmp_path)
    sha, signed, manifest = _build(store, {"model.onnx": b"model"})
    first = store.stage(sha, signed, manifest)
    inode = (first / "model.onnx").stat().st_ino
    assert store.stage(sha, signed, manifest) == first
    assert (first / "model.onnx").stat().st_ino == inode


@pytest.mark.parametrize("path", ["../escape.onnx", "/etc/passwd", "a/../../b", "signed.pb"])
def test_path_outside_the_build_is_refused_and_nothing_is_left(tmp_path, path):
    store = BuildStore(tmp_path)
    sha, signed, manifest = _build(store, {"model.onnx": b"model", path: b"evil"})
    with pytest.raises(StagingError, match="refused to stage"):
        store.stage(sha, signed, manifest)
    assert list(store.builds.iterdir()) == []
    assert not (tmp_path / "escape.onnx").exists()


def test_symlink_escape_is_refused(tmp_path, monkeypatch):
    store = BuildStore(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    sha, signed, manifest = _build(store, {"model.onnx": b"model", "sub/x.bin": b"x"})
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp_with_link(**kwargs):  # a build dir where "sub" is already a symlink to outside
        made = real_mkdtemp(**kwargs)
        os.symlink(outside, os.path.join(made, "sub"))
        return made

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp_with_link)
    with pytest.raises(StagingError, match="leaves the build directory"):
        store.stage(sha, signed, manifest)
    monkeypatch.undo()
    assert list(outside.iterdir()) == []
    assert list(store.builds.iterdir()) == []


def test_missing_blob_leaves_no_build(tmp_path):
    store = BuildStore(tmp_path)
    sha, signed, manifest = _build(store, {"model.onnx": b"model"})
    for blob in store.blobs.iterdir():
        blob.unlink()
    with pytest.raises(StagingError, match="not downloaded"):
        store.stage(sha, signed, manifest)
    assert list(store.builds.iterdir()) == []


def test_cleanup_keeps_only_kept_builds_and_their_blobs(tmp_path):
    store = BuildStore(tmp_path)
    keep_sha, keep_signed, keep_manifest = _build(store, {"model.onnx": b"kept"})
    drop_sha, drop_signed, drop_manifest = _build(store, {"model.onnx": b"dropped"})
    store.stage(keep_sha, keep_signed, keep_manifest)
    store.stage(drop_sha, drop_signed, drop_manifest)
    store.write_manifest("f" * 64, b"a downloaded manifest never staged")
    store.cleanup({keep_sha})
    assert [p.name for p in store.builds.iterdir()] == [keep_sha]
    assert [p.name for p in store.blobs.iterdir()] == [keep_manifest.files[0].sha256]
    assert list(store.manifests.iterdir()) == []


def test_write_state_replaces_atomically(tmp_path):
    path = tmp_path / "reconcile.json"
    write_state(path, "first")
    write_state(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["reconcile.json"]
