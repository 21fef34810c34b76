"""A database that cannot be reached or opened raises StoreUnavailable naming the URL, not its password."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from controlplane.store import Store, StoreUnavailable


def test_unreachable_postgresql_is_unavailable_and_hides_the_password() -> None:
    """Nothing listens on port 1: ``Store.open`` raises StoreUnavailable naming host and port, no password."""
    with pytest.raises(StoreUnavailable) as raised:
        Store.open("postgresql://root:hunter2@127.0.0.1:1/test", connect_timeout_seconds=3)
    message = str(raised.value)
    assert "127.0.0.1:1/test" in message
    assert "hunter2" not in message
    assert "***" in message


def test_sqlite_file_under_a_regular_file_is_unavailable(tmp_path: Path) -> None:
    """A SQLite path whose parent is a file cannot be opened: StoreUnavailable names the path."""
    (tmp_path / "not-a-dir").write_text("")
    url = f"sqlite:///{tmp_path / 'not-a-dir' / 'edgefleet.db'}"
    with pytest.raises(StoreUnavailable, match="not-a-dir/edgefleet.db"):
        Store.open(url)


def test_sqlite_file_that_vanished_makes_calls_unavailable(tmp_path: Path) -> None:
    """When the database's directory disappears, the next call on an open store raises StoreUnavailable."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with Store.open(f"sqlite:///{data_dir / 'edgefleet.db'}") as store:
        store.close()  # drop pooled connections, so the next call must open the file again
        shutil.rmtree(data_dir)
        with pytest.raises(StoreUnavailable, match="unable to open database file"):
            store.get_setting("first_start")


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("mysql://root@127.0.0.1/test", id="other-backend"),
        pytest.param("sqlite://", id="in-memory"),
        pytest.param("not a url", id="garbage"),
    ],
)
def test_unsupported_urls_are_rejected_before_connecting(url: str) -> None:
    """A URL for another backend, an in-memory SQLite or garbage raises ValueError with the expected form."""
    with pytest.raises(ValueError, match="sqlite:////abs/path/edgefleet.db"):
        Store.open(url)
