"""The telemetry outbox: durable before return, ordered, acked away, capped with counted drops, self-healing."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.telemetry.outbox import OUTBOX_FILENAME, Outbox, OutboxError
from protos.edgefleet.v1 import common_pb2, telemetry_pb2

REPO = Path(__file__).resolve().parents[2]
DROPPED = common_pb2.LifecycleEvent.TELEMETRY_DROPPED


def batch(marker: int = 0, *, padding: int = 0) -> telemetry_pb2.TelemetryBatch:
    return telemetry_pb2.TelemetryBatch(
        device_id="dev-1",
        resources=[telemetry_pb2.ResourceSample(rss_bytes=marker)],
        events=[common_pb2.LifecycleEvent(reason="x" * padding)] if padding else [],
    )


def markers(outbox: Outbox) -> list[int]:
    return [b.resources[0].rss_bytes for _, _, b in outbox.pending(10_000) if b.resources]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / OUTBOX_FILENAME


@pytest.fixture
def outbox(path: Path):
    with Outbox.open(path, boot_id="boot-a") as box:
        yield box


# --- append, pending, ack ------------------------------------------------------------------------


def test_append_assigns_increasing_sequences_and_pending_returns_batches_in_order(outbox):
    assert outbox.append(batch(10)) == ("boot-a", 1)
    assert outbox.append(batch(20)) == ("boot-a", 2)
    pending = outbox.pending(10)
    assert [(b, s) for b, s, _ in pending] == [("boot-a", 1), ("boot-a", 2)]
    assert [(m.boot_id, m.sequence, m.device_id, m.resources[0].rss_bytes) for _, _, m in pending] == [
        ("boot-a", 1, "dev-1", 10),
        ("boot-a", 2, "dev-1", 20),
    ]


def test_append_does_not_change_the_callers_batch(outbox):
    original = batch(1)
    outbox.append(original)
    assert (original.boot_id, original.sequence) == ("", 0)


def test_an_appended_batch_is_committed_before_append_returns(outbox, path):
    outbox.append(batch(7))
    other = sqlite3.connect(path)
    try:
        assert other.execute("SELECT boot_id, sequence FROM batches").fetchall() == [("boot-a", 1)]
    finally:
        other.close()


def test_the_file_uses_wal_with_full_synchronous_commits(outbox, path):
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    assert outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_pending_respects_the_limit(outbox):
    for i in range(5):
        outbox.append(batch(i))
    assert [s for _, s, _ in outbox.pending(2)] == [1, 2]


def test_ack_deletes_once_and_unknown_acks_are_no_ops(outbox):
    outbox.append(batch(1))
    outbox.append(batch(2))
    assert outbox.ack("boot-a", 1) is True
    assert outbox.ack("boot-a", 1) is False
    assert outbox.ack("boot-zz", 2) is False
    assert [s for _, s, _ in outbox.pending(10)] == [2]
    assert outbox.pending_batches == 1


def test_sequences_are_never_reused_after_everything_is_acked(outbox):
    outbox.append(batch())
    outbox.append(batch())
    outbox.ack("boot-a", 1)
    outbox.ack("boot-a", 2)
    assert outbox.append(batch()) == ("boot-a", 3)


def test_reopening_with_the_same_boot_continues_its_sequence(path):
    with Outbox.open(path, boot_id="boot-a") as box:
        box.append(batch())
        box.ack("boot-a", 1)
    with Outbox.open(path, boot_id="boot-a") as box:
        assert box.append(batch()) == ("boot-a", 2)


def test_a_new_boot_starts_at_one_and_earlier_boots_stay_pending_under_their_keys(path):
    with Outbox.open(path, boot_id="boot-a") as box:
        box.append(batch(1))
        box.append(batch(2))
    with Outbox.open(path, boot_id="boot-b") as box:
        assert box.append(batch(3)) == ("boot-b", 1)
        pending = box.pending(10)
    assert [(b, s, m.boot_id, m.sequence) for b, s, m in pending] == [
        ("boot-a", 1, "boot-a", 1),
        ("boot-a", 2, "boot-a", 2),
        ("boot-b", 1, "boot-b", 1),
    ]


def test_concurrent_appends_from_worker_threads_get_distinct_sequences(outbox):
    def work():
        for _ in range(10):
            outbox.append(batch())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(s for _, s, _ in outbox.pending(100)) == list(range(1, 41))


# --- caps and drops ------------------------------------------------------------------------------


def test_beyond_the_batch_cap_the_oldest_batches_are_dropped_and_reported_in_the_next_batch(path):
    with Outbox.open(path, boot_id="boot-a", max_batches=3) as box:
        for i in range(1, 5):
            box.append(batch(i))
        assert markers(box) == [2, 3, 4]
        assert box.dropped_unreported == 1
        box.append(batch(5))
        last = box.pending(10)[-1][2]
        assert last.dropped_batches == 1
        [event] = [e for e in last.events if e.kind == DROPPED]
        assert event.details["dropped_batches"] == "1"
        assert "spool full" in event.reason


def test_beyond_the_byte_cap_the_oldest_batches_are_dropped(path):
    with Outbox.open(path, boot_id="boot-a", max_bytes=2_000) as box:
        for i in range(1, 11):
            box.append(batch(i, padding=400))
            assert box.pending_bytes <= 2_000
        assert markers(box)[-1] == 10
        assert sum(len(m.SerializeToString()) for _, _, m in box.pending(100)) == box.pending_bytes


def test_a_batch_larger_than_the_byte_cap_is_refused_and_takes_no_sequence(path):
    with Outbox.open(path, boot_id="boot-a", max_bytes=1_000) as box:
        with pytest.raises(ValueError, match="more than 1000"):
            box.append(batch(padding=2_000))
        assert box.pending(10) == []
        assert box.append(batch()) == ("boot-a", 1)


def test_the_drop_count_survives_a_restart(path):
    with Outbox.open(path, boot_id="boot-a", max_batches=1) as box:
        box.append(batch(1))
        box.append(batch(2))
    with Outbox.open(path, boot_id="boot-b", max_batches=10) as box:
        box.append(batch(3))
        assert box.pending(10)[-1][2].dropped_batches == 1


operations = st.lists(st.sampled_from(["append", "ack-oldest", "restart"]), max_size=25)


@settings(max_examples=25, deadline=None)
@given(operations, st.integers(1, 4))
def test_every_dropped_batch_is_reported_exactly_once(ops, cap):
    appended = delivered = reported = 0

    def deliver(box: Outbox, limit: int) -> None:
        nonlocal delivered, reported
        for boot_id, seq, message in box.pending(limit):
            box.ack(boot_id, seq)
            delivered += 1
            reported += message.dropped_batches

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / OUTBOX_FILENAME
        box = Outbox.open(path, boot_id="boot-0", max_batches=cap)
        try:
            for step, op in enumerate(ops):
                if op == "append":
                    box.append(batch())
                    appended += 1
                elif op == "ack-oldest":
                    deliver(box, 1)
                else:
                    box.close()
                    box = Outbox.open(path, boot_id=f"boot-{step + 1}", max_batches=cap)
            deliver(box, 10_000)
            assert reported + box.dropped_unreported == appended - delivered
        finally:
            box.close()


# --- corrupt and unreadable files ----------------------------------------------------------------


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_reports_it(path):
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with Outbox.open(path, boot_id="boot-a", clock=lambda: 1_800_000_000.0) as box:
        aside = path.with_name("outbox.db.corrupt-20270115T080000Z")
        assert aside.read_bytes() == garbage
        [event] = box.recovery_events
        assert event.kind == DROPPED and "moved it to outbox.db.corrupt-" in event.reason
        [(_, seq, first)] = box.pending(10)
        assert (seq, list(first.events)) == (1, [event])
        assert box.durable and box.append(batch()) == ("boot-a", 2)


def test_an_outbox_of_an_unknown_schema_version_is_moved_aside(path):
    other = sqlite3.connect(path)
    other.execute("PRAGMA user_version = 99")
    other.close()
    with Outbox.open(path, boot_id="boot-a") as box:
        assert "unknown outbox schema version 99" in box.recovery_events[0].reason
        assert len(list(path.parent.glob("outbox.db.corrupt-*"))) == 1


def test_corruption_found_while_running_keeps_the_boots_sequence(path):
    with Outbox.open(path, boot_id="boot-a") as box:
        for i in range(20):
            box.append(batch(i, padding=3_000))
        other = sqlite3.connect(path)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        with path.open("r+b") as f:
            f.seek(4096)
            f.write(random.Random(1).randbytes(path.stat().st_size - 4096))
        [(_, seq, notice)] = box.pending(100)
        assert seq == 21 and notice.events[0].details["unsent_batches"] == "20"
        assert box.append(batch()) == ("boot-a", 22)


def test_when_no_file_can_be_made_the_outbox_runs_in_memory_and_says_so(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with Outbox.open(blocker / OUTBOX_FILENAME, boot_id="boot-a") as box:
        assert box.durable is False
        assert "kept in memory" in box.recovery_events[0].reason
        assert box.append(batch()) == ("boot-a", 2)


def test_an_undecodable_row_is_deleted_and_counted_as_dropped(outbox, path):
    outbox.append(batch(1))
    other = sqlite3.connect(path)
    other.execute("UPDATE batches SET payload = x'ffffffff'")
    other.commit()
    other.close()
    assert outbox.pending(10) == []
    outbox.append(batch(2))
    assert outbox.pending(10)[0][2].dropped_batches == 1


def test_a_closed_outbox_refuses_work(outbox):
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.append(batch())


@pytest.mark.parametrize(
    "kwargs", [{"boot_id": ""}, {"boot_id": "a/b"}, {"boot_id": "x" * 65}, {"max_batches": 0}, {"max_bytes": 0}]
)
def test_bad_arguments_to_open_are_refused(path, kwargs):
    with pytest.raises(ValueError):
        Outbox.open(path, **({"boot_id": "boot-a"} | kwargs))


# --- durability under SIGKILL --------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from agent.telemetry.outbox import Outbox
    from protos.edgefleet.v1 import common_pb2, telemetry_pb2

    box = Outbox.open(sys.argv[1], boot_id=sys.argv[2])
    n = 0
    while True:
        n += 1
        box.append(telemetry_pb2.TelemetryBatch(
            resources=[telemetry_pb2.ResourceSample(rss_bytes=n)],
            events=[common_pb2.LifecycleEvent(reason="x" * (n % 700))],
        ))
        print(n, flush=True)
    """
)


def _run_until_killed(path: Path, boot_id: str, delay: float, deadline: float) -> list[int]:
    """Start a child appending batches, SIGKILL it ``delay`` s after its first commit; return what it committed."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), boot_id],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out = b""
        while b"\n" not in out:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the child committed nothing before the deadline"
            if select.select([child.stdout], [], [], remaining)[0]:
                chunk = os.read(child.stdout.fileno(), 4096)
                assert chunk, f"the child exited early: {child.stderr.read().decode()}"
                out += chunk
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        out_rest, err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL, err.decode()
    return [int(line) for line in (out + out_rest).split(b"\n")[:-1]]


@pytest.mark.integration
def test_every_committed_batch_survives_sigkill_exactly_once_and_intact(path):
    seed = time.time_ns()
    print(f"random seed {seed}")
    rng = random.Random(seed)
    deadline = time.monotonic() + 60
    committed: dict[str, list[int]] = {}
    for kill in range(5):
        boot = f"boot-{kill}"
        committed[boot] = _run_until_killed(path, boot, rng.uniform(0.0, 0.3), deadline)
        with Outbox.open(path, boot_id=f"check-{kill}") as box:
            assert box.recovery_events == []
            stored: dict[str, list[int]] = {}
            for boot_id, seq, message in box.pending(10_000):
                assert (message.boot_id, message.sequence) == (boot_id, seq)
                assert message.resources[0].rss_bytes == seq and message.events[0].reason == "x" * (seq % 700)
                stored.setdefault(boot_id, []).append(seq)
        for boot_id, told in committed.items():
            seqs = stored[boot_id]
            # Everything it reported is there once; at most one more commit raced the kill.
            assert seqs == list(range(1, len(seqs) + 1))
            assert told == list(range(1, len(told) + 1)) and len(told) <= len(seqs) <= len(told) + 1
