"""Model bundles: the manifest's rules and its ed25519 signatures (the pure core; no file I/O).

Both sides use this module: the operator's CLI signs what it pushes, the control plane
verifies what it stores, and an agent verifies what it installs, all with the same rules.
Key files and the bundle directory an operator pushes are in ``protos.bundle_io``.

Invariants:
- A manifest is signed as the exact bytes of its deterministic serialization, once;
  verification parses only those bytes, after a signature by a trusted key checks out.
- ``validate_manifest`` bounds everything a device will act on: names, versions,
  variants, file counts and sizes, and paths (relative, forward slashes, no ``..``, no
  control characters, unique even case-insensitively), so a bundle can never write
  outside its own directory.
- A key id is the sha256 (hex) of the 32-byte raw ed25519 public key.
- Every refusal is a ``BundleError`` (a ``ValueError``) whose message names the file,
  field or key at fault.

This module and ``bundle_io`` are the only places that touch ``cryptography`` for bundles.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from protos.edgefleet.v1 import bundle_pb2
from protos.limits import NAME_PATTERN

FORMAT_VERSION = 1
VARIANTS = ("fp32", "fp16", "int8-dynamic", "int8-static-qdq", "int8-static-qop", "int4-weight")
TASKS: dict[str, int] = {
    "text-nlu": bundle_pb2.TEXT_NLU,
    "speech-command": bundle_pb2.SPEECH_COMMAND,
    "vad": bundle_pb2.VAD,
    "generic": bundle_pb2.GENERIC,
}
MAX_FILES = 64
MAX_PATH_CHARS = 200
MAX_FILE_BYTES = 4 * 1024**3
MAX_TOTAL_BYTES = 8 * 1024**3
MAX_SIGNED_MANIFEST_BYTES = 1024 * 1024  # the signed manifest bytes
MAX_SIGNATURES = 16
MAX_VERSION = 2**63 - 1  # stored as a signed 64-bit integer
MANIFEST_FILE = "manifest.json"  # reserved: the manifest of a bundle directory
RAW_KEY_BYTES = 32
# Tensor dtypes of golden cases and their item sizes in bytes (the same as protos.tensors.DTYPES,
# which needs numpy; a test keeps the two in step).
DTYPE_BYTES = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}
MAX_TENSOR_RANK = 8

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ROLE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # model, tokenizer, labels, golden, other, or newer roles


class BundleError(ValueError):
    """The bundle, its manifest, a signature or a key is refused; the message says which and why."""


def task_name(task: int) -> str:
    """The task's name ("text-nlu", ...). Raises BundleError for TASK_UNSPECIFIED or an unknown value."""
    for name, value in TASKS.items():
        if value == task:
            return name
    raise BundleError(f"task is not set or unknown ({task}); use one of {', '.join(TASKS)}")


# --- the manifest's rules ---


def check_path(path: str) -> None:
    """Raise BundleError unless ``path`` is a safe relative path inside a bundle."""
    if not path:
        raise BundleError("a file path is empty")
    if len(path) > MAX_PATH_CHARS:
        raise BundleError(f"file path {path[:40]!r}... is longer than {MAX_PATH_CHARS} characters")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in path):
        raise BundleError(f"file path {path!r} contains a control or invisible character")
    if "\\" in path:
        raise BundleError(f"file path {path!r} contains a backslash; use forward slashes")
    if path.startswith("/"):
        raise BundleError(f"file path {path!r} is absolute; paths are relative to the bundle")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise BundleError(f"file path {path!r} has an empty, '.' or '..' segment")


def validate_manifest(m: bundle_pb2.BundleManifest) -> None:
    """Check every rule a publisher, the control plane and a device rely on.

    Raises:
        BundleError: naming the first field or file that breaks a rule.
    """
    if m.format_version != FORMAT_VERSION:
        raise BundleError(f"format_version is {m.format_version}; this edgefleet reads format {FORMAT_VERSION}")
    if not NAME_PATTERN.fullmatch(m.name):
        raise BundleError(
            f"model name {m.name!r} is invalid: use 1-63 characters a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not 1 <= m.version <= MAX_VERSION:
        raise BundleError(f"version must be between 1 and {MAX_VERSION}, got {m.version}")
    if m.variant not in VARIANTS:
        raise BundleError(f"variant {m.variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    task_name(m.task)
    if not 1 <= len(m.files) <= MAX_FILES:
        raise BundleError(f"a bundle has 1 to {MAX_FILES} files, this one has {len(m.files)}")
    seen: dict[str, str] = {}
    total = 0
    for f in m.files:
        check_path(f.path)
        folded = f.path.casefold()
        if folded == MANIFEST_FILE:
            raise BundleError(f"file path {f.path!r} is reserved for the manifest")
        if folded in seen:
            raise BundleError(f"file path {f.path!r} is listed twice (as {seen[folded]!r}; names are case-insensitive)")
        seen[folded] = f.path
        if not _SHA256.fullmatch(f.sha256):
            raise BundleError(f"file {f.path!r}: sha256 must be 64 lowercase hex characters")
        if not 1 <= f.size_bytes <= MAX_FILE_BYTES:
            raise BundleError(f"file {f.path!r}: size must be 1 byte to 4 GiB, got {f.size_bytes}")
        if f.role and not _ROLE.fullmatch(f.role):
            raise BundleError(f"file {f.path!r}: role {f.role!r} is invalid (model, tokenizer, labels, golden, other)")
        total += f.size_bytes
    if total > MAX_TOTAL_BYTES:
        raise BundleError(f"the bundle's files add up to {total} bytes; the limit is {MAX_TOTAL_BYTES} (8 GiB)")
    paths = {f.path for f in m.files}
    if m.model_file not in paths:
        raise BundleError(f"model_file {m.model_file!r} is not one of the bundle's files")
    for field, referenced in _referenced_files(m):
        if referenced not in paths:
            raise BundleError(f"{field} {referenced!r} is not one of the bundle's files")
    for case in m.golden:
        for kind, tensors in (("input", case.inputs), ("expected output", case.expected_outputs)):
            for tensor in tensors:
                _check_tensor(f"golden case {case.name!r} {kind} {tensor.name!r}", tensor)


def _referenced_files(m: bundle_pb2.BundleManifest) -> list[tuple[str, str]]:
    pre = m.preprocessing
    named = [
        ("preprocessing.text.tokenizer_file", pre.text.tokenizer_file),
        ("preprocessing.text.intent_labels_file", pre.text.intent_labels_file),
        ("preprocessing.text.slot_labels_file", pre.text.slot_labels_file),
        ("preprocessing.audio.labels_file", pre.audio.labels_file),
    ]
    return [(field, value) for field, value in named if value]


def _check_tensor(what: str, tensor: bundle_pb2.Tensor) -> None:
    if tensor.dtype not in DTYPE_BYTES:
        raise BundleError(f"{what}: dtype {tensor.dtype!r} is unknown; use one of {', '.join(DTYPE_BYTES)}")
    if len(tensor.shape) > MAX_TENSOR_RANK or any(dim < 0 for dim in tensor.shape):
        raise BundleError(
            f"{what}: shape {list(tensor.shape)} is invalid (at most {MAX_TENSOR_RANK} dimensions, none < 0)"
        )
    expected = math.prod(tensor.shape) * DTYPE_BYTES[tensor.dtype]
    if len(tensor.data) != expected:
        raise BundleError(
            f"{what}: data is {len(tensor.data)} bytes, shape {list(tensor.shape)} {tensor.dtype} needs {expected}"
        )


# --- signatures ---


def key_id(raw_public_key: bytes) -> str:
    """The id of a publisher key: sha256 (hex) of its 32-byte raw ed25519 public key."""
    return hashlib.sha256(raw_public_key).hexdigest()


def raw_public_key(private_key: ed25519.Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of the private key's public half."""
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_public_key(raw: bytes) -> str:
    """Return the key id of a raw ed25519 public key. Raises BundleError if it is not one."""
    if len(raw) != RAW_KEY_BYTES:
        raise BundleError(f"a publisher key is {RAW_KEY_BYTES} raw ed25519 bytes, got {len(raw)}")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise BundleError("the publisher key is not a valid ed25519 public key") from exc
    return key_id(raw)


def sign_manifest(
    manifest: bundle_pb2.BundleManifest, private_key: ed25519.Ed25519PrivateKey
) -> bundle_pb2.SignedManifest:
    """Validate, serialize once (deterministically) and sign exactly those bytes.

    Raises:
        BundleError: the manifest breaks a rule or is too large to sign.
    """
    validate_manifest(manifest)
    body = manifest.SerializeToString(deterministic=True)
    if len(body) > MAX_SIGNED_MANIFEST_BYTES:
        raise BundleError(f"the manifest is {len(body)} bytes; the limit is {MAX_SIGNED_MANIFEST_BYTES} (1 MiB)")
    signature = bundle_pb2.ManifestSignature(
        key_id=key_id(raw_public_key(private_key)), signature=private_key.sign(body)
    )
    return bundle_pb2.SignedManifest(manifest=body, signatures=[signature])


def parse_signed_manifest(data: bytes) -> bundle_pb2.SignedManifest:
    """Parse a serialized SignedManifest, bounded in size. Raises BundleError."""
    if len(data) > MAX_SIGNED_MANIFEST_BYTES + 64 * 1024:
        raise BundleError(f"the signed manifest is {len(data)} bytes; the limit is {MAX_SIGNED_MANIFEST_BYTES} (1 MiB)")
    try:
        return bundle_pb2.SignedManifest.FromString(data)
    except DecodeError as exc:
        raise BundleError("the signed manifest is not a serialized SignedManifest") from exc


def valid_signers(signed: bundle_pb2.SignedManifest, trusted: Mapping[str, bytes]) -> list[str]:
    """The ids of the trusted keys whose signatures over ``signed.manifest`` are valid, in signature order.

    Raises:
        BundleError: too large or too many signatures; a trusted key whose bytes do not match its
            id; a signer list with no trusted key (naming the signers); or a trusted key's signature
            that does not verify (naming the key).
    """
    if len(signed.manifest) > MAX_SIGNED_MANIFEST_BYTES:
        raise BundleError(
            f"the manifest is {len(signed.manifest)} bytes; the limit is {MAX_SIGNED_MANIFEST_BYTES} (1 MiB)"
        )
    if len(signed.signatures) > MAX_SIGNATURES:
        raise BundleError(f"the manifest carries {len(signed.signatures)} signatures; the limit is {MAX_SIGNATURES}")
    valid: list[str] = []
    invalid: list[str] = []
    for signature in signed.signatures:
        raw = trusted.get(signature.key_id)
        if raw is None or signature.key_id in valid:
            continue
        if key_id(raw) != signature.key_id:
            raise BundleError(f"trusted key {signature.key_id} does not match its id; check the trusted keys")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature.signature, signed.manifest)
        except (InvalidSignature, ValueError):
            invalid.append(signature.key_id)
        else:
            valid.append(signature.key_id)
    if valid:
        return valid
    if invalid:
        raise BundleError(f"signature by key {invalid[0]} is invalid: the manifest was changed after signing")
    signers = ", ".join(s.key_id[:64] for s in signed.signatures) or "nobody"
    raise BundleError(f"the manifest is not signed by a trusted publisher key (signed by: {signers})")


def verify_signed_manifest(
    signed: bundle_pb2.SignedManifest, trusted: Mapping[str, bytes]
) -> bundle_pb2.BundleManifest:
    """The manifest, parsed only once a trusted key's signature checks out, and validated.

    ``trusted`` maps key id to the raw 32-byte ed25519 public key.

    Raises:
        BundleError: see ``valid_signers``; the signed bytes are not a manifest; or the
            manifest breaks a rule of ``validate_manifest``.
    """
    valid_signers(signed, trusted)
    try:
        manifest = bundle_pb2.BundleManifest.FromString(signed.manifest)
    except DecodeError as exc:
        raise BundleError("the signed bytes are not a serialized BundleManifest") from exc
    validate_manifest(manifest)
    return manifest
