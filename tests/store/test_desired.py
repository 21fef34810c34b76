"""Desired state in the store: one transaction bumps each device's generation and upserts its task slot."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.store import DesiredRow, NotFound, Store

from .sample import T0, device

SHA = "ab" * 32


def deploy(store: Store, device_ids: list[str], version: int, *, task: str = "generic", now=T0) -> dict[str, int]:
    return store.set_desired(
        device_ids,
        task=task,
        name="kws",
        version=version,
        variant="fp32",
        manifest_sha256=SHA,
        max_bytes=1234,
        rollback=False,
        now=now,
    )


def test_a_device_without_desired_rows_is_at_generation_zero(store: Store) -> None:
    """A fresh device has generation 0 and no rows; an unknown device reads the same."""
    device(store, "dev-a")
    assert store.get_desired("dev-a") == (0, [])
    assert store.get_desired("nope") == (0, [])


def test_set_desired_bumps_the_generation_and_upserts_the_task_slot(store: Store) -> None:
    """Each call bumps every named device by one; a second deploy to the same task replaces the row."""
    device(store, "dev-a")
    device(store, "dev-b")
    assert deploy(store, ["dev-a", "dev-b"], 1) == {"dev-a": 1, "dev-b": 1}
    later = T0 + timedelta(minutes=1)
    assert deploy(store, ["dev-a"], 2, now=later) == {"dev-a": 2}
    assert deploy(store, ["dev-a"], 5, task="vad", now=later) == {"dev-a": 3}
    generation, rows = store.get_desired("dev-a")
    assert generation == 3
    assert rows == [
        DesiredRow("dev-a", "generic", "kws", 2, "fp32", SHA, 1234, False, 2, later),
        DesiredRow("dev-a", "vad", "kws", 5, "fp32", SHA, 1234, False, 3, later),
    ]
    assert store.get_desired("dev-b") == (
        1,
        [DesiredRow("dev-b", "generic", "kws", 1, "fp32", SHA, 1234, False, 1, T0)],
    )
    assert store.get_device("dev-a").desired_generation == 3


def test_unknown_or_revoked_devices_change_nothing(store: Store) -> None:
    """A call naming an unknown or a revoked device raises NotFound naming them, and no device changes."""
    device(store, "dev-a")
    device(store, "dev-r")
    store.revoke_device("dev-r", "lost", T0)
    with pytest.raises(NotFound, match="ghost, dev-r|dev-r, ghost"):
        deploy(store, ["dev-a", "dev-r", "ghost"], 1)
    assert store.get_desired("dev-a") == (0, [])
    assert store.get_desired("dev-r") == (0, [])


def test_set_desired_checks_its_arguments(store: Store) -> None:
    """No devices or a naive time is a programming error raised before any SQL."""
    device(store, "dev-a")
    with pytest.raises(ValueError):
        deploy(store, [], 1)
    with pytest.raises(ValueError):
        deploy(store, ["dev-a"], 1, now=T0.replace(tzinfo=None))


def test_rollback_none_is_derived_from_the_version_the_slot_holds(store: Store) -> None:
    """With rollback=None a lower version of the same model in the slot is a rollback; a higher one is not."""
    device(store, "dev-a")

    def put(version: int) -> bool:
        store.set_desired(
            ["dev-a"],
            task="generic",
            name="kws",
            version=version,
            variant="fp32",
            manifest_sha256=SHA,
            max_bytes=1,
            rollback=None,
            now=T0,
        )
        return store.get_desired("dev-a")[1][0].rollback

    assert put(3) is False
    assert put(2) is True
    assert put(4) is False
