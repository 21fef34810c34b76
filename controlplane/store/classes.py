"""The store's device classes, each device's class, and benchmark jobs (mixed into ``Store``).

Invariants (besides those of ``store.py``):
- ``replace_classes`` swaps the whole class set and re-labels the devices it is given in one
  transaction: a reader sees the old classes with the old labels or the new with the new.
- A benchmark job belongs to one device. ``complete_job`` accepts a result only from that device and
  only for a job that exists; a second result for a finished job changes nothing (a device re-sends
  a stored result when the job is given again after a reconnect).
- Job states only move forward: pending -> done, pending -> expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection

from controlplane.store.errors import NotFound
from controlplane.store.queries import require_aware
from controlplane.store.rows import ClassRow, JobRow
from controlplane.store.schema import BenchmarkJob, Device, DeviceClass

JOB_STATES = ("pending", "done", "expired")


class ClassStore:
    """Class and job methods of ``Store``; they run on the transactions ``Store._transaction`` opens."""

    if TYPE_CHECKING:

        def _transaction(self, *, write: bool) -> AbstractContextManager[Connection]: ...

    # --- classes -------------------------------------------------------------------------------------

    def replace_classes(
        self, classes: Sequence[tuple[str, int, Mapping[str, Any]]], assignments: Mapping[str, str], now: datetime
    ) -> int:
        """Make ``classes`` ((name, priority, spec) each) the whole class set and set each device in
        ``assignments`` (device id -> class name) to its class; returns how many devices changed class.

        Unknown device ids in ``assignments`` are ignored (a device may have been removed meanwhile).
        """
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            conn.execute(delete(DeviceClass))
            if classes:
                conn.execute(
                    insert(DeviceClass),
                    [
                        {"name": name, "priority": priority, "spec": dict(spec), "updated_at": now}
                        for name, priority, spec in classes
                    ],
                )
            current = dict(conn.execute(select(Device.device_id, Device.device_class)).all())
            changed = 0
            for device_id, name in sorted(assignments.items()):
                if device_id in current and current[device_id] != name:
                    conn.execute(update(Device).where(Device.device_id == device_id).values(device_class=name))
                    changed += 1
            return changed

    def list_classes(self) -> list[ClassRow]:
        """The applied classes in matching order (priority)."""
        with self._transaction(write=False) as conn:
            query = select(DeviceClass).order_by(DeviceClass.priority, DeviceClass.name)
            return [ClassRow(**row) for row in conn.execute(query).mappings()]

    def set_device_class(self, device_id: str, name: str) -> bool:
        """Set the device's class; returns whether it changed. Raises NotFound for an unknown device."""
        with self._transaction(write=True) as conn:
            current = conn.execute(select(Device.device_class).where(Device.device_id == device_id)).one_or_none()
            if current is None:
                raise NotFound(f"no device {device_id!r}")
            if current[0] == name:
                return False
            conn.execute(update(Device).where(Device.device_id == device_id).values(device_class=name))
            return True

    def class_counts(self) -> dict[str, int]:
        """Number of devices (not revoked) in each class; devices never classified are under ""."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(
                select(Device.device_class, func.count())
                .where(Device.revoked_at.is_(None))
                .group_by(Device.device_class)
            ).all()
            return {name or "": int(count) for name, count in rows}

    # --- benchmark jobs ------------------------------------------------------------------------------

    def create_jobs(self, jobs: Iterable[Mapping[str, Any]], now: datetime) -> list[JobRow]:
        """Insert pending jobs (dicts with job_id, device_id, name, version, variant, manifest_sha256,
        device_class, deadline); returns them as rows."""
        require_aware("now", now)
        values = [{**job, "state": "pending", "created_at": now, "completed_at": None, "result": None} for job in jobs]
        if not values:
            return []
        for job in values:
            require_aware("deadline", job["deadline"])
        with self._transaction(write=True) as conn:
            conn.execute(insert(BenchmarkJob), values)
        return [JobRow(**job) for job in values]

    def jobs_for_model(self, name: str, version: int) -> list[JobRow]:
        """Every job for builds of (name, version), oldest first."""
        with self._transaction(write=False) as conn:
            query = (
                select(BenchmarkJob)
                .where(BenchmarkJob.name == name, BenchmarkJob.version == version)
                .order_by(BenchmarkJob.created_at, BenchmarkJob.job_id)
            )
            return [JobRow(**row) for row in conn.execute(query).mappings()]

    def pending_jobs(self, device_id: str, now: datetime) -> list[JobRow]:
        """The device's jobs still waiting for a result whose deadline has not passed, oldest first."""
        require_aware("now", now)
        with self._transaction(write=False) as conn:
            query = (
                select(BenchmarkJob)
                .where(
                    BenchmarkJob.device_id == device_id,
                    BenchmarkJob.state == "pending",
                    BenchmarkJob.deadline > now,
                )
                .order_by(BenchmarkJob.created_at, BenchmarkJob.job_id)
            )
            return [JobRow(**row) for row in conn.execute(query).mappings()]

    def complete_job(
        self, job_id: str, device_id: str, result: Mapping[str, Any], now: datetime
    ) -> tuple[JobRow, bool]:
        """Record ``result`` for the device's job; returns the job and whether this call recorded it.

        A job that is already done or expired is returned unchanged (False).

        Raises:
            NotFound: no job ``job_id`` was given to ``device_id``.
        """
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            row = (
                conn.execute(
                    select(BenchmarkJob).where(BenchmarkJob.job_id == job_id, BenchmarkJob.device_id == device_id)
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                raise NotFound(f"device {device_id!r} was never given job {job_id!r}")
            if row["state"] != "pending":
                return JobRow(**row), False
            values = {"state": "done", "result": dict(result), "completed_at": now}
            conn.execute(
                update(BenchmarkJob)
                .where(BenchmarkJob.job_id == job_id, BenchmarkJob.state == "pending")
                .values(**values)
            )
            return JobRow(**{**row, **values}), True

    def expire_jobs(self, now: datetime) -> int:
        """Mark pending jobs whose deadline has passed as expired; returns how many."""
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            result = conn.execute(
                update(BenchmarkJob)
                .where(BenchmarkJob.state == "pending", BenchmarkJob.deadline <= now)
                .values(state="expired")
            )
            return int(result.rowcount or 0)
