"""The agent process: join if asked, then keep the session to the control plane.

Exit codes: 0 stopped by signal; 1 control plane unreachable while joining
(retry later); 2 bad configuration or join refused; 3 revoked or refused by
the control plane (do not restart blindly).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from agent.channel import device_channel
from agent.config import AgentConfig
from agent.enroll import enroll
from agent.errors import AgentConfigError, IdentityError
from agent.facts import collect_facts
from agent.fetch_https import HttpsEndpoint, device_https_endpoint
from agent.identity import Identity, identity_dir, load_identity
from agent.jobs import JobRunner
from agent.local_api import LocalInferenceService, start_local_api
from agent.local_fast import start_fast_api
from agent.reconcile_shell import GatewaySource, ReconcileShell
from agent.reconcile_state import InvalidDesiredState, status_report
from agent.reconciler import DEFAULT_CONFIG
from agent.serving import Serving
from agent.session import Session
from agent.telemetry.pipeline import TelemetryPipeline
from protos.edgefleet.v1 import agent_pb2, agent_pb2_grpc
from protos.join import parse_join_string

if TYPE_CHECKING:
    from agent.mqtt_session import MqttSession

log = logging.getLogger("edgefleet.agent")


def facts_provider(config: AgentConfig):
    def provide():
        return collect_facts(
            data_dir=config.data_dir,
            labels=dict(config.labels),
            overrides=dict(config.fact_overrides) or None,
            onnx_threads=config.onnx_threads,
            model_memory_budget_bytes=config.model_memory_budget_bytes,
        )

    return provide


async def ensure_identity(config: AgentConfig, join: str | None, device_id: str | None) -> Identity:
    """Load the stored identity, or enroll with the join string. Raises AgentError subclasses."""
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if identity_dir(config.data_dir).exists():
        identity = load_identity(config.data_dir)
        if join:
            log.warning("already joined as %s; ignoring --join", identity.device_id)
        return identity
    if not join:
        raise IdentityError(
            f"{config.data_dir} holds no identity: join first with --join JOIN_STRING (from `edgefleet tokens create`)"
        )
    parsed = parse_join_string(join)
    facts = await asyncio.to_thread(facts_provider(config))
    identity = await enroll(
        parsed,
        data_dir=config.data_dir,
        device_id=device_id or default_device_id(),
        facts=facts,
        timeout_seconds=config.rpc_timeout_seconds,
    )
    log.info("joined fleet %s as %s", identity.fleet, identity.device_id)
    return identity


def default_device_id() -> str:
    import re
    import socket

    name = re.sub(r"[^a-z0-9._-]", "-", socket.gethostname().lower()).strip("-._") or "device"
    return name[:63]


def trusted_keys(config: AgentConfig, identity: Identity) -> dict[str, bytes]:
    """Publisher keys this device trusts: pinned in its config (--trust) or handed over at join."""
    from protos.bundle_io import load_public_key
    from protos.bundles import BundleError, key_id

    keys: dict[str, bytes] = {}
    for path in config.trusted_publisher_key_files:
        try:
            raw = load_public_key(path)
        except BundleError as exc:
            raise AgentConfigError(f"--trust {path}: {exc}") from exc
        keys[key_id(raw)] = raw
    for hex_key in identity.trusted_publisher_keys:
        raw = bytes.fromhex(hex_key)
        keys[key_id(raw)] = raw
    return keys


def apply_cpu_affinity(config: AgentConfig) -> None:
    """Pin this process to ``config.cpu_affinity`` (if set), before any thread or child process starts.

    Threads and processes started later inherit it (onnxruntime's threads, the acceptance child),
    and the facts report the pinned CPU count as ``cpu_cores``. Raises ``AgentConfigError``.
    """
    if not config.cpu_affinity:
        return
    try:
        os.sched_setaffinity(0, config.cpu_affinity)
    except (OSError, AttributeError) as exc:
        raise AgentConfigError(f"cannot pin the agent to CPUs {list(config.cpu_affinity)}: {exc}") from exc
    log.info("pinned to CPUs %s", ",".join(map(str, config.cpu_affinity)))


def artifact_https(config: AgentConfig, identity: Identity) -> HttpsEndpoint | None:
    """The HTTPS artifact endpoint as this device (its port comes with the Welcome); None, with a warning, when
    the identity's files cannot make a TLS context: artifacts then come over gRPC, as before."""
    try:
        return device_https_endpoint(identity, identity_dir(config.data_dir))
    except IdentityError as exc:
        log.warning("artifacts will come over gRPC only: %s", exc)
        return None


def make_session(config: AgentConfig, identity: Identity, **kwargs) -> Session | MqttSession:
    """The session for ``config.transport``: the gRPC stream, or MQTT 5 through the fleet's broker.

    ``kwargs`` are the callbacks and the heartbeat interval, the same for both. Raises ``AgentConfigError``
    when MQTT is chosen and there is no broker URL (neither ``mqtt_url`` nor one stored at join).
    """
    common = dict(
        facts=facts_provider(config),
        connect_timeout_seconds=config.connect_timeout_seconds,
        backoff=config.reconnect_backoff(),
        **kwargs,
    )
    if config.transport == "mqtt":
        from agent.mqtt_session import MqttSession

        return MqttSession(identity, url=config.mqtt_url, ca_file=config.mqtt_ca_file, **common)
    return Session(identity, **common)


async def run(config: AgentConfig, *, join: str | None = None, device_id: str | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises SessionEnded when revoked or refused.

    Start order matters for "nothing lost": the last active builds are loaded and
    served on the local socket before the control plane is contacted, so a device
    that boots offline still answers its apps. The CPU affinity comes first of all.
    """
    apply_cpu_affinity(config)
    identity = await ensure_identity(config, join, device_id)
    keys = trusted_keys(config, identity)
    serving = Serving(config.data_dir, threads=config.onnx_threads)
    for problem in await asyncio.to_thread(serving.restore):
        log.warning("could not restore an active build: %s", problem)
    stop = asyncio.Event()
    explicit = "heartbeat_interval_seconds" in config.model_fields_set
    shell: ReconcileShell | None = None
    telemetry: TelemetryPipeline | None = None
    jobs: JobRunner | None = None

    def on_desired(desired: agent_pb2.DesiredState) -> None:
        try:
            shell.submit_desired(desired)
        except InvalidDesiredState as exc:
            log.warning("desired state refused: %s", exc)

    def on_message(message: agent_pb2.ControlMessage) -> None:
        match message.WhichOneof("body"):
            case "telemetry_ack":
                telemetry.on_ack(message.telemetry_ack)
            case "job":
                jobs.submit(message.job)

    def on_welcome(welcome: agent_pb2.Welcome) -> None:
        source.use_https(welcome.artifact_port)

    def on_connected() -> None:
        telemetry.on_connected()
        session.send(agent_pb2.AgentMessage(status=status_report(shell.state)))

    session = make_session(
        config,
        identity,
        # The control plane's interval (from enrollment) unless the config sets one.
        heartbeat_interval_seconds=config.heartbeat_interval_seconds if explicit else None,
        on_desired=on_desired,
        on_message=on_message,
        on_welcome=on_welcome,
        on_connected=on_connected,
    )
    telemetry = TelemetryPipeline(
        data_dir=config.data_dir,
        device_id=identity.device_id,
        boot_id=session.boot_id,
        send=session.send,
        flush_seconds=config.telemetry_flush_seconds,
        partial_minutes=config.telemetry_partial_minutes,
    )
    channel = device_channel(identity)
    source = GatewaySource(
        agent_pb2_grpc.AgentGatewayStub(channel),
        timeout_seconds=config.rpc_timeout_seconds,
        https=artifact_https(config, identity),
    )
    shell = ReconcileShell(
        data_dir=config.data_dir,
        facts=facts_provider(config),
        trusted_keys=keys,
        source=source,
        serving=serving,
        report=lambda report: session.send(agent_pb2.AgentMessage(status=report)),
        emit=telemetry.emit,
        crash_after_persisting=os.environ.get("EDGEFLEET_FAULT_CRASH_AFTER_PERSISTING", ""),
    )
    # Benchmark jobs: measured in <data_dir>/jobs/, never installed (see agent.jobs).
    jobs = JobRunner(
        data_dir=config.data_dir,
        facts=facts_provider(config),
        trusted_keys=keys,
        source=source,
        send=session.send,
        emit=telemetry.emit,
        acceptance_timeout_seconds=DEFAULT_CONFIG.acceptance_timeout_seconds,
    )

    def record(loaded, latency_ms: float, ok: bool, confidence: float | None, size: float) -> None:
        telemetry.record(loaded.ref, loaded.task, latency_ms, ok, confidence, size)

    service = LocalInferenceService(
        serving, device_id=identity.device_id, record=record, connected=lambda: session.state.connected
    )
    local_api, _ = await start_local_api(service, config.data_dir, tcp_port=config.local_api_tcp_port)
    # The same service on a lighter framing, for apps where a gRPC call's own cost matters (agent.local_fast).
    try:
        fast_api = await start_fast_api(service, config.data_dir)
    except OSError as exc:  # e.g. a data dir path too long for a unix socket: gRPC still serves
        fast_api = None
        log.warning("not serving the fast local socket: %s", exc)
    loop = asyncio.get_running_loop()

    def shutdown() -> None:
        stop.set()
        session.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, shutdown)
    tasks = [
        asyncio.ensure_future(session.run()),
        asyncio.ensure_future(shell.run(stop)),
        asyncio.ensure_future(telemetry.run(stop)),
        asyncio.ensure_future(jobs.run(stop)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        shutdown()
        await asyncio.wait(tasks, timeout=10)
        if fast_api is not None:
            await fast_api.close()
        await local_api.stop(1.0)
        await channel.close()
        telemetry.close()
