"""The control-plane process: two gRPC listeners over one store.

- API port (server TLS): enrollment, the operator API, health, reflection.
- Device port (mutual TLS, client certificate required): the agent gateway, health.
- Artifact port (HTTPS, mutual TLS; ``controlplane.artifact_https``): blob downloads for devices,
  announced to them in Welcome; off with ``artifact_port`` None (devices then use FetchArtifact).

First start creates, in the data dir: the CA (ca.crt, ca.key owner-only),
an admin token (admin.token, owner-only) and cli.toml, which points the CLI
at this server. Every start issues a fresh server certificate from the same
CA, so pinned fingerprints stay valid. SIGTERM/SIGINT stop gracefully:
sessions get Disconnect, in-flight calls get a grace period, last-seen times
are flushed.

Background work: the presence flush, and the retention task, which runs ``Store.roll_up`` at start
and every ``rollup_interval_seconds`` (minutes older than ``minute_retention_days`` become hourly
rows, kept ``hour_retention_days``; events and resource samples expire after their own retention).
With ``metrics_port`` set, a Prometheus endpoint (``controlplane.metrics``) listens on the same host.
With ``mqtt_url`` set, ``controlplane.mqtt_bridge`` serves devices over an MQTT 5 broker as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.artifact_https import ArtifactServer, server_context
from controlplane.auth import new_operator_token, sha256_hex
from controlplane.blobs import BlobStore
from controlplane.config import ServerConfig, parse_broker_url
from controlplane.errors import DataDirError
from controlplane.metrics import MetricsServer, ServerStats
from controlplane.pki import load_or_create_ca, write_private
from controlplane.presence import Presence
from controlplane.services.admin import AdminService
from controlplane.services.context import Services, utcnow
from controlplane.services.enrollment import EnrollmentService
from controlplane.services.gateway import GatewayService, add_gateway_to_server
from controlplane.services.rollouts import RolloutService
from controlplane.store import Store
from protos.edgefleet.v1 import admin_pb2, agent_pb2, enrollment_pb2
from protos.limits import MAX_ADMIN_MESSAGE_BYTES, MAX_SESSION_MESSAGE_BYTES

if TYPE_CHECKING:
    from controlplane.mqtt_bridge import MqttBridge

log = logging.getLogger("edgefleet.server")

ADMIN_TOKEN_FILE = "admin.token"
CLI_CONFIG_FILE = "cli.toml"
STORE_THREADS = 8
CA_SETTING = "ca_sha256"


def prepare_data_dir(data_dir: Path) -> None:
    """Create data_dir (owner-only) and prove it is writable. Raises DataDirError."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = data_dir / ".write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise DataDirError(f"data dir {data_dir} is not writable: {exc.strerror or exc}") from exc


def ensure_admin_token(store: Store, data_dir: Path) -> str | None:
    """On first start, create the admin token and write it owner-only. Returns it, or None if one exists."""
    if store.count_operator_tokens("admin") > 0:
        return None
    token = new_operator_token()
    store.create_operator_token("admin", "admin", sha256_hex(token), utcnow())
    write_private(data_dir / ADMIN_TOKEN_FILE, (token + "\n").encode(), 0o600)
    return token


@dataclass
class RunningServer:
    """A started control plane; ``stop()`` shuts it down gracefully."""

    services: Services
    api_server: grpc.aio.Server
    device_server: grpc.aio.Server
    api_port: int
    device_port: int
    health: tuple[health.aio.HealthServicer, ...]
    stats: ServerStats = field(default_factory=ServerStats)
    rollup_task: asyncio.Task | None = None
    rollout_task: asyncio.Task | None = None
    rollout_stop: asyncio.Event = field(default_factory=asyncio.Event)
    metrics: MetricsServer | None = None
    metrics_port: int | None = None  # the bound port, when the metrics endpoint is on
    mqtt: MqttBridge | None = None  # the MQTT transport, when mqtt_url is set
    artifacts: ArtifactServer | None = None  # the HTTPS artifact listener, unless artifact_port is None

    async def stop(self, grace: float | None = None) -> None:
        grace = self.services.config.shutdown_grace_seconds if grace is None else grace
        if self.metrics is not None:
            await asyncio.to_thread(self.metrics.stop)
        if self.artifacts is not None:  # downloads in progress are cut: devices resume them later
            await asyncio.to_thread(self.artifacts.stop)
        if self.rollup_task is not None:
            self.rollup_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.rollup_task
        if self.rollout_task is not None:
            # Let a controller step in flight finish (its state is persisted first, so cutting it is
            # safe too, but a clean stop leaves nothing for recovery to redo).
            self.rollout_stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.rollout_task), timeout=max(grace, 1.0))
            except (TimeoutError, Exception):  # noqa: BLE001 - a failed or slow controller must not block stop
                self.rollout_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self.rollout_task
        for servicer in self.health:
            await servicer.enter_graceful_shutdown()
        for handle in self.services.presence.sessions():
            handle.close("control plane shutting down")
        if self.mqtt is not None:
            await self.mqtt.stop()
        await asyncio.gather(self.api_server.stop(grace), self.device_server.stop(grace))
        await self.services.presence.stop()
        now = self.services.clock()
        for handle in self.services.presence.sessions():
            if self.services.presence.release(handle):
                await self.services.db(self.services.store.mark_disconnected, handle.device_id, now)
        # Calls whose handlers were cancelled may still run: let them finish before closing the store.
        await asyncio.to_thread(self.services.executor.shutdown, wait=True)
        await asyncio.to_thread(self.services.store.close)


def _tls_names(config: ServerConfig) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *config.extra_tls_names]
    if config.advertise_host:
        names.append(config.advertise_host)
    return names


async def start(config: ServerConfig) -> RunningServer:
    """Start both listeners. Raises DataDirError or StoreUnavailable before listening if the set-up fails."""
    prepare_data_dir(config.data_dir)
    store = await asyncio.to_thread(Store.open, config.database_url)
    try:
        now = utcnow()
        ca = load_or_create_ca(config.data_dir, now)
        known = await asyncio.to_thread(store.set_setting_if_absent, CA_SETTING, ca.fingerprint)
        if known != ca.fingerprint:
            raise DataDirError(
                f"the CA in {config.data_dir} ({ca.fingerprint[:16]}…) is not the one this database's devices "
                f"trust ({known[:16]}…): restore ca.crt and ca.key from a backup of the data dir"
            )
        chain_pem, key_pem = ca.issue_server_certificate(_tls_names(config), now)
        await asyncio.to_thread(ensure_admin_token, store, config.data_dir)
        blobs = await asyncio.to_thread(BlobStore, config.data_dir / "blobs", max_blob_bytes=config.max_blob_bytes)
    except OSError as exc:
        store.close()
        raise DataDirError(f"data dir {config.data_dir} is not writable: {exc}") from exc
    except BaseException:
        store.close()
        raise
    executor = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")
    presence = Presence(flush=store.touch_last_seen, flush_seconds=config.last_seen_flush_seconds, executor=executor)

    api_server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_ADMIN_MESSAGE_BYTES)])
    device_server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_SESSION_MESSAGE_BYTES),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    api_creds = grpc.ssl_server_credentials([(key_pem, chain_pem)])
    device_creds = grpc.ssl_server_credentials(
        [(key_pem, chain_pem)], root_certificates=ca.cert_pem, require_client_auth=True
    )
    try:
        api_port = api_server.add_secure_port(f"{_host(config.listen_host)}:{config.api_port}", api_creds)
        device_port = device_server.add_secure_port(f"{_host(config.listen_host)}:{config.device_port}", device_creds)
    except RuntimeError as exc:
        store.close()
        raise DataDirError(
            f"cannot listen on {config.listen_host} ports {config.api_port}/{config.device_port}: {exc}"
        ) from exc

    advertise = config.advertise_host or socket.gethostname()
    services = Services(
        config=config,
        store=store,
        ca=ca,
        presence=presence,
        api_address=f"{_host(advertise)}:{api_port}",
        device_port=device_port,
        device_endpoint=config.device_advertise or f":{device_port}",
        executor=executor,
        blobs=blobs,
    )
    enrollment_pb2.DESCRIPTOR  # noqa: B018 - descriptors must be loaded for reflection
    from protos.edgefleet.v1 import admin_pb2_grpc, enrollment_pb2_grpc

    api_health, device_health = health.aio.HealthServicer(), health.aio.HealthServicer()
    rollouts = RolloutService(services)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(services, rollouts), api_server)
    enrollment_pb2_grpc.add_EnrollmentServicer_to_server(EnrollmentService(services), api_server)
    add_gateway_to_server(GatewayService(services), device_server)
    health_pb2_grpc.add_HealthServicer_to_server(api_health, api_server)
    health_pb2_grpc.add_HealthServicer_to_server(device_health, device_server)
    api_services = [
        admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        enrollment_pb2.DESCRIPTOR.services_by_name["Enrollment"].full_name,
    ]
    device_services = [agent_pb2.DESCRIPTOR.services_by_name["AgentGateway"].full_name]
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    reflection.enable_server_reflection([*api_services, health_name, reflection.SERVICE_NAME], api_server)

    stats = ServerStats()
    metrics: MetricsServer | None = None
    metrics_port: int | None = None
    if config.metrics_port is not None:
        metrics = MetricsServer(services, stats)
        try:
            metrics_port = await asyncio.to_thread(metrics.start, config.listen_host, config.metrics_port)
        except OSError as exc:
            executor.shutdown(wait=False)
            store.close()
            raise DataDirError(f"cannot serve metrics on {config.listen_host}:{config.metrics_port}: {exc}") from exc

    artifacts: ArtifactServer | None = None
    if config.artifact_port is not None:
        artifacts = ArtifactServer(
            services, server_context(chain_pem, key_pem, ca.cert_pem, config.data_dir), loop=asyncio.get_running_loop()
        )
        try:
            services.artifact_port = await asyncio.to_thread(artifacts.start, config.listen_host, config.artifact_port)
        except OSError as exc:
            if metrics is not None:
                await asyncio.to_thread(metrics.stop)
            executor.shutdown(wait=False)
            store.close()
            raise DataDirError(
                f"cannot serve artifact downloads on {config.listen_host}:{config.artifact_port}: {exc} "
                "(choose another --artifact-port, or -1 to turn HTTPS downloads off)"
            ) from exc

    await api_server.start()
    await device_server.start()
    presence.start()
    bridge: MqttBridge | None = None
    if config.mqtt_url:
        from controlplane.mqtt_bridge import MqttBridge
        from controlplane.mqtt_tls import trust_description

        bridge = MqttBridge(services, config.mqtt_url)
        bridge.start()
        broker = parse_broker_url(config.mqtt_url)
        log.info(
            "bridging MQTT broker %s%s",
            broker.without_credentials(),
            f" (its certificate checked against {trust_description(config.mqtt_ca_file)})" if broker.tls else "",
        )
    rollup_task = asyncio.get_running_loop().create_task(_retention_loop(services, stats), name="retention")
    rollout_stop = asyncio.Event()
    rollout_task = asyncio.get_running_loop().create_task(rollouts.run(rollout_stop), name="rollouts")
    for servicer, names in ((api_health, api_services), (device_health, device_services)):
        for name in ("", *names):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    _write_cli_config(config.data_dir, config.listen_host, api_port)
    log.info(
        "control plane listening: api %s, devices %s, artifacts %s, data %s",
        api_port,
        device_port,
        f"https {services.artifact_port}" if artifacts is not None else "over the device port",
        config.data_dir,
    )
    if metrics_port is not None:
        log.info("metrics on http://%s:%d/metrics", _host(config.listen_host), metrics_port)
    return RunningServer(
        services,
        api_server,
        device_server,
        api_port,
        device_port,
        (api_health, device_health),
        stats=stats,
        rollup_task=rollup_task,
        rollout_task=rollout_task,
        rollout_stop=rollout_stop,
        metrics=metrics,
        metrics_port=metrics_port,
        mqtt=bridge,
        artifacts=artifacts,
    )


async def run_retention(services: Services, stats: ServerStats) -> dict[str, int] | None:
    """One retention run (``Store.roll_up`` with the configured retentions); logs and counts it.

    Returns the counts, or None if it failed (logged; the next run tries again).
    """
    config = services.config
    try:
        counts = await services.db(
            services.store.roll_up,
            services.clock(),
            minute_retention=timedelta(days=config.minute_retention_days),
            hour_retention=timedelta(days=config.hour_retention_days),
            event_retention=timedelta(days=config.event_retention_days),
            resource_retention=timedelta(days=config.resource_retention_days),
        )
    except Exception:
        stats.rollup_failed()
        log.exception("retention run failed; trying again in %.0f s", config.rollup_interval_seconds)
        return None
    stats.rollup_done(counts)
    done = ", ".join(f"{what} {count}" for what, count in counts.items() if count)
    log.log(logging.INFO if done else logging.DEBUG, "retention: %s", done or "nothing to do")
    return counts


async def _retention_loop(services: Services, stats: ServerStats) -> None:
    while True:
        await run_retention(services, stats)
        await asyncio.sleep(services.config.rollup_interval_seconds)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _write_cli_config(data_dir: Path, listen_host: str, api_port: int) -> None:
    host = "127.0.0.1" if listen_host in ("0.0.0.0", "::", "") else _host(listen_host)
    text = (
        "# Written by `edgefleet server` at every start: point the CLI here with\n"
        f"#   export EDGEFLEET_CONFIG={data_dir / CLI_CONFIG_FILE}\n"
        f'server = "{host}:{api_port}"\n'
        f'token_file = "{data_dir / ADMIN_TOKEN_FILE}"\n'
        f'ca_file = "{data_dir / "ca.crt"}"\n'
    )
    write_private(data_dir / CLI_CONFIG_FILE, text.encode(), 0o600)


async def serve(config: ServerConfig, *, ready_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = await start(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        artifact_port = running.services.artifact_port
        ready_file.write_text(f"{running.api_port} {running.device_port} {os.getpid()} {artifact_port}\n")
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        with contextlib.suppress(Exception):
            await running.stop()
