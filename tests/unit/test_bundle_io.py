"""The bundle I/O shell: publisher key files and the bundle directory an operator pushes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from protos import bundle_io, bundles
from protos.bundles import BundleError
from protos.edgefleet.v1 import bundle_pb2
from tests.bundles import make_bundle_dir

SHA = "ab" * 32


# --- key files ---


def test_a_key_pair_is_written_owner_only_and_reads_back(tmp_path: Path) -> None:
    """write_key_pair returns the id of the key that load_private_key and load_public_key read back."""
    out = tmp_path / "release.key"
    kid = bundle_io.write_key_pair(out)
    assert (out.stat().st_mode & 0o777) == 0o600
    private = bundle_io.load_private_key(out)
    assert bundles.key_id(bundles.raw_public_key(private)) == kid
    assert bundles.key_id(bundle_io.load_public_key(tmp_path / "release.key.pub")) == kid


@pytest.mark.parametrize("existing", ["release.key", "release.key.pub"])
def test_an_existing_key_is_never_overwritten(tmp_path: Path, existing: str) -> None:
    """If either file exists, nothing is written and the existing file is untouched."""
    (tmp_path / existing).write_text("precious")
    with pytest.raises(BundleError, match="already exists"):
        bundle_io.write_key_pair(tmp_path / "release.key")
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_key_files_of_the_wrong_kind_are_refused(tmp_path: Path) -> None:
    """A public key where a private one is expected, an EC key, or a missing file each get a clear error."""
    bundle_io.write_key_pair(tmp_path / "k")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(BundleError, match="not an unencrypted PEM private key"):
        bundle_io.load_private_key(tmp_path / "k.pub")
    with pytest.raises(BundleError, match="not a PEM public key"):
        bundle_io.load_public_key(tmp_path / "k")
    with pytest.raises(BundleError, match="publisher keys are ed25519"):
        bundle_io.load_private_key(tmp_path / "ec.pem")
    with pytest.raises(BundleError, match="cannot read key file"):
        bundle_io.load_private_key(tmp_path / "missing")


# --- the bundle directory ---


def test_a_directory_without_a_file_list_is_every_regular_file(tmp_path: Path) -> None:
    """Without files in manifest.json, every file but the manifest is in the bundle, hashed, with roles."""
    bundle = make_bundle_dir(tmp_path, "kws", 2, task="speech-command", extra_files={"labels/labels.txt": b"yes\nno\n"})
    m, local = bundle_io.read_bundle_dir(bundle)
    assert [(f.path, f.role, f.size_bytes) for f in m.files] == [
        ("labels/labels.txt", "other", 7),
        ("model.onnx", "model", (bundle / "model.onnx").stat().st_size),
    ]
    assert m.files[0].sha256 == hashlib.sha256(b"yes\nno\n").hexdigest()
    assert m.task == bundle_pb2.SPEECH_COMMAND and (m.name, m.version) == ("kws", 2)
    assert local == {"labels/labels.txt": bundle / "labels/labels.txt", "model.onnx": bundle / "model.onnx"}


def test_listed_files_must_exist_and_match_their_listed_hash(tmp_path: Path) -> None:
    """A listed file that is missing, or differs from its listed sha256, is refused naming it."""
    bundle = make_bundle_dir(tmp_path, list_files=True, extra_files={"vocab.txt": b"a"})
    m, _ = bundle_io.read_bundle_dir(bundle)
    assert [f.path for f in m.files] == ["model.onnx", "vocab.txt"]
    (bundle / "vocab.txt").unlink()
    with pytest.raises(BundleError, match="'vocab.txt' is listed in the manifest but missing"):
        bundle_io.read_bundle_dir(bundle)
    bundle = make_bundle_dir(tmp_path / "b", manifest={"files": [{"path": "model.onnx", "sha256": SHA}]})
    with pytest.raises(BundleError, match=f"'model.onnx' has sha256 [0-9a-f]{{64}}, but the manifest lists {SHA}"):
        bundle_io.read_bundle_dir(bundle)


def test_symlinks_in_a_bundle_directory_are_refused(tmp_path: Path) -> None:
    """A symlinked file, listed or found, and a symlinked directory on a listed path are all refused."""
    outside = tmp_path / "secret.txt"
    outside.write_text("not for devices")
    found = make_bundle_dir(tmp_path / "found")
    (found / "link.txt").symlink_to(outside)
    with pytest.raises(BundleError, match="'link.txt' in the bundle directory is a symlink"):
        bundle_io.read_bundle_dir(found)
    listed = make_bundle_dir(
        tmp_path / "listed", manifest={"files": [{"path": "model.onnx"}, {"path": "sub/secret.txt"}]}
    )
    (listed / "sub").symlink_to(tmp_path)
    with pytest.raises(BundleError, match="is a symlink"):
        bundle_io.read_bundle_dir(listed)


def test_special_files_in_a_bundle_directory_are_refused(tmp_path: Path) -> None:
    """A FIFO (which would hang a reader) is not a bundle file."""
    bundle = make_bundle_dir(tmp_path)
    os.mkfifo(bundle / "pipe")
    with pytest.raises(BundleError, match="'pipe' in the bundle directory is not a regular file"):
        bundle_io.read_bundle_dir(bundle)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "manifest.json does not exist"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"format_version": 1, "colour": "red"}', "colour"),
    ],
)
def test_a_malformed_manifest_json_is_refused(tmp_path: Path, content: str | None, why: str) -> None:
    """manifest.json must exist and be a BundleManifest in protobuf JSON, without unknown fields."""
    bundle = make_bundle_dir(tmp_path)
    if content is None:
        (bundle / "manifest.json").unlink()
    else:
        (bundle / "manifest.json").write_text(content)
    with pytest.raises(BundleError, match=why):
        bundle_io.read_bundle_dir(bundle)


def test_a_traversing_path_in_manifest_json_is_refused_before_any_file_is_read(tmp_path: Path) -> None:
    """A listed '../' path is refused by its text, not by what happens to exist outside."""
    (tmp_path / "outside.txt").write_text("x")
    bundle = make_bundle_dir(
        tmp_path / "b", manifest={"files": [{"path": "model.onnx"}, {"path": "../../outside.txt"}]}
    )
    with pytest.raises(BundleError, match=r"'\.\.' segment"):
        bundle_io.read_bundle_dir(bundle)


# --- writing a bundle directory ---


def test_write_bundle_dir_writes_every_file_and_the_manifest(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(b"onnx bytes")
    target = bundle_io.write_bundle_dir(
        tmp_path / "out" / "kws-fp32", {"model.onnx": source, "labels/labels.txt": b"yes\nno\n"}, {"name": "kws"}
    )
    assert target == tmp_path / "out" / "kws-fp32"
    assert (target / "model.onnx").read_bytes() == b"onnx bytes"
    assert (target / "labels" / "labels.txt").read_bytes() == b"yes\nno\n"
    assert json.loads((target / "manifest.json").read_text()) == {"name": "kws"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["kws-fp32"]


def test_write_bundle_dir_replaces_an_older_build_whole(tmp_path: Path) -> None:
    target = tmp_path / "kws-fp32"
    bundle_io.write_bundle_dir(target, {"model.onnx": b"old", "old-only.txt": b"x"}, {"version": 1})
    bundle_io.write_bundle_dir(target, {"model.onnx": b"new"}, {"version": 2})
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.onnx"]
    assert (target / "model.onnx").read_bytes() == b"new"


def test_write_bundle_dir_can_copy_from_the_directory_it_replaces(tmp_path: Path) -> None:
    """A new manifest for an existing build: its files are copied before the old directory goes."""
    target = tmp_path / "kws-fp32"
    bundle_io.write_bundle_dir(target, {"model.onnx": b"weights", "labels.txt": b"yes\nno\n"}, {"version": 1})
    bundle_io.write_bundle_dir(target, {p: target / p for p in ("model.onnx", "labels.txt")}, {"version": 2})
    assert (target / "model.onnx").read_bytes() == b"weights"
    assert (target / "labels.txt").read_bytes() == b"yes\nno\n"
    assert json.loads((target / "manifest.json").read_text()) == {"version": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kws-fp32"]


@pytest.mark.parametrize("files", [{"../escape.onnx": b"x"}, {"model.onnx": Path("/nonexistent/model.onnx")}])
def test_a_failed_write_leaves_the_previous_directory_and_no_debris(tmp_path: Path, files) -> None:
    target = tmp_path / "kws-fp32"
    bundle_io.write_bundle_dir(target, {"model.onnx": b"good"}, {"version": 1})
    with pytest.raises((BundleError, OSError)):
        bundle_io.write_bundle_dir(target, files, {"version": 2})
    assert (target / "model.onnx").read_bytes() == b"good"
    assert json.loads((target / "manifest.json").read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kws-fp32"]
