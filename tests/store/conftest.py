"""Fixtures for the store tests: every test runs once on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.store import Store
from tests.pg import postgres_schema, postgres_url


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of the parametrized backend, private to this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'edgefleet.db'}"
        return
    with postgres_schema(postgres_url()) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """A store opened (and migrated) on ``store_url``, closed after the test."""
    with Store.open(store_url) as opened:
        yield opened
