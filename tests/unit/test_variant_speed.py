"""scripts/models/variant_speed.py: interleaved latency of committed builds, as ratios to the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.models import variant_speed

ROOT = Path(__file__).resolve().parents[2]
NLU = ROOT / "models" / "text-nlu"
SPEECH = ROOT / "models" / "speech-command"


def test_ratios_of_two_text_builds_on_a_tokenized_utterance(tmp_path: Path, capsys) -> None:
    out = tmp_path / "speed.json"
    argv = [str(NLU / "snips-student-fp32"), str(NLU / "snips-student-int8-static-qop")]
    argv += ["--rounds", "2", "--runs", "10", "--warmup", "1", "--text", "play jazz in the kitchen"]
    assert variant_speed.main([*argv, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input"] == "input_ids [1, 7], attention_mask [1, 7]"  # [CLS] 5 words [SEP]
    (pair,) = result["pairs"]
    assert (pair["base"], pair["other"]) == ("snips-nlu-student:fp32", "snips-nlu-student:int8-static-qop")
    assert len(pair["base_p50_ms"]) == len(pair["other_p50_ms"]) == 2
    ratios = [a / b for a, b in zip(pair["base_p50_ms"], pair["other_p50_ms"], strict=True)]
    assert pair["min_ratio"] == min(ratios) and pair["max_ratio"] == max(ratios)
    assert "round 2:" in capsys.readouterr().out


def test_golden_input_by_default(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    argv = [
        str(SPEECH / "fsdd-digits-fp32"),
        str(SPEECH / "fsdd-digits-int8-static-qdq"),
        str(SPEECH / "fsdd-digits-fp16"),
    ]
    assert variant_speed.main([*argv, "--rounds", "1", "--runs", "10", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input"] == "features [1, 1, 40, 100]"
    assert [p["other"] for p in result["pairs"]] == ["fsdd-digits:int8-static-qdq", "fsdd-digits:fp16"]


def test_bad_arguments_are_refused_with_a_reason(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        variant_speed.main([str(NLU / "snips-student-fp32")])
    assert "at least two bundles" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no readable manifest.json"):
        variant_speed.main([str(tmp_path), str(NLU / "snips-student-fp32")])
