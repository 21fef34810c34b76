"""Run every benchmark under ``scripts/bench/`` and write the summary table in docs/PERFORMANCE.md.

``report.py run`` runs the eight benchmarks one after another (the machine has 2 cores: running them side
by side would measure each other), each with ``--json-out`` into the results directory (default
``.edgefleet/bench/``), and records next to each result how it was run (``<name>.run.json``: the
command, the mode, the exit status, when, and the machine's core count and CPU model). It then does
what ``report.py write`` does: read the result files present and rewrite the block between
``<!-- bench-summary:start -->`` and ``<!-- bench-summary:end -->`` in docs/PERFORMANCE.md with one
table (metric, value, what it is compared with, machine, date, command). Everything outside the two
markers is left byte for byte as it was; when the markers are missing the block is inserted after
the document's intro paragraph.

A benchmark without a result file gets a "not run" row, never older numbers: ``run`` deletes a
benchmark's previous result before running it. A result file that is not JSON, or lacks a field the
table needs, stops ``write`` with an error naming the file and the field, and the document is not
touched.

``--quick`` passes each script's quick or smaller option (session, rollout and mqtt_ingest: ``--quick``;
serving, agent_memory, artifact, selection, telemetry_store: fewer calls or requests, a smaller blob, fewer
timed runs or batches);
the block's first line says which mode produced the numbers.

Rerun (from the repository root)::

    .venv/bin/python scripts/bench/report.py run            # every benchmark, full size (make bench)
    .venv/bin/python scripts/bench/report.py run --quick    # smaller runs, a few minutes
    .venv/bin/python scripts/bench/report.py run --only serving,artifact
    .venv/bin/python scripts/bench/report.py write          # only rewrite the table from the results

Exit status: 0 when every benchmark that ran exited 0 and the document was written; 1 when a
benchmark failed (the table is still written); 2 on a malformed result or document.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from protos.cpuinfo import local_cpu_model

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS = Path(".edgefleet/bench")
DEFAULT_DOC = Path("docs/PERFORMANCE.md")
START = "<!-- bench-summary:start -->"
END = "<!-- bench-summary:end -->"
HEADER = ("metric", "value", "compared with", "machine", "date", "command")


class ReportError(Exception):
    """A result file or the document cannot be used; the message names which and why."""


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    compared: str
    machine: str
    date: str
    command: str

    def cells(self) -> tuple[str, ...]:
        return (self.metric, self.value, self.compared, self.machine, self.date, self.command)


@dataclass(frozen=True)
class RunInfo:
    """Where a result came from: the run record ``report.py run`` wrote, or what the result file itself says."""

    machine: str
    date: str
    command: str
    mode: str | None  # "quick", "full", or None when no run record exists
    exit_code: int | None


# --- reading results ------------------------------------------------------------------------------------


def field(data: Any, dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; a missing field or a wrong type raises ReportError naming it."""
    value = data
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ReportError(f"missing field {dotted!r}")
        value = value[key]
    return value


def number(data: Any, dotted: str) -> float:
    value = field(data, dotted)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"field {dotted!r} is not a number: {value!r}")
    return float(value)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


# --- one set of rows per benchmark: only fields the benchmark's JSON really has --------------------------


def session_rows(r: Any) -> list[tuple[str, str, str]]:
    agents = int(number(r, "params.agents"))
    window = number(r, "steady.window_seconds")
    per_1000 = field(r, "steady.server_cpu_seconds_per_1000_heartbeats")
    hb, ideal = number(r, "steady.heartbeats_per_second"), number(r, "steady.ideal_heartbeats_per_second")
    idle, end = number(r, "server_idle_rss_bytes"), number(r, "server_end_rss_bytes")
    online = int(number(r, "online_check.online"))
    return [
        (
            f"session: time for all {agents} agents to join",
            f"{number(r, 'join.all_enrolled_seconds'):.2f} s",
            f"enroll p50 {number(r, 'join.enroll_p50_seconds'):.2f} s, "
            f"p95 {number(r, 'join.enroll_p95_seconds'):.2f} s; "
            f"all sessions open at {number(r, 'join.all_open_seconds'):.2f} s",
        ),
        (
            f"session: heartbeats handled per second ({agents} agents)",
            f"{hb:,.1f}",
            f"ideal {ideal:,.0f} → {hb / ideal:.0%} ({int(number(r, 'steady.heartbeats')):,} in {window:.1f} s)"
            if ideal
            else "no ideal",
        ),
        (
            "session: control-plane CPU per 1,000 heartbeats",
            "n/a" if per_1000 is None else f"{number(r, 'steady.server_cpu_seconds_per_1000_heartbeats'):.2f} s",
            f"{number(r, 'steady.server_cpu_percent'):.1f}% of one core for {agents} devices, one heartbeat "
            f"every {number(r, 'params.heartbeat_seconds'):g} s each",
        ),
        (
            f"session: control-plane RSS with {agents} sessions",
            mib(end),
            f"idle {mib(idle)} → {end / idle:.2f}×; {(end - idle) / 2**20 / agents:+.2f} MiB per device",
        ),
        (
            "session: devices listed online at the end",
            f"{online} / {agents}",
            "`ListDevices`" + ("" if field(r, "online_check.ok") else ": **FAIL**"),
        ),
    ]


def serving_rows(r: Any) -> list[tuple[str, str, str]]:
    bare50, api50 = number(r, "bare_p50_ms"), number(r, "local_api_p50_ms")
    overhead = number(r, "overhead_p50_ms")
    goal = max(0.15 * bare50, 0.3)  # the script's goal: ≤ 15% or ≤ 0.3 ms, whichever is larger
    ratio = number(r, "rss_ratio")
    model = str(field(r, "model"))
    rows = [
        (
            f"serving: local API `Infer` p50 ({model}, {int(number(r, 'calls')):,} calls)",
            f"{api50:.3f} ms (p99 {number(r, 'local_api_p99_ms'):.3f})",
            f"bare `session.run` {bare50:.3f} ms (p99 {number(r, 'bare_p99_ms'):.3f}) → +{overhead:.3f} ms "
            f"(goal ≤ {goal:.3f} ms): {met(overhead <= goal)}",
        ),
        (
            "serving: empty call (`GetStatus`) p50",
            f"{number(r, 'empty_call_p50_ms'):.3f} ms",
            f"the transport's floor: {number(r, 'empty_call_p50_ms') / overhead:.0%} of the `Infer` overhead"
            if overhead > 0
            else "the transport's floor",
        ),
        (
            "serving: serving process RSS",
            mib(number(r, "agent_rss_bytes")),
            f"bare process with the model {mib(number(r, 'bare_rss_bytes'))} → {ratio:.2f}× (goal ≤ 1.3×): "
            f"{met(ratio <= 1.3)}",
        ),
    ]
    if "fast_p50_ms" in r:  # results from before the fast socket have no such rows
        fast50, fast_overhead = number(r, "fast_p50_ms"), number(r, "fast_overhead_p50_ms")
        rows[1:1] = [
            (
                "serving: fast socket `Infer` p50 (same model, same calls, interleaved)",
                f"{fast50:.3f} ms (p99 {number(r, 'fast_p99_ms'):.3f})",
                f"bare `session.run` {bare50:.3f} ms → +{fast_overhead:.3f} ms (goal ≤ {goal:.3f} ms): "
                f"{met(fast_overhead <= goal)}; empty call {number(r, 'fast_empty_call_p50_ms'):.3f} ms",
            )
        ]
    if "agent_full_import_rss_bytes" in r:
        rows.append(
            (
                "serving: serving process RSS with every agent module imported",
                mib(number(r, "agent_full_import_rss_bytes")),
                f"{number(r, 'full_import_rss_ratio'):.2f}× the bare process (what the whole agent process loads)",
            )
        )
    return rows


def artifact_rows(r: Any) -> list[tuple[str, str, str]]:
    blob = number(r, "blob_mib")
    raw = number(r, "raw_loopback_mib_per_s")
    ratio = number(r, "ratio")
    rounds = len(field(r, "fetch_runs_seconds"))
    size, cut = int(blob * 2**20), int(number(r, "cut_at_bytes"))
    resumed = int(number(r, "resume_transferred_bytes"))
    return [
        (
            f"artifact: HTTPS `fetch_blob_https` of {blob:g} MiB (median of {rounds})",
            f"{number(r, 'edgefleet_mib_per_s'):,.0f} MiB/s",
            f"raw loopback copy {raw:,.0f} MiB/s → {ratio:.0%} (goal ≥ 50%): {met(ratio >= 0.5)}",
        ),
        (
            "artifact: gRPC `fetch_blob` (the fallback), same rounds",
            f"{number(r, 'grpc_mib_per_s'):,.0f} MiB/s",
            f"raw loopback copy {raw:,.0f} MiB/s → {number(r, 'grpc_ratio'):.0%}",
        ),
        (
            "artifact: the gRPC stream alone, bytes discarded",
            f"{number(r, 'stream_only_mib_per_s'):,.0f} MiB/s",
            f"raw loopback copy {raw:,.0f} MiB/s → {number(r, 'stream_only_mib_per_s') / raw:.0%}",
        ),
        (
            f"artifact: resume after a cut at {cut / size:.0%}" if size else "artifact: resume after a cut",
            f"{resumed:,} B transferred",
            f"the rest of the blob, {size - cut:,} B: " + ("exactly the rest" if resumed == size - cut else "**not**"),
        ),
    ]


def selection_rows(r: Any) -> list[tuple[str, str, str]]:
    if not isinstance(r, list) or not r:
        raise ReportError("expected a non-empty list of (model, class) rows")
    never_worse = sum(1 for row in r if field(row, "verdict") is True)
    fixed_ok: dict[str, int] = {}
    choices: list[str] = []
    for row in r:
        for name, cell in field(row, "fixed").items():
            fixed_ok[name] = fixed_ok.get(name, 0) + (1 if field(cell, "ok") is True else 0)
        chosen = field(row, "chosen")
        variant = "none" if chosen is None else str(field(chosen, "variant"))
        choices.append(f"{field(row, 'model')} on {field(row, 'device_class')}: {variant}")
    chosen_ok = sum(1 for row in r if row["chosen"] is not None and field(row["chosen"], "ok") is True)
    total = len(r)
    fixed = ", ".join(f"always {name} meets them in {ok}/{total}" for name, ok in fixed_ok.items())
    return [
        (
            "selection: chosen variant never worse than a fixed policy",
            f"{never_worse} / {total} (model, class) pairs",
            f"chosen meets the class's constraints in {chosen_ok}/{total}; {fixed}",
        ),
        ("selection: chosen variants", "; ".join(choices), "the selector's choice from measured evidence"),
    ]


def rollout_rows(r: Any) -> list[tuple[str, str, str]]:
    agents = int(number(r, "params.agents"))
    waves = ",".join(str(w) for w in field(r, "params.waves"))
    rows: list[tuple[str, str, str]] = []
    if isinstance(r, dict) and "good" in r:
        window, total = number(r, "good.elapsed_seconds"), field(r, "good.total_seconds")
        cpu = number(r, "good.server_cpu_seconds")
        rows.append(
            (
                f"rollout: good version to {agents} devices (waves {waves})",
                ("no total" if total is None else f"{number(r, 'good.total_seconds'):.2f} s")
                + f", {field(r, 'good.state')}",
                f"control-plane CPU {cpu:.1f} s"
                + (f" ({cpu / window:.0%} of one core)" if window else "")
                + f", RSS peak {mib(number(r, 'good.server_rss_peak_bytes'))}",
            )
        )
    else:
        rows.append((f"rollout: good version to {agents} devices (waves {waves})", "no result", "the run stopped"))
    if isinstance(r, dict) and "bad" in r:
        g = field(r, "bad.regression")

        def seconds(key: str) -> str:
            value = field(g, key)
            return "n/a" if value is None else f"{number(g, key):.2f} s"

        rows += [
            (
                "rollout: regression, first bad batch sent → rollback decided",
                seconds("first_bad_sent_to_rollback_seconds"),
                f"{field(r, 'bad.state')}, decided in wave {field(g, 'rollback_decision_wave')}; "
                f"{seconds('first_bad_acked_to_rollback_seconds')} from the batch's ack",
            ),
            (
                "rollout: rollback decided → every touched device back on the previous version",
                seconds("rollback_to_rolled_back_seconds"),
                f"devices that ran the regression: {field(g, 'touched_devices')} of {agents}",
            ),
        ]
    else:
        rows.append(("rollout: regression rolled back", "no result", "the run stopped"))
    return rows


def mqtt_ingest_rows(r: Any) -> list[tuple[str, str, str]]:
    devices = int(number(r, "params.devices"))
    raw, floor, mqtt, grpc = (number(r, f"{phase}.points_per_second") for phase in ("raw", "floor", "mqtt", "grpc"))
    shape = f"{int(number(r, 'params.points_per_batch'))} points per batch, window {int(number(r, 'params.window'))}"

    def stored(phase: str) -> str:
        ok = field(r, f"{phase}.stored_once") is True
        return f"{int(number(r, f'{phase}.stored_points')):,} / {int(number(r, 'params.points_per_phase')):,} " + (
            "stored once" if ok else "stored: **FAIL**"
        )

    def cpu(phase: str) -> str:
        value = field(r, f"{phase}.server_cpu_seconds_per_1000_points")
        return "n/a" if value is None else f"{number(r, f'{phase}.server_cpu_seconds_per_1000_points'):.2f} s"

    return [
        (
            f"mqtt: telemetry points stored per second via Mosquitto ({devices} devices)",
            f"{mqtt:,.0f}",
            f"raw paho QoS 1 through the same broker {raw:,.0f} → {mqtt / raw:.1%} (goal ≥ 50%): "
            f"{met(mqtt / raw >= 0.5)}; {shape}; {stored('mqtt')}"
            if raw
            else "no raw rate",
        ),
        (
            "mqtt: ack floor, a bare paho client acking each batch (no event loop, no store)",
            f"{floor:,.0f}",
            f"{floor / raw:.1%} of raw: the most a control plane acking each batch through paho reaches here; "
            f"MQTT ingest is {mqtt / floor:.0%} of it"
            if raw and floor
            else "no rate",
        ),
        (
            f"mqtt: the same points over the gRPC session stream ({devices} devices)",
            f"{grpc:,.0f}",
            f"MQTT ingest {mqtt:,.0f} → MQTT is {mqtt / grpc:.0%} of gRPC; {stored('grpc')}"
            if grpc
            else "no gRPC rate",
        ),
        (
            "mqtt: control-plane CPU per 1,000 points, MQTT / gRPC",
            f"{cpu('mqtt')} / {cpu('grpc')}",
            f"ack latency p50 MQTT {number(r, 'mqtt.ack_latency_p50_ms'):.0f} ms, "
            f"gRPC {number(r, 'grpc.ack_latency_p50_ms'):.0f} ms (send → ack, window included)",
        ),
    ]


def telemetry_store_rows(r: Any) -> list[tuple[str, str, str]]:
    rows = []
    for backend in ("sqlite", "postgresql"):
        if backend not in r:
            continue
        ok = field(r, f"{backend}.stored_once") is True
        rows.append(
            (
                f"telemetry store: `ingest_batches` CPU per point, {backend}",
                f"{number(r, f'{backend}.ingest_us_per_point'):.1f} µs",
                f"`parse_batch` alone {number(r, f'{backend}.parse_us_per_point'):.1f} µs; "
                f"{number(r, f'{backend}.points_per_second'):,.0f} points/s in groups of "
                f"{int(number(r, 'shape.group'))} batches; " + ("stored once" if ok else "stored: **FAIL**"),
            )
        )
    return rows or [("telemetry store", "no result", "no backend ran")]


def agent_memory_rows(r: Any) -> list[tuple[str, str, str]]:
    ratio = number(r, "rss_ratio")
    requests = int(number(r, "requests"))
    return [
        (
            f"agent memory: the whole `edgefleet agent` serving {field(r, 'model')} ({requests} requests)",
            f"{mib(number(r, 'agent_rss_bytes'))} (anonymous {mib(number(r, 'agent_anon_bytes'))})",
            f"bare onnxruntime process with the model {mib(number(r, 'bare_rss_bytes'))} → {ratio:.2f}× "
            f"(goal ≤ 1.3×): {met(ratio <= 1.3)}",
        )
    ]


@dataclass(frozen=True)
class Bench:
    name: str
    quick_args: tuple[str, ...]
    rows: Callable[[Any], list[tuple[str, str, str]]]


BENCHMARKS = (
    Bench("session", ("--quick",), session_rows),
    Bench("serving", ("--calls", "500"), serving_rows),
    Bench("agent_memory", ("--rounds", "1", "--requests", "50"), agent_memory_rows),
    Bench("artifact", ("--mib", "50", "--rounds", "3"), artifact_rows),
    Bench("selection", ("--runs", "100"), selection_rows),
    Bench("rollout", ("--quick",), rollout_rows),
    Bench("mqtt_ingest", ("--quick",), mqtt_ingest_rows),
    Bench("telemetry_store", ("--devices", "32", "--rounds", "1"), telemetry_store_rows),
)


# --- machine, date, command -------------------------------------------------------------------------------


def cpu_model() -> str:
    return local_cpu_model()


def machine_text(cores: Any, model: Any) -> str:
    return f"{cores} cores, {model}" if model else f"{cores} cores"


def run_info(bench: Bench, result: Any, record: Any, mtime: float) -> RunInfo:
    """Machine, date and command for a result: from the run record when there is one, else from the result."""
    if isinstance(record, dict):
        try:
            return RunInfo(
                machine=machine_text(field(record, "machine.cores"), field(record, "machine.cpu_model")),
                date=str(field(record, "finished"))[:10],
                command=str(field(record, "command")),
                mode=str(field(record, "mode")),
                exit_code=field(record, "exit_code"),
            )
        except ReportError as exc:
            raise ReportError(f"{bench.name}.run.json: {exc}") from exc
    machine = "unknown"
    if isinstance(result, dict):
        m = result.get("machine")
        if isinstance(m, dict) and "nproc" in m:  # session, rollout
            machine = machine_text(m["nproc"], m.get("cpu_model"))
        elif isinstance(m, str):  # serving
            machine = m
        elif "cores" in result:  # artifact
            machine = machine_text(result["cores"], None)
    return RunInfo(
        machine=machine,
        date=datetime.fromtimestamp(mtime).date().isoformat(),
        command=f"`scripts/bench/{bench.name}.py` (arguments not recorded)",
        mode=None,
        exit_code=None,
    )


# --- the table ------------------------------------------------------------------------------------------


def bench_rows(bench: Bench, results: Path) -> tuple[list[Row], RunInfo | None]:
    """The rows for one benchmark from the files in ``results``; "not run" when it has no result."""
    path, record_path = results / f"{bench.name}.json", results / f"{bench.name}.run.json"
    record = load_json(record_path) if record_path.exists() else None
    if not path.exists():
        if record is not None:
            info = run_info(bench, None, record, 0)
            why = f"failed (exit {info.exit_code}), no result" if info.exit_code else "no result file"
            return [Row(f"{bench.name}", why, "—", info.machine, info.date, info.command)], info
        return [Row(f"{bench.name}", "not run", "—", "—", "—", f"`scripts/bench/{bench.name}.py`")], None
    result = load_json(path)
    info = run_info(bench, result, record, path.stat().st_mtime)
    try:
        triples = bench.rows(result)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from exc
    rows = [Row(metric, value, compared, info.machine, info.date, info.command) for metric, value, compared in triples]
    if info.exit_code not in (None, 0) and rows:
        first = rows[0]
        rows[0] = Row(first.metric, f"{first.value} (script exit {info.exit_code})", *first.cells()[2:])
    return rows, info


def mode_line(infos: list[RunInfo | None]) -> str:
    present = [info for info in infos if info is not None]
    if not present:
        return "No benchmark results yet: run `.venv/bin/python scripts/bench/report.py run` (`make bench`)."
    modes = {info.mode for info in present}
    if modes == {"quick"}:
        what = "**quick mode** (`scripts/bench/report.py run --quick`: smaller runs than the sections below)"
    elif modes == {"full"}:
        what = "**full mode** (`scripts/bench/report.py run`, i.e. `make bench`)"
    elif modes == {None}:
        what = "**an unrecorded mode** (result files without a run record: see each row's command)"
    else:
        what = f"**mixed modes** ({', '.join(sorted(m or 'unrecorded' for m in modes))}: see each row's command)"
    return f"Summary of the last benchmark runs, measured in {what}; written by `scripts/bench/report.py`."


def escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def render_block(first_line: str, rows: list[Row]) -> str:
    """The text between the markers: a first line, then one markdown table."""
    lines = [first_line, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(escape(c) for c in row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def build_block(results: Path) -> str:
    rows: list[Row] = []
    infos: list[RunInfo | None] = []
    for bench in BENCHMARKS:
        bench_rows_, info = bench_rows(bench, results)
        rows += bench_rows_
        infos.append(info)
    return render_block(mode_line(infos), rows)


def replace_block(text: str, block: str) -> str:
    """``text`` with the marked block's content set to ``block``; everything outside the markers unchanged.

    Without markers, the block (with its markers) is inserted after the intro paragraph: the first
    paragraph after the ``# `` title.
    """
    starts, ends = text.count(START), text.count(END)
    if starts == 1 and ends == 1:
        start, end = text.index(START), text.index(END)
        if end < start:
            raise ReportError(f"{END} comes before {START}")
        return text[: start + len(START)] + "\n" + block + text[end:]
    if starts or ends:
        raise ReportError(f"expected one {START} and one {END}, found {starts} and {ends}")
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and not lines[i].startswith("# "):
        i += 1
    if i == len(lines):
        raise ReportError("no '# ' title to put the summary after")
    i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    if i == len(lines):
        raise ReportError("no intro paragraph after the title")
    while i < len(lines) and lines[i].strip():
        i += 1
    head = "".join(lines[:i])
    if not head.endswith("\n"):
        head += "\n"  # a file that ends right after the intro, without a newline
    return head + "\n" + START + "\n" + block + END + "\n" + "".join(lines[i:])


def write(results: Path, doc: Path) -> None:
    block = build_block(results)
    try:
        text = doc.read_text()
    except OSError as exc:
        raise ReportError(f"{doc}: cannot read ({exc})") from exc
    try:
        new = replace_block(text, block)
    except ReportError as exc:
        raise ReportError(f"{doc}: {exc}") from exc
    if new != text:
        doc.write_text(new)


# --- running --------------------------------------------------------------------------------------------


def display_command(argv: list[str]) -> str:
    python = Path(argv[0])
    with contextlib.suppress(ValueError):
        python = python.relative_to(ROOT)
    return "`" + shlex.join([str(python), *argv[1:]]) + "`"


def run_one(bench: Bench, results: Path, quick: bool) -> int:
    out, record_path = results / f"{bench.name}.json", results / f"{bench.name}.run.json"
    for stale in (out, record_path):  # never leave an older result next to a new attempt
        stale.unlink(missing_ok=True)
    python = Path(sys.executable)
    if (ROOT / ".venv/bin/python").exists() and Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        python = ROOT / ".venv/bin/python"  # show the repository's venv, not the interpreter it resolves to
    rel_out = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    argv = [str(python), f"scripts/bench/{bench.name}.py", *(bench.quick_args if quick else ()), "--json-out"]
    argv.append(str(rel_out))
    print(f"[report] {display_command(argv).strip('`')}", file=sys.stderr, flush=True)
    started = time.time()
    code = subprocess.call(argv, cwd=ROOT)
    finished = time.time()
    record = {
        "benchmark": bench.name,
        "command": display_command(argv),
        "argv": argv[1:],
        "mode": "quick" if quick else "full",
        "exit_code": code,
        "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(finished).isoformat(timespec="seconds"),
        "seconds": round(finished - started, 1),
        "machine": {"cores": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version()},
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"[report] {bench.name}: exit {code} after {finished - started:.0f} s", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the benchmarks one after another, then write the table")
    run_p.add_argument("--quick", action="store_true", help="each script's quick or smaller option")
    run_p.add_argument("--only", help="comma-separated benchmarks to run (the others' results are kept)")
    write_p = sub.add_parser("write", help="rewrite the table from the result files present")
    for p in (run_p, write_p):
        p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results dir (default .edgefleet/bench)")
        p.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="document (default docs/PERFORMANCE.md)")
    opts = parser.parse_args(argv)
    results = opts.results if opts.results.is_absolute() else ROOT / opts.results
    doc = opts.doc if opts.doc.is_absolute() else ROOT / opts.doc

    failed: list[str] = []
    if opts.command == "run":
        names = [b.name for b in BENCHMARKS]
        chosen = names if not opts.only else [n.strip() for n in opts.only.split(",") if n.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
        results.mkdir(parents=True, exist_ok=True)
        for bench in BENCHMARKS:
            if bench.name in chosen and run_one(bench, results, opts.quick) != 0:
                failed.append(bench.name)
    try:
        write(results, doc)
    except ReportError as exc:
        print(f"report.py: {exc}", file=sys.stderr)
        return 2
    print(f"[report] wrote the summary table in {doc}", file=sys.stderr)
    if failed:
        print(f"[report] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
