"""Opening a store migrates its schema: once, to exactly the models, and never backwards."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, insert, text

from controlplane.store import OperatorTokenRow, Store, StoreError
from controlplane.store.database import MIGRATIONS_DIR, normalize_url
from controlplane.store.schema import Base, OperatorToken

from .sample import T0, device

OPENERS = 4
HEAD = "0008_download_progress"


@pytest.fixture
def raw_engine(store_url: str) -> Iterator[Engine]:
    """A plain engine on the test's database, to look behind the store's back."""
    engine = create_engine(normalize_url(store_url))
    yield engine
    engine.dispose()


def test_opening_twice_keeps_data_and_stays_at_head(store_url: str, raw_engine: Engine) -> None:
    """A second ``Store.open`` on a migrated database changes nothing and keeps what was written."""
    with Store.open(store_url) as first:
        first.set_setting("first_start", T0.isoformat())
    with Store.open(store_url) as second:
        assert second.get_setting("first_start") == T0.isoformat()
    with raw_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)


def test_concurrent_opens_of_a_fresh_database_migrate_once(store_url: str, raw_engine: Engine) -> None:
    """Several servers opening one empty database at once all succeed, and the schema is created once."""
    barrier = threading.Barrier(OPENERS)

    def open_and_close() -> None:
        barrier.wait(timeout=30)
        Store.open(store_url).close()

    with ThreadPoolExecutor(max_workers=OPENERS) as pool:
        for future in [pool.submit(open_and_close) for _ in range(OPENERS)]:
            future.result(timeout=60)
    with raw_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)


def test_migrated_schema_matches_the_models(store: Store, raw_engine: Engine) -> None:
    """The tables the revisions create are exactly the ones ``schema.py`` describes."""
    with raw_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_schema_from_a_newer_release_is_refused(store_url: str, raw_engine: Engine) -> None:
    """A database stamped with a revision this code does not know is not opened, and the error says why."""
    Store.open(store_url).close()
    with raw_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    with pytest.raises(StoreError, match="0099_future"):
        Store.open(store_url)


def test_timestamps_round_trip_as_aware_utc(store: Store) -> None:
    """A time given in another zone comes back as the same instant, in UTC, to the microsecond."""
    berlin_summer = timezone(timedelta(hours=2))
    local = T0.astimezone(berlin_summer)
    row = device(store, "gw-1", now=local)
    assert row.enrolled_at == T0
    assert row.enrolled_at.tzinfo is not None and row.enrolled_at.utcoffset() == timedelta(0)
    assert store.get_device("gw-1") == row


def test_naive_times_are_rejected_before_writing(store: Store) -> None:
    """A naive ``now`` raises ValueError and leaves the database untouched."""
    with pytest.raises(ValueError, match="timezone-aware"):
        store.create_operator_token("alice", "admin", "ab" * 32, T0.replace(tzinfo=None))
    assert store.list_operator_tokens() == []


def test_a_database_at_0001_upgrades_to_head_and_keeps_its_data(store_url: str, raw_engine: Engine) -> None:
    """A database created by the first release (0001 only) opens at head, with its rows intact and the
    registry tables empty."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    with raw_engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001_initial")
        assert MigrationContext.configure(conn).get_current_heads() == ("0001_initial",)
        conn.execute(insert(OperatorToken).values(name="alice", role="admin", token_sha256="a1" * 32, created_at=T0))
    with Store.open(store_url) as store:
        assert store.find_operator_token("a1" * 32) == OperatorTokenRow("alice", "admin", "a1" * 32, T0, None)
        assert store.list_publisher_keys() == [] and store.list_builds() == []
    with raw_engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
