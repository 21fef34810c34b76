"""Latency histogram maths for ``LatencyHistogram`` scheme 1, shared by agent and control plane.

Scheme 1 has 64 fixed log-scale buckets. Bucket ``i`` counts samples in
``(bound[i-1], bound[i]]`` with ``bound[i] = 0.05 ms * 1.25**i``; bucket 0 is
``[0, 0.05]`` (a zero latency from a coarse clock lands there) and bucket 63 is
open-ended, ``(bound[62], inf)``.

Invariants:
- The bounds are the IEEE doubles ``BASE_MS * GROWTH**i`` as Python computes them
  (``UPPER_BOUNDS_MS``); ``bucket_index`` compares against that table, never a logarithm,
  so a sample equal to a bound lands in the bucket the bound closes, always.
- A ``Histogram`` holds only finite, non-negative numbers; ``max_ms`` lies in the highest
  non-empty bucket, and an empty histogram has ``sum_ms == max_ms == 0``.
- ``merge`` adds counts and sums and takes the larger max: counts and max are exactly
  associative and commutative; ``sum_ms`` is commutative and associative up to float rounding.
- ``quantile`` estimates within one bucket: the estimate lies in the bucket of the exact
  (nearest-rank) quantile, so its relative error is below one bucket width, 25%
  (``GROWTH - 1``), for buckets 1..62. Bucket 0 has an absolute error of at most 0.05 ms,
  bucket 63 at most ``max_ms - bound[62]``. The estimate is never above ``max_ms`` nor below 0.

Wire form (``to_proto``): ``counts`` with trailing zero buckets trimmed, so an empty
histogram sends no counts. ``from_proto`` accepts 0 to 64 counts; missing trailing
buckets are zero.

No I/O here: bytes and numbers in, numbers out; bad input raises ``ValueError``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from protos.edgefleet.v1 import telemetry_pb2

__all__ = [
    "BASE_MS", "BUCKETS", "GROWTH", "MAX_COUNT", "SCHEME", "UPPER_BOUNDS_MS",
    "Histogram", "bucket_index", "bucket_range",
]  # fmt: skip

SCHEME = 1
BASE_MS = 0.05
GROWTH = 1.25
BUCKETS = 64

UPPER_BOUNDS_MS: tuple[float, ...] = tuple(BASE_MS * GROWTH**i for i in range(BUCKETS - 1)) + (math.inf,)
"""Inclusive upper bound of each bucket; the last is ``inf`` (open-ended)."""

# Total samples a histogram may hold: below 2**53 every count, and every rank the
# quantile estimate computes from them, is an exact double. A device at 10k requests
# per second takes 28,000 years to get there; a fleet-wide merge is far below it too.
MAX_COUNT = 2**53 - 1

_FINITE_BOUNDS = UPPER_BOUNDS_MS[:-1]
_NUMBER_TYPES = (int, float)


def _check_sample(ms: float) -> float:
    if isinstance(ms, bool) or not isinstance(ms, int | float):
        raise TypeError(f"latency must be a number of milliseconds, not {type(ms).__name__}")
    if not math.isfinite(ms) or ms < 0:
        raise ValueError(f"latency must be a finite, non-negative number of milliseconds, got {ms!r}")
    return float(ms)


def bucket_index(ms: float) -> int:
    """Return the scheme-1 bucket of a latency in milliseconds.

    A value equal to ``UPPER_BOUNDS_MS[i]`` is in bucket ``i``; the next double above it is
    in bucket ``i + 1``. Raises ``ValueError`` for a negative, NaN or infinite value and
    ``TypeError`` for a non-number.
    """
    return bisect.bisect_left(_FINITE_BOUNDS, _check_sample(ms))


def _index_of_checked(value: float) -> int:
    return bisect.bisect_left(_FINITE_BOUNDS, value)


def bucket_range(index: int) -> tuple[float, float]:
    """Return ``(lower, upper)`` of a bucket: samples ``x`` with ``lower < x <= upper`` (bucket 0 includes 0)."""
    if not 0 <= index < BUCKETS:
        raise ValueError(f"bucket index must be in 0..{BUCKETS - 1}, got {index}")
    lower = 0.0 if index == 0 else UPPER_BOUNDS_MS[index - 1]
    return lower, UPPER_BOUNDS_MS[index]


@dataclass(slots=True)
class Histogram:
    """A scheme-1 latency histogram: 64 counts, the sum and the max of the samples in ms.

    Build one empty and ``observe`` samples, or decode one with ``from_proto``. Not thread-safe.
    """

    counts: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    sum_ms: float = 0.0
    max_ms: float = 0.0

    def __post_init__(self) -> None:
        _validate(self.counts, self.sum_ms, self.max_ms)

    @property
    def count(self) -> int:
        """Number of samples."""
        return sum(self.counts)

    def observe(self, ms: float) -> None:
        """Count one latency sample. Raises ``ValueError`` for a negative/NaN/inf value or when full."""
        value = _check_sample(ms)
        if self.count >= MAX_COUNT:
            raise ValueError(f"histogram is full ({MAX_COUNT} samples)")
        self.counts[_index_of_checked(value)] += 1
        self.sum_ms += value
        if value > self.max_ms:
            self.max_ms = value

    def merge(self, other: Histogram) -> Histogram:
        """Return a new histogram holding the samples of both; neither input changes.

        Raises ``ValueError`` if the merged count would exceed ``MAX_COUNT``.
        """
        if not isinstance(other, Histogram):
            raise TypeError(f"can only merge a Histogram, not {type(other).__name__}")
        if self.count + other.count > MAX_COUNT:
            raise ValueError(f"merged histogram would exceed {MAX_COUNT} samples")
        return Histogram(
            counts=[a + b for a, b in zip(self.counts, other.counts, strict=True)],
            sum_ms=self.sum_ms + other.sum_ms,
            max_ms=max(self.max_ms, other.max_ms),
        )

    def quantile(self, q: float) -> float:
        """Estimate the ``q``-quantile (0 <= q <= 1) in ms by linear interpolation inside its bucket.

        The exact quantile is the nearest-rank sample (the ``ceil(q * count)``-th smallest,
        at least the first); the estimate lies in that sample's bucket, so it is off by
        less than one bucket width (25% relative for buckets 1..62; see the module doc).
        ``quantile(1)`` is ``max_ms``. Raises ``ValueError`` when q is outside [0, 1] or NaN,
        or the histogram is empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        total = self.count
        if total == 0:
            raise ValueError("quantile of an empty histogram")
        rank = max(1, math.ceil(q * total))
        index, below = 0, 0
        while below + self.counts[index] < rank:
            below += self.counts[index]
            index += 1
        n = self.counts[index]
        lower, upper = bucket_range(index)
        upper = min(upper, self.max_ms)  # the max sample is in the highest non-empty bucket
        estimate = lower + (upper - lower) * ((rank - below) / n)
        # Rounding must not push the estimate out of its bucket (lower is exclusive).
        floor = 0.0 if index == 0 else math.nextafter(lower, math.inf)
        return max(floor, min(estimate, upper))

    def to_proto(self) -> telemetry_pb2.LatencyHistogram:
        """Return the wire form, with trailing zero buckets trimmed."""
        last = _highest_nonzero(self.counts)
        return telemetry_pb2.LatencyHistogram(
            scheme=SCHEME, counts=self.counts[: last + 1], sum_ms=self.sum_ms, max_ms=self.max_ms
        )

    @classmethod
    def from_proto(cls, msg: telemetry_pb2.LatencyHistogram) -> Histogram:
        """Decode and validate a ``LatencyHistogram``.

        Raises ``ValueError`` when the scheme is not 1, there are more than 64 counts, the
        total count exceeds ``MAX_COUNT``, ``sum_ms``/``max_ms`` are negative, NaN or
        infinite, or ``max_ms`` does not lie in the highest non-empty bucket.

        The counts are checked once, as they come off the wire: ``uint64`` counts are
        non-negative integers already, so only the totals need checking (this runs per
        telemetry point on the control plane).
        """
        if msg.scheme != SCHEME:
            raise ValueError(f"unsupported latency histogram scheme {msg.scheme} (this build knows {SCHEME})")
        wire = msg.counts
        if len(wire) > BUCKETS:
            raise ValueError(f"latency histogram has {len(wire)} counts, at most {BUCKETS} allowed")
        counts = wire[:]  # a list of its ints
        sum_ms, max_ms = msg.sum_ms, msg.max_ms
        _validate_totals(counts, sum_ms, max_ms)
        counts += [0] * (BUCKETS - len(counts))
        return cls._validated(counts, sum_ms, max_ms)

    @classmethod
    def _validated(cls, counts: list[int], sum_ms: float, max_ms: float) -> Histogram:
        """A histogram of values that passed ``_validate``'s checks already, built without running them again."""
        histogram = object.__new__(cls)
        histogram.counts, histogram.sum_ms, histogram.max_ms = counts, sum_ms, max_ms
        return histogram


def _validate(counts: list[int], sum_ms: float, max_ms: float) -> None:
    if len(counts) != BUCKETS:
        raise ValueError(f"a histogram has exactly {BUCKETS} counts, got {len(counts)}")
    if set(map(type, counts)) != {int} or min(counts) < 0:  # whole-list checks: this runs per telemetry point
        bad = next(n for n in counts if type(n) is not int or n < 0)
        raise ValueError(f"bucket counts must be non-negative integers, got {bad!r}")
    _validate_totals(counts, sum_ms, max_ms)


def _validate_totals(counts: list[int], sum_ms: float, max_ms: float) -> None:
    """The checks of ``_validate`` beyond the counts' number and type, for non-negative integer ``counts``
    that may lack trailing zero buckets (the wire form): total, ``sum_ms``/``max_ms``, and ``max_ms`` in the
    highest non-empty bucket."""
    total = sum(counts)
    if total > MAX_COUNT:
        raise ValueError(f"histogram holds {total} samples, at most {MAX_COUNT} allowed")
    for name, value in (("sum_ms", sum_ms), ("max_ms", max_ms)):
        if not isinstance(value, _NUMBER_TYPES) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite, non-negative number, got {value!r}")
    if total == 0:
        if sum_ms or max_ms:
            raise ValueError("an empty histogram must have sum_ms and max_ms of 0")
        return
    highest = _highest_nonzero(counts)
    if bucket_index(max_ms) != highest:
        raise ValueError(f"max_ms {max_ms!r} is not in the highest non-empty bucket ({highest})")


def _highest_nonzero(counts: list[int]) -> int:
    """Index of the last non-zero count, -1 if none (a scan in C: this runs per telemetry point)."""
    if counts and counts[-1]:
        return len(counts) - 1  # the wire form, whose trailing zero buckets are trimmed
    return bytes(map(bool, counts)).rfind(1)
