"""The device's identity: its own key pair, the certificate the control plane
issued for it, and the pinned CA.

Invariants:
- The private key is generated on the device and never leaves it; the file is
  owner-only.
- An identity on disk is complete or absent: it is written into a temporary
  directory and renamed into place in one step.
- The CA is pinned by the fingerprint the operator handed over in the join
  string, never by what the server says about itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import ssl
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.errors import EnrollmentError, IdentityError, TransportError

log = logging.getLogger("edgefleet.agent.identity")

IDENTITY_DIR = "identity"
KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
META_FILE = "identity.json"
MQTT_PASSWORD_FILE = "mqtt.password"  # owner-only, like the key; absent when the join handed over no broker
MQTT_CA_FILE = "mqtt-ca.crt"  # the broker's CA handed over at join (--mqtt-ca on the control plane); often absent


@dataclass(frozen=True)
class Identity:
    """What the agent needs to talk to its control plane after joining."""

    device_id: str
    fleet: str
    device_endpoint: str
    api_endpoint: str
    tls_server_name: str
    heartbeat_interval_seconds: int
    labels: dict[str, str] = field(default_factory=dict)
    trusted_publisher_keys: list[str] = field(default_factory=list)  # hex raw ed25519 keys
    key_pem: bytes = b""
    cert_pem: bytes = b""
    ca_pem: bytes = b""
    # The fleet's MQTT broker, from EnrollResponse.mqtt; empty when the control plane bridges none.
    mqtt_url: str = ""
    mqtt_username: str = ""
    mqtt_client_id: str = ""
    mqtt_topic_root: str = ""
    mqtt_password: str = ""  # secret: kept out of identity.json, in an owner-only file
    mqtt_ca_pem: bytes = b""  # the broker's CA, when the control plane was given one (--mqtt-ca)

    def to_meta(self) -> dict:
        meta = asdict(self)
        for name in ("key_pem", "cert_pem", "ca_pem", "mqtt_password", "mqtt_ca_pem"):
            meta.pop(name)
        return meta


def mqtt_fields(credentials: object) -> dict[str, str]:
    """The ``Identity`` fields for an ``EnrollResponse.mqtt`` (``MqttCredentials``); ``{}`` if it has no URL."""
    url = getattr(credentials, "url", "")
    if not url:
        return {}
    return {
        "mqtt_url": url,
        "mqtt_username": credentials.username,
        "mqtt_client_id": credentials.client_id,
        "mqtt_topic_root": credentials.topic_root,
        "mqtt_password": credentials.password,
        "mqtt_ca_pem": _broker_ca(bytes(getattr(credentials, "ca_pem", b""))),
    }


def _broker_ca(pem: bytes) -> bytes:
    """The broker CA the control plane handed over, or b"" (with a warning) if it holds no certificate."""
    if not pem:
        return b""
    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        log.warning("ignoring the broker CA handed over at join: %s; set mqtt_ca_file if the broker needs one", exc)
        return b""
    return pem


def generate_key_and_csr(device_id: str) -> tuple[bytes, bytes]:
    """Make an ECDSA P-256 key pair and a CSR for device_id. Returns (key PEM, CSR PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def fetch_pinned_ca(host: str, port: int, ca_sha256: str, timeout_seconds: float) -> bytes:
    """Return the PEM of the CA certificate the server presents whose DER sha256 is ca_sha256.

    The handshake is unverified on purpose: the certificates are only used if
    one of them matches the pinned fingerprint, and the gRPC channel that
    follows verifies the server against that CA.

    Raises TransportError if the server cannot be reached, EnrollmentError if
    no presented certificate matches the pin (a man in the middle, or a join
    string for another server).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_seconds) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            # Public from Python 3.13; the same method on the private object before.
            getter = getattr(tls, "get_unverified_chain", None) or tls._sslobj.get_unverified_chain
            chain = [cert.public_bytes(ssl._ssl.ENCODING_DER) for cert in getter() or []]
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot reach the control plane at {host}:{port}: {exc}") from exc
    presented = []
    for der in chain:
        digest = hashlib.sha256(der).hexdigest()
        if digest == ca_sha256:
            return ssl.DER_cert_to_PEM_cert(der).encode()
        presented.append(digest[:16])
    raise EnrollmentError(
        f"the server at {host}:{port} did not present the CA pinned in the join string "
        f"(pinned {ca_sha256[:16]}…, presented {', '.join(presented) or 'nothing'}): "
        "possible man in the middle, or the join string belongs to another server"
    )


def identity_dir(data_dir: Path) -> Path:
    return data_dir / IDENTITY_DIR


def save_identity(data_dir: Path, identity: Identity) -> None:
    """Write identity atomically: all files appear together or not at all."""
    final = identity_dir(data_dir)
    if final.exists():
        raise IdentityError(f"{final} already holds an identity; use another --data-dir or remove it")
    staging = data_dir / f".{IDENTITY_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    files = [
        (KEY_FILE, identity.key_pem, 0o600),
        (CERT_FILE, identity.cert_pem, 0o644),
        (CA_FILE, identity.ca_pem, 0o644),
        (META_FILE, json.dumps(identity.to_meta(), indent=2, sort_keys=True).encode(), 0o644),
    ]
    if identity.mqtt_password:
        files.append((MQTT_PASSWORD_FILE, identity.mqtt_password.encode(), 0o600))
    if identity.mqtt_ca_pem:
        files.append((MQTT_CA_FILE, identity.mqtt_ca_pem, 0o644))
    for name, data, mode in files:
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(staging, final)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_identity(data_dir: Path) -> Identity:
    """Load the stored identity. Raises IdentityError if it is missing or corrupt."""
    folder = identity_dir(data_dir)
    if not folder.is_dir():
        raise IdentityError(
            f"no identity in {data_dir}: join first with `edgefleet agent --join JOIN_STRING --data-dir {data_dir}`"
        )
    try:
        meta = json.loads((folder / META_FILE).read_text())
        password = folder / MQTT_PASSWORD_FILE
        if password.exists():
            meta["mqtt_password"] = password.read_text()
        broker_ca = folder / MQTT_CA_FILE
        if broker_ca.exists():
            meta["mqtt_ca_pem"] = broker_ca.read_bytes()
        identity = Identity(
            **meta,
            key_pem=(folder / KEY_FILE).read_bytes(),
            cert_pem=(folder / CERT_FILE).read_bytes(),
            ca_pem=(folder / CA_FILE).read_bytes(),
        )
        x509.load_pem_x509_certificate(identity.cert_pem)
        x509.load_pem_x509_certificate(identity.ca_pem)
        if identity.mqtt_ca_pem:
            x509.load_pem_x509_certificates(identity.mqtt_ca_pem)
    except (OSError, ValueError, TypeError) as exc:
        raise IdentityError(f"the identity in {folder} is corrupt ({exc}); re-join the device") from exc
    return identity
