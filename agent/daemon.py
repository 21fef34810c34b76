"""The agent process: join if asked, then keep the session to the control plane.

Exit codes: 0 stopped by signal; 1 control plane unreachable while joining
(retry later); 2 bad configuration or join refused; 3 revoked or refused by
the control plane (do not restart blindly).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from agent.config import AgentConfig
from agent.enroll import enroll
from agent.errors import IdentityError
from agent.facts import collect_facts
from agent.identity import Identity, identity_dir, load_identity
from agent.session import Session
from protos.join import parse_join_string

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


async def run(config: AgentConfig, *, join: str | None = None, device_id: str | None = None) -> None:
    """Run until SIGTERM/SIGINT. Raises SessionEnded when revoked or refused."""
    identity = await ensure_identity(config, join, device_id)
    explicit = "heartbeat_interval_seconds" in config.model_fields_set
    session = Session(
        identity,
        facts=facts_provider(config),
        # The control plane's interval (from enrollment) unless the config sets one.
        heartbeat_interval_seconds=config.heartbeat_interval_seconds if explicit else None,
        connect_timeout_seconds=config.connect_timeout_seconds,
        backoff=config.reconnect_backoff(),
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, session.stop)
    await session.run()
