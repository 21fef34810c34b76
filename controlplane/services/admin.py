"""The operator API: tokens, devices, device classes, publisher keys, blobs, model builds, evidence and
selection, direct deployments and telemetry queries (and, as they land, rollouts).

Every call authenticates the bearer token and checks its role before it
reads or changes anything. Methods of the contract that this server does not
serve yet answer UNIMPLEMENTED (the generated base class).

Publishing: the operator uploads the bundle's files as blobs (by sha256, only those
StatBlobs reports missing), then publishes the signed manifest. A build is stored only
if a registered publisher key signed it, the manifest obeys ``protos.bundles``' rules,
every file is uploaded with the manifest's size, and the version does not go backwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib.metadata
import logging
import math
import secrets

import grpc

from controlplane import rollout_json
from controlplane.auth import Role, bearer_token, new_operator_token, new_secret, require_role, sha256_hex
from controlplane.blobs import BlobStalled, BlobTooLarge, check_sha256
from controlplane.errors import InvalidRequest, NotFoundError, PreconditionFailed, Unauthenticated
from controlplane.fleet import device_message, is_online, timestamp
from controlplane.grpc_errors import handle_errors
from controlplane.services import classes, evidence, telemetry
from controlplane.services.context import Services
from controlplane.services.desired import push_desired
from controlplane.services.rollouts import RolloutService
from protos.bundles import (
    MAX_SIGNATURES,
    MAX_VERSION,
    check_public_key,
    parse_signed_manifest,
    task_name,
    valid_signers,
    verify_signed_manifest,
)
from protos.edgefleet.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from protos.join import JoinString
from protos.limits import MAX_ARTIFACT_CHUNK_BYTES, check_labels, check_name

log = logging.getLogger("edgefleet.server.admin")

SERVER_VERSION = importlib.metadata.version("edgefleet")
DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000
MAX_STAT_BLOBS = 1000
MAX_CLASS_FILE_CHARS = 256 * 1024


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, services: Services, rollouts: RolloutService | None = None) -> None:
        self.s = services
        self.rollouts = rollouts or RolloutService(services)

    async def caller(self, context: grpc.aio.ServicerContext, needed: Role, action: str):
        token = bearer_token(context.invocation_metadata())
        row = await self.s.db(self.s.store.find_operator_token, sha256_hex(token))
        if row is None or row.revoked_at is not None:
            raise Unauthenticated("operator token is unknown or revoked")
        require_role(Role.parse(row.role), needed, action)
        return row

    def _presence(self, row) -> tuple[bool, dt.datetime | None]:
        """Whether the device is online now, and when it was last seen."""
        s = self.s
        last_seen = s.presence.last_seen(row.device_id, row.last_seen)
        online = is_online(
            connected=row.connected and row.revoked_at is None,
            last_seen=last_seen,
            now=s.clock(),
            offline_after=dt.timedelta(seconds=s.config.offline_after_seconds),
        )
        return online, last_seen

    def _device(self, row, status=None) -> admin_pb2.Device:
        online, last_seen = self._presence(row)
        message = device_message(row, online=online, last_seen=last_seen)
        if status is not None:
            report, active = telemetry.status_message(status)
            message.status.CopyFrom(report)
            message.active.extend(active)
        return message

    async def _devices(self, rows) -> list[admin_pb2.Device]:
        statuses = await self.s.db(self.s.store.device_statuses, [r.device_id for r in rows])
        return [self._device(r, statuses.get(r.device_id)) for r in rows]

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
        if request.publisher_key_ids:
            known = await s.db(s.store.get_publisher_keys, request.publisher_key_ids)
            missing = sorted(set(request.publisher_key_ids) - set(known))
            if missing:
                raise NotFoundError(f"publisher key(s) {', '.join(missing)} are not registered (edgefleet keys list)")
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
            self.s.store.list_devices,
            request.fleet or None,
            device_class=request.device_class or None,
            after=request.page_token or None,
            limit=page_size + 1,
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        selector = dict(request.label_selector)
        matching = [r for r in rows if all((r.labels or {}).get(k) == v for k, v in selector.items())]
        return admin_pb2.ListDevicesResponse(
            devices=await self._devices(matching), next_page_token=rows[-1].device_id if more else ""
        )

    @handle_errors
    async def GetDevice(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "reading devices")
        row = await self.s.db(self.s.store.get_device, request.device_id)
        if row is None:
            raise NotFoundError(f"device {request.device_id!r} not found")
        [device] = await self._devices([row])
        return device

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
        if self.s.config.mqtt_provision_devices:
            from controlplane import mqtt_tls
            from controlplane.mqtt_accounts import BrokerAccountError, BrokerAccounts

            try:  # the broker disconnects it; the bridge drops what a revoked device publishes anyway
                tls = mqtt_tls.for_config(self.s.config, self.s.ca.cert_pem)
                await BrokerAccounts(self.s.config.mqtt_url, tls=tls).delete_device(request.device_id)
            except BrokerAccountError as exc:
                log.error(
                    "device %s is revoked but its broker account is not deleted (%s): "
                    "mosquitto_ctrl dynsec deleteClient %s",
                    request.device_id,
                    exc,
                    request.device_id,
                )
        log.info("device %s revoked by %s", request.device_id, caller.name)
        return self._device(row)

    # --- telemetry queries ---

    @handle_errors
    async def QueryLatency(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "querying telemetry")
        return await telemetry.query_latency(self.s, request)

    @handle_errors
    async def QueryEvents(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "querying events")
        return await telemetry.query_events(self.s, request)

    @handle_errors
    async def QueryHealth(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "querying device health")
        rows = await self.s.db(self.s.store.health, request.fleet or None)
        response = admin_pb2.QueryHealthResponse()
        for row in rows:
            online, last_seen = self._presence(row.device)
            health = response.rows.add(device_id=row.device.device_id, online=online)
            if last_seen is not None:
                health.last_seen.CopyFrom(timestamp(last_seen))
            if row.resources is not None:
                r = row.resources
                health.cpu_percent = r.cpu_percent
                health.rss_bytes = r.rss_bytes
                health.memory_available_bytes = r.memory_available_bytes
                health.temperature_celsius = math.nan if r.temperature_celsius is None else r.temperature_celsius
            if row.status is not None:
                _, active = telemetry.status_message(row.status)
                health.active.extend(a.model for a in active)
        return response

    # --- publisher keys, blobs and model builds ---

    @handle_errors
    async def AddPublisherKey(self, request, context):  # noqa: N802
        caller = await self.caller(context, Role.OPERATOR, "registering a publisher key")
        check_name("publisher key name", request.name)
        key_id = check_public_key(request.public_key)
        s = self.s
        row = await s.db(s.store.add_publisher_key, key_id, request.public_key.hex(), request.name, s.clock())
        log.info("publisher key %s (%s) registered by %s", key_id, request.name, caller.name)
        return _publisher_key(row)

    @handle_errors
    async def ListPublisherKeys(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "listing publisher keys")
        rows = await self.s.db(self.s.store.list_publisher_keys)
        return admin_pb2.ListPublisherKeysResponse(keys=[_publisher_key(r) for r in rows])

    @handle_errors
    async def StatBlobs(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "checking blobs")
        if len(request.sha256) > MAX_STAT_BLOBS:
            raise InvalidRequest(f"at most {MAX_STAT_BLOBS} blobs per StatBlobs call, got {len(request.sha256)}")
        wanted = [check_sha256(sha) for sha in dict.fromkeys(request.sha256)]
        present = await asyncio.to_thread(lambda: [sha for sha in wanted if self.s.blobs.has(sha)])
        return admin_pb2.StatBlobsResponse(present=present)

    @handle_errors
    async def UploadBlob(self, request_iterator, context):  # noqa: N802
        await self.caller(context, Role.OPERATOR, "uploading blobs")
        chunks = aiter(request_iterator)
        first = await self._next_chunk(chunks)
        if first is None or not first.sha256 or not first.total_bytes:
            raise InvalidRequest("the first chunk of an upload must declare the blob's sha256 and total_bytes")
        writer = await asyncio.to_thread(self.s.blobs.writer, first.sha256, first.total_bytes)
        with writer:  # discards the upload unless it is committed
            chunk = first
            # A blob already stored is not received again: the answer ends the upload.
            while chunk is not None and not writer.already_present:
                _check_chunk(chunk, first)
                if chunk.data:
                    await asyncio.to_thread(writer.write, chunk.data)
                chunk = await self._next_chunk(chunks)
            present = await asyncio.to_thread(writer.commit)
        return admin_pb2.BlobRef(sha256=first.sha256, size_bytes=first.total_bytes, already_present=present)

    async def _next_chunk(self, chunks) -> admin_pb2.BlobChunk | None:
        """The next chunk, or None at the end of the stream. Raises BlobStalled after the idle timeout."""
        idle = self.s.config.blob_upload_idle_seconds
        try:
            return await asyncio.wait_for(anext(chunks, None), idle)
        except TimeoutError as exc:
            raise BlobStalled(f"no upload data for {idle:g} s; the upload was dropped, send it again") from exc

    @handle_errors
    async def PublishBundle(self, request, context):  # noqa: N802
        caller = await self.caller(context, Role.OPERATOR, "publishing a bundle")
        s = self.s
        signed = parse_signed_manifest(request.signed_manifest)
        signer_ids = list(dict.fromkeys(sig.key_id for sig in signed.signatures))
        keys = await s.db(s.store.get_publisher_keys, signer_ids[:MAX_SIGNATURES])
        if not keys:
            raise PreconditionFailed(
                f"the bundle is signed by {', '.join(k[:64] for k in signer_ids) or 'no key'}, which is not a "
                "registered publisher key; register it first: edgefleet keys register KEYFILE.pub --name NAME"
            )
        trusted = {key: row.raw_public_key for key, row in keys.items()}
        manifest = verify_signed_manifest(signed, trusted)
        publisher = valid_signers(signed, trusted)[0]
        sizes = await asyncio.to_thread(lambda: {f.sha256: s.blobs.size(f.sha256) for f in manifest.files})
        for f in manifest.files:
            if sizes[f.sha256] is None:
                raise PreconditionFailed(
                    f"file {f.path!r} (sha256 {f.sha256}) is not uploaded; upload every file before publishing "
                    "(edgefleet models push does both)"
                )
            if sizes[f.sha256] != f.size_bytes:
                raise InvalidRequest(
                    f"file {f.path!r}: the manifest says {f.size_bytes} bytes, the uploaded blob has {sizes[f.sha256]}"
                )
        row = await s.db(
            s.store.add_build,
            name=manifest.name,
            version=manifest.version,
            variant=manifest.variant,
            task=task_name(manifest.task),
            manifest=signed.manifest,
            signatures=request.signed_manifest,
            manifest_sha256=hashlib.sha256(signed.manifest).hexdigest(),
            total_bytes=sum(f.size_bytes for f in manifest.files),
            publisher_key_id=publisher,
            now=s.clock(),
        )
        log.info("%s published %s:%d %s", caller.name, row.name, row.version, row.variant)
        await evidence.plan(s, row.name, row.version)  # a second variant: the classes measure them
        return _model_build(row, with_manifest=True)

    @handle_errors
    async def ListModels(self, request, context):  # noqa: N802
        """Every build (of one model, if named), newest version first; without manifests (GetModel has them)."""
        await self.caller(context, Role.VIEWER, "listing models")
        if request.name:
            check_name("model name", request.name)
        rows = await self.s.db(self.s.store.list_builds, request.name or None)
        return admin_pb2.ListModelsResponse(builds=[_model_build(r, with_manifest=False) for r in rows])

    @handle_errors
    async def GetModel(self, request, context):  # noqa: N802
        """The variants of one version (0: the latest), with their manifests."""
        await self.caller(context, Role.VIEWER, "reading models")
        check_name("model name", request.name)
        if request.version > MAX_VERSION:
            raise InvalidRequest(f"version must be at most {MAX_VERSION}")
        rows = await evidence.version_builds(self.s, request.name, request.version)
        return admin_pb2.GetModelResponse(builds=[_model_build(r, with_manifest=True) for r in rows])

    # --- device classes ---

    @handle_errors
    async def ApplyClasses(self, request, context):  # noqa: N802
        """Replace the class set with a class file (validated whole first) and re-classify every device."""
        caller = await self.caller(context, Role.OPERATOR, "applying device classes")
        if len(request.yaml) > MAX_CLASS_FILE_CHARS:
            raise InvalidRequest(f"the class file is over {MAX_CLASS_FILE_CHARS // 1024} KiB")
        response = await classes.apply(self.s, request)
        if not request.dry_run:
            log.info(
                "%s applied %d class(es); %d device(s) changed class",
                caller.name,
                len(response.classes),
                response.devices_reclassified,
            )
            await evidence.plan_latest(self.s)
        return response

    @handle_errors
    async def ListClasses(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "listing device classes")
        return admin_pb2.ListClassesResponse(classes=await classes.listing(self.s))

    @handle_errors
    async def GetClass(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "reading device classes")
        for item in await classes.listing(self.s):
            if item.name == request.name:
                return item
        await classes.class_named(self.s, request.name)  # raises NotFoundError naming the classes
        raise NotFoundError(f"no device class {request.name!r}")

    # --- evidence and selection ---

    @handle_errors
    async def GetEvidence(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "reading evidence")
        check_name("model name", request.name)
        if request.version > MAX_VERSION:
            raise InvalidRequest(f"version must be at most {MAX_VERSION}")
        return await evidence.evidence(self.s, request.name, request.version)

    @handle_errors
    async def ExplainSelection(self, request, context):  # noqa: N802
        """Which variant of NAME:VERSION a class (or one device, with its own facts) gets, and why."""
        await self.caller(context, Role.VIEWER, "explaining a selection")
        s = self.s
        check_name("model name", request.name)
        if request.version > MAX_VERSION:
            raise InvalidRequest(f"version must be at most {MAX_VERSION}")
        if request.device_class and request.device_id:
            raise InvalidRequest("name a class or a device, not both")
        device = None
        if request.device_id:
            device = await s.db(s.store.get_device, request.device_id)
            if device is None or device.revoked_at is not None:
                raise NotFoundError(f"device {request.device_id!r} is not enrolled (or was revoked)")
        class_name = request.device_class or classes.spec.DEFAULT_CLASS.name
        choice, _ = await evidence.choose(s, request.name, request.version, class_name=class_name, device=device)
        return evidence.selection_message(choice)

    # --- rollouts ---

    @handle_errors
    async def StartRollout(self, request, context):  # noqa: N802
        """Start a rollout in waves; the controller takes it from there (see services.rollouts)."""
        caller = await self.caller(context, Role.OPERATOR, "starting a rollout")
        if request.version > MAX_VERSION:
            raise InvalidRequest(f"version must be at most {MAX_VERSION}")
        state = await self.rollouts.start(request, caller.name)
        return await self.rollouts.message(state)

    @handle_errors
    async def ListRollouts(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "listing rollouts")
        if request.fleet:
            check_name("fleet", request.fleet)
        rows = await self.s.db(self.s.store.list_rollouts, request.fleet or None, active_only=request.active_only)
        return admin_pb2.ListRolloutsResponse(
            rollouts=[await self.rollouts.message(rollout_json.from_json(row.state)) for row in rows]
        )

    @handle_errors
    async def GetRollout(self, request, context):  # noqa: N802
        await self.caller(context, Role.VIEWER, "reading rollouts")
        return await self.rollouts.message(await self.rollouts.load(request.rollout_id))

    @handle_errors
    async def ControlRollout(self, request, context):  # noqa: N802
        """pause, resume, abort or rollback a rollout; a command that does not fit its phase is refused."""
        caller = await self.caller(context, Role.OPERATOR, "controlling a rollout")
        state = await self.rollouts.control(request.rollout_id, request.action, caller.name)
        return await self.rollouts.message(state)

    # --- deployments ---

    @handle_errors
    async def Deploy(self, request, context):  # noqa: N802
        """Make one build the desired model of its task on one device or a whole fleet, and tell
        the devices that are online at once (the others get it after their next Welcome)."""
        caller = await self.caller(context, Role.OPERATOR, "deploying models")
        s = self.s
        check_name("model name", request.name)
        if request.version > MAX_VERSION:
            raise InvalidRequest(f"version must be at most {MAX_VERSION}")
        if bool(request.device_id) == bool(request.fleet):
            raise InvalidRequest("name exactly one target: a device id or a fleet")
        if request.device_id:
            device = await s.db(s.store.get_device, request.device_id)
            if device is None or device.revoked_at is not None:
                raise NotFoundError(f"device {request.device_id!r} is not enrolled (or was revoked)")
            targets = [device.device_id]
        else:
            check_name("fleet", request.fleet)
            rows = await s.db(s.store.list_devices, request.fleet)
            targets = [r.device_id for r in rows if r.revoked_at is None]
            if not targets:
                raise PreconditionFailed(f"fleet {request.fleet!r} has no enrolled devices; nothing was deployed")
        if request.variant:
            build = await self._resolve_build(request.name, request.version, request.variant)
            chosen = {device_id: build for device_id in targets}
            why = {device_id: "" for device_id in targets}  # the operator named it: nothing to explain
            refused: dict[str, str] = {}
        else:
            chosen, why, refused = await self._select_per_device(request.name, request.version, targets)
            if not chosen:
                raise PreconditionFailed(
                    "no variant complies on any target device; nothing was deployed: "
                    + "; ".join(f"{d}: {r}" for d, r in sorted(refused.items()))
                )
            build = next(iter(chosen.values()))
        generations = await s.db(
            s.store.set_desired,
            sorted(chosen),
            task=build.task,
            name=build.name,
            version=build.version,
            variant=build.variant,
            manifest_sha256=build.manifest_sha256,
            max_bytes=build.total_bytes,
            rollback=None,
            now=s.clock(),
            per_device={d: (b.variant, b.manifest_sha256, b.total_bytes) for d, b in chosen.items()},
        )
        sent = await push_desired(s, sorted(chosen))
        log.info("%s deployed %s:%d to %d device(s)", caller.name, build.name, build.version, len(chosen))
        assignments = []
        for device_id in targets:
            if device_id in refused:
                assignments.append(
                    admin_pb2.DeviceAssignment(device_id=device_id, reason=f"not deployed: {refused[device_id]}")
                )
                continue
            b = chosen[device_id]
            delivery = "sent" if device_id in sent else "offline: sent when it connects"
            assignments.append(
                admin_pb2.DeviceAssignment(
                    device_id=device_id,
                    model=common_pb2.ModelRef(
                        name=b.name, version=b.version, variant=b.variant, manifest_sha256=b.manifest_sha256
                    ),
                    generation=generations[device_id],
                    reason=f"{delivery}; {why[device_id]}" if why[device_id] else delivery,
                )
            )
        return admin_pb2.DeployResponse(assignments=assignments)

    async def _select_per_device(self, name: str, version: int, device_ids: list[str]):
        """The selector's build for each device (its class policy, its facts, its class's evidence):
        (device -> build, device -> why, device -> why nothing complies)."""
        s = self.s
        devices = [await s.db(s.store.get_device, device_id) for device_id in device_ids]
        choices, rows = await evidence.choose_for_devices(s, name, version, devices)
        chosen, why, refused = {}, {}, {}
        for device_id, choice in choices.items():
            if choice.chosen is None:
                refused[device_id] = choice.summary
                continue
            chosen[device_id] = next(r for r in rows if r.variant == choice.chosen)
            why[device_id] = choice.summary
        return chosen, why, refused

    async def _resolve_build(self, name: str, version: int, variant: str):
        """The build NAME:VERSION:VARIANT names (version 0: the latest). Raises NotFoundError."""
        rows = await evidence.version_builds(self.s, name, version)
        for row in rows:
            if row.variant == variant:
                return row
        variants = ", ".join(r.variant for r in rows)
        raise NotFoundError(f"model {name}:{rows[0].version} has no variant {variant!r} (it has {variants})")


def _check_chunk(chunk: admin_pb2.BlobChunk, first: admin_pb2.BlobChunk) -> None:
    if len(chunk.data) > MAX_ARTIFACT_CHUNK_BYTES:
        raise BlobTooLarge(f"a chunk of {len(chunk.data)} bytes is over the {MAX_ARTIFACT_CHUNK_BYTES} byte limit")
    if (chunk.sha256 and chunk.sha256 != first.sha256) or (
        chunk.total_bytes and chunk.total_bytes != first.total_bytes
    ):
        raise InvalidRequest(
            "a later chunk declares another sha256 or total_bytes than the first; upload one blob per call"
        )


def _publisher_key(row) -> admin_pb2.PublisherKey:
    key = admin_pb2.PublisherKey(key_id=row.key_id, public_key=row.raw_public_key, name=row.name)
    key.added_at.CopyFrom(timestamp(row.added_at))
    return key


def _model_build(row, *, with_manifest: bool) -> admin_pb2.ModelBuild:
    ref = common_pb2.ModelRef(
        name=row.name, version=row.version, variant=row.variant, manifest_sha256=row.manifest_sha256
    )
    build = admin_pb2.ModelBuild(
        ref=ref,
        task=row.task,
        total_bytes=row.total_bytes,
        publisher_key_id=row.publisher_key_id,
        manifest=row.manifest if with_manifest else b"",
    )
    build.published_at.CopyFrom(timestamp(row.published_at))
    return build


def _token_info(row) -> admin_pb2.OperatorToken:
    info = admin_pb2.OperatorToken(name=row.name, role=Role.parse(row.role).value)
    info.created_at.CopyFrom(timestamp(row.created_at))
    if row.revoked_at is not None:
        info.revoked_at.CopyFrom(timestamp(row.revoked_at))
    return info
