"""GroupCommit: items that arrive while a write runs go into the next write; each caller gets its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.services.group_commit import GroupCommit


class Recorder:
    """A write that records its groups, answers each item with a function of it, and can be held or failed."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next: Exception | None = None

    async def write(self, items: list[int]) -> list[str | Exception]:
        self.groups.append(list(items))
        await self.release.wait()
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return [ValueError(f"odd {i}") if i % 2 else f"stored {i}" for i in items]


def test_a_lone_item_is_written_at_once_in_a_group_of_its_own() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write, max_items=8)
        assert await commit.submit(4) == "stored 4"
        assert recorder.groups == [[4]]

    asyncio.run(main())


def test_items_that_arrive_during_a_write_share_the_next_one_in_order_and_bounded() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write, max_items=3)
        recorder.release.clear()
        first = asyncio.ensure_future(commit.submit(0))
        await asyncio.sleep(0)  # the first write starts and waits
        rest = [asyncio.ensure_future(commit.submit(i)) for i in (2, 4, 6, 8)]
        await asyncio.sleep(0)
        recorder.release.set()
        assert await first == "stored 0"
        assert await asyncio.gather(*rest) == ["stored 2", "stored 4", "stored 6", "stored 8"]
        assert recorder.groups == [[0], [2, 4, 6], [8]]
        assert (commit.groups, commit.items) == (3, 5)

    asyncio.run(main())


def test_each_caller_gets_its_own_items_exception_and_the_others_their_results() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write, max_items=8)
        recorder.release.clear()
        calls = [asyncio.ensure_future(commit.submit(i)) for i in range(4)]
        await asyncio.sleep(0)
        recorder.release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert outcomes[0] == "stored 0" and outcomes[2] == "stored 2"
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "odd 1"
        assert isinstance(outcomes[3], ValueError) and str(outcomes[3]) == "odd 3"

    asyncio.run(main())


def test_a_failed_write_fails_its_group_only() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write, max_items=2)
        recorder.release.clear()
        recorder.fail_next = ConnectionError("store unavailable")
        calls = [asyncio.ensure_future(commit.submit(i)) for i in (0, 2, 4)]
        await asyncio.sleep(0)
        recorder.release.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert [type(o) for o in outcomes[:2]] == [ConnectionError, ConnectionError]
        assert outcomes[2] == "stored 4"
        assert recorder.groups == [[0, 2], [4]]

    asyncio.run(main())


def test_a_cancelled_caller_does_not_stop_the_write_of_the_others() -> None:
    async def main() -> None:
        recorder = Recorder()
        commit = GroupCommit(recorder.write, max_items=8)
        recorder.release.clear()
        gone = asyncio.ensure_future(commit.submit(0))
        stays = asyncio.ensure_future(commit.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        recorder.release.set()
        assert await stays == "stored 2"
        assert gone.cancelled()
        assert recorder.groups == [[0, 2]]  # the cancelled caller's item was written all the same

    asyncio.run(main())


def test_max_items_must_be_positive() -> None:
    async def write(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(write, max_items=0)
