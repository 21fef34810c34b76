"""The store's exception tree, split by what the caller should do.

    StoreError                 base of everything the store raises on purpose
     ├── NotFound              the named row does not exist: report it, do not retry
     ├── AlreadyExists         the name or id is taken: pick another, do not retry
     ├── Conflict              the row is in a state that forbids the change (a used join token)
     └── StoreUnavailable      the database cannot be reached or written: retry later

Invalid arguments (a naive datetime, an unknown role) are programming errors and raise
``ValueError`` before any SQL runs. SQLAlchemy's connection failures are mapped to
``StoreUnavailable`` once, in ``store.py``, with ``raise ... from exc``; any other
SQLAlchemy error escaping the store is a bug.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class NotFound(StoreError):
    """The row the caller named does not exist; the message names it."""


class AlreadyExists(StoreError):
    """A row with the same key already exists; nothing was written."""


class Conflict(StoreError):
    """The row exists but its state forbids the change (a used join token); nothing was written."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, opened or written; retry later. The message names the URL, never its
    password."""
