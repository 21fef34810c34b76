"""The demo's questions to the control plane (Admin API) and to the devices' local APIs.

scripts/demo.sh runs the processes; this helper answers what it waits for and prints the fleet summary.
Every subcommand reads the CLI's connection settings (EDGEFLEET_CONFIG) like `edgefleet` does.

    fleet.py online FLEET N                 exit 0 when N devices of FLEET are online
    fleet.py evidence NAME:VERSION FLEET    exit 0 when every variant has a benchmark on every class of FLEET
    fleet.py serving FLEET DIR...           exit 0 when each device committed its desired state and the
                                            local APIs under DIR... serve 3 models each
    fleet.py reversion SRC DST VERSION      copy bundle dir SRC to DST with manifest version VERSION
    fleet.py rollout-plan NAME:VERSION FLEET  print "done ID", "active ID" or "start"
    fleet.py watch ID [--timeout S]         print each change of the rollout; exit 0 when it completed
    fleet.py summary FLEET NAME:VERSION [--traffic FILE] [--models M,...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from controlplane.cli.connection import RPC_TIMEOUT_SECONDS, admin, resolve
from protos.edgefleet.v1 import admin_pb2

TERMINAL = ("completed", "aborted", "rolled_back", "failed")
MODELS = ("silero-vad", "fsdd-digits", "snips-nlu-student")
"""What every demo device serves."""
LATENCY_MODELS = ("fsdd-digits", "snips-nlu-student")
"""The models with telemetry of their own (the VAD runs inside each recognition of fsdd-digits)."""


def _ref(text: str) -> tuple[str, int]:
    name, _, version = text.partition(":")
    return name, int(version)


class Admin:
    """One TLS channel to the Admin API, for the life of the command."""

    def __init__(self) -> None:
        self._ctx = admin(resolve(None, None, None))
        self.stub, self.meta = self._ctx.__enter__()

    def __call__(self, method: str, request):
        return getattr(self.stub, method)(request, metadata=self.meta, timeout=RPC_TIMEOUT_SECONDS)

    def devices(self, fleet: str) -> list:
        return list(self("ListDevices", admin_pb2.ListDevicesRequest(fleet=fleet)).devices)

    def rollouts(self, fleet: str, name: str, version: int) -> list:
        found = self("ListRollouts", admin_pb2.ListRolloutsRequest(fleet=fleet)).rollouts
        mine = [r for r in found if r.model.name == name and r.model.version == version]
        return sorted(mine, key=lambda r: r.created_at.ToNanoseconds(), reverse=True)


def online(a: Admin, args) -> int:
    return 0 if sum(d.online for d in a.devices(args.fleet)) >= args.count else 1


def evidence(a: Admin, args) -> int:
    name, version = _ref(args.build)
    variants = {b.ref.variant for b in a("GetModel", admin_pb2.GetModelRequest(name=name, version=version)).builds}
    classes = {d.device_class for d in a.devices(args.fleet)}
    cells = a("GetEvidence", admin_pb2.GetEvidenceRequest(name=name, version=version)).cells
    have = {(c.variant, c.device_class) for c in cells if c.source == "benchmark"}
    return 0 if variants and all((v, k) in have for v in variants for k in classes) else 1


def serving(a: Admin, args) -> int:
    committed = _committed()
    for d in a.devices(args.fleet):
        if d.status.phase != committed or d.status.generation != d.desired_generation:
            return 1
    for data_dir in args.dirs:
        if len(_local_status(Path(data_dir)).active) != len(MODELS):
            return 1
    return 0


def _committed() -> int:
    from protos.edgefleet.v1 import agent_pb2

    return agent_pb2.ReconcilePhase.Value("COMMITTED")


def _local_status(data_dir: Path):
    import grpc

    from protos.edgefleet.v1 import inference_pb2, inference_pb2_grpc

    with grpc.insecure_channel(f"unix://{data_dir / 'inference.sock'}") as channel:
        stub = inference_pb2_grpc.LocalInferenceStub(channel)
        return stub.GetStatus(inference_pb2.GetStatusRequest(), timeout=10)


def reversion(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = str(args.version)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


def _serves(device, name: str, version: int) -> bool:
    return any(m.model.name == name and m.model.version == version for m in device.status.active)


def rollout_plan(a: Admin, args) -> int:
    name, version = _ref(args.build)
    rollouts = a.rollouts(args.fleet, name, version)
    active = [r for r in rollouts if r.state not in TERMINAL]
    if active:
        print(f"active {active[0].rollout_id}")
    elif rollouts and all(_serves(d, name, version) for d in a.devices(args.fleet)):
        print(f"done {rollouts[0].rollout_id}")
    else:
        print("start")
    return 0


def _wave(r, index: int | None = None) -> str:
    i = r.current_wave if index is None else index
    percent = r.waves_percent[i] if i < len(r.waves_percent) else 100
    return f"wave {i + 1}/{len(r.waves_percent)} ({percent}%)"


def _progress(r) -> str:
    updated = sum(p.updated for p in r.progress)
    targeted = sum(p.targeted for p in r.progress)
    where = "" if r.state in TERMINAL else f", {_wave(r)}"
    return f"{r.state}{where}, {updated}/{targeted} devices updated"


def _waves(r) -> list[str]:
    """One line per wave: its devices per class, and how many are on the new build."""
    lines = []
    for i, percent in enumerate(r.waves_percent):
        rows = [p for p in r.progress if p.wave == i and p.targeted]
        if not rows:
            lines.append(f"wave {i + 1} ({percent}%): no device left to update, skipped")
            continue
        classes = ", ".join(f"{p.device_class} {p.updated}/{p.targeted}" for p in rows)
        reverted = sum(p.reverted for p in rows)
        lines.append(f"wave {i + 1} ({percent}%): {classes} updated" + (f", {reverted} reverted" if reverted else ""))
    return lines


def watch(a: Admin, args) -> int:
    deadline = time.monotonic() + args.timeout
    last, decisions = "", 0
    while True:
        r = a("GetRollout", admin_pb2.GetRolloutRequest(rollout_id=args.rollout_id))
        line = _progress(r)
        if line != last:
            print(f"  {time.strftime('%H:%M:%S')} {r.rollout_id}: {line}", flush=True)
            last = line
        for d in list(r.decisions)[decisions:]:
            print(f"  {time.strftime('%H:%M:%S')} gate of {_wave(r, d.wave)}: {d.verdict}", flush=True)
        decisions = len(r.decisions)
        if r.state in TERMINAL:
            return 0 if r.state == "completed" else 1
        if time.monotonic() > deadline:
            print(f"demo: rollout {r.rollout_id} still {r.state} after {args.timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(1.0)


def summary(a: Admin, args) -> int:
    name, version = _ref(args.build)
    devices = sorted(a.devices(args.fleet), key=lambda d: d.device_id)
    by_class: dict[str, list] = {}
    for d in devices:
        by_class.setdefault(d.device_class, []).append(d)
    priority = {c.name: c.priority for c in a("ListClasses", admin_pb2.ListClassesRequest()).classes}
    order = sorted(by_class, key=lambda c: (priority.get(c, 1 << 30), c))  # matching order, as `classes list`
    width = max((len(c) for c in order), default=5)
    on = sum(d.online for d in devices)
    print("=" * 100)
    print(f"FLEET SUMMARY (fleet {args.fleet})")
    print(f"devices: {len(devices)} ({on} online) in {len(by_class)} classes")
    for c in order:
        members = ", ".join(f"{d.device_id}{'' if d.online else ' (offline)'}" for d in by_class[c])
        print(f"  {c:<{width}}  {members}")

    print("serving (as each device reports):")
    for d in devices:
        active = ", ".join(f"{m.model.name}:{m.model.version}:{m.model.variant}" for m in d.status.active) or "nothing"
        print(f"  {d.device_id:<16} {d.device_class:<{width}}  {active}")

    builds = [("fsdd-digits", 1), (name, version)]
    print("chosen variant per class, and why (edgefleet models explain NAME:VERSION --class CLASS):")
    for model, ver in builds:
        for c in order:
            s = a("ExplainSelection", admin_pb2.ExplainSelectionRequest(name=model, version=ver, device_class=c))
            print(f"  {model}:{ver} {c:<{width}}  {s.chosen_variant or '(none)'}: {_reason(s)}")

    print("latency per class, last 1h (edgefleet telemetry latency --model M --by class):")
    print(f"  {'MODEL':<18} {'CLASS':<{width}} {'REQUESTS':>8} {'ERRORS':>6} {'P50':>9} {'P95':>9} {'P99':>9}  CONF")
    for model in args.models.split(","):
        rows = a("QueryLatency", admin_pb2.QueryLatencyRequest(model=model, by="class", since_seconds=3600)).rows
        for r in sorted(rows, key=lambda r: r.key.get("class", "")):
            served = r.requests > r.errors
            ms = [f"{v:.2f} ms" if served else "-" for v in (r.p50_ms, r.p95_ms, r.p99_ms)]
            conf = f"{r.mean_confidence:.3f}" if served else "-"
            print(f"  {model:<18} {r.key.get('class', '-'):<{width}} {r.requests:>8} {r.errors:>6} "
                  f"{ms[0]:>9} {ms[1]:>9} {ms[2]:>9}  {conf}")  # fmt: skip
        if not rows:
            print(f"  {model:<18} (no telemetry yet)")

    rollouts = a.rollouts(args.fleet, name, version)
    if not rollouts:
        print(f"rollout of {name}:{version}: none")
    else:
        r = rollouts[0]
        print(f"rollout {r.rollout_id} of {name}:{version} (edgefleet rollouts status {r.rollout_id}):")
        print(f"  {_progress(r)}; bake {r.bake_seconds}s per wave")
        for line in _waves(r):
            print(f"  {line}")
        if r.reason:
            print(f"  reason: {r.reason}")
        for d in r.decisions:
            at = time.strftime("%H:%M:%S", time.localtime(d.at.seconds))
            print(f"  decision {at} gate of {_wave(r, d.wave)}: {d.verdict}")
            for reason in d.reasons:
                print(f"    - {reason}")
        if not r.decisions:
            print("  no gate decisions")

    if args.traffic and Path(args.traffic).exists():
        t = json.loads(Path(args.traffic).read_text())
        print(f"traffic (scripts/demo/traffic.py, through each device's local API): {t['text']} texts, "
              f"{t['audio']} recordings, {t['failed']} failed")  # fmt: skip
    print("=" * 100)
    return 0


def _reason(selection) -> str:
    """The summary line without its leading "VARIANT for class CLASS: "."""
    text = selection.summary
    head = f"{selection.chosen_variant} for class {selection.device_class}: "
    return text[len(head) :] if selection.chosen_variant and text.startswith(head) else text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("online")
    p.add_argument("fleet")
    p.add_argument("count", type=int)
    p = sub.add_parser("evidence")
    p.add_argument("build")
    p.add_argument("fleet")
    p = sub.add_parser("serving")
    p.add_argument("fleet")
    p.add_argument("dirs", nargs="*")
    p = sub.add_parser("reversion")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("version", type=int)
    p = sub.add_parser("rollout-plan")
    p.add_argument("build")
    p.add_argument("fleet")
    p = sub.add_parser("watch")
    p.add_argument("rollout_id")
    p.add_argument("--timeout", type=float, default=600)
    p = sub.add_parser("summary")
    p.add_argument("fleet")
    p.add_argument("build")
    p.add_argument("--traffic")
    p.add_argument("--models", default=",".join(LATENCY_MODELS))
    args = parser.parse_args(argv)
    if args.command == "reversion":
        return reversion(args)
    commands = {
        "online": online,
        "evidence": evidence,
        "serving": serving,
        "rollout-plan": rollout_plan,
        "watch": watch,
        "summary": summary,
    }
    return commands[args.command](Admin(), args)


if __name__ == "__main__":
    sys.exit(main())
