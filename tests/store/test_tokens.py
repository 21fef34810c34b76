"""Operator tokens and join tokens: created once, found by hash or id, revoked idempotently."""

from __future__ import annotations

from datetime import timedelta

import pytest

from controlplane.store import AlreadyExists, NotFound, Store

from .sample import FLEET, T0, join_token

ALICE_HASH = "a1" * 32
BOB_HASH = "b0" * 32


def test_operator_token_is_found_by_its_hash(store: Store) -> None:
    """``find_operator_token`` returns a created token as stored; an unknown hash finds nothing."""
    created = store.create_operator_token("alice", "admin", ALICE_HASH, T0)
    assert (created.name, created.role, created.created_at, created.revoked) == ("alice", "admin", T0, False)
    assert store.find_operator_token(ALICE_HASH) == created
    assert store.find_operator_token(BOB_HASH) is None


def test_operator_token_name_and_hash_are_unique(store: Store) -> None:
    """A second token with a taken name or a taken hash raises AlreadyExists and writes nothing."""
    store.create_operator_token("alice", "admin", ALICE_HASH, T0)
    with pytest.raises(AlreadyExists, match="'alice' already exists"):
        store.create_operator_token("alice", "viewer", BOB_HASH, T0)
    with pytest.raises(AlreadyExists, match="same hash"):
        store.create_operator_token("bob", "viewer", ALICE_HASH, T0)
    assert [token.name for token in store.list_operator_tokens()] == ["alice"]


def test_operator_token_role_must_be_known(store: Store) -> None:
    """An unknown role raises ValueError naming the allowed ones."""
    with pytest.raises(ValueError, match="admin, operator, viewer"):
        store.create_operator_token("alice", "root", ALICE_HASH, T0)


def test_operator_tokens_are_listed_by_name(store: Store) -> None:
    """``list_operator_tokens`` orders by name, whatever the creation order."""
    store.create_operator_token("carol", "viewer", "c0" * 32, T0)
    store.create_operator_token("alice", "admin", ALICE_HASH, T0)
    store.create_operator_token("bob", "operator", BOB_HASH, T0)
    assert [token.name for token in store.list_operator_tokens()] == ["alice", "bob", "carol"]


def test_revoking_an_operator_token_twice_keeps_the_first_time(store: Store) -> None:
    """The first revocation stamps ``revoked_at``; a second one is a no-op, not an error."""
    store.create_operator_token("alice", "admin", ALICE_HASH, T0)
    first = store.revoke_operator_token("alice", T0 + timedelta(minutes=1))
    second = store.revoke_operator_token("alice", T0 + timedelta(minutes=2))
    assert first.revoked_at == second.revoked_at == T0 + timedelta(minutes=1)
    assert store.find_operator_token(ALICE_HASH) == first


def test_revoking_an_unknown_operator_token_is_not_found(store: Store) -> None:
    """Revoking a name that does not exist raises NotFound naming it."""
    with pytest.raises(NotFound, match="operator token 'ghost' not found"):
        store.revoke_operator_token("ghost", T0)


def test_count_operator_tokens_by_role_skips_revoked(store: Store) -> None:
    """Counts are per role when asked, and leave out revoked tokens unless told otherwise."""
    store.create_operator_token("alice", "admin", ALICE_HASH, T0)
    store.create_operator_token("bob", "admin", BOB_HASH, T0)
    store.create_operator_token("carol", "viewer", "c0" * 32, T0)
    store.revoke_operator_token("bob", T0)
    assert store.count_operator_tokens() == 2
    assert store.count_operator_tokens("admin") == 1
    assert store.count_operator_tokens("admin", include_revoked=True) == 2
    assert store.count_operator_tokens("operator") == 0


def test_join_token_is_stored_unused(store: Store) -> None:
    """A created join token reads back with its labels, key ids and expiry, not yet used."""
    created = join_token(store, "jt-1")
    assert store.get_join_token("jt-1") == created
    assert created.fleet == FLEET
    assert created.labels == {"site": "berlin"}
    assert created.publisher_key_ids == ("pub-1", "pub-2")
    assert (created.created_at, created.expires_at) == (T0, T0 + timedelta(hours=1))
    assert (created.used, created.used_at, created.used_by_device) == (False, None, None)
    assert store.get_join_token("jt-unknown") is None


def test_join_token_id_is_unique(store: Store) -> None:
    """A second join token with the same id raises AlreadyExists and leaves the first one as it was."""
    first = join_token(store, "jt-1")
    with pytest.raises(AlreadyExists, match="'jt-1' already exists"):
        join_token(store, "jt-1", now=T0 + timedelta(minutes=5))
    assert store.get_join_token("jt-1") == first


def test_settings_upsert_and_first_writer_wins(store: Store) -> None:
    """``set_setting`` replaces a value; ``set_setting_if_absent`` keeps the one already there."""
    assert store.get_setting("first_start") is None
    assert store.set_setting_if_absent("first_start", "a") == "a"
    assert store.set_setting_if_absent("first_start", "b") == "a"
    store.set_setting("first_start", "c")
    assert store.get_setting("first_start") == "c"
