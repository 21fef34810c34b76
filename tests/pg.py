"""Where the tests find PostgreSQL, and a throwaway schema per test.

``postgres_url()`` looks once per test session, in this order:

1. ``EDGEFLEET_TEST_POSTGRES_URL``, if set; it must answer, or the test fails.
2. A local server with trust auth: ``postgres@127.0.0.1:5432/test``, then ``root@...``.
3. A container started through testcontainers, if a Docker engine answers; it is
   stopped when the test process exits.

If none answers, the test fails when ``CI`` is set (CI must not silently skip the
PostgreSQL half of the suite) and is skipped otherwise, with the reason.

``postgres_schema(url)`` gives each test its own schema (``search_path`` set through the
URL), so tables, data and alembic's version table never leak between tests.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import os
import secrets
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

ENV_URL = "EDGEFLEET_TEST_POSTGRES_URL"
LOCAL_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)
CONTAINER_IMAGE = "postgres:16-alpine"
DOCKER_SOCKET = "/var/run/docker.sock"
PROBE_TIMEOUT_SECONDS = 3
START_HINT = (
    "start it with `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test "
    f"{CONTAINER_IMAGE}` or point {ENV_URL} at a server"
)


@dataclass(frozen=True)
class _Discovery:
    url: str | None
    reason: str


def postgres_url() -> str:
    """A libpq URL (``postgresql://...``) of a PostgreSQL server the tests may create schemas in.

    Skips the calling test when none is reachable, or fails it when ``CI`` is set or
    ``EDGEFLEET_TEST_POSTGRES_URL`` names a server that does not answer.
    """
    found = _discover()
    if found.url is not None:
        return found.url
    if os.environ.get(ENV_URL):
        pytest.fail(found.reason, pytrace=False)
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {START_HINT}; tried {found.reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL reachable ({found.reason}); {START_HINT}")


@contextlib.contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """Create a fresh schema, yield ``base_url`` with its ``search_path`` set to it, drop it after."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(base_url, autocommit=True, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _answers(url: str) -> str | None:
    """None if ``url`` accepts a connection, else why not (one line, no password)."""
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_SECONDS) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{shown}: {detail}"
    return None


@functools.cache
def _discover() -> _Discovery:
    configured = os.environ.get(ENV_URL)
    if configured:
        failure = _answers(configured)
        return _Discovery(configured if failure is None else None, f"{ENV_URL} does not answer: {failure}")
    failures = []
    for candidate in LOCAL_CANDIDATES:
        failure = _answers(candidate)
        if failure is None:
            return _Discovery(candidate, "")
        failures.append(failure)
    container_url, why_not = _start_container()
    if container_url is not None:
        return _Discovery(container_url, "")
    return _Discovery(None, "; ".join([*failures, why_not]))


def _start_container() -> tuple[str | None, str]:
    """Start PostgreSQL in Docker through testcontainers; (url, "") or (None, why not)."""
    if not os.environ.get("DOCKER_HOST") and not Path(DOCKER_SOCKET).exists():
        return None, f"no Docker engine (DOCKER_HOST is unset and {DOCKER_SOCKET} does not exist)"
    try:
        import docker  # type: ignore[import-untyped]
        from docker.errors import DockerException  # type: ignore[import-untyped]
    except ImportError:
        return None, "the docker package is not installed"
    # docker-py leaks the socket of a failed version probe; collect it here, silently, rather
    # than let a ResourceWarning surface in whichever test runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=PROBE_TIMEOUT_SECONDS)
            try:
                client.ping()
            finally:
                client.close()
        except DockerException as exc:
            return None, f"no Docker engine answers ({type(exc).__name__})"
        finally:
            gc.collect()
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(CONTAINER_IMAGE, dbname="test", driver=None)
    try:
        container.start()
    except Exception as exc:  # any failure here (pull, start, wait) just means "no PostgreSQL"
        with contextlib.suppress(Exception):
            container.stop()
        return None, f"starting {CONTAINER_IMAGE} in Docker failed: {exc}"
    atexit.register(container.stop)
    return container.get_connection_url(), ""
