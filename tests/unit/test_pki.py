"""The CA issues device certificates only from sound CSRs, with the id we chose and client usage only."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.identity import generate_key_and_csr
from controlplane.errors import InvalidRequest
from controlplane.pki import certificate_sha256, create_ca, load_or_create_ca

NOW = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca():
    return create_ca("test CA", NOW)


def test_device_certificate_carries_our_id_and_client_usage_only(ca):
    _key, csr = generate_key_and_csr("whatever-the-device-asked")
    pem, serial, fingerprint = ca.sign_device_csr(csr, "gw-1", NOW)
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-1"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert str(cert.serial_number) == serial and certificate_sha256(pem) == fingerprint
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_server_certificate_names_the_fixed_tls_name_and_given_addresses(ca):
    chain, _key = ca.issue_server_certificate(["127.0.0.1", "fleet.example.com"], NOW)
    leaf = x509.load_pem_x509_certificate(chain)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "edgefleet-controlplane" in names.get_values_for_type(x509.DNSName)
    assert "fleet.example.com" in names.get_values_for_type(x509.DNSName)
    assert chain.endswith(ca.cert_pem)


def test_garbage_csr_is_refused(ca):
    with pytest.raises(InvalidRequest, match="not a valid PEM"):
        ca.sign_device_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n", "a", NOW)


def test_oversized_csr_is_refused(ca):
    with pytest.raises(InvalidRequest, match="too large"):
        ca.sign_device_csr(b"x" * 20_000, "a", NOW)


def test_rsa_csr_is_refused(ca):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")]))
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(InvalidRequest, match="not supported"):
        ca.sign_device_csr(csr.public_bytes(Encoding.PEM), "a", NOW)


def test_ca_is_created_once_with_an_owner_only_key(tmp_path):
    first = load_or_create_ca(tmp_path, NOW)
    assert oct(os.stat(tmp_path / "ca.key").st_mode & 0o777) == "0o600"
    assert load_or_create_ca(tmp_path, NOW).fingerprint == first.fingerprint
    assert isinstance(ec.SECP256R1(), ec.EllipticCurve)
