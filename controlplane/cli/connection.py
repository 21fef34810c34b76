"""Where the CLI finds its control plane: flags, then environment, then a config file.

Precedence: ``--server/--token/--ca`` flags, then ``EDGEFLEET_SERVER``,
``EDGEFLEET_TOKEN``, ``EDGEFLEET_CA``, then the TOML file named by
``EDGEFLEET_CONFIG`` (default ``~/.config/edgefleet/cli.toml``) with keys
``server``, ``token`` or ``token_file``, and ``ca_file``. ``edgefleet server``
writes such a file into its data dir on every start.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from controlplane.cli.errors import CliError
from protos.edgefleet.v1 import admin_pb2_grpc
from protos.limits import MAX_ADMIN_MESSAGE_BYTES, TLS_SERVER_NAME

DEFAULT_CONFIG = Path("~/.config/edgefleet/cli.toml")
CONFIG_KEYS = {"server", "token", "token_file", "ca_file"}
RPC_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Connection:
    server: str
    token: str
    ca_pem: bytes


def _read_config(path: Path, explicit: bool) -> dict:
    if not path.exists():
        if explicit:
            raise CliError(f"config file {path} does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"cannot read config file {path}: {exc}") from exc
    unknown = set(data) - CONFIG_KEYS
    if unknown:
        raise CliError(f"config file {path}: unknown key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    return data


def resolve(server: str | None, token: str | None, ca: Path | None) -> Connection:
    """Resolve the connection settings. Raises CliError naming what is missing."""
    env_config = os.environ.get("EDGEFLEET_CONFIG")
    config_path = Path(env_config).expanduser() if env_config else DEFAULT_CONFIG.expanduser()
    config = _read_config(config_path, explicit=bool(env_config))
    server = server or os.environ.get("EDGEFLEET_SERVER") or config.get("server")
    token = token or os.environ.get("EDGEFLEET_TOKEN") or config.get("token")
    if not token and config.get("token_file"):
        try:
            token = Path(config["token_file"]).expanduser().read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read token_file {config['token_file']}: {exc.strerror}") from exc
    ca_path = ca or (Path(os.environ["EDGEFLEET_CA"]) if os.environ.get("EDGEFLEET_CA") else None)
    if ca_path is None and config.get("ca_file"):
        ca_path = Path(config["ca_file"]).expanduser()
    if not server:
        raise CliError("no control plane address: pass --server HOST:PORT, set EDGEFLEET_SERVER or EDGEFLEET_CONFIG")
    if not token:
        raise CliError("no operator token: pass --token, set EDGEFLEET_TOKEN, or set token_file in the config")
    if ca_path is None:
        raise CliError("no CA certificate: pass --ca FILE (the server's ca.crt), or set EDGEFLEET_CA")
    try:
        ca_pem = ca_path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read CA certificate {ca_path}: {exc.strerror}") from exc
    return Connection(server=server, token=token, ca_pem=ca_pem)


@contextmanager
def admin(conn: Connection) -> Iterator[tuple[admin_pb2_grpc.AdminStub, list[tuple[str, str]]]]:
    """Yield (Admin stub, call metadata) over a verified TLS channel."""
    credentials = grpc.ssl_channel_credentials(root_certificates=conn.ca_pem)
    options = [
        ("grpc.ssl_target_name_override", TLS_SERVER_NAME),
        ("grpc.max_send_message_length", MAX_ADMIN_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_ADMIN_MESSAGE_BYTES),
    ]
    with grpc.secure_channel(conn.server, credentials, options=options) as channel:
        yield admin_pb2_grpc.AdminStub(channel), [("authorization", f"Bearer {conn.token}")]
