"""The control plane's certificate authority: server certificates and device certificates.

Invariants:
- The CA key never leaves the server's data dir and is written owner-only.
- A device certificate's subject CN is the device id the control plane chose
  to accept; it carries the clientAuth usage only, so a device certificate can
  never act as a server certificate.
- Server certificates carry ``TLS_SERVER_NAME`` plus the configured names, and
  serverAuth only.
- Files are written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.errors import InvalidRequest
from protos.limits import TLS_SERVER_NAME

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
DEVICE_CERT_DAYS = 365
SERVER_CERT_DAYS = 825
CA_DAYS = 3650


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write data to path atomically with the given mode (owner-only by default)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def certificate_sha256(cert_pem: bytes) -> str:
    """sha256 hex digest of a PEM certificate's DER encoding (its fingerprint)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True)
class CertificateAuthority:
    cert_pem: bytes
    key_pem: bytes

    @property
    def fingerprint(self) -> str:
        return certificate_sha256(self.cert_pem)

    def _cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key

    def issue_server_certificate(self, names: list[str], now: dt.datetime) -> tuple[bytes, bytes]:
        """Return (certificate chain PEM = leaf + CA, private key PEM) for the given names."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(TLS_SERVER_NAME)]
        for name in dict.fromkeys(names):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_SERVER_NAME)]))
            .issuer_name(self._cert().subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key(), hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.cert_pem
        return chain, _key_pem(key)

    def sign_device_csr(self, csr_pem: bytes, device_id: str, now: dt.datetime) -> tuple[bytes, str, str]:
        """Issue a client certificate for device_id from a CSR made on the device.

        Returns (certificate PEM, serial as decimal string, sha256 fingerprint).
        Raises InvalidRequest if the CSR is malformed, badly signed, or uses an
        unsupported key type. The CSR's own subject is ignored: the id is ours.
        """
        if len(csr_pem) > 16 * 1024:
            raise InvalidRequest("CSR is too large (over 16 KiB)")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise InvalidRequest("CSR is not a valid PEM PKCS#10 request") from exc
        try:
            valid = csr.is_signature_valid
        except (InvalidSignature, ValueError) as exc:  # pragma: no cover - depends on backend
            raise InvalidRequest("CSR signature cannot be checked") from exc
        if not valid:
            raise InvalidRequest("CSR signature is invalid")
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if public_key.curve.name not in ("secp256r1", "secp384r1"):
                raise InvalidRequest(f"CSR key curve {public_key.curve.name} is not supported (use P-256)")
        elif not isinstance(public_key, ed25519.Ed25519PublicKey):
            raise InvalidRequest("CSR key type is not supported (use ECDSA P-256)")
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self._cert().subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=DEVICE_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key(), hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return pem, str(serial), certificate_sha256(pem)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(common_name: str, now: dt.datetime) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def load_or_create_ca(data_dir: Path, now: dt.datetime) -> CertificateAuthority:
    """Load the CA from data_dir, creating it on first start (key owner-only)."""
    cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        return CertificateAuthority(cert_path.read_bytes(), key_path.read_bytes())
    ca = create_ca(f"edgefleet control plane CA {now:%Y-%m-%d}", now)
    write_private(key_path, ca.key_pem, 0o600)
    write_private(cert_path, ca.cert_pem, 0o644)
    return ca
