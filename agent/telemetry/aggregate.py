"""Per-model, per-minute request aggregates: what the agent reports instead of raw inputs.

``MinuteAggregator`` is a pure core: the inference path calls ``record`` with numbers
only (latency, outcome, top-1 confidence, input size) and the current time; the
telemetry loop calls ``drain`` to take the minutes that are over, as ``ModelMinute``
messages for the outbox.

Invariants:
- Nothing about an input but its size is ever recorded: every argument of ``record``
  is a number, a bool or the model key; anything else (text, bytes, arrays) is a
  ``TypeError`` and changes nothing.
- A minute is the UTC wall-clock minute of ``now`` when the request was recorded;
  ``drain(now)`` returns every minute except the one ``now`` is in, which keeps
  accumulating. A clock stepped backwards may reopen a drained minute: ModelMinutes
  with the same (minute, model) are additive, so receivers merge them, never replace.
- At most ``max_keys_per_minute`` distinct models per minute; requests for any further
  model are counted under ``OVERFLOW_KEY`` (``record`` returns True and
  ``overflowed_requests`` grows), so memory stays bounded and no request goes uncounted.
  One minute thus yields at most ``max_keys_per_minute + 1`` ModelMinutes.
- ``latency.count == requests`` for every ModelMinute: failed requests are timed too.
- A request with ``confidence=None`` (a failure, or a task without a score) adds to
  neither ``confidence_sum`` nor ``low_confidence``; the agent passes a confidence for
  every successful classification, so mean confidence is confidence_sum / (requests - errors).
- Thread-safe: the inference path and the telemetry loop may call from different threads.
  Open minutes are held until drained; the owner drains at least once a minute.
"""

from __future__ import annotations

import datetime as dt
import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import NamedTuple

from google.protobuf.timestamp_pb2 import Timestamp

from protos.edgefleet.v1 import common_pb2, telemetry_pb2
from protos.histogram import Histogram

__all__ = [
    "DEFAULT_LOW_CONFIDENCE_THRESHOLD", "DEFAULT_MAX_KEYS_PER_MINUTE", "MAX_KEY_STRING", "OVERFLOW_KEY",
    "MinuteAggregator", "ModelKey",
]  # fmt: skip

DEFAULT_LOW_CONFIDENCE_THRESHOLD = 0.5
DEFAULT_MAX_KEYS_PER_MINUTE = 64
MAX_KEY_STRING = 256


class ModelKey(NamedTuple):
    """Which build served a request: name, version, variant (fp32, int8-dynamic, ...) and task."""

    name: str
    version: int
    variant: str
    task: str


OVERFLOW_KEY = ModelKey(name="_overflow", version=0, variant="", task="")
"""Where requests for models beyond the per-minute cap are counted. Model names start with
a letter or digit, so this name never collides with a real model."""


@dataclass(slots=True)
class _Cell:
    requests: int = 0
    errors: int = 0
    latency: Histogram = field(default_factory=Histogram)
    confidence_sum: float = 0.0
    low_confidence: int = 0
    input_size_sum: float = 0.0
    input_size_max: float = 0.0


def _real(name: str, value: object) -> float:
    # numbers.Real admits numpy scalars (onnxruntime hands back float32) and refuses str/bytes/arrays.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}")
    return number


def _check_key(model: object) -> ModelKey:
    if not isinstance(model, tuple) or len(model) != 4:
        raise TypeError(f"model must be a ModelKey (name, version, variant, task), not {type(model).__name__}")
    key = ModelKey._make(model)
    for name in ("name", "variant", "task"):
        text = getattr(key, name)
        if not isinstance(text, str):
            raise TypeError(f"model {name} must be a str, not {type(text).__name__}")
        if len(text) > MAX_KEY_STRING:
            raise ValueError(f"model {name} is longer than {MAX_KEY_STRING} characters")
    if isinstance(key.version, bool) or not isinstance(key.version, int) or key.version < 0:
        raise TypeError(f"model version must be a non-negative int, got {key.version!r}")
    return key


def _minute_of(now: dt.datetime) -> int:
    if not isinstance(now, dt.datetime) or now.utcoffset() is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    return int(now.timestamp() // 60)


class MinuteAggregator:
    """Counts requests per (UTC minute, model) and hands out completed minutes as ``ModelMinute``."""

    def __init__(
        self,
        *,
        low_confidence_threshold: float = DEFAULT_LOW_CONFIDENCE_THRESHOLD,
        max_keys_per_minute: int = DEFAULT_MAX_KEYS_PER_MINUTE,
    ) -> None:
        """Raises ``ValueError`` if the threshold is outside [0, 1] or the key cap below 1."""
        if not 0.0 <= low_confidence_threshold <= 1.0:
            raise ValueError(f"low_confidence_threshold must be in [0, 1], got {low_confidence_threshold!r}")
        if max_keys_per_minute < 1:
            raise ValueError(f"max_keys_per_minute must be at least 1, got {max_keys_per_minute}")
        self.low_confidence_threshold = float(low_confidence_threshold)
        self.max_keys_per_minute = max_keys_per_minute
        self._minutes: dict[int, dict[ModelKey, _Cell]] = {}
        self._overflowed = 0
        self._lock = threading.Lock()

    @property
    def overflowed_requests(self) -> int:
        """Requests counted under ``OVERFLOW_KEY`` since this aggregator was made."""
        return self._overflowed

    def record(
        self,
        model: ModelKey,
        latency_ms: float,
        ok: bool,
        confidence: float | None,
        input_size: float,
        now: dt.datetime,
    ) -> bool:
        """Count one request; return True if it went to ``OVERFLOW_KEY`` (too many models this minute).

        ``input_size`` is tokens or audio seconds; ``confidence`` the top-1 probability or None.
        Raises ``TypeError`` for an argument of the wrong type (raw text, bytes or arrays
        included) and ``ValueError`` for a negative/NaN/inf number, a confidence outside
        [0, 1] or a naive ``now``; a refused request changes nothing.
        """
        latency = _real("latency_ms", latency_ms)
        size = _real("input_size", input_size)
        if not isinstance(ok, bool):
            raise TypeError(f"ok must be a bool, not {type(ok).__name__}")
        score = None if confidence is None else _real("confidence", confidence)
        if score is not None and score > 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence!r}")
        minute = _minute_of(now)
        with self._lock:
            cells = self._minutes.setdefault(minute, {})
            cell = cells.get(model)
            overflowed = False
            if cell is None:
                key = _check_key(model)
                if len(cells) - (OVERFLOW_KEY in cells) >= self.max_keys_per_minute:
                    key, overflowed = OVERFLOW_KEY, True
                    self._overflowed += 1
                cell = cells.setdefault(key, _Cell())
            cell.requests += 1
            cell.errors += not ok
            cell.latency.observe(latency)
            if score is not None:
                cell.confidence_sum += score
                cell.low_confidence += score < self.low_confidence_threshold
            cell.input_size_sum += size
            cell.input_size_max = max(cell.input_size_max, size)
            return overflowed

    def drain(self, now: dt.datetime) -> list[telemetry_pb2.ModelMinute]:
        """Remove and return every minute other than the one ``now`` is in, oldest first.

        Raises ``ValueError`` for a naive ``now``.
        """
        current = _minute_of(now)
        with self._lock:
            done = sorted(m for m in self._minutes if m != current)
            return self._take(done)

    def drain_all(self) -> list[telemetry_pb2.ModelMinute]:
        """Remove and return every minute, the current one included (for shutdown), oldest first."""
        with self._lock:
            return self._take(sorted(self._minutes))

    def _take(self, minutes: list[int]) -> list[telemetry_pb2.ModelMinute]:
        out: list[telemetry_pb2.ModelMinute] = []
        for minute in minutes:
            cells = self._minutes.pop(minute)
            out.extend(_to_proto(minute, key, cells[key]) for key in sorted(cells))
        return out


def _to_proto(minute: int, key: ModelKey, cell: _Cell) -> telemetry_pb2.ModelMinute:
    return telemetry_pb2.ModelMinute(
        minute=Timestamp(seconds=minute * 60),
        model=common_pb2.ModelRef(name=key.name, version=key.version, variant=key.variant),
        requests=cell.requests,
        errors=cell.errors,
        latency=cell.latency.to_proto(),
        confidence_sum=cell.confidence_sum,
        low_confidence=cell.low_confidence,
        input_size_sum=cell.input_size_sum,
        input_size_max=cell.input_size_max,
        task=key.task,
    )
