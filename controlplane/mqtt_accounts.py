"""Per-device broker accounts on Mosquitto's dynamic security plugin (``deploy/mosquitto/README.md``).

With ``mqtt_provision_devices`` on, enrollment gives each device its own broker account before the device
row is committed, and revocation deletes it:

- a role ``edgefleet-device-<id>`` allowing exactly ``publishClientSend`` on ``edgefleet/v1/<fleet>/<id>/up/#``
  and ``subscribePattern`` + ``publishClientReceive`` on ``edgefleet/v1/<fleet>/<id>/down/#``; the broker's
  default ACL access (deny publish and subscribe; the shipped init script also denies receive) covers the rest;
- a client with username = client id = the device id (dynsec refuses a connection whose client id differs) and
  a random password, which enrollment hands to the device in ``EnrollResponse.mqtt.password``.

Commands go to ``$CONTROL/dynamic-security/v1`` over a short connection of their own (client id
``edgefleet-controlplane-accounts-<random>``) with the control plane's account from ``--mqtt``, which must hold
the dynsec admin role; responses come back on ``$CONTROL/dynamic-security/v1/response`` and are matched by
``correlationData``. A broker that does not answer within ``TIMEOUT_SECONDS`` raises ``BrokerAccountError``;
what was already created is deleted again, so a failed enrollment leaves nothing behind (best effort: when even
the clean-up cannot reach the broker, ``mosquitto_ctrl dynsec deleteClient <id>`` / ``deleteRole`` remove it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import secrets
import ssl
import threading
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from controlplane.config import parse_broker_url
from controlplane.errors import PreconditionFailed
from protos import mqtt

log = logging.getLogger("edgefleet.server.mqtt")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ROLE_PREFIX = "edgefleet-device-"
# Client ids the control plane uses on the broker (the bridge: "edgefleet-controlplane"); no device may have one,
# since a device's client id is its id and a second client with an id takes the first one's connection.
RESERVED_PREFIX = "edgefleet-controlplane"
TIMEOUT_SECONDS = 10.0
_NOT_FOUND = ("not found",)


class BrokerAccountError(PreconditionFailed):
    """The broker refused or did not answer a dynamic-security command."""


def role_name(device_id: str) -> str:
    return f"{ROLE_PREFIX}{device_id}"


def device_acls(fleet: str, device_id: str) -> list[dict[str, Any]]:
    """The device's own subtree: it sends up, it subscribes to and receives down; nothing else."""
    root = mqtt.device_root(fleet, device_id)  # raises TopicError for ids that cannot be topic levels
    return [
        {"acltype": "publishClientSend", "topic": f"{root}/up/#", "priority": 0, "allow": True},
        {"acltype": "subscribePattern", "topic": f"{root}/down/#", "priority": 0, "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{root}/down/#", "priority": 0, "allow": True},
        {"acltype": "unsubscribePattern", "topic": f"{root}/down/#", "priority": 0, "allow": True},
    ]


class BrokerAccounts:
    """Dynamic-security commands through the control plane's broker account (``mqtt_url``)."""

    def __init__(self, url: str, timeout: float = TIMEOUT_SECONDS, *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: the context for an ``mqtts://`` URL, ``controlplane.mqtt_tls.for_config`` (the bridge's rule);
        None there means the system's CAs only."""
        self.broker = parse_broker_url(url)
        self.timeout = timeout
        self.tls = tls

    # --- what enrollment and revocation call ---

    async def create_device(self, fleet: str, device_id: str) -> str:
        """Create the device's role and client; return its password. Raises BrokerAccountError (nothing left
        created, as far as the broker can be reached) or TopicError."""
        acls = device_acls(fleet, device_id)
        password = secrets.token_urlsafe(24)
        rolename = role_name(device_id)
        create_role = {"command": "createRole", "rolename": rolename, "acls": acls}
        create_client = {
            "command": "createClient",
            "username": device_id,
            "clientid": device_id,
            "password": password,
            "textname": f"edgefleet device {device_id} (fleet {fleet})",
            "roles": [{"rolename": rolename, "priority": 0}],
        }
        await self._checked(create_role)
        try:
            await self._checked(create_client)
        except BaseException:
            await self.delete_device(device_id, quiet=True)
            raise
        return password

    async def delete_device(self, device_id: str, *, quiet: bool = False) -> None:
        """Delete the device's client (the broker disconnects it) and role; what is already gone is fine."""
        commands = [
            {"command": "deleteClient", "username": device_id},
            {"command": "deleteRole", "rolename": role_name(device_id)},
        ]
        try:
            responses = await asyncio.to_thread(self.run, commands)
        except BrokerAccountError as exc:
            if not quiet:
                raise
            log.error("broker account of %s may be left behind: %s", device_id, exc)
            return
        for response in responses:
            error = response.get("error")
            if error and not any(text in error.lower() for text in _NOT_FOUND):
                if not quiet:
                    raise BrokerAccountError(f"broker refused {response.get('command')} for {device_id}: {error}")
                log.error("broker refused %s for %s: %s", response.get("command"), device_id, error)

    async def _checked(self, command: dict[str, Any]) -> dict[str, Any]:
        (response,) = await asyncio.to_thread(self.run, [command])
        if response.get("error"):
            name = command.get("username") or command.get("rolename")
            raise BrokerAccountError(f"MQTT broker refused {command['command']} {name}: {response['error']}")
        return response

    # --- one round trip (blocking; call it in a thread) ---

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands in one message; return their responses in order. Raises BrokerAccountError."""
        tag = secrets.token_hex(8)
        sent = [dict(c, correlationData=f"{tag}-{i}") for i, c in enumerate(commands)]
        wanted = {c["correlationData"] for c in sent}
        responses: dict[str, dict[str, Any]] = {}
        done = threading.Event()
        events: queue.Queue[tuple[str, Any]] = queue.Queue()

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{RESERVED_PREFIX}-accounts-{secrets.token_hex(4)}",
            protocol=paho.MQTTv5,
            reconnect_on_failure=False,
        )
        if self.broker.username:
            client.username_pw_set(self.broker.username, self.broker.password or None)
        if self.broker.tls:
            client.tls_set_context(self.tls or ssl.create_default_context())

        def on_connect(c, userdata, flags, reason_code, properties) -> None:
            events.put(("connack", reason_code))

        def on_subscribe(c, userdata, mid, reason_codes, properties) -> None:
            events.put(("suback", reason_codes[0] if reason_codes else None))

        def on_message(c, userdata, message) -> None:
            try:
                body = json.loads(message.payload)
            except ValueError:
                return
            for response in body.get("responses", ()):
                if response.get("correlationData") in wanted:
                    responses[response["correlationData"]] = response
            if len(responses) == len(wanted):
                done.set()

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        where = f"{self.broker.host}:{self.broker.port}"
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=30)
        except ssl.SSLError as exc:
            why = getattr(exc, "verify_message", None) or exc.reason or exc
            raise BrokerAccountError(
                f"MQTT broker {where}: TLS failed ({why}); its certificate must chain to the --mqtt-ca file, "
                "or without one to the edgefleet CA or a system CA"
            ) from exc
        except (OSError, ValueError) as exc:
            raise BrokerAccountError(f"MQTT broker {where} unreachable: {exc}") from exc
        client.loop_start()
        try:
            kind, code = self._next(events, "a CONNACK", where)
            if code.is_failure:
                raise BrokerAccountError(f"MQTT broker {where} refused the control plane's account: {code}")
            client.subscribe(RESPONSE_TOPIC, qos=1)
            kind, code = self._next(events, "a SUBACK", where)
            if code is None or code.is_failure:
                raise BrokerAccountError(
                    f"MQTT broker {where} refused {RESPONSE_TOPIC} to the control plane: {code} "
                    "(does its account have the dynamic-security admin role?)"
                )
            client.publish(CONTROL_TOPIC, json.dumps({"commands": sent}), qos=1)
            if not done.wait(self.timeout):
                raise BrokerAccountError(
                    f"MQTT broker {where} did not answer {', '.join(c['command'] for c in commands)} within "
                    f"{self.timeout:.0f} s (is the dynamic security plugin loaded?)"
                )
        finally:
            try:
                client.disconnect()
            finally:
                client.loop_stop()
                with contextlib.suppress(Exception):
                    client._reset_sockets()  # noqa: SLF001 - as mqtt_bridge._close_sockets
        return [responses[c["correlationData"]] for c in sent]

    def _next(self, events: queue.Queue, what: str, where: str) -> tuple[str, Any]:
        try:
            return events.get(timeout=self.timeout)
        except queue.Empty:
            raise BrokerAccountError(f"MQTT broker {where} sent no {what} within {self.timeout:.0f} s") from None
