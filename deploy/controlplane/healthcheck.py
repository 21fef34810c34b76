"""Container health check: ask the control plane's gRPC health service on the API port.

Exit 0 when the overall status ("" service) is SERVING, 1 otherwise (not up yet, shutting down,
unreachable, or no CA in the data dir yet). Verifies the server against the CA in the data dir and the
fixed TLS name ``edgefleet-controlplane`` (docs/adr/0003), as the CLI and the agents do.

    python healthcheck.py [--data-dir /var/lib/edgefleet-server] [--host 127.0.0.1] [--port 7443] [--timeout 3]

Needs only grpcio and grpcio-health-checking (both in the ``server`` extra); it imports nothing from
edgefleet, so it runs in any environment that has those two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TLS_SERVER_NAME = "edgefleet-controlplane"  # protos/limits.py; kept literal so the check imports no edgefleet code


def check(data_dir: Path, host: str, port: int, timeout: float) -> str:
    """Return the health status name (``SERVING``, ``NOT_SERVING``…); raise OSError or grpc.RpcError."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=(data_dir / "ca.crt").read_bytes())
    options = [("grpc.ssl_target_name_override", TLS_SERVER_NAME)]
    with grpc.secure_channel(f"{host}:{port}", credentials, options=options) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="exit 0 if the edgefleet control plane's API port is SERVING")
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/edgefleet-server"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7443)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    import grpc

    try:
        status = check(args.data_dir, args.host, args.port, args.timeout)
    except OSError as exc:
        print(f"unhealthy: cannot read the CA: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
