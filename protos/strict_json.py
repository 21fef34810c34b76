"""Strict, typed reading of the JSON objects edgefleet writes for itself (state files, persisted
state machines): every field named, typed and present, and every error naming the field's path.

``FieldReader(data, "state.targets[0]", error=StateFileError)`` wraps one decoded JSON object:
``keys`` requires exactly the given fields, ``get`` returns one of a given type (an int is
accepted where a float is asked for; a bool is never an int), ``nested`` runs a builder on a
sub-object and names the path in its ValueError. Errors are raised as ``error`` (a ValueError
subclass of the caller's choosing), so each file format keeps its own exception. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class FieldError(ValueError):
    """The default error: a field is missing, unknown or of the wrong type."""


def reject_constant(name: str) -> None:
    """``json.loads(..., parse_constant=reject_constant)``: NaN and Infinity are not numbers here."""
    raise ValueError(f"{name} is not a number")


class FieldReader:
    """Typed field access on one JSON object; every error names the field's path."""

    def __init__(self, data: object, where: str, *, error: type[ValueError] = FieldError) -> None:
        if not isinstance(data, dict):
            raise error(f"{where}: expected an object, got {type(data).__name__}")
        self.data, self.where, self.error = data, where, error

    def keys(self, names: str | Iterable[str]) -> None:
        """Exactly these fields (a space-separated string or an iterable of names)."""
        expected = set(names.split() if isinstance(names, str) else names)
        if unknown := sorted(set(self.data) - expected):
            raise self.error(f"{self.where}: unknown field {unknown[0]!r}")
        if missing := sorted(expected - set(self.data)):
            raise self.error(f"{self.where}: missing field {missing[0]!r}")

    def get(self, key: str, kind: type, *, optional: bool = False) -> Any:
        """The field ``key`` as ``kind``; None only when ``optional``."""
        value = self.data[key]
        if value is None and optional:
            return None
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind):
            raise self.error(f"{self.where}.{key}: expected {kind.__name__}, got {value!r}")
        return value

    def nested(self, key: str, build: Callable[[object, str], Any]) -> Any:
        """``build(value, path)``, turning its ValueError into this reader's error naming the path."""
        try:
            return build(self.data[key], f"{self.where}.{key}")
        except self.error:
            raise
        except ValueError as exc:
            raise self.error(f"{self.where}.{key}: {exc}") from exc
