"""Devices: enrollment uses a join token exactly once, and later writes only move state forward."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import event

from controlplane.store import AlreadyExists, Conflict, DeviceRow, NotFound, Store, StoreError

from .sample import FLEET, T0, device, enroll, join_token

RACERS = 8


def _race(calls: list[Callable[[], DeviceRow]]) -> list[DeviceRow | StoreError]:
    """Run the calls at the same moment on their own threads; each one's row or store error."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], DeviceRow]) -> DeviceRow | StoreError:
        barrier.wait(timeout=30)
        try:
            return call()
        except StoreError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls, timeout=60))


def test_enrollment_uses_the_token_and_creates_the_device(store: Store) -> None:
    """Enrolling marks the join token used by the device and stores the device as given."""
    join_token(store, "jt-1")
    row = enroll(store, "jt-1", "gw-7", now=T0 + timedelta(minutes=1))
    assert store.get_device("gw-7") == row
    assert (row.fleet, row.labels, row.facts, row.agent_version) == (
        FLEET,
        {"site": "berlin"},
        {"arch": "aarch64"},
        "0.1.0",
    )
    assert row.enrolled_at == row.facts_updated_at == T0 + timedelta(minutes=1)
    assert (row.revoked, row.connected, row.desired_generation) == (False, False, 0)
    token = store.get_join_token("jt-1")
    assert token is not None and (token.used_at, token.used_by_device) == (T0 + timedelta(minutes=1), "gw-7")


def test_second_use_of_a_token_conflicts_and_creates_nothing(store: Store) -> None:
    """A used join token raises Conflict naming the device that used it, and no second device appears."""
    device(store, "gw-1")
    with pytest.raises(Conflict, match="'jt-gw-1' was already used by device 'gw-1'"):
        enroll(store, "jt-gw-1", "gw-2")
    assert [row.device_id for row in store.list_devices()] == ["gw-1"]


def test_expired_token_conflicts(store: Store) -> None:
    """A join token at or past its expiry raises Conflict and stays unused."""
    join_token(store, "jt-1", ttl=timedelta(minutes=10))
    with pytest.raises(Conflict, match="expired"):
        enroll(store, "jt-1", "gw-1", now=T0 + timedelta(minutes=10))
    token = store.get_join_token("jt-1")
    assert token is not None and not token.used
    assert store.get_device("gw-1") is None


def test_unknown_token_is_not_found(store: Store) -> None:
    """Enrolling with a token id that does not exist raises NotFound naming it."""
    with pytest.raises(NotFound, match="join token 'jt-ghost' not found"):
        enroll(store, "jt-ghost", "gw-1")


def test_taken_device_id_leaves_the_token_unused(store: Store) -> None:
    """Enrolling an existing device id raises AlreadyExists and rolls the token back to unused."""
    original = device(store, "gw-1")
    join_token(store, "jt-2")
    with pytest.raises(AlreadyExists, match="'gw-1' is already enrolled"):
        enroll(store, "jt-2", "gw-1", fleet="other")
    token = store.get_join_token("jt-2")
    assert token is not None and (token.used_at, token.used_by_device) == (None, None)
    assert store.get_device("gw-1") == original


def test_concurrent_enrollments_with_one_token_let_exactly_one_win(store: Store) -> None:
    """Of threads enrolling different devices with one token at once, one succeeds and the rest conflict."""
    join_token(store, "jt-1")
    outcomes = _race([partial(enroll, store, "jt-1", f"gw-{i}") for i in range(RACERS)])
    winners = [outcome for outcome in outcomes if isinstance(outcome, DeviceRow)]
    assert len(winners) == 1
    assert all(isinstance(outcome, Conflict) for outcome in outcomes if outcome is not winners[0])
    assert store.list_devices() == winners
    token = store.get_join_token("jt-1")
    assert token is not None and token.used_by_device == winners[0].device_id


def test_concurrent_enrollments_of_one_device_id_let_exactly_one_win(store: Store) -> None:
    """Of threads enrolling one device id, each with its own token, one wins; the other tokens stay unused."""
    for i in range(RACERS):
        join_token(store, f"jt-{i}")
    outcomes = _race([partial(enroll, store, f"jt-{i}", "gw-1") for i in range(RACERS)])
    assert sum(isinstance(outcome, DeviceRow) for outcome in outcomes) == 1
    assert sum(isinstance(outcome, AlreadyExists) for outcome in outcomes) == RACERS - 1
    used = [token for i in range(RACERS) if (token := store.get_join_token(f"jt-{i}")) is not None and token.used]
    assert len(used) == 1


def test_listing_filters_by_fleet_and_orders_by_id(store: Store) -> None:
    """``list_devices`` returns every device ordered by id, or only one fleet's."""
    device(store, "gw-3", fleet="lab")
    device(store, "gw-1", fleet="prod")
    device(store, "gw-2", fleet="lab")
    assert [row.device_id for row in store.list_devices()] == ["gw-1", "gw-2", "gw-3"]
    assert [row.device_id for row in store.list_devices("lab")] == ["gw-2", "gw-3"]
    assert store.list_devices("nowhere") == []


def test_facts_update_replaces_facts_and_version(store: Store) -> None:
    """``update_facts`` replaces facts and agent version and stamps the time; an unknown id is NotFound."""
    device(store, "gw-1")
    later = T0 + timedelta(hours=1)
    store.update_facts("gw-1", {"arch": "x86_64", "ram_mb": 4096}, "0.2.0", later)
    row = store.get_device("gw-1")
    assert row is not None
    assert (row.facts, row.agent_version, row.facts_updated_at) == (
        {"arch": "x86_64", "ram_mb": 4096},
        "0.2.0",
        later,
    )
    with pytest.raises(NotFound, match="device 'gw-ghost' not found"):
        store.update_facts("gw-ghost", {}, "0.2.0", later)


def test_connected_follows_the_latest_session_event(store: Store) -> None:
    """A device is connected after a connect, not after a later disconnect, and again after a reconnect."""
    device(store, "gw-1")
    store.mark_connected("gw-1", "boot-a", T0 + timedelta(seconds=1))
    row = store.get_device("gw-1")
    assert row is not None and row.connected
    assert (row.boot_id, row.last_seen) == ("boot-a", T0 + timedelta(seconds=1))
    store.mark_disconnected("gw-1", T0 + timedelta(seconds=2))
    row = store.get_device("gw-1")
    assert row is not None and not row.connected
    store.mark_connected("gw-1", "boot-b", T0 + timedelta(seconds=3))
    row = store.get_device("gw-1")
    assert row is not None and row.connected and row.boot_id == "boot-b"
    with pytest.raises(NotFound, match="device 'gw-ghost' not found"):
        store.mark_disconnected("gw-ghost", T0)


def test_touch_last_seen_only_moves_forward_and_ignores_unknown_ids(store: Store) -> None:
    """A newer time is kept, an older one is ignored, and ids that are not devices change nothing."""
    device(store, "gw-1")
    device(store, "gw-2")
    store.touch_last_seen({"gw-1": T0 + timedelta(seconds=10), "gw-2": T0 + timedelta(seconds=5)})
    store.touch_last_seen({"gw-1": T0 + timedelta(seconds=1), "gw-2": T0 + timedelta(seconds=6), "gw-ghost": T0})
    seen = {row.device_id: row.last_seen for row in store.list_devices()}
    assert seen == {"gw-1": T0 + timedelta(seconds=10), "gw-2": T0 + timedelta(seconds=6)}
    store.touch_last_seen({})


def test_touch_last_seen_batches_a_thousand_ids_in_one_statement(store: Store) -> None:
    """A thousand ids are written with one executemany UPDATE in one transaction."""
    for i in range(3):
        device(store, f"gw-{i}")
    seen = {f"gw-{i}": T0 + timedelta(seconds=i + 1) for i in range(1000)}
    statements: list[tuple[str, bool]] = []
    commits: list[object] = []

    def on_execute(_conn: object, _cursor: object, statement: str, _params: object, _ctx: object, many: bool) -> None:
        statements.append((statement.split()[0].upper(), many))

    def on_commit(conn: object) -> None:
        commits.append(conn)

    engine = store._engine
    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        store.touch_last_seen(seen)
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
    assert [entry for entry in statements if entry[0] == "UPDATE"] == [("UPDATE", True)]
    assert len(commits) == 1
    assert [row.last_seen for row in store.list_devices()] == [T0 + timedelta(seconds=i + 1) for i in range(3)]


def test_revoking_twice_keeps_the_first_revocation(store: Store) -> None:
    """A second revocation neither moves ``revoked_at`` nor replaces the reason; an unknown id is NotFound."""
    device(store, "gw-1")
    first = store.revoke_device("gw-1", "stolen", T0 + timedelta(minutes=1))
    second = store.revoke_device("gw-1", "decommissioned", T0 + timedelta(minutes=2))
    assert first == second
    assert (first.revoked, first.revoked_at, first.revoke_reason) == (
        True,
        T0 + timedelta(minutes=1),
        "stolen",
    )
    with pytest.raises(NotFound, match="device 'gw-ghost' not found"):
        store.revoke_device("gw-ghost", "stolen", T0)
