"""`edgefleet agent`: run the device agent."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from agent.config import load_config, parse_byte_size, parse_cpu_list, parse_labels


class AgentExit(Exception):
    """Ends the agent command with an exit code and a one-line message."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def agent(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="The device's identity and state")] = None,
    join: Annotated[
        str | None, typer.Option("--join", envvar="EDGEFLEET_JOIN", help="Join string from `edgefleet tokens create`")
    ] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="Id to enroll as (default: host name)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="agent.toml")] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Device labels reported with the facts: k=v,k2=v2")
    ] = None,
    heartbeat_seconds: Annotated[
        float | None, typer.Option("--heartbeat-seconds", help="Override the heartbeat interval")
    ] = None,
    simulate_facts: Annotated[
        str | None,
        typer.Option("--simulate-facts", help='JSON object of facts to override, e.g. \'{"architecture": "aarch64"}\''),
    ] = None,
    onnx_threads: Annotated[
        int | None, typer.Option("--onnx-threads", help="Threads per onnxruntime session (0: runtime default)")
    ] = None,
    cpu_affinity: Annotated[
        str | None,
        typer.Option("--cpu-affinity", help="Pin the agent and its model processes to these CPUs, e.g. 0,1 or 0-3"),
    ] = None,
    memory_budget: Annotated[
        str | None,
        typer.Option(
            "--memory-budget", help="Memory a model may use (acceptance refuses bigger), e.g. 256MiB; B/KiB/MiB/GiB"
        ),
    ] = None,
    trust: Annotated[
        list[Path] | None, typer.Option("--trust", help="Publisher public key (KEYFILE.pub) whose bundles to install")
    ] = None,
    transport: Annotated[
        str | None,
        typer.Option(
            "--transport", help="Session transport: grpc (default) or mqtt (MQTT 5 through the fleet's broker)"
        ),
    ] = None,
    mqtt_url: Annotated[
        str | None,
        typer.Option("--mqtt-url", help="Broker URL, mqtt[s]://host[:port] (default: the one handed over at join)"),
    ] = None,
    mqtt_ca: Annotated[
        Path | None,
        typer.Option(
            "--mqtt-ca",
            help="CA file (PEM) the broker's certificate must chain to, for mqtts:// "
            "(default: the CA pinned at join, or the system's CAs)",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run the agent: join with --join on first start, then keep the session to the control plane.

    Example: edgefleet agent --join efjoin1.… --data-dir /var/lib/edgefleet --device-id gw-001

    Simulate a device class on one machine: --cpu-affinity, --onnx-threads, --memory-budget, --simulate-facts.
    """
    from agent.daemon import run
    from agent.errors import AgentConfigError, AgentError, TransportError
    from agent.session import SessionEnded
    from protos.join import JoinStringError

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        overrides = json.loads(simulate_facts) if simulate_facts else None
    except json.JSONDecodeError as exc:
        raise AgentExit(f"--simulate-facts is not valid JSON: {exc}", 2) from exc
    try:
        cfg = load_config(
            config,
            data_dir=data_dir,
            labels=parse_labels(labels) if labels is not None else None,
            heartbeat_interval_seconds=heartbeat_seconds,
            fact_overrides=overrides,
            trusted_publisher_key_files=tuple(trust) if trust else None,
            onnx_threads=onnx_threads,
            cpu_affinity=None if cpu_affinity is None else parse_cpu_list(cpu_affinity, "--cpu-affinity"),
            model_memory_budget_bytes=(
                None if memory_budget is None else parse_byte_size(memory_budget, "--memory-budget")
            ),
            transport=transport,
            mqtt_url=mqtt_url,
            mqtt_ca_file=mqtt_ca,
        )
        asyncio.run(run(cfg, join=join, device_id=device_id))
    except (AgentConfigError, JoinStringError) as exc:
        raise AgentExit(str(exc), 2) from exc
    except SessionEnded as exc:
        raise AgentExit(str(exc), 3) from exc
    except TransportError as exc:
        raise AgentExit(str(exc), 1) from exc
    except AgentError as exc:
        raise AgentExit(str(exc), 2) from exc
