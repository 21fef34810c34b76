"""A real control plane in a background thread, real agents in subprocesses, and polling with deadlines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc

from controlplane.config import ServerConfig
from controlplane.server import RunningServer, start
from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc
from protos.limits import TLS_SERVER_NAME

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> T:
    """Poll condition until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last value: {last!r})")


class ServerThread:
    """Runs controlplane.server.start() on its own event loop in a daemon thread."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="controlplane")
        self.thread.start()
        self.running: RunningServer = self.call(start(config))

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def api_address(self) -> str:
        return f"127.0.0.1:{self.running.api_port}"

    @property
    def device_address(self) -> str:
        return f"127.0.0.1:{self.running.device_port}"

    @property
    def admin_token(self) -> str:
        return (self.config.data_dir / "admin.token").read_text().strip()

    @property
    def ca_pem(self) -> bytes:
        return (self.config.data_dir / "ca.crt").read_bytes()

    def set_clock(self, clock: Callable) -> None:
        self.running.services.clock = clock

    def admin(self, token: str | None = None) -> tuple[admin_pb2_grpc.AdminStub, list[tuple[str, str]], grpc.Channel]:
        channel = grpc.secure_channel(
            self.api_address,
            grpc.ssl_channel_credentials(root_certificates=self.ca_pem),
            options=[("grpc.ssl_target_name_override", TLS_SERVER_NAME)],
        )
        return admin_pb2_grpc.AdminStub(channel), [("authorization", f"Bearer {token or self.admin_token}")], channel

    def join_string(self, fleet: str = "lab", ttl_seconds: int = 3600, **labels: str) -> str:
        stub, meta, channel = self.admin()
        with channel:
            return stub.CreateJoinToken(
                admin_pb2.CreateJoinTokenRequest(fleet=fleet, ttl_seconds=ttl_seconds, labels=labels),
                metadata=meta,
                timeout=10,
            ).join_string

    def device(self, device_id: str) -> admin_pb2.Device:
        stub, meta, channel = self.admin()
        with channel:
            return stub.GetDevice(admin_pb2.GetDeviceRequest(device_id=device_id), metadata=meta, timeout=10)

    def is_online(self, device_id: str) -> bool:
        """True when the device is enrolled and online; False while it is unknown or offline."""
        return any(d.device_id == device_id and d.online for d in self.devices())

    def devices(self) -> list[admin_pb2.Device]:
        stub, meta, channel = self.admin()
        with channel:
            return list(stub.ListDevices(admin_pb2.ListDevicesRequest(), metadata=meta, timeout=10).devices)

    def stop(self) -> None:
        try:
            self.call(self.running.stop(grace=1.0))
            self.call(_cancel_leftover_tasks())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


async def _cancel_leftover_tasks() -> None:
    """Cancel what the gRPC runtime left pending so that closing the loop destroys no live task."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=5) if tasks else None


class AgentProcess:
    """`edgefleet agent` as a real subprocess; killed at the end of the test."""

    def __init__(self, data_dir: Path, *args: str, join: str | None = None, device_id: str | None = None) -> None:
        command = [sys.executable, "-m", "edgefleet", "agent", "--data-dir", str(data_dir), "--log-level", "info"]
        if join:
            command += ["--join", join]
        if device_id:
            command += ["--device-id", device_id]
        command += list(args)
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy()
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        return self.process.wait(timeout)

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def close(self) -> None:
        self.kill()
        self.log.close()
