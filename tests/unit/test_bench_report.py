"""scripts/bench/report.py, the pure part: result JSON → rows → the markdown block → the marked document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench.report import (
    BENCHMARKS,
    END,
    START,
    ReportError,
    build_block,
    main,
    replace_block,
    serving_rows,
    write,
)

SESSION = {
    "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"},
    "params": {"agents": 200, "workers": 2, "duration_seconds": 60.0, "heartbeat_seconds": 1},
    "join": {
        "all_enrolled_seconds": 2.62,
        "all_open_seconds": 2.68,
        "enroll_p50_seconds": 0.47,
        "enroll_p95_seconds": 0.55,
    },
    "steady": {
        "heartbeats": 12000,
        "heartbeats_per_second": 200.0,
        "ideal_heartbeats_per_second": 200.0,
        "window_seconds": 60.0,
        "server_cpu_seconds_per_1000_heartbeats": 0.30,
        "server_cpu_percent": 6.0,
    },
    "server_idle_rss_bytes": 102.3 * 2**20,
    "server_end_rss_bytes": 129.8 * 2**20,
    "online_check": {"online": 200, "listed": 200, "ok": True},
}
SERVING = {
    "model": "MLP 256-1024-1024-16 fp32, 1 thread",
    "calls": 3000,
    "bare_p50_ms": 0.084,
    "bare_p99_ms": 0.249,
    "local_api_p50_ms": 0.591,
    "local_api_p99_ms": 1.091,
    "empty_call_p50_ms": 0.451,
    "empty_call_p99_ms": 0.867,
    "overhead_p50_ms": 0.507,
    "agent_rss_bytes": 84.7 * 2**20,
    "bare_rss_bytes": 65.7 * 2**20,
    "rss_ratio": 1.29,
    "fast_p50_ms": 0.146,
    "fast_p99_ms": 0.31,
    "fast_empty_call_p50_ms": 0.061,
    "fast_overhead_p50_ms": 0.062,
    "agent_full_import_rss_bytes": 114.8 * 2**20,
    "full_import_rss_ratio": 1.63,
    "machine": "2 cores",
}
AGENT_MEMORY = {
    "model": "snips-nlu-student:1:fp32",
    "requests": 200,
    "agent_rss_bytes": 145.6 * 2**20,
    "agent_anon_bytes": 72.9 * 2**20,
    "bare_rss_bytes": 65.1 * 2**20,
    "rss_ratio": 145.6 / 65.1,
}
ARTIFACT = {
    "blob_mib": 100,
    "edgefleet_mib_per_s": 526.0,
    "raw_loopback_mib_per_s": 1743.0,
    "ratio": 526.0 / 1743.0,
    "fetch_runs_seconds": [0.2, 0.19, 0.21, 0.2, 0.2],
    "stream_only_mib_per_s": 1680.0,
    "grpc_mib_per_s": 420.0,
    "grpc_ratio": 420.0 / 1743.0,
    "cut_at_bytes": 52428800,
    "resume_transferred_bytes": 52428800,
    "cores": 2,
}


def cell(variant: str, metric: float, ok: bool, why: str = "") -> dict:
    return {"variant": variant, "metric": metric, "ok": ok, "why": why}


SELECTION = [
    {
        "model": "fsdd-digits",
        "device_class": "vehicle",
        "objective": "fastest",
        "chosen": cell("int8-static-qdq", 0.133, True),
        "fixed": {"fp32": cell("fp32", 0.136, True), "int8-dynamic": cell("int8-dynamic", 12.3, True)},
        "verdict": True,
        "note": "",
    },
    {
        "model": "snips-nlu-student",
        "device_class": "vehicle",
        "objective": "fastest",
        "chosen": cell("int8-dynamic", 0.962, True),
        "fixed": {"fp32": cell("fp32", 0.136, False, "memory"), "int8-dynamic": cell("int8-dynamic", 0.962, True)},
        "verdict": True,
        "note": "",
    },
]
ROLLOUT = {
    "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"},
    "params": {"agents": 500, "workers": 4, "waves": [1, 10, 50, 100]},
    "good": {
        "state": "completed",
        "total_seconds": 45.99,
        "elapsed_seconds": 46.0,
        "server_cpu_seconds": 40.71,
        "server_rss_peak_bytes": 231.8 * 2**20,
    },
    "bad": {
        "state": "rolled_back",
        "regression": {
            "first_bad_sent_to_rollback_seconds": 0.86,
            "first_bad_acked_to_rollback_seconds": 0.86,
            "rollback_to_rolled_back_seconds": 0.69,
            "rollback_decision_wave": 1,
            "touched_devices": 5,
        },
    },
}
MQTT_INGEST = {
    "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"},
    "params": {"devices": 100, "workers": 2, "points_per_batch": 20, "window": 4, "points_per_phase": 40000},
    "raw": {"points_per_second": 100000.0},
    "floor": {"points_per_second": 30000.0},
    "mqtt": {
        "points_per_second": 1500.0,
        "server_cpu_seconds_per_1000_points": 0.45,
        "ack_latency_p50_ms": 250.0,
        "stored_points": 40000,
        "stored_once": True,
    },
    "grpc": {
        "points_per_second": 2000.0,
        "server_cpu_seconds_per_1000_points": 0.4,
        "ack_latency_p50_ms": 180.0,
        "stored_points": 39980,
        "stored_once": False,
    },
}
TELEMETRY_STORE = {
    "shape": {"group": 64},
    "sqlite": {
        "ingest_us_per_point": 22.7,
        "parse_us_per_point": 7.4,
        "points_per_second": 40000.0,
        "stored_once": True,
    },
    "postgresql": {
        "ingest_us_per_point": 24.3,
        "parse_us_per_point": 7.1,
        "points_per_second": 24000.0,
        "stored_once": False,
    },
}
RESULTS = {
    "session": SESSION,
    "serving": SERVING,
    "agent_memory": AGENT_MEMORY,
    "artifact": ARTIFACT,
    "selection": SELECTION,
    "rollout": ROLLOUT,
    "mqtt_ingest": MQTT_INGEST,
    "telemetry_store": TELEMETRY_STORE,
}

DOC = """# Performance

Every number here comes from a script, run on the machine named,
with the command to rerun it.

## Fleet sessions

| metric | value | compared with |
|---|---|---|
| heartbeats | 200.0 | ideal 200 |
"""


def record(name: str, *, mode: str = "quick", exit_code: int = 0) -> dict:
    return {
        "benchmark": name,
        "command": f"`.venv/bin/python scripts/bench/{name}.py --json-out .edgefleet/bench/{name}.json`",
        "mode": mode,
        "exit_code": exit_code,
        "started": "2026-11-30T10:00:00",
        "finished": "2026-11-30T10:01:00",
        "machine": {"cores": 2, "cpu_model": "AMD EPYC 7B13", "python": "3.11.7"},
    }


def fill(results: Path, names: list[str] | None = None, *, mode: str = "quick") -> None:
    results.mkdir(parents=True, exist_ok=True)
    for name in names if names is not None else list(RESULTS):
        (results / f"{name}.json").write_text(json.dumps(RESULTS[name]))
        (results / f"{name}.run.json").write_text(json.dumps(record(name, mode=mode)))


def table_rows(block: str) -> list[list[str]]:
    lines = [line for line in block.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[1:]]  # without the header


def test_every_benchmark_script_exists_and_has_rows() -> None:
    root = Path(__file__).resolve().parents[2]
    not_benchmarks = {"report", "benchkit"}  # the runner and the benchmarks' shared helpers
    assert {b.name for b in BENCHMARKS} == {p.stem for p in (root / "scripts/bench").glob("*.py")} - not_benchmarks
    for bench in BENCHMARKS:
        assert bench.rows(RESULTS[bench.name]), bench.name


def test_block_has_one_table_with_the_headline_numbers(tmp_path: Path) -> None:
    fill(tmp_path)
    block = build_block(tmp_path)
    first, blank, header, rule, *_ = block.splitlines()
    assert "quick mode" in first and blank == ""
    assert header == "| metric | value | compared with | machine | date | command |"
    assert rule == "|---|---|---|---|---|---|"
    rows = table_rows(block)
    assert all(len(r) == 6 for r in rows)
    by_metric = {r[0]: r for r in rows}
    hb = by_metric["session: heartbeats handled per second (200 agents)"]
    assert hb[1] == "200.0" and "ideal 200 → 100%" in hb[2]
    assert hb[3] == "2 cores, AMD EPYC 7B13" and hb[4] == "2026-11-30"
    assert hb[5].startswith("`.venv/bin/python scripts/bench/session.py")
    fetch = by_metric["artifact: HTTPS `fetch_blob_https` of 100 MiB (median of 5)"]
    assert fetch[1] == "526 MiB/s" and "raw loopback copy 1,743 MiB/s → 30%" in fetch[2] and "not met" in fetch[2]
    grpc = by_metric["artifact: gRPC `fetch_blob` (the fallback), same rounds"]
    assert grpc[1] == "420 MiB/s" and "→ 24%" in grpc[2]
    store = by_metric["telemetry store: `ingest_batches` CPU per point, sqlite"]
    assert store[1] == "22.7 µs" and "40,000 points/s in groups of 64 batches; stored once" in store[2]
    assert "stored: **FAIL**" in by_metric["telemetry store: `ingest_batches` CPU per point, postgresql"][2]
    rss = by_metric["serving: serving process RSS"]
    assert rss[1] == "84.7 MiB" and "1.29× (goal ≤ 1.3×): met" in rss[2]
    whole = by_metric["agent memory: the whole `edgefleet agent` serving snips-nlu-student:1:fp32 (200 requests)"]
    assert whole[1] == "145.6 MiB (anonymous 72.9 MiB)" and "65.1 MiB → 2.24× (goal ≤ 1.3×): **not met**" in whole[2]
    fast = by_metric["serving: fast socket `Infer` p50 (same model, same calls, interleaved)"]
    assert fast[1] == "0.146 ms (p99 0.310)" and "+0.062 ms (goal ≤ 0.300 ms): met" in fast[2]
    assert by_metric["serving: serving process RSS with every agent module imported"][1] == "114.8 MiB"
    never_worse = by_metric["selection: chosen variant never worse than a fixed policy"]
    assert never_worse[1] == "2 / 2 (model, class) pairs" and "always fp32 meets them in 1/2" in never_worse[2]
    good = by_metric["rollout: good version to 500 devices (waves 1,10,50,100)"]
    assert good[1] == "45.99 s, completed" and "88% of one core" in good[2]
    assert by_metric["rollout: regression, first bad batch sent → rollback decided"][1] == "0.86 s"
    assert not any(r[1] == "not run" for r in rows)


def test_missing_result_gives_not_run_and_no_numbers(tmp_path: Path) -> None:
    fill(tmp_path, ["session", "serving", "selection", "rollout"])
    rows = table_rows(build_block(tmp_path))
    artifact = [r for r in rows if r[0].startswith("artifact")]
    assert artifact == [["artifact", "not run", "—", "—", "—", "`scripts/bench/artifact.py`"]]


def test_no_results_at_all(tmp_path: Path) -> None:
    block = build_block(tmp_path / "absent")
    assert block.splitlines()[0].startswith("No benchmark results yet")
    assert [r[1] for r in table_rows(block)] == ["not run"] * len(BENCHMARKS)


def test_failed_run_without_result_says_so(tmp_path: Path) -> None:
    fill(tmp_path, ["session", "serving", "artifact", "rollout"])
    (tmp_path / "selection.run.json").write_text(json.dumps(record("selection", exit_code=2)))
    rows = table_rows(build_block(tmp_path))
    (selection,) = [r for r in rows if r[0].startswith("selection")]
    assert selection[1] == "failed (exit 2), no result" and selection[4] == "2026-11-30"


def test_failed_run_with_result_is_marked(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / "selection.run.json").write_text(json.dumps(record("selection", exit_code=1)))
    rows = table_rows(build_block(tmp_path))
    assert [r for r in rows if r[0].startswith("selection")][0][1].endswith("(script exit 1)")


def test_result_without_run_record_uses_what_the_result_says(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "session.json").write_text(json.dumps(SESSION))
    block = build_block(tmp_path)
    assert "unrecorded mode" in block.splitlines()[0]
    session = [r for r in table_rows(block) if r[0].startswith("session")][0]
    assert session[3] == "2 cores, AMD EPYC" and "arguments not recorded" in session[5]


def test_mode_line_names_mixed_modes(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / "rollout.run.json").write_text(json.dumps(record("rollout", mode="full")))
    assert "**mixed modes** (full, quick:" in build_block(tmp_path).splitlines()[0]


def test_malformed_json_is_a_clear_error(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / "serving.json").write_text('{"bare_p50_ms": 0.08,')
    with pytest.raises(ReportError, match=r"serving\.json: not valid JSON"):
        build_block(tmp_path)


def test_missing_field_is_a_clear_error(tmp_path: Path) -> None:
    fill(tmp_path)
    broken = {k: v for k, v in ARTIFACT.items() if k != "raw_loopback_mib_per_s"}
    (tmp_path / "artifact.json").write_text(json.dumps(broken))
    with pytest.raises(ReportError, match=r"artifact\.json: missing field 'raw_loopback_mib_per_s'"):
        build_block(tmp_path)
    (tmp_path / "artifact.json").write_text(json.dumps({**ARTIFACT, "ratio": "high"}))
    with pytest.raises(ReportError, match=r"field 'ratio' is not a number"):
        build_block(tmp_path)
    (tmp_path / "artifact.json").write_text(json.dumps(ARTIFACT))
    (tmp_path / "selection.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ReportError, match=r"selection\.json: expected a non-empty list"):
        build_block(tmp_path)


def test_malformed_result_leaves_the_document_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, doc = tmp_path / "results", tmp_path / "PERFORMANCE.md"
    fill(results)
    (results / "rollout.json").write_text("not json")
    doc.write_text(DOC)
    assert main(["write", "--results", str(results), "--doc", str(doc)]) == 2
    assert doc.read_text() == DOC
    assert "rollout.json: not valid JSON" in capsys.readouterr().err


def test_cell_with_a_pipe_is_escaped(tmp_path: Path) -> None:
    fill(tmp_path)
    (tmp_path / "serving.json").write_text(json.dumps({**SERVING, "model": "a|b"}))
    assert "(a\\|b, 3,000 calls)" in build_block(tmp_path)


def test_insert_after_intro_then_replace_keeps_the_rest_byte_identical() -> None:
    first = replace_block(DOC, "one\n")
    intro_end = DOC.index("rerun it.\n") + len("rerun it.\n")
    assert first == DOC[:intro_end] + f"\n{START}\none\n{END}\n" + DOC[intro_end:]
    second = replace_block(first, "two\nlines\n")
    assert second == first.replace("\none\n", "\ntwo\nlines\n")
    outside = second.split(START)[0], second.split(END)[1]
    assert outside == (first.split(START)[0], first.split(END)[1])
    assert replace_block(second, "two\nlines\n") == second


def test_replace_keeps_odd_surroundings_exactly() -> None:
    text = f"# T\r\n\r\nintro\r\n\r\n  {START}  old stuff {END}trailing, no newline"
    assert replace_block(text, "new\n") == f"# T\r\n\r\nintro\r\n\r\n  {START}\nnew\n{END}trailing, no newline"


def test_insert_when_the_intro_is_the_last_line() -> None:
    assert replace_block("# T\n\nintro", "x\n") == f"# T\n\nintro\n\n{START}\nx\n{END}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"# T\n\nintro\n\n{START}\nx\n", "expected one"),
        (f"# T\n\n{START}\n{START}\n{END}\n", "expected one"),
        (f"# T\n\n{END}\nx\n{START}\n", "comes before"),
        ("no title\n", "no '# ' title"),
        ("# T\n\n", "no intro paragraph"),
    ],
)
def test_bad_markers_or_document_are_errors(text: str, message: str) -> None:
    with pytest.raises(ReportError, match=message):
        replace_block(text, "x\n")


def test_write_rewrites_only_the_block(tmp_path: Path) -> None:
    results, doc = tmp_path / "results", tmp_path / "PERFORMANCE.md"
    fill(results)
    doc.write_text(DOC)
    write(results, doc)
    once = doc.read_text()
    assert once.startswith(DOC[: DOC.index("## Fleet")].rstrip("\n") + "\n\n" + START)
    assert once.endswith(END + "\n\n" + DOC[DOC.index("## Fleet") :])
    (results / "artifact.json").unlink()
    (results / "artifact.run.json").unlink()
    write(results, doc)
    twice = doc.read_text()
    assert "| artifact | not run |" in twice and "526 MiB/s" not in twice
    assert twice.split(START)[0] == once.split(START)[0] and twice.split(END)[1] == once.split(END)[1]


def test_mqtt_ingest_rows_compare_with_raw_and_grpc(tmp_path: Path) -> None:
    fill(tmp_path)
    by_metric = {r[0]: r for r in table_rows(build_block(tmp_path))}
    mqtt = by_metric["mqtt: telemetry points stored per second via Mosquitto (100 devices)"]
    assert (
        mqtt[1] == "1,500"
        and "raw paho QoS 1 through the same broker 100,000 → 1.5% (goal ≥ 50%): **not met**" in mqtt[2]
    )
    assert "40,000 / 40,000 stored once" in mqtt[2]
    grpc = by_metric["mqtt: the same points over the gRPC session stream (100 devices)"]
    assert grpc[1] == "2,000" and "MQTT is 75% of gRPC" in grpc[2] and "39,980 / 40,000 stored: **FAIL**" in grpc[2]
    assert by_metric["mqtt: control-plane CPU per 1,000 points, MQTT / gRPC"][1] == "0.45 s / 0.40 s"
    floor = by_metric["mqtt: ack floor, a bare paho client acking each batch (no event loop, no store)"]
    assert floor[1] == "30,000" and "30.0% of raw" in floor[2] and "MQTT ingest is 5% of it" in floor[2]
    (tmp_path / "mqtt_ingest.json").write_text(json.dumps({**MQTT_INGEST, "raw": {"points_per_second": 2000.0}}))
    mqtt = [r for r in table_rows(build_block(tmp_path)) if r[0].startswith("mqtt: telemetry")][0]
    assert "→ 75.0% (goal ≥ 50%): met" in mqtt[2]


def test_serving_result_from_before_the_fast_socket_has_only_the_grpc_rows() -> None:
    old = {k: v for k, v in SERVING.items() if not k.startswith(("fast_", "agent_full", "full_"))}
    rows = serving_rows(old)
    assert [r[0].split(" (")[0] for r in rows] == [
        "serving: local API `Infer` p50",
        "serving: empty call",
        "serving: serving process RSS",
    ]
    assert len(serving_rows(SERVING)) == 5
