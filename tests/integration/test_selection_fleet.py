"""A heterogeneous fleet on one machine: three simulated device classes, real agents, real benchmark jobs.

Three variants of one model version: fp32 (most accurate, really slow: 20 MatMuls), int8-dynamic
(fast, a little less accurate, largest bundle) and int8-static-qop (fast, least accurate, smallest,
needs the avx512_vnni CPU feature). The classes differ in what they may run and what they want:

- edge-big (2 devices): generous latency budget, most accurate  -> fp32
- edge-small (1 device, simulated CPU without avx512_vnni, 1 thread): 5 ms budget, most accurate
  -> fp32 is measured over the budget, qop cannot run there           -> int8-dynamic
- edge-vnni (1 device, simulated CPU with avx512_vnni, 1 thread): 5 ms budget, smallest
  -> int8-static-qop

The choices come from the benchmark jobs the devices ran; `models explain` shows the numbers; a
deployment without a variant gives each device its class's choice; raising edge-small's budget
changes its choice on the next deployment.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.enroll import enroll
from agent.facts import collect_facts
from protos.edgefleet.v1 import admin_pb2, agent_pb2, agent_pb2_grpc, common_pb2
from protos.join import parse_join_string
from tests.integration.conftest import server_config
from tests.integration.harness import ServerThread, wait_for
from tests.integration.shipping import publish, register_key

CLASSES = """\
classes:
  - name: edge-vnni
    match:
      - {fact: "label:tier", op: eq, value: vnni}
      - {fact: cpu_flags, op: contains, value: avx512_vnni}
    policy:
      latency_p95_ms: {generic: 5}
      objective: smallest
      benchmark_sample_size: 1
  - name: edge-small
    match:
      - {fact: "label:tier", op: eq, value: small}
    policy:
      latency_p95_ms: {generic: SMALL_BUDGET}
      objective: most-accurate
      benchmark_sample_size: 1
  - name: edge-big
    match:
      - {fact: "label:tier", op: eq, value: big}
    policy:
      latency_p95_ms: {generic: 5000}
      objective: most-accurate
      benchmark_sample_size: 2
"""
OLD_X86 = json.dumps({"cpu_flags": ["avx", "avx2", "f16c", "fma", "sse4_2"]})
# Simulated too, so that the test does not depend on the machine it runs on having avx512_vnni.
VNNI_X86 = json.dumps({"cpu_flags": ["avx", "avx2", "avx512_vnni", "avx512f", "f16c", "fma", "sse4_2"]})
EXPECTED = {"big-1": "fp32", "big-2": "fp32", "small-1": "int8-dynamic", "vnni-1": "int8-static-qop"}


@pytest.fixture
def cp(tmp_path: Path, db_url: str):
    """A control plane whose benchmark jobs time 10 runs (enough to tell 0.05 ms from 20 ms)."""
    server = ServerThread(server_config(tmp_path / "server", db_url, benchmark_runs=10))
    yield server
    server.stop()


def _classes(tmp_path: Path, small_budget: float) -> Path:
    path = tmp_path / f"classes-{small_budget:g}.yaml"
    path.write_text(CLASSES.replace("SMALL_BUDGET", f"{small_budget:g}"))
    return path


def _publish_variants(cp, key: Path, tmp_path: Path, name: str = "kws") -> None:
    publish(cp, key, tmp_path, name, 1, "fp32", work=20, manifest={"metrics": {"overall": {"accuracy": 0.95}}})
    publish(
        cp,
        key,
        tmp_path,
        name,
        1,
        "int8-dynamic",
        extra_files={"vocab.bin": bytes(64 * 1024)},
        manifest={"metrics": {"overall": {"accuracy": 0.94}}},
    )
    vnni = {"opset": 13, "cpu_features": ["avx512_vnni"]}
    publish(
        cp,
        key,
        tmp_path,
        name,
        1,
        "int8-static-qop",
        manifest={"metrics": {"overall": {"accuracy": 0.90}}, "requirements": vnni},
    )


def _evidence(cp) -> list[admin_pb2.EvidenceCell]:
    stub, meta, channel = cp.admin()
    with channel:
        return list(stub.GetEvidence(admin_pb2.GetEvidenceRequest(name="kws", version=1), metadata=meta).cells)


def _complete(cp) -> bool:
    want = {"edge-big": 2, "edge-small": 1, "edge-vnni": 1}
    cells = {(c.device_class, c.variant): c.devices for c in _evidence(cp) if c.source == "benchmark"}
    variants = ("fp32", "int8-dynamic", "int8-static-qop")
    return all(cells.get((cls, v)) == n for cls, n in want.items() for v in variants)


def _serving(cp, device_id: str) -> str:
    device = cp.device(device_id)
    return next((a.model.variant for a in device.active if a.model.name == "kws"), "")


def test_three_classes_get_different_variants_justified_by_benchmarks(cp, agents, cli, tmp_path):
    code, _, err = cli("classes", "apply", str(_classes(tmp_path, 5)))
    assert code == 0, err
    key = register_key(cp, tmp_path)
    fleet = {
        "big-1": ("--labels", "tier=big"),
        "big-2": ("--labels", "tier=big"),
        "small-1": ("--labels", "tier=small", "--simulate-facts", OLD_X86, "--onnx-threads", "1"),
        "vnni-1": ("--labels", "tier=vnni", "--simulate-facts", VNNI_X86, "--onnx-threads", "1"),
    }
    for device_id, args in fleet.items():
        agents(device_id, *args, "--trust", f"{key}.pub", join=cp.join_string(), device_id=device_id)
    wantclass = {"big-1": "edge-big", "big-2": "edge-big", "small-1": "edge-small", "vnni-1": "edge-vnni"}
    wait_for(
        lambda: {d.device_id: d.device_class for d in cp.devices() if d.online} == wantclass,
        timeout=60,
        what="four devices online in their classes",
    )
    code, out, _ = cli("devices", "list", "--class", "edge-small")
    assert "small-1" in out and "big-1" not in out

    _publish_variants(cp, key, tmp_path)
    wait_for(lambda: _complete(cp), timeout=180, interval=0.5, what="benchmark evidence from every class")

    cells = {(c.device_class, c.variant): c for c in _evidence(cp) if c.source == "benchmark"}
    slow, fast = cells[("edge-small", "fp32")], cells[("edge-small", "int8-dynamic")]
    assert slow.latency_p95_ms > 5 > fast.latency_p95_ms, (slow, fast)
    assert cells[("edge-small", "int8-static-qop")].acceptance_failures == 1
    assert cells[("edge-vnni", "int8-static-qop")].acceptance_failures == 0

    code, out, err = cli("models", "evidence", "kws:1")
    assert code == 0, err
    assert "edge-small" in out and "int8-static-qop" in out

    code, out, err = cli("models", "explain", "kws:1", "--class", "edge-small", "--json")
    assert code == 0, err
    small = json.loads(out)
    assert small["chosen_variant"] == "int8-dynamic"
    rejected = {c["variant"]: c["reason"] for c in small["rejected"]}
    assert "budget 5 ms" in rejected["fp32"] and "edge-small" in rejected["fp32"]
    assert "avx512_vnni" in rejected["int8-static-qop"]
    code, out, _ = cli("models", "explain", "kws:1", "--class", "edge-small")
    assert "int8-dynamic" in out and "budget 5 ms" in out

    for cls, variant in (("edge-big", "fp32"), ("edge-vnni", "int8-static-qop")):
        code, out, err = cli("models", "explain", "kws:1", "--class", cls, "--json")
        assert code == 0, err
        assert json.loads(out)["chosen_variant"] == variant, out

    code, out, err = cli("deploy", "kws:1", "--fleet", "lab")
    assert code == 0, err
    for device_id, variant in EXPECTED.items():
        assert f"{device_id}: kws:1:{variant}" in out, out
    for device_id, variant in EXPECTED.items():
        wait_for(lambda d=device_id, v=variant: _serving(cp, d) == v, timeout=60, what=f"{device_id} serving {variant}")

    # A bigger budget for edge-small: fp32 fits now and is the most accurate; the next deployment moves it.
    code, out, err = cli("classes", "apply", str(_classes(tmp_path, 100_000)))
    assert code == 0, err
    code, out, err = cli("models", "explain", "kws:1", "--device", "small-1", "--json")
    assert json.loads(out)["chosen_variant"] == "fp32", out
    code, out, err = cli("deploy", "kws:1", "--device", "small-1")
    assert code == 0 and "small-1: kws:1:fp32" in out, out + err
    wait_for(lambda: _serving(cp, "small-1") == "fp32", timeout=60, what="small-1 serving fp32")


# --- bad input ------------------------------------------------------------------------------------


def test_an_invalid_class_file_is_rejected_with_its_line_and_changes_nothing(cp, cli, tmp_path):
    good = _classes(tmp_path, 5)
    assert cli("classes", "apply", str(good))[0] == 0
    before = cli("classes", "list", "--json")[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text(CLASSES.replace("SMALL_BUDGET", "5").replace("objective: smallest", "objectiv: smallest"))
    code, out, err = cli("classes", "apply", str(bad))
    assert code != 0
    assert "line 8" in err and "objectiv" in err, err
    impossible = tmp_path / "impossible.yaml"
    impossible.write_text(CLASSES.replace("SMALL_BUDGET", "-3"))
    code, _, err = cli("classes", "apply", str(impossible))
    assert code != 0 and "line 14" in err and "-3" in err, err
    assert cli("classes", "list", "--json")[1] == before


def test_overlapping_classes_are_reported_and_the_first_match_wins(cp, cli, agents, tmp_path):
    overlapping = tmp_path / "overlap.yaml"
    overlapping.write_text(
        "classes:\n"
        "  - name: x86\n"
        "    match: [{fact: architecture, op: eq, value: x86_64}]\n"
        "  - name: labelled\n"
        "    match: [{fact: 'label:tier', op: eq, value: big}]\n"
    )
    agents("gw", "--labels", "tier=big", join=cp.join_string(), device_id="gw-1")
    wait_for(lambda: cp.is_online("gw-1") and cp.device("gw-1").facts.architecture, what="gw-1 online with facts")
    code, out, err = cli("classes", "apply", str(overlapping))
    assert code == 0, err
    assert "overlap" in err and "gw-1" in err, err
    assert cp.device("gw-1").device_class == "x86"


def test_benchmark_results_count_only_for_jobs_given_to_that_device(cp, tmp_path):
    """A forged job id and an out-of-range result are refused on a live session, which goes on to
    deliver a valid result: only that one becomes evidence."""
    facts = collect_facts(data_dir=tmp_path, labels={})
    identity = asyncio.run(
        enroll(parse_join_string(cp.join_string()), data_dir=tmp_path / "dev-j", device_id="dev-j", facts=facts)
    )
    key = register_key(cp, tmp_path)

    def result(job_id: str, variant: str, p95: float) -> agent_pb2.AgentMessage:
        benchmark = agent_pb2.BenchmarkResult(
            model=common_pb2.ModelRef(name="kws", version=1, variant=variant),
            acceptance_passed=True,
            latency_p50_ms=p95 / 2,
            latency_p95_ms=p95,
            load_time_ms=3.0,
            peak_rss_bytes=10 << 20,
            runs=10,
        )
        return agent_pb2.AgentMessage(job_result=agent_pb2.JobResult(job_id=job_id, ok=True, benchmark=benchmark))

    async def converse() -> list[agent_pb2.Job]:
        from agent.channel import device_channel

        async with device_channel(identity) as channel:
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session()
            await call.write(agent_pb2.AgentMessage(hello=agent_pb2.Hello(device_id="dev-j", boot_id="b")))
            assert (await call.read()).WhichOneof("body") == "welcome"
            await asyncio.to_thread(_publish_two, cp, key, tmp_path)
            jobs = []
            while len(jobs) < 2:
                message = await asyncio.wait_for(call.read(), 30)
                if message.WhichOneof("body") == "job":
                    jobs.append(message.job)
            await call.write(result("bench-forged", "fp32", 0.5))
            await call.write(result(jobs[0].job_id, jobs[0].benchmark.model.variant, float("nan")))
            await call.write(result(jobs[1].job_id, jobs[1].benchmark.model.variant, 4.0))
            await asyncio.to_thread(wait_for, lambda: len(_evidence(cp)) == 1, what="the valid result stored")
            await call.done_writing()
            return jobs

    jobs = asyncio.run(converse())
    [cell] = _evidence(cp)
    assert (cell.variant, cell.device_class, cell.devices) == (jobs[1].benchmark.model.variant, "default", 1)
    assert cell.latency_p95_ms == 4.0


def _publish_two(cp, key: Path, tmp_path: Path) -> None:
    publish(cp, key, tmp_path, "kws", 1, "fp32")
    publish(cp, key, tmp_path, "kws", 1, "int8-dynamic")
