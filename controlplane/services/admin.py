"""The operator API: tokens, devices (and, as they land, classes, models,
deployments, rollouts and telemetry queries).

Every call authenticates the bearer token and checks its role before it
reads or changes anything. Methods of the contract that this server does not
serve yet answer UNIMPLEMENTED (the generated base class).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
import secrets

import grpc

from controlplane.auth import Role, bearer_token, new_operator_token, new_secret, require_role, sha256_hex
from controlplane.errors import InvalidRequest, NotFoundError, Unauthenticated
from controlplane.fleet import device_message, is_online, timestamp
from controlplane.grpc_errors import handle_errors
from controlplane.services.context import Services
from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc
from protos.join import JoinString
from protos.limits import check_labels, check_name

log = logging.getLogger("edgefleet.server.admin")

SERVER_VERSION = importlib.metadata.version("edgefleet")
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    async def caller(self, context: grpc.aio.ServicerContext, needed: Role, action: str):
        token = bearer_token(context.invocation_metadata())
        row = await self.s.db(self.s.store.find_operator_token, sha256_hex(token))
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("operator token is unknown or revoked")
        require_role(Role.parse(row.role), needed, action)
        return row

    def _device(self, row) -> admin_pb2.Device:
        s = self.s
        last_seen = s.presence.last_seen(row.device_id, row.last_seen)
        online = is_online(
            connected=row.connected and row.revoked_at is None,
            last_seen=last_seen,
            now=s.clock(),
            offline_after=dt.timedelta(seconds=s.config.offline_after_seconds),
        )
        return device_message(row, online=online, last_seen=last_seen)

    # --- identity ---

    @handle_errors
    async def WhoAmI(self, request, context):  # noqa: N802
        row = await self.caller(context, Role.VIEWER, "whoami")
        return admin_pb2.WhoAmIResponse(name=row.name, role=Role.parse(row.role).value, server_version=SERVER_VERSION)

    @handle_errors
    async def CreateJoinToken(self, request, context):  # noqa: N802
        await self.caller(context, Role.OPERATOR, "creating a join token")
        s = self.s
        check_name("fleet", request.fleet)
        labels = check_labels(dict(request.labels))
        ttl = request.ttl_seconds or s.config.join_token_default_ttl_seconds
        if not 60 <= ttl <= s.config.join_token_max_ttl_seconds:
            raise InvalidRequest(f"ttl must be between 60 s and {s.config.join_token_max_ttl_seconds} s")
        address = request.server_address or s.api_address
        now = s.clock()
        token_id, secret = secrets.token_hex(8), new_secret()
        join = JoinString(
            server=address,
            ca_sha256=s.ca.fingerprint,
            token_id=token_id,
            secret=secret,
            publisher_key_ids=tuple(request.publisher_key_ids),
        )  # validates the address and key ids before anything is stored
        expires = now + dt.timedelta(seconds=ttl)
        await s.db(
            s.store.create_join_token,
            token_id=token_id,
            fleet=request.fleet,
            secret_sha256=sha256_hex(secret),
            labels=labels,
            publisher_key_ids=list(request.publisher_key_ids),
            expires_at=expires,
            now=now,
        )
        return admin_pb2.CreateJoinTokenResponse(
            join_string=join.encode(), token_id=token_id, expires_at=timestamp(expires)
        )

    @handle_errors
    async def CreateOperatorToken(self, request, context):  # noqa: N802
        await self.caller(context, Role.ADMIN, "creating operator tokens")
        check_name("token name", request.name)
        if request.role not in (Role.VIEWER, Role.OPERATOR, Role.ADMIN):
            raise InvalidRequest("role must be viewer, operator or admin")
        token = new_operator_token()
        row = await self.s.db(
            self.s.store.create_operator_token,
            request.name,
            Role(request.role).name.lower(),
            sha256_hex(token),
            self.s.clock(),
        )
        return admin_pb2.CreateOperatorTokenResponse(token=token, info=_token_info(row))

    @handle_errors
    async def ListOperatorTokens(self, request, context):  # noqa: N802
        await self.caller(context, Role.ADMIN, "listing operator tokens")
        rows = await self.s.db(self.s.store.list_operator_tokens)
        return admin_pb2.ListOperatorTokensResponse(tokens=[_token_info(r) for r in rows])

    @handle_errors
    async def RevokeOperatorToken(self, request, context):  # noqa: N802
        caller = await self.caller(context, Role.ADMIN, "revoking operator tokens")
        if request.name == caller.name:
            raise InvalidRequest("a token cannot revoke itself; use another admin token")
        row = await self.s.db(self.s.store.revoke_operator_token, request.name, self.s.clock())
        return admin_pb2.RevokeOperatorTokenResponse(info=_token_info(row))

    # --- devices ---

    @handle_errors
    async def ListDevices(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "listing devices")
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise InvalidRequest(f"page_size must be at most {MAX_PAGE_SIZE}")
        if request.page_token and len(request.page_token) > 64:
            raise InvalidRequest("page_token is malformed")
        rows = await self.s.db(
            self.s.store.list_devices, request.fleet or None, after=request.page_token or None, limit=page_size + 1
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        selector = dict(request.label_selector)
        matching = [r for r in rows if all((r.labels or {}).get(k) == v for k, v in selector.items())]
        return admin_pb2.ListDevicesResponse(
            devices=[self._device(r) for r in matching], next_page_token=rows[-1].device_id if more else ""
        )

    @handle_errors
    async def GetDevice(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "reading devices")
        row = await self.s.db(self.s.store.get_device, request.device_id)
        if row is None:
            raise NotFoundError(f"device {request.device_id!r} not found")
        return self._device(row)

    @handle_errors
    async def RevokeDevice(self, request, context):  # noqa: N802
        caller = await self.caller(context, Role.OPERATOR, "revoking a device")
        if len(request.reason) > 256:
            raise InvalidRequest("reason is longer than 256 characters")
        reason = request.reason or f"revoked by {caller.name}"
        row = await self.s.db(self.s.store.revoke_device, request.device_id, reason, self.s.clock())
        handle = self.s.presence.session(request.device_id)
        if handle is not None:
            handle.close(reason, revoked=True)
        log.info("device %s revoked by %s", request.device_id, caller.name)
        return self._device(row)


def _token_info(row) -> admin_pb2.OperatorToken:
    info = admin_pb2.OperatorToken(name=row.name, role=Role.parse(row.role).value)
    info.created_at.CopyFrom(timestamp(row.created_at))
    if row.revoked_at is not None:
        info.revoked_at.CopyFrom(timestamp(row.revoked_at))
    return info
