"""Group commit: many callers' items written by one store call, each caller answered with its own outcome.

Telemetry batches arrive from many sessions at once (gRPC streams, the MQTT bridge). Writing each in
its own transaction costs a commit and a few statements per batch; writing every batch that arrived
while the previous write ran in one transaction costs them once per group. Nothing waits on a timer:
a batch that finds no write running starts one at once, so a quiet server answers as fast as before,
and under load the groups grow by themselves (up to ``max_items``).

Invariants:
- Every submitted item is written exactly once, in one of the ``write`` calls, in submission order
  across and within groups; one ``write`` call runs at a time per ``GroupCommit``.
- A caller gets its own item's outcome: the value, or the exception ``write`` returned for that item
  alone; an exception ``write`` raises (the store unavailable) fails every caller of that group and
  no other group.
- A caller that is cancelled while it waits (its session closed) does not stop the write: its item
  may be stored without its answer being delivered, which for telemetry means a batch stored and
  not acked; the agent resends it and the store reports it as a duplicate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# The write returns one outcome per item: its result, or the exception that refused that item alone.
Write = Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]]


class GroupCommit(Generic[Item, Result]):
    """Hands items to ``write`` in groups; ``submit`` returns the outcome of its own item."""

    def __init__(self, write: Write[Item, Result], *, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._write = write
        self._max_items = max_items
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups = 0  # write calls made, for tests and the metrics of a benchmark
        self.items = 0

    async def submit(self, item: Item) -> Result:
        """Queue ``item`` for the next write and wait for its outcome.

        Raises:
            Exception: what ``write`` returned for this item, or what it raised for the whole group.
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="group-commit")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            group = self._pending[: self._max_items]
            del self._pending[: self._max_items]
            self.groups += 1
            self.items += len(group)
            try:
                outcomes = await self._write([item for item, _ in group])
            except asyncio.CancelledError:
                _fail(group, asyncio.CancelledError())
                _fail(self._pending, asyncio.CancelledError())
                self._pending.clear()
                raise
            except Exception as exc:  # the whole write failed: each caller of this group sees why
                _fail(group, exc)
                continue
            if len(outcomes) != len(group):  # pragma: no cover - a write that breaks its contract
                _fail(group, RuntimeError(f"write returned {len(outcomes)} outcomes for {len(group)} items"))
                continue
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if future.done():  # its caller was cancelled
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


def _fail(group: Sequence[tuple[object, asyncio.Future]], exc: BaseException) -> None:
    for _, future in group:
        if not future.done():
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
