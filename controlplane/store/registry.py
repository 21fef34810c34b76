"""The store's model registry: publisher keys and published model builds (mixed into ``Store``).

Invariants (besides those of ``store.py``: one transaction per method, explicit ``now``,
frozen rows):
- A publisher key is stored under its id, the sha256 of the raw key; ids and names are unique.
- A build is keyed by (name, version, variant) and never changes once published: publishing
  the same manifest again is a no-op that returns the stored row, another manifest under
  the same key is refused.
- Versions of a model only move forward: a build whose version is lower than the model's
  latest is refused (an equal version may add a variant). The check and the insert are one
  transaction, serialized per model (SQLite's write lock, a PostgreSQL advisory lock), so two
  concurrent publishes cannot slip a lower version in.
- All variants of one model version share one task.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, func, insert, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from controlplane.store.errors import AlreadyExists, Conflict, NotFound
from controlplane.store.queries import must, require_aware
from controlplane.store.rows import ModelBuildRow, PublisherKeyRow
from controlplane.store.schema import ModelBuild, PublisherKey

_HEX64 = re.compile(r"[0-9a-f]{64}")


class RegistryStore:
    """Registry methods of ``Store``; they run on the transactions ``Store._transaction`` opens."""

    if TYPE_CHECKING:

        def _transaction(self, *, write: bool) -> AbstractContextManager[Connection]: ...

    # Publisher keys

    def add_publisher_key(self, key_id: str, public_key: str, name: str, now: datetime) -> PublisherKeyRow:
        """Register a publisher key (``public_key``: the raw ed25519 key as hex, ``key_id``: its sha256).

        Registering the same key under the same name again is a no-op returning the stored row.

        Raises:
            ValueError: malformed hex, an id that is not the key's sha256, or a naive ``now``.
            AlreadyExists: the key is registered under another name, or the name belongs to another key.
        """
        if not _HEX64.fullmatch(public_key) or hashlib.sha256(bytes.fromhex(public_key)).hexdigest() != key_id:
            raise ValueError("key_id must be the sha256 (hex) of public_key (the raw 32-byte key as lowercase hex)")
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            existing = _publisher_key(conn, PublisherKey.key_id == key_id)
            if existing is not None:
                if existing.name == name:
                    return existing
                raise AlreadyExists(f"publisher key {key_id} is already registered as {existing.name!r}")
            taken = _publisher_key(conn, PublisherKey.name == name)
            if taken is not None:
                raise AlreadyExists(f"publisher key name {name!r} is taken by key {taken.key_id}; pick another name")
            try:
                conn.execute(insert(PublisherKey).values(key_id=key_id, public_key=public_key, name=name, added_at=now))
            except IntegrityError as exc:
                raise AlreadyExists(f"publisher key {key_id} or name {name!r} was registered concurrently") from exc
            return must(_publisher_key(conn, PublisherKey.key_id == key_id), f"publisher key {key_id}")

    def list_publisher_keys(self) -> list[PublisherKeyRow]:
        """Every registered publisher key, ordered by name."""
        with self._transaction(write=False) as conn:
            rows = conn.execute(select(PublisherKey).order_by(PublisherKey.name)).mappings()
            return [PublisherKeyRow(**row) for row in rows]

    def get_publisher_keys(self, key_ids: Iterable[str]) -> dict[str, PublisherKeyRow]:
        """The registered keys among ``key_ids``, by id; unknown ids are left out."""
        wanted = sorted(set(key_ids))
        if not wanted:
            return {}
        with self._transaction(write=False) as conn:
            rows = conn.execute(select(PublisherKey).where(PublisherKey.key_id.in_(wanted))).mappings()
            return {row["key_id"]: PublisherKeyRow(**row) for row in rows}

    # Model builds

    def add_build(
        self,
        *,
        name: str,
        version: int,
        variant: str,
        task: str,
        manifest: bytes,
        signatures: bytes,
        manifest_sha256: str,
        total_bytes: int,
        publisher_key_id: str,
        now: datetime,
    ) -> ModelBuildRow:
        """Publish a build; publishing the identical manifest again returns the stored row unchanged.

        Raises:
            ValueError: a version below 1 or a naive ``now``.
            AlreadyExists: (name, version, variant) is published with another manifest.
            Conflict: ``version`` is lower than the model's latest version, or other variants of
                this version have another task.
            NotFound: the publisher key is not registered.
        """
        if version < 1:
            raise ValueError(f"version must be at least 1, got {version}")
        require_aware("now", now)
        with self._transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _model_lock_key(name)})
            existing = _build(conn, name, version, variant)
            if existing is not None:
                if existing.manifest_sha256 == manifest_sha256:
                    return existing
                raise AlreadyExists(
                    f"model {name!r} version {version} variant {variant!r} is already published with another "
                    f"manifest (sha256 {existing.manifest_sha256}); publish the change as a new version"
                )
            latest = _latest_version(conn, name)
            if latest is not None and version < latest:
                raise Conflict(
                    f"model {name!r}: version {version} < latest {latest}; versions only move forward "
                    f"(publish version {latest} or higher)"
                )
            other = conn.execute(
                select(ModelBuild.variant, ModelBuild.task).where(
                    ModelBuild.name == name, ModelBuild.version == version, ModelBuild.task != task
                )
            ).first()
            if other is not None:
                raise Conflict(
                    f"model {name!r} version {version} is a {other.task} model (variant {other.variant!r}); "
                    f"variant {variant!r} says {task}"
                )
            if _publisher_key(conn, PublisherKey.key_id == publisher_key_id) is None:
                raise NotFound(f"publisher key {publisher_key_id} is not registered")
            try:
                conn.execute(
                    insert(ModelBuild).values(
                        name=name,
                        version=version,
                        variant=variant,
                        task=task,
                        manifest=manifest,
                        signatures=signatures,
                        manifest_sha256=manifest_sha256,
                        total_bytes=total_bytes,
                        publisher_key_id=publisher_key_id,
                        published_at=now,
                    )
                )
            except IntegrityError as exc:
                raise AlreadyExists(
                    f"model {name!r} version {version} variant {variant!r} was published concurrently"
                ) from exc
            return must(_build(conn, name, version, variant), f"model {name!r} version {version} variant {variant!r}")

    def list_builds(self, name: str | None = None) -> list[ModelBuildRow]:
        """Published builds (of ``name``, if given): by name, newest version first, then variant."""
        query = select(ModelBuild).order_by(ModelBuild.name, ModelBuild.version.desc(), ModelBuild.variant)
        if name is not None:
            query = query.where(ModelBuild.name == name)
        with self._transaction(write=False) as conn:
            return [ModelBuildRow(**row) for row in conn.execute(query).mappings()]

    def get_builds(self, name: str, version: int | None = None) -> list[ModelBuildRow]:
        """The variants of one version of ``name`` (None: the latest version), by variant; [] if none."""
        with self._transaction(write=False) as conn:
            if version is None:
                version = _latest_version(conn, name)
                if version is None:
                    return []
            query = (
                select(ModelBuild)
                .where(ModelBuild.name == name, ModelBuild.version == version)
                .order_by(ModelBuild.variant)
            )
            return [ModelBuildRow(**row) for row in conn.execute(query).mappings()]

    def latest_version(self, name: str) -> int | None:
        """The highest published version of ``name``, or None if it has none."""
        with self._transaction(write=False) as conn:
            return _latest_version(conn, name)


def _publisher_key(conn: Connection, condition: ColumnElement[bool]) -> PublisherKeyRow | None:
    row = conn.execute(select(PublisherKey).where(condition)).mappings().one_or_none()
    return None if row is None else PublisherKeyRow(**row)


def _build(conn: Connection, name: str, version: int, variant: str) -> ModelBuildRow | None:
    query = select(ModelBuild).where(
        ModelBuild.name == name, ModelBuild.version == version, ModelBuild.variant == variant
    )
    row = conn.execute(query).mappings().one_or_none()
    return None if row is None else ModelBuildRow(**row)


def _latest_version(conn: Connection, name: str) -> int | None:
    latest = conn.execute(select(func.max(ModelBuild.version)).where(ModelBuild.name == name)).scalar_one()
    return None if latest is None else int(latest)


def _model_lock_key(name: str) -> int:
    """A signed 64-bit PostgreSQL advisory lock key for publishing to model ``name``."""
    digest = hashlib.sha256(b"edgefleet-model-builds:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
