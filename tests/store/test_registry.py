"""The model registry in the store: publisher keys and builds, published once, versions only moving forward."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from controlplane.store import AlreadyExists, Conflict, ModelBuildRow, NotFound, PublisherKeyRow, Store

from .sample import T0

KEY_A = "a1" * 32
KEY_B = "b2" * 32
PUBLISHERS = 4


def key_id(public_key_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()


def add_key(store: Store, public_key: str = KEY_A, name: str = "release") -> PublisherKeyRow:
    return store.add_publisher_key(key_id(public_key), public_key, name, T0)


def publish(
    store: Store,
    version: int,
    variant: str = "fp32",
    *,
    name: str = "kws",
    manifest: bytes | None = None,
    task: str = "speech-command",
    now=T0,
) -> ModelBuildRow:
    body = manifest if manifest is not None else f"{name}:{version}:{variant}".encode()
    return store.add_build(
        name=name,
        version=version,
        variant=variant,
        task=task,
        manifest=body,
        signatures=b"signed:" + body,
        manifest_sha256=hashlib.sha256(body).hexdigest(),
        total_bytes=1234,
        publisher_key_id=key_id(KEY_A),
        now=now,
    )


def test_publisher_key_is_stored_under_its_id(store: Store) -> None:
    """A registered key is listed and found by id, with its raw bytes and the time it was added."""
    row = add_key(store)
    assert row == PublisherKeyRow(key_id(KEY_A), KEY_A, "release", T0)
    assert row.raw_public_key == bytes.fromhex(KEY_A)
    assert store.list_publisher_keys() == [row]
    assert store.get_publisher_keys([key_id(KEY_A), key_id(KEY_B), "nope"]) == {key_id(KEY_A): row}
    assert store.get_publisher_keys([]) == {}


def test_registering_the_same_key_again_is_a_no_op(store: Store) -> None:
    """The same key under the same name returns the stored row, with the first time it was added."""
    first = add_key(store)
    again = store.add_publisher_key(key_id(KEY_A), KEY_A, "release", T0 + timedelta(hours=1))
    assert again == first


def test_a_key_has_one_name_and_a_name_one_key(store: Store) -> None:
    """The key under another name, or another key under the name, raise AlreadyExists and write nothing."""
    add_key(store)
    with pytest.raises(AlreadyExists, match="already registered as 'release'"):
        add_key(store, KEY_A, "other")
    with pytest.raises(AlreadyExists, match="name 'release' is taken"):
        add_key(store, KEY_B, "release")
    assert [k.name for k in store.list_publisher_keys()] == ["release"]


def test_a_key_id_must_be_the_keys_sha256(store: Store) -> None:
    """An id that is not the sha256 of the key is a ValueError before any SQL runs."""
    with pytest.raises(ValueError, match="sha256"):
        store.add_publisher_key(key_id(KEY_B), KEY_A, "release", T0)
    assert store.list_publisher_keys() == []


def test_keys_are_listed_by_name(store: Store) -> None:
    """``list_publisher_keys`` orders by name."""
    add_key(store, KEY_B, "zeta")
    add_key(store, KEY_A, "alpha")
    assert [k.name for k in store.list_publisher_keys()] == ["alpha", "zeta"]


def test_a_build_is_stored_with_its_exact_bytes(store: Store) -> None:
    """``add_build`` returns what it stored: the exact manifest and signature bytes, the key and the time."""
    add_key(store)
    row = publish(store, 1, manifest=b"\x00exact\xffbytes")
    assert row.manifest == b"\x00exact\xffbytes" and row.signatures == b"signed:\x00exact\xffbytes"
    assert (row.name, row.version, row.variant, row.task) == ("kws", 1, "fp32", "speech-command")
    assert (row.publisher_key_id, row.published_at, row.total_bytes) == (key_id(KEY_A), T0, 1234)
    assert store.get_builds("kws", 1) == [row]


def test_publishing_the_identical_manifest_again_is_a_no_op(store: Store) -> None:
    """Re-publishing the same manifest returns the stored row, with its first publication time."""
    add_key(store)
    first = publish(store, 1)
    again = publish(store, 1, now=T0 + timedelta(hours=1))
    assert again == first
    assert store.list_builds() == [first]


def test_another_manifest_under_a_published_build_is_refused(store: Store) -> None:
    """Same (name, version, variant) with other bytes raises AlreadyExists and keeps the first build."""
    add_key(store)
    first = publish(store, 1)
    with pytest.raises(AlreadyExists, match="version 1 variant 'fp32' is already published with another manifest"):
        publish(store, 1, manifest=b"changed")
    assert store.list_builds() == [first]


def test_versions_only_move_forward(store: Store) -> None:
    """A version below the latest raises Conflict naming both; an equal version may add a variant."""
    add_key(store)
    publish(store, 5)
    with pytest.raises(Conflict, match=r"version 3 < latest 5"):
        publish(store, 3)
    publish(store, 5, "int8-dynamic")
    publish(store, 6)
    assert store.latest_version("kws") == 6
    assert [(b.version, b.variant) for b in store.list_builds("kws")] == [(6, "fp32"), (5, "fp32"), (5, "int8-dynamic")]


def test_re_publishing_an_older_identical_build_is_still_a_no_op(store: Store) -> None:
    """Retrying the publication of version 1 after version 2 is out returns the stored row."""
    add_key(store)
    first = publish(store, 1)
    publish(store, 2)
    assert publish(store, 1) == first


def test_variants_of_one_version_share_a_task(store: Store) -> None:
    """A variant whose task differs from the version's other variants raises Conflict."""
    add_key(store)
    publish(store, 1)
    with pytest.raises(Conflict, match="is a speech-command model"):
        publish(store, 1, "fp16", task="vad")


def test_a_build_needs_a_registered_key(store: Store) -> None:
    """Publishing under an unknown publisher key raises NotFound and stores nothing."""
    with pytest.raises(NotFound, match="publisher key .* is not registered"):
        publish(store, 1)
    assert store.list_builds() == []


def test_builds_are_read_by_version_or_latest(store: Store) -> None:
    """``get_builds`` without a version reads the latest; unknown names and versions read nothing."""
    add_key(store)
    publish(store, 1)
    publish(store, 2, "int8-dynamic")
    publish(store, 2, "fp32")
    publish(store, 1, name="vad", task="vad")
    assert [(b.version, b.variant) for b in store.get_builds("kws")] == [(2, "fp32"), (2, "int8-dynamic")]
    assert [(b.version, b.variant) for b in store.get_builds("kws", 1)] == [(1, "fp32")]
    assert store.get_builds("kws", 7) == [] and store.get_builds("nope") == []
    assert store.latest_version("nope") is None
    assert [b.name for b in store.list_builds()] == ["kws", "kws", "kws", "vad"]


def test_concurrent_identical_publishes_store_one_build(store: Store) -> None:
    """Several publishers sending the same build at once all get the same row; one row is stored."""
    add_key(store)
    barrier = threading.Barrier(PUBLISHERS)

    def publish_together() -> ModelBuildRow:
        barrier.wait(timeout=30)
        return publish(store, 1)

    with ThreadPoolExecutor(max_workers=PUBLISHERS) as pool:
        rows = [f.result(timeout=60) for f in [pool.submit(publish_together) for _ in range(PUBLISHERS)]]
    assert len(set(rows)) == 1
    assert store.list_builds() == [rows[0]]
