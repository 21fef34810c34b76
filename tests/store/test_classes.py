"""Device classes and benchmark jobs in the store: the class set swaps whole with the devices' labels,
and a job result counts only once and only from the device the job was given to."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.store import NotFound, Store

from .sample import T0, device

SHA = "cd" * 32


def _job(job_id: str, device_id: str, variant: str = "fp32", *, deadline=T0 + timedelta(hours=1)) -> dict:
    return {
        "job_id": job_id,
        "device_id": device_id,
        "name": "kws",
        "version": 1,
        "variant": variant,
        "manifest_sha256": SHA,
        "device_class": "edge",
        "deadline": deadline,
    }


def test_replace_classes_swaps_the_set_and_relabels_devices_in_one_go(store: Store) -> None:
    device(store, "dev-a")
    device(store, "dev-b")
    changed = store.replace_classes(
        [("edge", 0, {"name": "edge"}), ("big", 1, {"name": "big"})], {"dev-a": "edge", "dev-b": "big"}, T0
    )
    assert changed == 2
    assert [c.name for c in store.list_classes()] == ["edge", "big"]
    assert store.get_device("dev-a").device_class == "edge"
    assert store.class_counts() == {"edge": 1, "big": 1}
    assert [d.device_id for d in store.list_devices(device_class="big")] == ["dev-b"]

    # The second apply replaces, not merges; an unknown device id is ignored; unchanged ones are not counted.
    changed = store.replace_classes([("big", 0, {"name": "big"})], {"dev-a": "big", "dev-b": "big", "gone": "x"}, T0)
    assert changed == 1
    assert [c.name for c in store.list_classes()] == ["big"]
    assert store.class_counts() == {"big": 2}


def test_update_facts_sets_the_class_only_when_given(store: Store) -> None:
    device(store, "dev-a")
    store.update_facts("dev-a", {"architecture": "x86_64"}, "0.2.0", T0, device_class="edge")
    store.update_facts("dev-a", {"architecture": "x86_64"}, "0.2.0", T0)
    assert store.get_device("dev-a").device_class == "edge"
    assert store.set_device_class("dev-a", "big") is True
    assert store.set_device_class("dev-a", "big") is False
    with pytest.raises(NotFound):
        store.set_device_class("nope", "big")


def test_a_job_result_counts_once_and_only_from_its_device(store: Store) -> None:
    device(store, "dev-a")
    device(store, "dev-b")
    store.create_jobs([_job("j1", "dev-a"), _job("j2", "dev-a", "int8-dynamic")], T0)
    assert [j.job_id for j in store.pending_jobs("dev-a", T0)] == ["j1", "j2"]
    assert store.pending_jobs("dev-b", T0) == []

    with pytest.raises(NotFound, match="never given"):
        store.complete_job("j1", "dev-b", {"ok": True}, T0)
    with pytest.raises(NotFound):
        store.complete_job("j-unknown", "dev-a", {"ok": True}, T0)
    assert all(j.state == "pending" for j in store.jobs_for_model("kws", 1))

    job, recorded = store.complete_job("j1", "dev-a", {"ok": True, "latency_p95_ms": 2.5}, T0 + timedelta(seconds=5))
    assert recorded and job.state == "done" and job.result["latency_p95_ms"] == 2.5
    again, recorded = store.complete_job("j1", "dev-a", {"ok": True, "latency_p95_ms": 99.0}, T0)
    assert not recorded and again.result["latency_p95_ms"] == 2.5
    assert [j.job_id for j in store.pending_jobs("dev-a", T0)] == ["j2"]


def test_jobs_past_their_deadline_expire_and_stop_being_pending(store: Store) -> None:
    device(store, "dev-a")
    store.create_jobs([_job("j1", "dev-a", deadline=T0 + timedelta(minutes=1))], T0)
    assert store.pending_jobs("dev-a", T0 + timedelta(minutes=2)) == []
    assert store.expire_jobs(T0 + timedelta(minutes=2)) == 1
    assert store.expire_jobs(T0 + timedelta(minutes=3)) == 0
    [job] = store.jobs_for_model("kws", 1)
    assert job.state == "expired"
    _, recorded = store.complete_job("j1", "dev-a", {"ok": True}, T0 + timedelta(minutes=4))
    assert not recorded


def test_set_desired_can_give_each_device_its_own_variant(store: Store) -> None:
    device(store, "dev-a")
    device(store, "dev-b")
    store.set_desired(
        ["dev-a", "dev-b"],
        task="generic",
        name="kws",
        version=1,
        variant="fp32",
        manifest_sha256=SHA,
        max_bytes=100,
        rollback=False,
        now=T0,
        per_device={"dev-b": ("int8-dynamic", "ef" * 32, 50)},
    )
    assert [(r.variant, r.max_bytes) for r in store.get_desired("dev-a")[1]] == [("fp32", 100)]
    assert [(r.variant, r.manifest_sha256, r.max_bytes) for r in store.get_desired("dev-b")[1]] == [
        ("int8-dynamic", "ef" * 32, 50)
    ]
