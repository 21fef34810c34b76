"""Telemetry store benchmark: CPU per telemetry point in ``parse_batch`` and ``TelemetryStore.ingest_batches``.

What runs. ``--devices`` devices (default 64) each make ``--batches`` batches (default 20) shaped like
``mqtt_ingest.py``'s: ``--minutes`` minutes x ``--models`` models (default 5 x 4 = 20 points a batch),
10 requests each (10 latency samples in the histogram), every point its own (device, minute, model)
row. The batches are taken in arrival order (every device's batch 1, then every device's batch 2, ...)
and stored in groups of ``--group`` batches (default 64, the server's group commit:
``TELEMETRY_GROUP_MAX_BATCHES``), one ``ingest_batches`` call each, in this process, into a fresh
store: a SQLite file in a temp dir and, when PostgreSQL answers (``--postgres``, default
``postgresql://postgres@127.0.0.1:5432/test``), a fresh schema that is dropped afterwards. Each of
``--rounds`` rounds (default 3) times ``parse_batch`` over every batch, then stores them all into a
fresh store (fresh schema).

Printed, per backend: CPU of this process (``time.process_time``: the control plane's side only, not
the PostgreSQL server's) per point for ``parse_batch`` alone and for ``ingest_batches`` as a whole
(parse included), and points/s of wall time for ``ingest_batches``; the best of the rounds, as a
table on stdout then one JSON line (also written to ``--json-out``). The stored check: request
totals read back (``latency``) must be exactly points x 10, and a second pass over the first group
must find every batch already stored.

The machine is small and shared: compare numbers measured in one run, side by side (run it under
``nice``), not numbers across runs.

Rerun (from the repository root):

    nice .venv/bin/python scripts/bench/telemetry_store.py
    nice .venv/bin/python scripts/bench/telemetry_store.py --devices 32 --batches 10 --rounds 1 --no-postgres

Exit status: 0 when every backend stored every point exactly once; 1 when a check failed; 2 if the
set-up failed (e.g. ``--postgres`` given explicitly and not answering).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchkit import (  # noqa: E402
    BENCH_REQUESTS_PER_POINT,
    BenchError,
    cpu_model,
    print_result_line,
    print_rows,
    say,
    telemetry_batch,
)

from controlplane.services.context import TELEMETRY_GROUP_MAX_BATCHES  # noqa: E402
from controlplane.store import Store  # noqa: E402
from controlplane.store.telemetry import parse_batch  # noqa: E402
from protos.edgefleet.v1 import telemetry_pb2  # noqa: E402

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
FLEET = "bench"
BOOT_ID = "boot-mqtt"
REQUESTS_PER_POINT = BENCH_REQUESTS_PER_POINT
Groups = list[list[tuple[str, telemetry_pb2.TelemetryBatch]]]
NOW = dt.datetime(2026, 3, 4, 5, 6, tzinfo=dt.UTC)  # the start of a minute: make_batch counts back from it


def make_batch(args: argparse.Namespace, device_id: str, sequence: int) -> telemetry_pb2.TelemetryBatch:
    """Batch ``sequence`` (1-based) of ``device_id``, as ``mqtt_ingest.make_batch`` builds it: ``args.minutes``
    minutes (counting back from ``NOW``, each batch its own) x ``args.models`` models, one new row each."""
    first = (sequence - 1) * args.minutes
    minutes = [NOW - dt.timedelta(minutes=first + j + 1) for j in range(args.minutes)]
    return telemetry_batch(device_id, BOOT_ID, sequence, minutes, args.models)


def make_groups(args: argparse.Namespace) -> tuple[list[str], Groups]:
    """The devices and their batches in arrival order, cut into groups of ``args.group``."""
    devices = [f"bench-{i:04d}" for i in range(args.devices)]
    items = [(d, make_batch(args, d, s)) for s in range(1, args.batches + 1) for d in devices]
    return devices, [items[i : i + args.group] for i in range(0, len(items), args.group)]


def enroll(store: Store, devices: list[str]) -> None:
    """Enroll ``devices`` (ingest refuses batches of unknown devices), each with its own join token."""
    for device_id in devices:
        store.create_join_token(
            token_id=f"jt-{device_id}",
            fleet=FLEET,
            secret_sha256="5e" * 32,
            labels={},
            publisher_key_ids=[],
            expires_at=NOW + dt.timedelta(hours=1),
            now=NOW,
        )
        store.enroll_device(
            token_id=f"jt-{device_id}",
            device_id=device_id,
            fleet=FLEET,
            labels={},
            certificate_sha256="c3" * 32,
            certificate_serial="1",
            facts={},
            agent_version="bench",
            now=NOW,
        )


@contextlib.contextmanager
def sqlite_store(devices: list[str]) -> Iterator[Store]:
    """A fresh SQLite store in a temp dir, with ``devices`` enrolled."""
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-bench-telemetry-") as tmp,
        Store.open(f"sqlite:///{Path(tmp) / 'edgefleet.db'}") as store,
    ):
        enroll(store, devices)
        yield store


@contextlib.contextmanager
def postgres_store(url: str, devices: list[str]) -> Iterator[Store]:
    """A fresh store in a new schema of ``url`` (dropped afterwards), with ``devices`` enrolled."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    schema = f"bench_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        with Store.open(scoped.render_as_string(hide_password=False)) as store:
            enroll(store, devices)
            yield store
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def postgres_answers(url: str) -> str | None:
    """None if ``url`` accepts a connection, else why not."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def time_parse(groups: Groups, points: int) -> float:
    """µs of CPU per point for ``parse_batch`` over every batch."""
    started = time.process_time()
    for group in groups:
        for _, batch in group:
            parse_batch(batch)
    return 1e6 * (time.process_time() - started) / points


def time_ingest(store: Store, groups: Groups, points: int) -> dict:
    """Store every group with one ``ingest_batches`` call each; µs of CPU per point and points/s."""
    cpu = 0.0
    wall = 0.0
    for group in groups:
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        outcomes = store.ingest_batches(group, NOW)
        cpu += time.process_time() - started_cpu
        wall += time.perf_counter() - started_wall
        if outcomes != [False] * len(group):
            raise BenchError(f"a batch was not stored fresh: {outcomes[:3]}...")
    return {"ingest_us_per_point": 1e6 * cpu / points, "points_per_second": points / wall}


def check_stored(store: Store, groups: Groups, points: int) -> bool:
    """Every point stored once: request totals add up, and a resend is found already stored."""
    total = sum(row.requests for row in store.latency(since=dt.datetime(1970, 1, 1, tzinfo=dt.UTC)))
    resent = store.ingest_batches(groups[0], NOW)
    return total == points * REQUESTS_PER_POINT and resent == [True] * len(groups[0])


def run_backend(
    name: str, open_store: Callable[[], contextlib.AbstractContextManager[Store]], groups: Groups, rounds: int
) -> dict:
    """``rounds`` rounds on one backend: the best (and median) CPU per point, the best rate, the stored check."""
    points = sum(len(batch.minutes) for group in groups for _, batch in group)
    parse, ingest, rate, stored = [], [], [], True
    for round_ in range(1, rounds + 1):
        parse.append(time_parse(groups, points))
        with open_store() as store:
            result = time_ingest(store, groups, points)
            stored = stored and check_stored(store, groups, points)
        ingest.append(result["ingest_us_per_point"])
        rate.append(result["points_per_second"])
        say(f"{name} round {round_}: parse {parse[-1]:.1f} µs/point, ingest {ingest[-1]:.1f} µs/point")
    return {
        "points": points,
        "parse_us_per_point": min(parse),
        "ingest_us_per_point": min(ingest),
        "ingest_us_per_point_median": statistics.median(ingest),
        "points_per_second": max(rate),
        "stored_once": stored,
    }


def run(args: argparse.Namespace) -> dict:
    devices, groups = make_groups(args)
    result: dict = {
        "shape": {
            "devices": args.devices,
            "batches": args.batches,
            "minutes": args.minutes,
            "models": args.models,
            "group": args.group,
            "rounds": args.rounds,
        },
        "cpu": cpu_model(),
        "python": platform.python_version(),
    }
    result["sqlite"] = run_backend("sqlite", lambda: sqlite_store(devices), groups, args.rounds)
    if args.postgres is None:
        return result
    why_not = postgres_answers(args.postgres)
    if why_not is not None:
        if args.postgres != DEFAULT_POSTGRES:
            raise BenchError(f"--postgres {args.postgres} does not answer: {why_not}")
        say(f"PostgreSQL skipped: {why_not}")
        return result
    postgres = args.postgres
    result["postgresql"] = run_backend("postgresql", lambda: postgres_store(postgres, devices), groups, args.rounds)
    return result


def print_table(result: dict) -> None:
    rows = []
    for backend in ("sqlite", "postgresql"):
        if backend in result:
            r = result[backend]
            rows.append(
                (
                    backend,
                    f"parse_batch {r['parse_us_per_point']:.1f} µs/point; ingest_batches "
                    f"{r['ingest_us_per_point']:.1f} µs/point (median {r['ingest_us_per_point_median']:.1f}); "
                    f"{r['points_per_second']:,.0f} points/s; stored once: {r['stored_once']}",
                )
            )
    print_rows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=64, help="devices (default 64)")
    parser.add_argument("--batches", type=int, default=20, help="batches per device (default 20)")
    parser.add_argument("--minutes", type=int, default=5, help="minutes per batch (default 5)")
    parser.add_argument("--models", type=int, default=4, help="models per minute (default 4)")
    parser.add_argument(
        "--group", type=int, default=TELEMETRY_GROUP_MAX_BATCHES, help="batches per ingest_batches call (64)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh store (default 3)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help=f"PostgreSQL URL (default {DEFAULT_POSTGRES})")
    parser.add_argument("--no-postgres", dest="postgres", action="store_const", const=None, help="SQLite only")
    parser.add_argument("--json-out", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)
    if min(args.devices, args.batches, args.minutes, args.models, args.group, args.rounds) < 1:
        parser.error("--devices, --batches, --minutes, --models, --group and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        say(f"failed: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    print_table(result)
    print_result_line(result, args.json_out)
    stored = all(result[b]["stored_once"] for b in ("sqlite", "postgresql") if b in result)
    return 0 if stored else 1


if __name__ == "__main__":
    sys.exit(main())
