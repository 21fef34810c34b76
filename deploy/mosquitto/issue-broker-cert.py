#!/usr/bin/env python3
"""Issue the Mosquitto broker's TLS certificate from the edgefleet CA (deploy/mosquitto/README.md, "TLS").

usage: issue-broker-cert.py --data-dir SERVER_DATA_DIR --name HOST [--name HOST ...] [--out DIR] [--days N]

Writes DIR/server.crt (the certificate, then the edgefleet CA: the chain Mosquitto sends), DIR/server.key
(owner-only; owned by the mosquitto user when run as root) and DIR/ca.crt (the edgefleet CA, for clients that are
given an explicit CA file). The control plane and enrolled devices then trust the broker without any CA option,
for exactly the names given (use the host name in --mqtt / --mqtt-device-url).

The certificate is for serverAuth and carries only those names: never ``edgefleet-controlplane``, the fixed name
devices check the control plane by, so the broker's key cannot pass for the control plane. Run it where edgefleet
is installed, as a user who can read the control plane's data dir; it never creates a CA. Issue a new certificate
and restart mosquitto before --days run out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import pwd
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.pki import CA_CERT_FILE, CA_KEY_FILE, write_private
from protos.limits import TLS_SERVER_NAME


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], days: int) -> tuple[bytes, bytes]:
    """(certificate chain PEM = leaf + CA, private key PEM) for the broker, valid for names only."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM) + ca_cert_pem, key_pem


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the control plane's data dir (its CA)")
    parser.add_argument("--name", action="append", required=True, help="host name or IP address clients dial")
    parser.add_argument("--out", type=Path, default=Path("/etc/mosquitto/certs"), help="where to write the files")
    parser.add_argument("--days", type=int, default=825, help="validity (default 825)")
    args = parser.parse_args(argv)
    if TLS_SERVER_NAME in args.name:
        print(f"error: {TLS_SERVER_NAME} is the control plane's own name; give the broker's", file=sys.stderr)
        return 2
    try:
        ca_cert, ca_key = (args.data_dir / CA_CERT_FILE).read_bytes(), (args.data_dir / CA_KEY_FILE).read_bytes()
    except OSError as exc:
        print(
            f"error: cannot read the edgefleet CA in {args.data_dir} ({exc.strerror or exc}): "
            f"start the control plane once with --data-dir {args.data_dir}, or name its data dir",
            file=sys.stderr,
        )
        return 1
    chain, key = issue(ca_cert, ca_key, list(args.name), args.days)
    args.out.mkdir(parents=True, exist_ok=True)
    write_private(args.out / "server.key", key, 0o600)
    write_private(args.out / "server.crt", chain, 0o644)
    write_private(args.out / "ca.crt", ca_cert, 0o644)
    if os.getuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            pass
        else:
            os.chown(args.out / "server.key", user.pw_uid, user.pw_gid)  # the broker may read it as this user
    print(f"wrote {args.out}/server.crt, server.key and ca.crt for {', '.join(args.name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
