"""Rollouts on the server: the shell around the pure controller in ``controlplane.rollout``.

The controller decides; this module does what it says and tells it what happened:

- ``Assign``: the selector picks each device's variant (its class policy, its facts, its class's
  evidence); the desired state is set and pushed, then ``DeviceAssigned`` is fed back. A device
  whose desired slot already holds that build is not written again, so an Assign repeated after a
  crash updates nobody twice.
- ``MeasureGate``: canary and control cohorts are read from stored telemetry over the bake window
  (``Store.cohort``) and judged by ``controlplane.gates.evaluate``; the verdict is fed back.
- ``Revert``: each touched device gets its previous build back (marked rollback), or its slot
  removed when it had none.
- Device progress comes from the status reports devices send: the target build active means
  installed; a failed reconcile of the current generation means failed.
- ``Persist`` writes the whole state (``controlplane.rollout_json``); a finished rollout frees its
  (fleet, model) slot. The events of one tick are stepped together and the state written once
  before their actions run (a wave's device reports cost one write, not one each).

Invariants:
- Every change to a rollout runs under one lock, one rollout step at a time, and the state is
  persisted before the actions after it run (the controller puts ``Persist`` first).
- After a restart, ``recover``'s actions run for every active rollout before anything else, then a
  Tick for the timeouts that passed meanwhile (``run``).
- Times given to the controller are epoch seconds from ``Services.clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
from collections import deque
from collections.abc import Iterable, Mapping

from controlplane import gates, rollout, rollout_json
from controlplane.classes import DEFAULT_CLASS
from controlplane.errors import InvalidRequest, NotFoundError, PreconditionFailed
from controlplane.fleet import facts_from_dict, timestamp
from controlplane.services import evidence
from controlplane.services.context import Services
from controlplane.services.desired import push_desired
from controlplane.store import DeviceRow, ModelBuildRow
from protos.edgefleet.v1 import admin_pb2, common_pb2
from protos.limits import check_name

log = logging.getLogger("edgefleet.server.rollouts")

DEFAULT_WAVES = (1, 10, 50, 100)
WIRE_PHASES = {"created": "pending", "running": "wave_in_progress"}
ACTIONS = ("pause", "resume", "abort", "rollback")


def _epoch(at: dt.datetime) -> float:
    return at.timestamp()


def _time(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def _build(row: ModelBuildRow) -> rollout.Build:
    return rollout.Build(row.name, row.version, row.variant, row.manifest_sha256)


def device_labels(row: DeviceRow) -> dict[str, str]:
    """The labels a selector matches: the join token's, then the device's own reported ones."""
    return {**(row.labels or {}), **dict(facts_from_dict(row.facts).labels)}


def matches(row: DeviceRow, selector: Mapping[str, str]) -> bool:
    labels = device_labels(row)
    return all(labels.get(k) == v for k, v in selector.items())


def thresholds(message: admin_pb2.GateThresholds) -> gates.Thresholds:
    """The operator's gate limits; 0 / empty fields take the defaults. Raises InvalidRequest."""
    values: dict[str, object] = {}
    for name in (
        "max_install_failure_rate",
        "max_latency_p95_ratio",
        "max_confidence_drop",
        "max_error_rate_increase",
        "max_low_confidence_rate_increase",
    ):
        if getattr(message, name):
            values[name] = float(getattr(message, name))
    for wire, name in (("max_error_rate", "max_error_rate"), ("max_low_confidence_rate", "max_low_confidence_rate")):
        if getattr(message, wire):
            values[name] = float(getattr(message, wire))
    for name in ("max_crashes", "max_rollbacks", "min_requests", "min_devices"):
        if getattr(message, name):
            values[name] = int(getattr(message, name))
    if message.on_breach:
        values["on_breach"] = message.on_breach
    try:
        return gates.Thresholds(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidRequest(f"gate thresholds: {exc}") from exc


class RolloutService:
    """Starts rollouts, runs their controllers, answers operators' commands and queries."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.lock = asyncio.Lock()

    # --- operator entry points ---------------------------------------------------------------------

    async def start(self, request: admin_pb2.StartRolloutRequest, caller: str) -> rollout.RolloutState:
        s = self.s
        check_name("model name", request.name)
        check_name("fleet", request.fleet)
        if len(request.selector) > 16:
            raise InvalidRequest("a selector has at most 16 labels")
        rows = await evidence.version_builds(s, request.name, request.version)
        version = rows[0].version
        task = rows[0].task
        devices = [
            d
            for d in await s.db(s.store.list_devices, request.fleet)
            if d.revoked_at is None and matches(d, request.selector)
        ]
        if not devices:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(request.selector.items()))
            raise PreconditionFailed(
                f"no enrolled device of fleet {request.fleet!r} matches"
                + (f" the selector {labels}" if labels else "")
                + "; nothing was started"
            )
        try:
            spec = rollout.RolloutSpec(
                rollout_id=f"ro-{secrets.token_hex(5)}",
                fleet=request.fleet,
                model=request.name,
                version=version,
                waves=tuple(request.waves_percent) or DEFAULT_WAVES,
                bake_seconds=float(request.bake_seconds),
                max_parallel=int(request.max_parallel),
                step_timeout_seconds=float(request.step_timeout_seconds or 1800),
                thresholds=thresholds(request.gates),
                remeasure_seconds=s.config.rollout_remeasure_seconds,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        previous = {d.device_id: await self._current_build(d.device_id, task, request.name) for d in devices}
        members = {d.device_id: (d.device_class or DEFAULT_CLASS.name, previous[d.device_id]) for d in devices}
        now = s.clock()
        state = rollout.create(spec, members, _epoch(now))
        async with self.lock:
            await s.db(
                s.store.create_rollout,
                spec.rollout_id,
                fleet=spec.fleet,
                model=spec.model,
                version=spec.version,
                phase=str(state.phase),
                state=rollout_json.to_json(state),
                now=now,
            )
            await s.db(s.store.set_setting, f"rollout:{spec.rollout_id}:selector", _selector_text(request.selector))
            log.info(
                "%s started rollout %s of %s:%d on fleet %s", caller, spec.rollout_id, spec.model, version, spec.fleet
            )
            return await self._feed(state, rollout.Start())

    async def control(self, rollout_id: str, action: str, caller: str) -> rollout.RolloutState:
        if action not in ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; use one of {', '.join(ACTIONS)}")
        why = f"by {caller}"
        event = {
            "pause": rollout.Pause(why),
            "resume": rollout.Resume(),
            "abort": rollout.Abort(why),
            "rollback": rollout.Rollback(why),
        }[action]
        async with self.lock:
            state = await self.load(rollout_id)
            log.info("%s: %s rollout %s", caller, action, rollout_id)
            return await self._feed(state, event)

    async def load(self, rollout_id: str) -> rollout.RolloutState:
        if not rollout_id or len(rollout_id) > 64:
            raise InvalidRequest("a rollout id is 1 to 64 characters")
        row = await self.s.db(self.s.store.get_rollout, rollout_id)
        if row is None:
            raise NotFoundError(f"no rollout {rollout_id!r} (edgefleet rollouts list shows them)")
        return rollout_json.from_json(row.state)

    async def message(self, state: rollout.RolloutState) -> admin_pb2.Rollout:
        selector = await self.s.db(self.s.store.get_setting, f"rollout:{state.spec.rollout_id}:selector")
        message = rollout_message(state, _parse_selector(selector or ""))
        row = await self.s.db(self.s.store.get_rollout, state.spec.rollout_id)
        if row is not None:
            message.created_at.CopyFrom(timestamp(row.created_at))
        return message

    # --- the controller loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Recover every active rollout, then advance them every ``rollout_tick_seconds``."""
        await self.recover_all()
        while not stop.is_set():
            try:
                await self.advance_all()
            except Exception:  # noqa: BLE001 - one bad cycle must not stop every rollout
                log.exception("rollout controller cycle failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.s.config.rollout_tick_seconds)

    async def recover_all(self) -> None:
        async with self.lock:
            for row in await self.s.db(self.s.store.list_rollouts, active_only=True):
                state = rollout_json.from_json(row.state)
                now = _epoch(self.s.clock())
                state = await self._execute(state, rollout.recover(state, now))
                await self._feed(state, rollout.Tick())

    async def advance_all(self) -> None:
        for row in await self.s.db(self.s.store.list_rollouts, active_only=True):
            async with self.lock:
                fresh = await self.s.db(self.s.store.get_rollout, row.rollout_id)
                if fresh is None or fresh.active_slot is None:
                    continue
                await self._advance(rollout_json.from_json(fresh.state))

    async def _advance(self, state: rollout.RolloutState) -> rollout.RolloutState:
        """Feed what the devices reported, devices that joined, and a Tick."""
        return await self._feed_many(state, [*await self._device_events(state), rollout.Tick()])

    async def _device_events(self, state: rollout.RolloutState) -> list[rollout.Event]:
        s = self.s
        spec = state.spec
        events: list[rollout.Event] = []
        watching = {
            d.device_id: d
            for d in state.devices
            if d.status
            in (rollout.DeviceStatus.ASSIGNING, rollout.DeviceStatus.INSTALLING, rollout.DeviceStatus.REVERTING)
        }
        if watching:
            statuses = await s.db(s.store.device_statuses, list(watching))
            for device_id, record in watching.items():
                status = statuses.get(device_id)
                if status is None:
                    continue
                active = _active_build(status.active, spec.model)
                if record.status is rollout.DeviceStatus.REVERTING:
                    if record.previous is not None and active == record.previous:
                        events.append(rollout.DeviceReport(device_id, active))
                    continue
                if record.target is not None and active == record.target:
                    events.append(rollout.DeviceReport(device_id, active))
                    continue
                if status.phase != "FAILED" or record.status is not rollout.DeviceStatus.INSTALLING:
                    continue
                device = await s.db(s.store.get_device, device_id)
                if device is not None and status.generation == device.desired_generation:
                    events.append(rollout.DeviceReport(device_id, active, failed=True, reason=status.failure_reason))
        if state.phase in (rollout.Phase.RUNNING, rollout.Phase.BAKING, rollout.Phase.PAUSED):
            selector = _parse_selector(await s.db(s.store.get_setting, f"rollout:{spec.rollout_id}:selector") or "")
            known = {d.device_id for d in state.devices}
            joined = [
                device
                for device in await s.db(s.store.list_devices, spec.fleet)
                if device.device_id not in known
                and device.revoked_at is None
                and matches(device, selector)
                # not classified yet (no facts reported): it joins the rollout once it is
                and device.device_class is not None
            ]
            task = await self._task(spec) if joined else ""
            for device in joined:
                previous = await self._current_build(device.device_id, task, spec.model)
                events.append(rollout.DeviceJoined(device.device_id, device.device_class, previous))
        return events

    # --- feeding the controller and doing what it says ---------------------------------------------

    async def _feed(self, state: rollout.RolloutState, event: rollout.Event) -> rollout.RolloutState:
        """Step the controller with ``event`` and run its actions and every event they cause."""
        return await self._feed_many(state, [event])

    async def _feed_many(self, state: rollout.RolloutState, events: Iterable[rollout.Event]) -> rollout.RolloutState:
        """Step the controller through ``events``, then through the events their actions cause.

        Each round steps every queued event first, persists the resulting state once, then runs the
        round's other actions in order: every action still runs after a state that names it is on
        disk, but a wave of N device reports costs one write, not N (the state holds every device).
        """
        pending: deque[rollout.Event] = deque(events)
        while pending:
            changed = False
            actions: list[rollout.Action] = []
            while pending:
                state, step_actions = rollout.step(state, pending.popleft(), _epoch(self.s.clock()))
                for action in step_actions:
                    if isinstance(action, rollout.Persist):
                        changed = True
                    else:
                        actions.append(action)
            if changed:
                await self._persist(state)
            state = await self._execute(state, actions, pending)
        return state

    async def _execute(
        self,
        state: rollout.RolloutState,
        actions: Iterable[rollout.Action],
        pending: deque[rollout.Event] | None = None,
    ) -> rollout.RolloutState:
        feed = pending if pending is not None else deque()
        for action in actions:
            match action:
                case rollout.Persist(state=persisted):
                    await self._persist(persisted)
                case rollout.Assign(device_ids=device_ids):
                    feed.extend(await self._assign(state, device_ids))
                case rollout.MeasureGate():
                    feed.append(await self._measure(state, action))
                case rollout.Revert(device_records=records):
                    feed.extend(await self._revert(state, records))
                case rollout.Notify(message=text):
                    log.info("rollout %s: %s", state.spec.rollout_id, text)
        if pending is None:
            while feed:
                state = await self._feed(state, feed.popleft())
        return state

    async def _persist(self, state: rollout.RolloutState) -> None:
        await self.s.db(
            self.s.store.save_rollout,
            state.spec.rollout_id,
            phase=str(state.phase),
            state=rollout_json.to_json(state),
            active=not state.terminal,
            now=self.s.clock(),
        )

    async def _task(self, spec: rollout.RolloutSpec) -> str:
        rows = await self.s.db(self.s.store.get_builds, spec.model, spec.version)
        if not rows:
            raise NotFoundError(f"model {spec.model}:{spec.version} has no builds any more")
        return rows[0].task

    async def _current_build(self, device_id: str, task: str, name: str) -> rollout.Build | None:
        """The build of model ``name`` in the device's ``task`` slot now, or None."""
        _, rows = await self.s.db(self.s.store.get_desired, device_id)
        for row in rows:
            if row.task == task and row.name == name:
                return rollout.Build(row.name, row.version, row.variant, row.manifest_sha256)
        return None

    async def _assign(self, state: rollout.RolloutState, device_ids: Iterable[str]) -> list[rollout.Event]:
        s = self.s
        spec = state.spec
        devices = [d for d in [await s.db(s.store.get_device, i) for i in device_ids] if d is not None]
        events: list[rollout.Event] = []
        usable = [d for d in devices if d.revoked_at is None]
        for d in devices:
            if d.revoked_at is not None:
                events.append(rollout.DeviceReport(d.device_id, None, failed=True, reason="the device was revoked"))
        if not usable:
            return events
        choices, rows = await evidence.choose_for_devices(s, spec.model, spec.version, usable)
        by_variant = {row.variant: row for row in rows}
        task = rows[0].task
        writes: dict[str, tuple[str, str, int]] = {}
        targets: dict[str, rollout.Build] = {}
        for d in usable:
            choice = choices[d.device_id]
            if choice.chosen is None:
                events.append(rollout.DeviceReport(d.device_id, None, failed=True, reason=choice.summary))
                continue
            row = by_variant[choice.chosen]
            targets[d.device_id] = _build(row)
            if await self._current_build(d.device_id, task, spec.model) != targets[d.device_id]:
                writes[d.device_id] = (row.variant, row.manifest_sha256, row.total_bytes)
        if writes:
            first = by_variant[next(iter(writes.values()))[0]]
            await s.db(
                s.store.set_desired,
                sorted(writes),
                task=task,
                name=spec.model,
                version=spec.version,
                variant=first.variant,
                manifest_sha256=first.manifest_sha256,
                max_bytes=first.total_bytes,
                rollback=None,
                now=s.clock(),
                per_device=writes,
            )
            await push_desired(s, sorted(writes))
        events += [rollout.DeviceAssigned(device_id, target) for device_id, target in sorted(targets.items())]
        return events

    async def _revert(
        self, state: rollout.RolloutState, records: Iterable[rollout.DeviceRecord]
    ) -> list[rollout.Event]:
        s = self.s
        spec = state.spec
        task = await self._task(spec)
        events: list[rollout.Event] = []
        touched: list[str] = []
        now = s.clock()
        for record in records:
            if record.previous is None:
                await s.db(s.store.clear_desired, [record.device_id], task=task, name=spec.model, now=now)
                events.append(rollout.DeviceReport(record.device_id, None))
            elif await self._current_build(record.device_id, task, spec.model) != record.previous:
                p = record.previous
                await s.db(
                    s.store.set_desired,
                    [record.device_id],
                    task=task,
                    name=p.name,
                    version=p.version,
                    variant=p.variant,
                    manifest_sha256=p.manifest_sha256,
                    max_bytes=await self._size(p),
                    rollback=True,
                    now=now,
                )
            touched.append(record.device_id)
        await push_desired(s, touched)
        return events

    async def _size(self, build: rollout.Build) -> int:
        for row in await self.s.db(self.s.store.get_builds, build.name, build.version):
            if row.variant == build.variant:
                return row.total_bytes
        raise NotFoundError(f"build {build} is no longer published; it cannot be restored")

    async def _measure(self, state: rollout.RolloutState, action: rollout.MeasureGate) -> rollout.GateResult:
        s = self.s
        spec = state.spec
        since, until = _time(action.window_start), _time(max(action.window_end, action.window_start + 1))
        canary = await s.db(
            s.store.cohort, action.canary_device_ids, model=spec.model, since=since, until=until, version=spec.version
        )
        control = await s.db(
            s.store.cohort,
            action.control_device_ids,
            model=spec.model,
            since=since,
            until=until,
            exclude_version=spec.version,
        )
        failed = len(action.failed_device_ids)
        canary_stats = _stats(canary, installs=len(action.canary_device_ids) + failed, install_failures=failed)
        control_stats = _stats(control) if action.control_device_ids else None
        verdict = gates.evaluate(canary_stats, control_stats, spec.thresholds)
        return rollout.GateResult(action.wave, verdict.verdict, tuple(verdict.reasons), dict(verdict.numbers))


def _stats(cohort, *, installs: int = 0, install_failures: int = 0) -> gates.CohortStats:
    requests = cohort.requests
    measured_confidence = cohort.confidence_sum > 0 or cohort.low_confidence > 0
    return gates.CohortStats(
        devices=cohort.devices_with_traffic,
        requests=requests,
        errors=cohort.errors,
        latency_p95_ms=cohort.latency.quantile(0.95) if cohort.latency.count else None,
        mean_confidence=cohort.confidence_sum / requests if requests and measured_confidence else None,
        low_confidence_rate=cohort.low_confidence / requests if requests and measured_confidence else None,
        install_failures=install_failures,
        installs=installs,
        crashes=cohort.crashes,
        rollbacks=cohort.rollbacks,
    )


def _active_build(active: list[dict], name: str) -> rollout.Build | None:
    """The build of model ``name`` in a stored status report's active list (ActiveModel dicts)."""
    for entry in active:
        model = entry.get("model") or {}
        if model.get("name") == name:
            try:
                return rollout.Build(
                    model["name"],
                    int(model.get("version", 0)),
                    model.get("variant", ""),
                    model.get("manifest_sha256", ""),
                )
            except (KeyError, ValueError):
                return None
    return None


def _selector_text(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _parse_selector(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


def rollout_message(state: rollout.RolloutState, selector: Mapping[str, str]) -> admin_pb2.Rollout:
    """The admin view of a rollout: phase, progress per wave and class, decisions with their numbers."""
    spec = state.spec
    message = admin_pb2.Rollout(
        rollout_id=spec.rollout_id,
        model=common_pb2.ModelRef(name=spec.model, version=spec.version),
        fleet=spec.fleet,
        state=WIRE_PHASES.get(str(state.phase), str(state.phase)),
        current_wave=state.wave,
        waves_percent=list(spec.waves),
        reason=state.reason or state.paused_reason,
        selector=dict(selector),
        bake_seconds=int(spec.bake_seconds),
        max_parallel=spec.max_parallel,
    )
    cells: dict[tuple[int, str], list[rollout.DeviceRecord]] = {}
    for record in state.devices:
        cells.setdefault((record.wave, record.device_class), []).append(record)
    done = (rollout.DeviceStatus.INSTALLED,)
    finished = (rollout.DeviceStatus.FAILED, rollout.DeviceStatus.REVERTED)
    for (wave, device_class), records in sorted(cells.items()):
        message.progress.append(
            admin_pb2.WaveProgress(
                wave=wave,
                percent=spec.waves[wave] if wave < len(spec.waves) else 100,
                device_class=device_class,
                targeted=len(records),
                updated=sum(1 for r in records if r.status in done),
                failed=sum(1 for r in records if r.status is rollout.DeviceStatus.FAILED),
                pending=sum(1 for r in records if r.status not in (*done, *finished)),
                reverted=sum(1 for r in records if r.status is rollout.DeviceStatus.REVERTED),
            )
        )
    for decision in state.decisions:
        entry = admin_pb2.GateDecision(wave=decision.wave, verdict=decision.verdict, reasons=list(decision.reasons))
        entry.at.CopyFrom(timestamp(_time(decision.at)))
        for key, value in decision.numbers.items():
            if key.startswith("control_"):
                entry.control[key.removeprefix("control_")] = value
            else:
                entry.canary[key.removeprefix("canary_")] = value
        message.decisions.append(entry)
    message.updated_at.CopyFrom(timestamp(_time(state.updated_at)))
    return message
