"""The store's rollouts, the desired-row removal rollbacks need, and cohort telemetry for gates
(mixed into ``Store``).

Invariants (besides those of ``store.py``):
- One active rollout per (fleet, model): ``create_rollout`` is refused with ``Conflict`` when one
  exists, decided by the unique ``active_slot`` index, not by a read-then-write.
- ``save_rollout`` writes the whole controller state; a finished rollout frees its slot.
- ``clear_desired`` removes a task slot only where it still holds the named model, and bumps the
  device's generation in the same transaction, like every desired-state change.
- ``cohort`` sums telemetry over a set of devices and a time window; it never returns per-device
  rows, so a gate sees cohorts, not individuals.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from controlplane.store.errors import Conflict, NotFound
from controlplane.store.queries import require_aware
from controlplane.store.rows import RolloutRow
from controlplane.store.schema import DesiredModel, Device, DeviceEvent, ModelMinute, RolloutRecord
from protos.histogram import Histogram

CRASH_EVENTS = ("AGENT_CRASH_RECOVERED",)
ROLLBACK_EVENTS = ("ROLLED_BACK",)


@dataclass(frozen=True)
class CohortTelemetry:
    """Telemetry of a set of devices for one model over a window (sums, a merged histogram)."""

    devices_with_traffic: int
    requests: int
    errors: int
    confidence_sum: float
    low_confidence: int
    latency: Histogram
    crashes: int
    rollbacks: int


class RolloutStore:
    """Rollout methods of ``Store``; they run on the transactions ``Store._transaction`` opens."""

    if TYPE_CHECKING:

        def _transaction(self, *, write: bool) -> AbstractContextManager[Connection]: ...

    def create_rollout(
        self, rollout_id: str, *, fleet: str, model: str, version: int, phase: str, state: str, now: datetime
    ) -> RolloutRow:
        """Store a new, active rollout. Raises Conflict when (fleet, model) has an active rollout."""
        require_aware("now", now)
        values = {
            "rollout_id": rollout_id,
            "fleet": fleet,
            "model": model,
            "version": version,
            "phase": phase,
            "state": state,
            "active_slot": f"{fleet}/{model}",
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self._transaction(write=True) as conn:
                conn.execute(insert(RolloutRecord).values(**values))
        except IntegrityError as exc:
            raise Conflict(
                f"fleet {fleet!r} already has an active rollout of {model!r}; pause, abort or wait for it first"
            ) from exc
        return RolloutRow(**values)

    def save_rollout(self, rollout_id: str, *, phase: str, state: str, active: bool, now: datetime) -> None:
        """Replace the rollout's state; ``active=False`` frees its (fleet, model) slot. Raises NotFound."""
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            row = conn.execute(
                select(RolloutRecord.fleet, RolloutRecord.model).where(RolloutRecord.rollout_id == rollout_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            conn.execute(
                update(RolloutRecord)
                .where(RolloutRecord.rollout_id == rollout_id)
                .values(
                    phase=phase,
                    state=state,
                    updated_at=now,
                    active_slot=f"{row.fleet}/{row.model}" if active else None,
                )
            )

    def get_rollout(self, rollout_id: str) -> RolloutRow | None:
        with self._transaction(write=False) as conn:
            row = (
                conn.execute(select(RolloutRecord).where(RolloutRecord.rollout_id == rollout_id))
                .mappings()
                .one_or_none()
            )
            return None if row is None else RolloutRow(**row)

    def list_rollouts(self, fleet: str | None = None, *, active_only: bool = False) -> list[RolloutRow]:
        """Rollouts, newest first."""
        query = select(RolloutRecord).order_by(RolloutRecord.created_at.desc(), RolloutRecord.rollout_id)
        if fleet is not None:
            query = query.where(RolloutRecord.fleet == fleet)
        if active_only:
            query = query.where(RolloutRecord.active_slot.is_not(None))
        with self._transaction(write=False) as conn:
            return [RolloutRow(**row) for row in conn.execute(query).mappings()]

    def clear_desired(self, device_ids: Iterable[str], *, task: str, name: str, now: datetime) -> dict[str, int]:
        """Remove the ``task`` slot of each device where it holds model ``name``; returns the new
        generation of each device that changed (unknown devices and other models are left alone)."""
        require_aware("now", now)
        generations: dict[str, int] = {}
        with self._transaction(write=True) as conn:
            for device_id in sorted(set(device_ids)):
                removed = conn.execute(
                    delete(DesiredModel).where(
                        DesiredModel.device_id == device_id, DesiredModel.task == task, DesiredModel.name == name
                    )
                ).rowcount
                if not removed:
                    continue
                conn.execute(
                    update(Device)
                    .where(Device.device_id == device_id)
                    .values(desired_generation=Device.desired_generation + 1)
                )
                generations[device_id] = int(
                    conn.execute(select(Device.desired_generation).where(Device.device_id == device_id)).scalar_one()
                )
        return generations

    def cohort(
        self,
        device_ids: Iterable[str],
        *,
        model: str,
        since: datetime,
        until: datetime,
        version: int | None = None,
        exclude_version: int | None = None,
    ) -> CohortTelemetry:
        """Telemetry of ``device_ids`` for ``model`` (only ``version``, or any but ``exclude_version``)
        in the minutes from ``since`` (inclusive) to ``until`` (exclusive), and their crash and
        rollback events in the same window."""
        require_aware("since", since)
        require_aware("until", until)
        ids = sorted(set(device_ids))
        histogram = Histogram()
        requests = errors = low = 0
        confidence = 0.0
        with_traffic: set[str] = set()
        crashes = rollbacks = 0
        if ids:
            query = select(ModelMinute).where(
                ModelMinute.device_id.in_(ids),
                ModelMinute.name == model,
                ModelMinute.minute >= _minute(since),
                ModelMinute.minute < until,
            )
            if version is not None:
                query = query.where(ModelMinute.version == version)
            if exclude_version is not None:
                query = query.where(ModelMinute.version != exclude_version)
            with self._transaction(write=False) as conn:
                for row in conn.execute(query).mappings():
                    requests += row["requests"]
                    errors += row["errors"]
                    confidence += row["confidence_sum"]
                    low += row["low_confidence"]
                    if row["requests"]:
                        with_traffic.add(row["device_id"])
                    histogram = histogram.merge(
                        Histogram(
                            counts=list(row["latency_counts"]),
                            sum_ms=row["latency_sum_ms"],
                            max_ms=row["latency_max_ms"],
                        )
                    )
                events = conn.execute(
                    select(DeviceEvent.kind, func.count())
                    .where(
                        DeviceEvent.device_id.in_(ids),
                        DeviceEvent.at >= since,
                        DeviceEvent.at < until,
                        DeviceEvent.kind.in_(CRASH_EVENTS + ROLLBACK_EVENTS),
                    )
                    .group_by(DeviceEvent.kind)
                ).all()
            for kind, count in events:
                if kind in CRASH_EVENTS:
                    crashes += int(count)
                else:
                    rollbacks += int(count)
        return CohortTelemetry(
            devices_with_traffic=len(with_traffic),
            requests=requests,
            errors=errors,
            confidence_sum=confidence,
            low_confidence=low,
            latency=histogram,
            crashes=crashes,
            rollbacks=rollbacks,
        )


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)
