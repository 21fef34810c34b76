"""Latency of two or more builds of one model, measured interleaved in one process, as ratios.

The build records each variant's p50 in its manifest, but the variants are timed one after
another, and on a shared machine the load changes between them. This script times them in
turns instead: in every round each build runs ``--runs`` calls at one thread (after
``--warmup``), the order alternating from round to round, and the round's ratio to the first
build (the base) is printed. The summary is the median ratio over the rounds, with its range.

Input: the base bundle's first golden case (every build of a model takes the same inputs), or
with ``--text`` an utterance put through the base bundle's own tokenizer (text-nlu bundles).

Rerun: ``.venv/bin/python -m scripts.models.variant_speed BASE_BUNDLE OTHER_BUNDLE [...]
[--rounds 8] [--runs 300] [--text "play some jazz by miles davis in the kitchen"]``, e.g. the
NLU teacher: ``build/text-nlu-teacher/snips-teacher-fp32 build/text-nlu-teacher/snips-teacher-int8-dynamic``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from protos.edgefleet.v1 import bundle_pb2
from protos.tensors import to_numpy
from scripts.models.measure import cpu_model, run_ms, session


def read_manifest(bundle: Path) -> bundle_pb2.BundleManifest:
    manifest = bundle_pb2.BundleManifest()
    try:
        data = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{bundle}: no readable manifest.json ({exc})") from None
    json_format.ParseDict(data, manifest, ignore_unknown_fields=True)
    return manifest


def feed_of(bundle: Path, manifest: bundle_pb2.BundleManifest, text: str | None) -> dict[str, np.ndarray]:
    if text is None:
        if not manifest.golden:
            raise SystemExit(f"{bundle}: no golden case to take an input from; give --text for a text-nlu bundle")
        return {t.name: to_numpy(t) for t in manifest.golden[0].inputs}
    from tokenizers import Tokenizer

    config = manifest.preprocessing.text
    tokenizer = Tokenizer.from_file(str(bundle / (config.tokenizer_file or "tokenizer.json")))
    ids = np.asarray([tokenizer.encode(text.lower() if config.lowercase else text).ids], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", type=Path, nargs="+", help="bundle directories; the first is the base")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--runs", type=int, default=300, help="timed calls per build per round")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--text", help="an utterance for text-nlu bundles (default: the base's first golden input)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if len(args.bundles) < 2:
        parser.error("give at least two bundles: the base and one to compare with it")
    if args.rounds < 1 or args.runs < 10 or args.warmup < 0:
        parser.error("--rounds must be >= 1, --runs >= 10, --warmup >= 0")
    manifests = [read_manifest(b) for b in args.bundles]
    feed = feed_of(args.bundles[0], manifests[0], args.text)
    sessions = [session(b / (m.model_file or "model.onnx")) for b, m in zip(args.bundles, manifests, strict=True)]
    names = [f"{m.name}:{m.variant}" for m in manifests]
    p50s: list[list[float]] = [[] for _ in sessions]
    shape = ", ".join(f"{k} {list(v.shape)}" for k, v in feed.items())
    print(f"{cpu_model()}, 1 thread; input {shape}; {args.rounds} rounds of {args.runs} calls each", flush=True)
    for round_ in range(args.rounds):
        order = list(range(len(sessions)))
        if round_ % 2:
            order.reverse()
        for i in order:
            p50s[i].append(statistics.median(run_ms(sessions[i], feed, runs=args.runs, warmup=args.warmup)))
        cells = "  ".join(f"{names[i]} {p50s[i][-1]:.3f} ms" for i in range(len(sessions)))
        ratios = "  ".join(f"{p50s[0][-1] / p50s[i][-1]:.2f}x" for i in range(1, len(sessions)))
        print(f"round {round_ + 1}: {cells}  base/other {ratios}", flush=True)
    summary = []
    for i in range(1, len(sessions)):
        ratios = [a / b for a, b in zip(p50s[0], p50s[i], strict=True)]
        summary.append(
            {
                "base": names[0],
                "other": names[i],
                "median_ratio": statistics.median(ratios),
                "min_ratio": min(ratios),
                "max_ratio": max(ratios),
                "base_p50_ms": p50s[0],
                "other_p50_ms": p50s[i],
            }
        )
        print(
            f"{names[0]} / {names[i]} p50: median {statistics.median(ratios):.2f}x "
            f"(range {min(ratios):.2f}-{max(ratios):.2f}x over {args.rounds} rounds); "
            f"median p50 {statistics.median(p50s[0]):.3f} vs {statistics.median(p50s[i]):.3f} ms"
        )
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"cpu": cpu_model(), "input": shape, "pairs": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
