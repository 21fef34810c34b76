"""The bundle contract: manifest rules and signatures over exact bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from protos import bundles, tensors
from protos.bundles import BundleError, check_path, sign_manifest, validate_manifest, verify_signed_manifest
from protos.edgefleet.v1 import bundle_pb2
from tests.bundles import golden_case

SHA = "ab" * 32
GIB = 1024**3


def manifest(**overrides) -> bundle_pb2.BundleManifest:
    """A valid manifest with two files; keyword arguments replace top-level fields."""
    m = bundle_pb2.BundleManifest(
        format_version=1,
        name="kws",
        version=3,
        task=bundle_pb2.SPEECH_COMMAND,
        variant="int8-dynamic",
        model_file="model.onnx",
        files=[
            bundle_pb2.BundleFile(path="model.onnx", size_bytes=100, sha256=SHA, role="model"),
            bundle_pb2.BundleFile(path="labels/labels.txt", size_bytes=5, sha256="cd" * 32, role="labels"),
        ],
        golden=[golden_case(2.0, 1.0)],
    )
    for field, value in overrides.items():
        if isinstance(value, list):
            m.ClearField(field)
            getattr(m, field).extend(value)
        else:
            setattr(m, field, value)
    return m


def files(*paths: str, size: int = 10) -> list[bundle_pb2.BundleFile]:
    return [bundle_pb2.BundleFile(path=p, size_bytes=size, sha256=SHA) for p in paths]


@pytest.fixture
def key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def trusted(*keys: ed25519.Ed25519PrivateKey) -> dict[str, bytes]:
    return {bundles.key_id(bundles.raw_public_key(k)): bundles.raw_public_key(k) for k in keys}


# --- manifest rules ---


def test_a_well_formed_manifest_is_accepted() -> None:
    """The reference manifest breaks no rule."""
    validate_manifest(manifest())


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("../model.onnx", r"'\.\.' segment"),
        ("a/../../b", r"'\.\.' segment"),
        ("./model.onnx", r"'\.' or"),
        ("a//b", "empty, "),
        ("dir/", "empty, "),
        ("a\\b", "backslash"),
        ("..\\..\\evil", "backslash"),
        ("model\x00.onnx", "control"),
        ("model\n.onnx", "control"),
        ("evil\u202egnp.onnx", "invisible"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_unsafe_file_paths_are_refused(path: str, why: str) -> None:
    """A path that could leave the bundle directory, hide its name, or break a file system is refused."""
    with pytest.raises(BundleError, match=why):
        validate_manifest(manifest(files=files("model.onnx", path)))


def test_the_manifest_path_is_reserved() -> None:
    """A file may not be called manifest.json (in any case): that name is the manifest's."""
    with pytest.raises(BundleError, match="reserved"):
        validate_manifest(manifest(files=files("model.onnx", "Manifest.JSON")))


@pytest.mark.parametrize("second", ["model.onnx", "Model.onnx", "MODEL.ONNX"])
def test_duplicate_paths_are_refused_case_insensitively(second: str) -> None:
    """Two files whose names differ only in case would collide on some file systems: refused."""
    with pytest.raises(BundleError, match="listed twice"):
        validate_manifest(manifest(files=files("model.onnx", second)))


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"format_version": 2}, "format_version is 2"),
        ({"name": "Bad Name"}, "model name"),
        ({"name": "kws\n"}, "model name"),
        ({"name": ""}, "model name"),
        ({"version": 0}, "version must be between 1"),
        ({"version": 2**63}, "version must be between 1"),
        ({"variant": "int3"}, "variant 'int3' is unknown"),
        ({"task": bundle_pb2.TASK_UNSPECIFIED}, "task is not set"),
        ({"task": 99}, "task is not set or unknown"),
        ({"files": []}, "1 to 64 files"),
        ({"files": files(*[f"f{i}" for i in range(65)])}, "1 to 64 files"),
        ({"model_file": "other.onnx"}, "model_file 'other.onnx' is not one of"),
        ({"files": files("model.onnx", size=0)}, "size must be 1 byte"),
        ({"files": files("model.onnx", size=4 * GIB + 1)}, "size must be 1 byte to 4 GiB"),
        ({"files": files("model.onnx", "a", "b", size=3 * GIB)}, "add up to"),
    ],
)
def test_manifest_fields_out_of_bounds_are_refused(overrides: dict, why: str) -> None:
    """Each rule of the manifest refuses with a message naming the field."""
    with pytest.raises(BundleError, match=why):
        validate_manifest(manifest(**overrides))


@pytest.mark.parametrize("sha256", ["AB" * 32, "ab" * 31, "zz" * 32, ""])
def test_file_hashes_must_be_lowercase_sha256_hex(sha256: str) -> None:
    """A file's sha256 is 64 lowercase hex characters."""
    m = manifest(files=[bundle_pb2.BundleFile(path="model.onnx", size_bytes=1, sha256=sha256)])
    with pytest.raises(BundleError, match="sha256 must be 64 lowercase hex"):
        validate_manifest(m)


def test_preprocessing_files_must_be_in_the_bundle() -> None:
    """A tokenizer named by the preprocessing section must be one of the files."""
    m = manifest()
    m.preprocessing.text.tokenizer_file = "tokenizer.json"
    with pytest.raises(BundleError, match="tokenizer_file 'tokenizer.json'"):
        validate_manifest(m)


def test_golden_tensors_must_match_their_shape() -> None:
    """A golden tensor whose data does not fill its shape is refused before any device runs it."""
    m = manifest()
    m.golden[0].inputs[0].data = b"\x00" * 12
    with pytest.raises(BundleError, match=r"data is 12 bytes, shape \[1, 4\] float32 needs 16"):
        validate_manifest(m)
    m.golden[0].inputs[0].dtype = "complex64"
    with pytest.raises(BundleError, match="dtype 'complex64' is unknown"):
        validate_manifest(m)


def test_golden_dtypes_agree_with_the_tensor_helpers() -> None:
    """The manifest rules and protos.tensors know the same dtypes with the same sizes."""
    assert {name: dtype.itemsize for name, dtype in tensors.DTYPES.items()} == bundles.DTYPE_BYTES


@given(st.text(max_size=60))
def test_an_accepted_path_always_stays_inside_the_bundle(path: str) -> None:
    """Whatever the text, a path check_path accepts resolves below the bundle root."""
    try:
        check_path(path)
    except BundleError:
        return
    root = Path("/bundle/root")
    assert (root / path).resolve().is_relative_to(root) and "\\" not in path


# --- signatures ---


def test_a_signed_manifest_verifies_to_the_same_manifest(key) -> None:
    """Signing serializes once; verification with the signer's key returns an equal manifest."""
    m = manifest()
    signed = sign_manifest(m, key)
    assert signed.manifest == m.SerializeToString(deterministic=True)
    assert verify_signed_manifest(signed, trusted(key)) == m
    assert bundles.valid_signers(signed, trusted(key)) == [signed.signatures[0].key_id]


def test_a_manifest_by_an_untrusted_key_is_refused_naming_the_signer(key) -> None:
    """A valid signature by a key that is not trusted does not count."""
    signed = sign_manifest(manifest(), key)
    other = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(
        BundleError, match=f"not signed by a trusted publisher key \\(signed by: {signed.signatures[0].key_id}"
    ):
        verify_signed_manifest(signed, trusted(other))


def test_tampered_manifest_bytes_are_refused(key) -> None:
    """Changing one byte of the signed manifest breaks the signature."""
    signed = sign_manifest(manifest(), key)
    tampered = bytearray(signed.manifest)
    tampered[-1] ^= 0x01
    signed.manifest = bytes(tampered)
    with pytest.raises(BundleError, match=f"signature by key {signed.signatures[0].key_id} is invalid"):
        verify_signed_manifest(signed, trusted(key))


def test_a_forged_signature_is_refused(key) -> None:
    """A signature that is not the key's over these bytes is invalid."""
    signed = sign_manifest(manifest(), key)
    signed.signatures[0].signature = bytes(64)
    with pytest.raises(BundleError, match="is invalid"):
        verify_signed_manifest(signed, trusted(key))


def test_one_trusted_valid_signature_is_enough(key) -> None:
    """Signatures by unknown keys beside a valid trusted one are ignored."""
    other = ed25519.Ed25519PrivateKey.generate()
    signed = sign_manifest(manifest(), other)
    signed.signatures.append(sign_manifest(manifest(), key).signatures[0])
    assert bundles.valid_signers(signed, trusted(key)) == [signed.signatures[1].key_id]


def test_a_trusted_key_filed_under_another_id_is_refused(key) -> None:
    """A trust map whose key does not hash to its id (a substituted key) is an error, not a pass."""
    signed = sign_manifest(manifest(), key)
    impostor = bundles.raw_public_key(ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="does not match its id"):
        verify_signed_manifest(signed, {signed.signatures[0].key_id: impostor})


def test_oversized_manifests_are_neither_signed_nor_verified(key) -> None:
    """A manifest over 1 MiB is refused on both sides."""
    m = manifest(description="x" * (1024 * 1024))
    with pytest.raises(BundleError, match="limit is 1048576"):
        sign_manifest(m, key)
    body = m.SerializeToString()
    signed = bundle_pb2.SignedManifest(
        manifest=body,
        signatures=[bundle_pb2.ManifestSignature(key_id=next(iter(trusted(key))), signature=key.sign(body))],
    )
    with pytest.raises(BundleError, match="limit is 1048576"):
        verify_signed_manifest(signed, trusted(key))
    with pytest.raises(BundleError, match="limit is"):
        bundles.parse_signed_manifest(bytes(2 * 1024 * 1024))


def test_validly_signed_garbage_or_a_rule_breaking_manifest_is_refused(key) -> None:
    """A good signature does not excuse bytes that are not a manifest, or a manifest that breaks a rule."""
    for body, why in (
        (b"\xff\xff\xff", "not a serialized BundleManifest"),
        (manifest(version=0).SerializeToString(), "version"),
    ):
        signature = bundle_pb2.ManifestSignature(key_id=next(iter(trusted(key))), signature=key.sign(body))
        with pytest.raises(BundleError, match=why):
            verify_signed_manifest(bundle_pb2.SignedManifest(manifest=body, signatures=[signature]), trusted(key))


def test_an_unsigned_manifest_is_refused(key) -> None:
    """No signature at all is 'signed by: nobody'."""
    signed = bundle_pb2.SignedManifest(manifest=manifest().SerializeToString())
    with pytest.raises(BundleError, match="signed by: nobody"):
        verify_signed_manifest(signed, trusted(key))


def test_a_public_key_must_be_32_raw_ed25519_bytes(key) -> None:
    """check_public_key returns the key id of a real key and refuses other lengths."""
    raw = bundles.raw_public_key(key)
    assert bundles.check_public_key(raw) == bundles.key_id(raw)
    with pytest.raises(BundleError, match="32 raw ed25519 bytes"):
        bundles.check_public_key(raw[:31])
