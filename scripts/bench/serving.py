"""Local-API serving overhead and memory, measured side by side in one run.

What it measures, for the same ONNX model and the same input:
- bare: ``InferenceSession.run`` in this process, p50 and p99 over N calls;
- local API: a unary ``Infer`` over the agent's unix socket (grpc), served by the
  agent's own serving code (``agent.serving.Serving`` + ``agent.local_api``) in a
  separate process, p50 and p99 over N calls from this process;
- fast path: the same ``Infer`` request over the agent's second socket
  (``agent.local_fast``: the same messages, length-prefixed frames), served by the same
  process and the same service code, through ``agent.local_fast.LocalClient``;
- the empty call (``GetStatus``) on both transports: each transport's own floor;
- RSS of that serving process with the model active, vs a bare Python process that
  imports onnxruntime and loads the same model; and, for scale, the RSS of a serving
  process that has first imported every module the agent process imports (``agent.daemon``:
  pydantic, cryptography, the session, telemetry...).

Goals (issue "ship a model"): overhead ≤ 15% or ≤ 0.3 ms, whichever is larger; RSS ≤ 1.3×.

Rerun: ``.venv/bin/python scripts/bench/serving.py [--calls 2000] [--hidden 1024]``.
The model is an MLP built here (input 1×256, two hidden layers of --hidden units).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SERVE = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    if sys.argv[3] == "full":
        import agent.daemon
    from agent.local_api import LocalInferenceService, start_local_api
    from agent.local_fast import start_fast_api
    from agent.serving import Serving
    from protos.edgefleet.v1 import common_pb2
    data_dir, build = Path(sys.argv[1]), Path(sys.argv[2])
    async def main():
        serving = Serving(data_dir, threads=1)
        serving.activate("generic", common_pb2.ModelRef(name="mlp", version=1, variant="fp32"), build,
                         (build / "manifest.pb").read_bytes())
        service = LocalInferenceService(serving, device_id="bench")
        server, _ = await start_local_api(service, data_dir)
        fast = await start_fast_api(service, data_dir)
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
    """
)

BARE = textwrap.dedent(
    """
    import sys, onnxruntime as ort, numpy as np
    options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
    session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.zeros((1, 256), np.float32)})
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def build_model(path: Path, hidden: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dims = [256, hidden, hidden, 16]
    nodes, inits, current = [], [], "x"
    for i in range(3):
        w = numpy_helper.from_array(rng.standard_normal((dims[i], dims[i + 1])).astype(np.float32) * 0.05, f"w{i}")
        b = numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}")
        inits += [w, b]
        out = "y" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}" if i < 2 else out]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def start(code: str, *args: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise SystemExit(f"child did not start: {line!r}")
    return child


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--json-out", type=Path)
    opts = parser.parse_args()

    import grpc
    import onnxruntime as ort

    from agent.local_fast import LocalClient
    from protos.edgefleet.v1 import bundle_pb2, inference_pb2, inference_pb2_grpc
    from protos.tensors import from_numpy

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        build = tmp_path / "build"
        build.mkdir()
        build_model(build / "model.onnx", opts.hidden)
        manifest = bundle_pb2.BundleManifest(name="mlp", version=1, variant="fp32", model_file="model.onnx")
        (build / "manifest.pb").write_bytes(manifest.SerializeToString())
        x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(build / "model.onnx"), options, providers=["CPUExecutionProvider"])
        agent = start(SERVE, str(tmp_path), str(build), "serving")
        bare_proc = start(BARE, str(build / "model.onnx"))
        try:
            channel = grpc.insecure_channel(f"unix://{tmp_path / 'inference.sock'}")
            stub = inference_pb2_grpc.LocalInferenceStub(channel)
            fast = LocalClient(tmp_path, timeout=10)
            request = inference_pb2.InferRequest(task="generic", inputs=[from_numpy("x", x)])
            status_request = inference_pb2.GetStatusRequest()
            calls = {  # name -> one call; the order below is rotated every round
                "floor": lambda: stub.GetStatus(status_request, timeout=10),
                "bare": lambda: session.run(None, {"x": x}),
                "api": lambda: stub.Infer(request, timeout=10),
                "fast_floor": lambda: fast.get_status(status_request),
                "fast": lambda: fast.infer(request),
            }
            for _ in range(50):
                for call in calls.values():
                    call()
            samples: dict[str, list[float]] = {name: [] for name in calls}
            # Round trip minus the agent's own session.run (served_by.latency_ms): what the transport,
            # the decoding and the encoding cost, free of the model's run-to-run noise.
            outside: dict[str, list[float]] = {"api": [], "fast": []}
            order = list(calls.items())
            for i in range(opts.calls):  # interleaved, so machine noise hits all alike
                for name, call in order[i % len(order) :] + order[: i % len(order)]:
                    started = time.perf_counter()
                    answer = call()
                    elapsed = (time.perf_counter() - started) * 1000
                    samples[name].append(elapsed)
                    if name in outside:
                        outside[name].append(elapsed - answer.served_by.latency_ms)
            channel.close()
            fast.close()
            agent_rss, bare_rss = rss_bytes(agent.pid), rss_bytes(bare_proc.pid)
        finally:
            agent.kill()
            bare_proc.kill()
            agent.wait()
            bare_proc.wait()
        # For scale: the same serving process after importing everything the agent process imports.
        full = start(SERVE, str(tmp_path), str(build), "full")
        try:
            fast = LocalClient(tmp_path, timeout=10)
            for _ in range(50):
                fast.infer(request)
            fast.close()
            full_rss = rss_bytes(full.pid)
        finally:
            full.kill()
            full.wait()

    bare, api, floor = samples["bare"], samples["api"], samples["floor"]
    (bare50, bare99), (api50, api99), (floor50, floor99) = percentiles(bare), percentiles(api), percentiles(floor)
    (fast50, fast99), (ffloor50, ffloor99) = percentiles(samples["fast"]), percentiles(samples["fast_floor"])
    (out50, out99), (fout50, fout99) = percentiles(outside["api"]), percentiles(outside["fast"])
    result = {
        "model": f"MLP 256-{opts.hidden}-{opts.hidden}-16 fp32, 1 thread",
        "calls": opts.calls,
        "bare_p50_ms": bare50,
        "bare_p99_ms": bare99,
        "local_api_p50_ms": api50,
        "local_api_p99_ms": api99,
        "empty_call_p50_ms": floor50,
        "empty_call_p99_ms": floor99,
        "overhead_p50_ms": api50 - bare50,
        "overhead_p50_ratio": api50 / bare50 - 1,
        "overhead_p99_ms": api99 - bare99,
        "fast_p50_ms": fast50,
        "fast_p99_ms": fast99,
        "fast_empty_call_p50_ms": ffloor50,
        "fast_empty_call_p99_ms": ffloor99,
        "fast_overhead_p50_ms": fast50 - bare50,
        "fast_overhead_p50_ratio": fast50 / bare50 - 1,
        "fast_overhead_p99_ms": fast99 - bare99,
        "local_api_outside_run_p50_ms": out50,
        "local_api_outside_run_p99_ms": out99,
        "fast_outside_run_p50_ms": fout50,
        "fast_outside_run_p99_ms": fout99,
        "overhead_goal_ms": max(0.15 * bare50, 0.3),
        "agent_rss_bytes": agent_rss,
        "bare_rss_bytes": bare_rss,
        "rss_ratio": agent_rss / bare_rss,
        "agent_full_import_rss_bytes": full_rss,
        "full_import_rss_ratio": full_rss / bare_rss,
        "machine": f"{os.cpu_count()} cores",
    }
    goal = max(0.15 * bare50, 0.3)
    print(f"model                 {result['model']}, {opts.calls} calls interleaved")
    print(f"bare session.run      p50 {bare50:.3f} ms  p99 {bare99:.3f} ms")
    print(f"local API (unix gRPC) p50 {api50:.3f} ms  p99 {api99:.3f} ms")
    print(f"local API (fast sock) p50 {fast50:.3f} ms  p99 {fast99:.3f} ms")
    print(f"empty call GetStatus  p50 {floor50:.3f} ms  p99 {floor99:.3f} ms (gRPC's floor)")
    print(f"empty call, fast sock p50 {ffloor50:.3f} ms  p99 {ffloor99:.3f} ms (the fast socket's floor)")
    for label, p50, p99 in (("gRPC", api50, api99), ("fast", fast50, fast99)):
        print(
            f"overhead {label:12s} p50 +{p50 - bare50:.3f} ms ({(p50 / bare50 - 1) * 100:.0f}%), "
            f"p99 +{p99 - bare99:.3f} ms; goal <= {goal:.3f} ms: {'met' if p50 - bare50 <= goal else 'NOT met'}"
        )
    print(
        f"outside the agent's session.run: gRPC p50 {out50:.3f} ms p99 {out99:.3f} ms; "
        f"fast p50 {fout50:.3f} ms p99 {fout99:.3f} ms"
    )
    print(
        f"RSS                   serving process {agent_rss / 2**20:.1f} MiB vs bare {bare_rss / 2**20:.1f} MiB "
        f"= {agent_rss / bare_rss:.2f}x; goal <= 1.3x: {'met' if agent_rss / bare_rss <= 1.3 else 'NOT met'}"
    )
    print(
        f"RSS, all agent imports serving process {full_rss / 2**20:.1f} MiB = {full_rss / bare_rss:.2f}x bare "
        "(for scale: what the whole agent process loads)"
    )
    print(json.dumps(result))
    if opts.json_out:
        opts.json_out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
