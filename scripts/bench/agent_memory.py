"""The whole agent's memory with a model active, vs a bare Python process with onnxruntime and the same model.

What runs, all real processes on this machine: a control plane (``edgefleet server``, SQLite in a temp
dir), one agent (``edgefleet agent``) that joins it, and the operator's CLI, which registers a publisher
key, pushes a committed bundle (default: the NLU student, fp32) and deploys it to the agent. Once the
agent serves it, ``--requests`` texts (or recordings, for a speech model) go through its local API, so
every serving path is warm; then its memory is read from /proc. The bare process imports onnxruntime,
loads the same model file with the same options (one thread) and runs it on the same kind of input.

Printed (and written to ``--json-out``): RSS of both (VmRSS, and its anonymous part: what the process
itself allocated; the rest is mapped files such as shared libraries, which the kernel can drop and
share), the ratio (goal of the issue "ship a model": <= 1.3x), and how many Python modules each holds.
Each number is the median of ``--rounds`` bare processes and the one agent read ``--rounds`` times.

Rerun from the repository root:

    .venv/bin/python scripts/bench/agent_memory.py
    .venv/bin/python scripts/bench/agent_memory.py --bundle models/speech-command/fsdd-digits-fp32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from scripts.bench.benchkit import BenchError, cpu_model, start_server, stop_process  # noqa: E402

EDGEFLEET = Path(sys.executable).with_name("edgefleet")
TEXTS = ["wake me up at seven tomorrow", "play some jazz by miles davis", "what is the weather in berlin"]
WAV = ROOT / "tests" / "agent" / "data" / "fsdd"

# The bare process: onnxruntime, the model, one thread, a few runs on a zero input of the right shape.
BARE = """
import json, sys, numpy as np, onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
feed = {}
for i in session.get_inputs():
    shape = [d if isinstance(d, int) else 8 for d in i.shape]
    feed[i.name] = np.zeros(shape, dtype=dtypes.get(i.type, np.float32))
for _ in range(50):
    session.run(None, feed)
lines = [l for l in open("/proc/self/status") if l.startswith(("VmRSS", "RssAnon"))]
status = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in lines}
print(json.dumps({"rss": status["VmRSS"], "anon": status["RssAnon"], "modules": len(sys.modules)}), flush=True)
sys.stdin.read()
"""


def memory(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "RssAnon", "RssFile", "VmHWM")):
            fields[line.split(":")[0]] = int(line.split()[1]) * 1024
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"], "hwm": fields["VmHWM"]}


def top_mappings(pid: int, count: int = 15) -> list[tuple[int, str]]:
    """The ``count`` mappings of the process with the most resident memory: (bytes, what is mapped)."""
    sizes: dict[str, int] = {}
    name = ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            name = fields[5] if len(fields) > 5 else "[anonymous]"
        elif fields[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(fields[1]) * 1024
    return sorted(((size, what) for what, size in sizes.items()), reverse=True)[:count]


def wait_for(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


def cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(EDGEFLEET), *args], env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BenchError(f"edgefleet {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def bare_memory(model: Path) -> dict[str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE, str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        if not line:
            raise BenchError("the bare process ended before it reported")
        return json.loads(line)
    finally:
        proc.stdin.close()
        proc.wait(10)


def exercise(data_dir: Path, task: str, requests: int) -> None:
    from agent.local_fast import LocalClient
    from protos.edgefleet.v1 import inference_pb2

    client = LocalClient(data_dir / "inference-fast.sock")
    try:
        for i in range(requests):
            if task == "text-nlu":
                client.understand(inference_pb2.UnderstandRequest(text=TEXTS[i % len(TEXTS)]))
            else:
                wav = sorted(WAV.glob("*.wav"))[i % 3]
                client.recognize(inference_pb2.RecognizeRequest(wav=wav.read_bytes()))
    finally:
        client.close()


def run(args: argparse.Namespace) -> dict:
    bundle = args.bundle.resolve()
    manifest = json.loads((bundle / "manifest.json").read_text())
    name, version, variant, task = manifest["name"], int(manifest["version"]), manifest["variant"], manifest["task"]
    model_file = next(f["path"] for f in manifest["files"] if f["path"].endswith(".onnx"))
    tmp = Path(tempfile.mkdtemp(prefix="ef-agent-memory-"))
    procs: list[subprocess.Popen] = []
    try:
        agent_dir = tmp / "agent"
        server = start_server(tmp)
        procs.append(server.process)
        env = {**os.environ, "EDGEFLEET_CONFIG": str(server.data_dir / "cli.toml")}
        key = tmp / "publisher.key"
        cli("keys", "create", "--out", str(key), env=env)
        cli("keys", "register", f"{key}.pub", "--name", "bench", env=env)
        join = cli("tokens", "create", "--fleet", "bench", "--ttl", "15m", env=env).strip()
        agent = subprocess.Popen(
            [str(EDGEFLEET), "agent", "--data-dir", str(agent_dir), "--device-id", "mem-1", "--join", join,
             "--trust", f"{key}.pub", "--onnx-threads", "1", "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=(tmp / "agent.log").open("wb"), env=env,
        )  # fmt: skip
        procs.append(agent)
        cli("models", "push", str(bundle), "--key", str(key), env=env)
        wait_for("the agent to join", lambda: "mem-1" in cli("devices", "list", env=env), 60)
        cli("deploy", f"{name}:{version}:{variant}", "--device", "mem-1", env=env)

        def serving() -> bool:
            done = subprocess.run(
                [str(EDGEFLEET), "infer", "status", "--data-dir", str(agent_dir), "--json", "--fast"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return done.returncode == 0 and f'"{name}"' in done.stdout

        wait_for(f"the agent to serve {name}", serving, 120)
        exercise(agent_dir, task, args.requests)
        time.sleep(1.0)
        agent_reads = []
        for _ in range(args.rounds):
            agent_reads.append(memory(agent.pid))
            time.sleep(0.2)
        mappings = top_mappings(agent.pid)
        bare_reads = [bare_memory(bundle / model_file) for _ in range(args.rounds)]
        modules = int(
            subprocess.run(
                [sys.executable, "-c", "import sys, agent.daemon; print(len(sys.modules))"],
                capture_output=True, text=True, cwd=ROOT, timeout=60,
            ).stdout.strip() or 0
        )  # fmt: skip
    finally:
        for proc in reversed(procs):  # all at once, so that their graceful stops overlap
            proc.terminate()
        for proc in procs:
            stop_process(proc, timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)

    agent_rss = statistics.median(r["rss"] for r in agent_reads)
    agent_anon = statistics.median(r["anon"] for r in agent_reads)
    bare_rss = statistics.median(r["rss"] for r in bare_reads)
    bare_anon = statistics.median(r["anon"] for r in bare_reads)
    return {
        "bundle": str(bundle.relative_to(ROOT)) if bundle.is_relative_to(ROOT) else str(bundle),
        "model": f"{name}:{version}:{variant}",
        "requests": args.requests,
        "agent_rss_bytes": agent_rss,
        "agent_anon_bytes": agent_anon,
        "agent_hwm_bytes": max(r["hwm"] for r in agent_reads),
        "agent_modules_at_import": modules,
        "bare_rss_bytes": bare_rss,
        "bare_anon_bytes": bare_anon,
        "bare_modules": bare_reads[0]["modules"],
        "rss_ratio": agent_rss / bare_rss,
        "anon_ratio": agent_anon / bare_anon,
        "goal_met": agent_rss / bare_rss <= 1.3,
        "agent_top_mappings": [{"bytes": size, "mapping": what} for size, what in mappings],
        "machine": {"cpu_model": cpu_model(), "nproc": os.cpu_count()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "text-nlu" / "snips-student-fp32")
    parser.add_argument("--requests", type=int, default=200, help="local API calls before memory is read")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except BenchError as exc:
        print(f"agent_memory: {exc}", file=sys.stderr)
        return 2
    mib = 2**20
    print(f"model                 {result['model']} ({result['bundle']}), {result['requests']} requests first")
    print(
        f"agent (whole daemon)  RSS {result['agent_rss_bytes'] / mib:.1f} MiB, of it anonymous "
        f"{result['agent_anon_bytes'] / mib:.1f} MiB; peak {result['agent_hwm_bytes'] / mib:.1f} MiB; "
        f"{result['agent_modules_at_import']} modules imported"
    )
    print(
        f"bare onnxruntime      RSS {result['bare_rss_bytes'] / mib:.1f} MiB, of it anonymous "
        f"{result['bare_anon_bytes'] / mib:.1f} MiB; {result['bare_modules']} modules"
    )
    verdict = "met" if result["goal_met"] else "NOT met"
    print(
        f"ratio                 RSS {result['rss_ratio']:.2f}x (goal <= 1.3x: {verdict}); "
        f"anonymous {result['anon_ratio']:.2f}x"
    )
    print("agent's largest mappings (resident):")
    for row in result["agent_top_mappings"]:
        print(f"  {row['bytes'] / mib:7.1f} MiB  {row['mapping']}")
    print(json.dumps(result, sort_keys=True))
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
