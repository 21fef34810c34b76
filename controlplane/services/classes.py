"""Device classes on the server: applying a class file, and classifying devices when their facts change.

Invariants:
- A class file is validated whole (``controlplane.classes``) before anything changes; an invalid file
  changes nothing and the error names the line.
- Every device has the class its current facts match under the current classes: ``apply`` re-labels
  every device in the same transaction that swaps the classes, and a device is re-labelled whenever it
  reports facts. Both run under ``Services.class_lock``, so a facts report cannot interleave with an
  apply and leave a device labelled by the old classes.
- A device that matches no class is in the built-in ``default`` class (no budgets, most accurate).
"""

from __future__ import annotations

import logging

from controlplane import classes as spec
from controlplane.errors import InvalidRequest, NotFoundError
from controlplane.fleet import facts_from_dict
from controlplane.services.context import Services
from protos.edgefleet.v1 import admin_pb2, common_pb2

log = logging.getLogger("edgefleet.server.classes")


async def current_classes(s: Services) -> list[spec.ClassSpec]:
    """The applied classes in matching order, the default class last."""
    rows = await s.db(s.store.list_classes)
    return spec.effective_classes([spec.from_dict(row.spec) for row in rows])


async def class_named(s: Services, name: str) -> spec.ClassSpec:
    """The class called ``name``. Raises NotFoundError naming the classes there are."""
    classes = await current_classes(s)
    for candidate in classes:
        if candidate.name == name:
            return candidate
    raise NotFoundError(f"no device class {name!r}; classes: {', '.join(c.name for c in classes)}")


async def apply(s: Services, request: admin_pb2.ApplyClassesRequest) -> admin_pb2.ApplyClassesResponse:
    """Validate the class file, re-classify every device, and (unless dry_run) store both at once."""
    try:
        specs = spec.parse_class_file(request.yaml)
    except spec.ClassFileError as exc:
        raise InvalidRequest(f"class file rejected, nothing applied: {exc}") from exc
    effective = spec.effective_classes(specs)
    async with s.class_lock:
        devices = [d for d in await s.db(s.store.list_devices) if d.revoked_at is None]
        facts = {d.device_id: facts_from_dict(d.facts) for d in devices}
        assignments = {device_id: spec.classify(effective, f)[0] for device_id, f in facts.items()}
        warnings = spec.overlap_warnings(effective, facts)
        changed = sum(1 for d in devices if (d.device_class or "") != assignments[d.device_id])
        if not request.dry_run:
            changed = await s.db(
                s.store.replace_classes,
                [(c.name, c.priority, spec.to_dict(c)) for c in specs],
                assignments,
                s.clock(),
            )
    counts: dict[str, int] = {}
    for name in assignments.values():
        counts[name] = counts.get(name, 0) + 1
    overlapping = _overlaps(effective, facts)
    return admin_pb2.ApplyClassesResponse(
        classes=[spec.to_proto(c, counts.get(c.name, 0), overlapping.get(c.name, ())) for c in effective],
        warnings=warnings,
        devices_reclassified=changed,
    )


def _overlaps(classes: list[spec.ClassSpec], facts: dict[str, common_pb2.DeviceFacts]) -> dict[str, list[str]]:
    """For each class, the other classes that also match one of its devices."""
    found: dict[str, set[str]] = {}
    for device_facts in facts.values():
        first, others = spec.classify(classes, device_facts)
        for other in others:
            found.setdefault(first, set()).add(other)
            found.setdefault(other, set()).add(first)
    return {name: sorted(names) for name, names in found.items()}


async def listing(s: Services) -> list[admin_pb2.DeviceClass]:
    classes = await current_classes(s)
    counts = await s.db(s.store.class_counts)
    return [spec.to_proto(c, counts.get(c.name, 0)) for c in classes]


async def classify(s: Services, device_id: str, facts: common_pb2.DeviceFacts) -> str:
    """The class ``facts`` put the device in now (called with the class lock held)."""
    classes = await current_classes(s)
    name, others = spec.classify(classes, facts)
    if others:
        log.info("device %s matches classes %s too; first match wins: %s", device_id, ", ".join(others), name)
    return name
