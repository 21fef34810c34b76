"""Reconnect backoff: capped exponential growth with jitter. Pure; deterministic for a seeded rng.

The delay before retry number ``attempt`` (0 = the first retry) is

    ceiling(attempt) = min(max_seconds, initial_seconds * multiplier ** attempt)
    delay(attempt)   = ceiling(attempt) * (1 - j * u),   u drawn uniformly from [0, 1)

where ``j`` is the jitter fraction: 1.0 for ``jitter="full"`` (the delay is anywhere in
``(0, ceiling]``, which spreads a fleet that lost its server at the same moment), 0.0 for
no jitter. Invariants, each covered by a property test:

- ``0 <= delay(attempt) <= max_seconds`` for every attempt, however large;
- ``ceiling`` never decreases as ``attempt`` grows, so neither does the expected delay
  ``ceiling * (1 - j / 2)``; for the same draw ``u`` the delay never decreases either;
- ``BackoffTimer.reset()`` restores the first delay's range: its next delay is at most
  ``initial_seconds``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["Backoff", "BackoffTimer"]


@dataclass(frozen=True)
class Backoff:
    """A reconnect backoff policy. Raises ``ValueError`` on construction if a value is out of range."""

    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    multiplier: float = 2.0
    jitter: Literal["full"] | float = "full"

    def __post_init__(self) -> None:
        for name in ("initial_seconds", "max_seconds", "multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.initial_seconds <= 0:
            raise ValueError(f"initial_seconds must be > 0, got {self.initial_seconds}")
        if self.max_seconds < self.initial_seconds:
            raise ValueError(f"max_seconds ({self.max_seconds}) must be >= initial_seconds ({self.initial_seconds})")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")
        if self.jitter != "full" and (
            isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0.0 <= self.jitter <= 1.0
        ):
            raise ValueError(f'jitter must be "full" or a fraction in [0, 1], got {self.jitter!r}')

    @property
    def jitter_fraction(self) -> float:
        """The share of the ceiling that jitter may take away: 1.0 for ``"full"``."""
        return 1.0 if self.jitter == "full" else float(self.jitter)

    def ceiling(self, attempt: int) -> float:
        """The largest delay for ``attempt``, before jitter. Raises ``ValueError`` if ``attempt < 0``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        try:
            grown = self.initial_seconds * float(self.multiplier) ** attempt
        except OverflowError:  # multiplier ** attempt beyond float range: long past the cap
            return self.max_seconds
        return min(self.max_seconds, grown)

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``attempt`` (0-based). Raises ``ValueError`` if ``attempt < 0``."""
        ceiling = self.ceiling(attempt)
        delay = ceiling * (1.0 - self.jitter_fraction * rng.random())
        # Clamp so float rounding can never break the documented bounds.
        return min(max(delay, 0.0), ceiling)


class BackoffTimer:
    """Counts consecutive failures and hands out the next delay; ``reset()`` after a success.

    The attempt counter stops growing once the ceiling reaches ``max_seconds`` (or at
    once when ``multiplier == 1``), so a device that stays offline for months keeps a
    small counter.
    """

    def __init__(self, policy: Backoff | None = None, *, rng: random.Random | None = None) -> None:
        self._policy = policy if policy is not None else Backoff()
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def policy(self) -> Backoff:
        return self._policy

    @property
    def attempt(self) -> int:
        """The attempt number the next call to ``next_delay()`` will use."""
        return self._attempt

    def next_delay(self) -> float:
        """The delay before the next retry; each call counts one more failure."""
        delay = self._policy.delay(self._attempt, self._rng)
        policy = self._policy
        if policy.multiplier > 1 and policy.ceiling(self._attempt) < policy.max_seconds:
            self._attempt += 1
        return delay

    def reset(self) -> None:
        """Forget past failures: the next delay is drawn from the first attempt's range again."""
        self._attempt = 0
