"""The store's desired state: which build each device should run, per task slot (mixed into ``Store``).

Invariants (besides those of ``store.py``):
- Every change of a device's desired rows bumps ``devices.desired_generation`` by one in the
  same transaction, so a generation names exactly one desired state.
- ``set_desired`` changes all the named devices or none: a revoked or unknown device refuses
  the whole call. Devices are locked in sorted order so concurrent calls cannot deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from controlplane.store import queries
from controlplane.store.errors import NotFound
from controlplane.store.queries import require_aware
from controlplane.store.rows import DesiredRow
from controlplane.store.schema import DesiredModel, Device


class DesiredStore:
    """Desired-state methods of ``Store``; they run on the transactions ``Store._transaction`` opens."""

    if TYPE_CHECKING:

        def _transaction(self, *, write: bool) -> AbstractContextManager[Connection]: ...

    def set_desired(
        self,
        device_ids: list[str],
        *,
        task: str,
        name: str,
        version: int,
        variant: str,
        manifest_sha256: str,
        max_bytes: int,
        rollback: bool | None,
        now: datetime,
        per_device: Mapping[str, tuple[str, str, int]] | None = None,
    ) -> dict[str, int]:
        """Make (name, version, variant) the desired build of ``task`` on every device; returns each
        device's new generation.

        ``per_device`` maps a device id to its own (variant, manifest_sha256, max_bytes), for a
        deployment whose variant the selector chose per device; other devices get ``variant``.

        ``rollback=None`` derives the flag per device inside the transaction: True where the slot
        holds a higher version of the same model (an explicit move back), else False.

        Raises:
            ValueError: no devices, or a naive ``now``.
            NotFound: a device is unknown or revoked (all of them are named); nothing is changed.
        """
        require_aware("now", now)
        wanted = sorted(set(device_ids))
        if not wanted:
            raise ValueError("set_desired needs at least one device")
        with self._transaction(write=True) as conn:
            rows = conn.execute(select(Device.device_id, Device.revoked_at).where(Device.device_id.in_(wanted))).all()
            usable = {row.device_id for row in rows if row.revoked_at is None}
            missing = [device_id for device_id in wanted if device_id not in usable]
            if missing:
                raise NotFound(f"device(s) {', '.join(missing)} are unknown or revoked; nothing was deployed")
            current = {
                row.device_id: row.version
                for row in conn.execute(
                    select(DesiredModel.device_id, DesiredModel.version).where(
                        DesiredModel.device_id.in_(wanted), DesiredModel.task == task, DesiredModel.name == name
                    )
                )
            }
            generations: dict[str, int] = {}
            for device_id in wanted:
                own_variant, own_manifest, own_max = (per_device or {}).get(
                    device_id, (variant, manifest_sha256, max_bytes)
                )
                values = {
                    "name": name,
                    "version": version,
                    "variant": own_variant,
                    "manifest_sha256": own_manifest,
                    "max_bytes": own_max,
                    "rollback": rollback if rollback is not None else version < current.get(device_id, 0),
                    "updated_at": now,
                }
                conn.execute(
                    update(Device)
                    .where(Device.device_id == device_id)
                    .values(desired_generation=Device.desired_generation + 1)
                )
                generation = int(
                    conn.execute(select(Device.desired_generation).where(Device.device_id == device_id)).scalar_one()
                )
                key = {"device_id": device_id, "task": task}
                statement = queries.insert_values(conn, DesiredModel, {**key, **values, "generation": generation})
                conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=[DesiredModel.device_id, DesiredModel.task],
                        set_={**values, "generation": generation},
                    )
                )
                generations[device_id] = generation
            return generations

    def get_desired(self, device_id: str) -> tuple[int, list[DesiredRow]]:
        """The device's desired generation and rows (by task); (0, []) for an unknown device."""
        with self._transaction(write=False) as conn:
            generation = conn.execute(
                select(Device.desired_generation).where(Device.device_id == device_id)
            ).scalar_one_or_none()
            if generation is None:
                return 0, []
            query = select(DesiredModel).where(DesiredModel.device_id == device_id).order_by(DesiredModel.task)
            return int(generation), [DesiredRow(**row) for row in conn.execute(query).mappings()]
