"""How the control plane checks the MQTT broker's certificate (``mqtts://``): one rule for every connection it
makes to the broker (the bridge, ``controlplane.mqtt_bridge``, and the account commands,
``controlplane.mqtt_accounts``), and the same rule the agent follows (``agent.mqtt_session``):

- with a broker CA file (server ``--mqtt-ca FILE``, ``ServerConfig.mqtt_ca_file``; agent ``mqtt_ca_file``), the
  broker's certificate must chain to a certificate in that file, and nothing else is trusted;
- without one, it must chain to the edgefleet CA (the control plane's own ``ca.crt``; on a device, the CA it
  pinned at enrollment) or to one of the system's trusted CAs.

Either way the host name in the URL must be in the certificate (TLS 1.2 or later; no plain-text fallback: an
``mqtts://`` connection that fails its handshake is an error, retried like any unreachable broker). A CA file is
checked when the configuration is made and read once, when the bridge starts (a changed file takes effect at the
next start): one that cannot be read or holds no PEM certificate stops the server before it changes anything.
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from protos.mqtt import read_broker_ca

if TYPE_CHECKING:
    from controlplane.config import ServerConfig

read_ca_file = read_broker_ca  # ValueError, one line, naming the file


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho drops such a socket without closing it."""

    def do_handshake(self, *args, **kwargs) -> None:
        try:
            super().do_handshake(*args, **kwargs)
        except BaseException:
            self.close()
            raise


@functools.lru_cache(maxsize=8)
def broker_tls_context(ca_file: Path | None, edgefleet_ca_pem: bytes) -> ssl.SSLContext:
    """A client context for ``mqtts://`` by the rule above. Raises ValueError if ca_file cannot be used.

    Made once per (file, CA) and shared (an SSLContext may be used from several threads): the bridge makes it at
    start, and enrollment and revocation reuse it."""
    if ca_file is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=read_ca_file(ca_file))
    else:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)  # the system's CAs
        context.load_verify_locations(cadata=edgefleet_ca_pem.decode("ascii"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = _ClosingSSLSocket
    return context


def trust_description(ca_file: Path | None) -> str:
    """What a broker certificate is checked against, for log lines and errors."""
    return f"the CA file {ca_file}" if ca_file is not None else "the edgefleet CA and the system's CAs"


def tls_failure(exc: ssl.SSLError, ca_file: Path | None) -> str:
    """One line for a failed TLS handshake with the broker, saying what to do."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        hint = "give the CA that issued the broker's certificate with --mqtt-ca FILE"
        if ca_file is not None:
            hint = f"is {ca_file} the CA that issued the broker's certificate, for the host name in --mqtt?"
        return (
            f"TLS: the broker's certificate is not trusted ({exc.verify_message}), "
            f"checked against {trust_description(ca_file)}; {hint}"
        )
    return f"TLS handshake failed ({exc.reason or exc}): is the port a TLS listener (mqtts://)?"


def for_config(config: ServerConfig, edgefleet_ca_pem: bytes) -> ssl.SSLContext | None:
    """The context for the server's ``mqtt_url`` (a ``ServerConfig``); None when it is plain ``mqtt://``."""
    from controlplane.config import parse_broker_url

    if not config.mqtt_url or not parse_broker_url(config.mqtt_url).tls:
        return None
    return broker_tls_context(config.mqtt_ca_file, edgefleet_ca_pem)
