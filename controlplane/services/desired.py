"""Desired state on the wire: what a device is told to run, and what it may download because of it.

Invariants:
- A DesiredState always carries every desired row of the device and the device's current
  generation, so the agent can treat it as the whole truth (equal generation: no-op).
- A device may fetch only the manifests of builds in its own desired state or of its pending
  benchmark jobs, and only the blobs those manifests list; the sets are read from the store at every call, so a new
  deployment takes effect at once and nothing is cached past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from controlplane.errors import PermissionDenied
from controlplane.fleet import timestamp
from controlplane.services.context import Services
from controlplane.store import DesiredRow, ModelBuildRow
from protos.edgefleet.v1 import agent_pb2, bundle_pb2, common_pb2

log = logging.getLogger("edgefleet.server.desired")


def model_ref(row: DesiredRow) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(
        name=row.name, version=row.version, variant=row.variant, manifest_sha256=row.manifest_sha256
    )


def desired_message(generation: int, rows: Sequence[DesiredRow], services: Services) -> agent_pb2.ControlMessage:
    """The ControlMessage carrying a device's whole desired state."""
    state = agent_pb2.DesiredState(
        generation=generation,
        models=[
            agent_pb2.DesiredModel(task=r.task, model=model_ref(r), max_bytes=r.max_bytes, rollback=r.rollback)
            for r in rows
        ],
    )
    state.issued_at.CopyFrom(timestamp(services.clock()))
    return agent_pb2.ControlMessage(desired=state)


async def push_desired(services: Services, device_ids: Sequence[str]) -> set[str]:
    """Queue the current desired state on the open session of each device; returns the devices it went to.

    A full outbox is logged and skipped: the device gets the state again after its next Welcome.
    """
    sent: set[str] = set()
    for device_id in device_ids:
        handle = services.presence.session(device_id)
        if handle is None:
            continue
        generation, rows = await services.db(services.store.get_desired, device_id)
        try:
            handle.outbox.put_nowait(desired_message(generation, rows, services))
        except asyncio.QueueFull:
            log.warning("outbox of %s is full; it gets generation %d when it reconnects", device_id, generation)
            continue
        sent.add(device_id)
    return sent


async def desired_builds(services: Services, device_id: str) -> list[ModelBuildRow]:
    """The published builds the device may fetch: those in its desired state and those of its
    benchmark jobs still waiting for an answer."""
    _, rows = await services.db(services.store.get_desired, device_id)
    wanted = [(r.name, r.version, r.variant, r.manifest_sha256) for r in rows]
    jobs = await services.db(services.store.pending_jobs, device_id, services.clock())
    wanted += [(j.name, j.version, j.variant, j.manifest_sha256) for j in jobs]
    builds = []
    for name, version, variant, manifest_sha256 in dict.fromkeys(wanted):
        variants = await services.db(services.store.get_builds, name, version)
        builds += [b for b in variants if b.variant == variant and b.manifest_sha256 == manifest_sha256]
    return builds


async def desired_build(services: Services, device_id: str, ref: common_pb2.ModelRef) -> ModelBuildRow:
    """The build ``ref`` names, if it is in the device's desired state. Raises PermissionDenied."""
    for build in await desired_builds(services, device_id):
        if (build.name, build.version, build.variant) == (ref.name, ref.version, ref.variant) and (
            not ref.manifest_sha256 or ref.manifest_sha256 == build.manifest_sha256
        ):
            return build
    raise PermissionDenied(
        f"model {ref.name}:{ref.version} variant {ref.variant!r} is not part of this device's desired state "
        "or of a benchmark job it was given"
    )


async def allowed_blob_size(services: Services, device_id: str, sha256: str) -> int:
    """The size the manifests give blob ``sha256``, if a desired build of the device lists it.

    Raises:
        PermissionDenied: no build in the device's desired state lists the blob.
    """
    for build in await desired_builds(services, device_id):
        for entry in bundle_pb2.BundleManifest.FromString(build.manifest).files:
            if entry.sha256 == sha256:
                return entry.size_bytes
    raise PermissionDenied(f"blob {sha256} is not part of a build this device was told to install")
