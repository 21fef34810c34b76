"""Device classes: parsing and validating the class file, matching devices, warnings and conversions."""

from __future__ import annotations

import json
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.classes import (
    DEFAULT_CLASS,
    MAX_FILE_BYTES,
    NO_LIMIT,
    ClassFileError,
    ClassSpec,
    Policy,
    Rule,
    classify,
    effective_classes,
    from_dict,
    from_proto,
    matches,
    overlap_warnings,
    parse_class_file,
    to_dict,
    to_proto,
    to_yaml,
)
from protos.edgefleet.v1 import common_pb2

GOOD = """\
# classes.yaml
classes:
  - name: vehicle-arm-1g
    match:
      - {fact: architecture, op: eq, value: aarch64}
      - {fact: memory_total_bytes, op: lte, value: 1GiB}
      - {fact: label:site, op: in, values: [depot-a, depot-b]}
      - {fact: cpu_flags, op: contains, value: asimddp}
    policy:
      latency_p95_ms: {text-nlu: 20, speech-command: 15.5}
      model_memory_budget: 200MiB
      max_accuracy_drop: 0.01
      max_slice_gap: 0.05
      objective: fastest
      benchmark_sample_size: 5
  - name: edge-x86
    match:
      - fact: architecture
        op: eq
        value: x86_64
    policy:
      model_memory_budget: 1000000
  - name: any
"""


def facts(**kwargs) -> common_pb2.DeviceFacts:
    base = {"architecture": "x86_64", "cpu_cores": 4, "memory_total_bytes": 8 * 2**30}
    base.update(kwargs)
    return common_pb2.DeviceFacts(**base)


def one_rule(rule: str) -> Rule:
    """Parse a file with one class holding one rule (flow-style YAML) and return the rule."""
    (spec,) = parse_class_file(f"classes:\n  - name: c\n    match:\n      - {rule}\n")
    (parsed,) = spec.rules
    return parsed


def spec_with(*rules: Rule, name: str = "c", priority: int = 0) -> ClassSpec:
    return ClassSpec(name=name, priority=priority, rules=rules, policy=Policy())


def error(text: str) -> ClassFileError:
    with pytest.raises(ClassFileError) as info:
        parse_class_file(textwrap.dedent(text))
    return info.value


# --- parsing a good file -------------------------------------------------------------------------------


def test_a_good_file_parses_with_values_and_units_normalised():
    arm, x86, any_ = parse_class_file(GOOD)
    assert arm == ClassSpec(
        name="vehicle-arm-1g",
        priority=0,
        rules=(
            Rule("architecture", "eq", ("aarch64",)),
            Rule("memory_total_bytes", "lte", (str(2**30),)),
            Rule("label:site", "in", ("depot-a", "depot-b")),
            Rule("cpu_flags", "contains", ("asimddp",)),
        ),
        policy=Policy(
            latency_budgets_ms=(("text-nlu", 20.0), ("speech-command", 15.5)),
            model_memory_budget_bytes=200 * 2**20,
            max_accuracy_drop=0.01,
            max_slice_gap=0.05,
            objective="fastest",
            benchmark_sample_size=5,
        ),
    )
    assert arm.line == 3 and x86.line == 16 and any_.line == 23
    assert x86.priority == 1 and x86.policy == Policy(model_memory_budget_bytes=1_000_000)
    assert any_ == ClassSpec(name="any", priority=2, rules=(), policy=Policy())
    assert any_.policy.objective == "most-accurate" and any_.policy.benchmark_sample_size == 3
    assert any_.policy.max_accuracy_drop is None and any_.policy.max_slice_gap is None


@pytest.mark.parametrize(
    ("written", "bytes_"),
    [("1GiB", 2**30), ("1 GiB", 2**30), ("1.5KiB", 1536), ("2MB", 2_000_000), ("3KB", 3000), ("512B", 512)],
)
def test_sizes_take_units(written, bytes_):
    assert one_rule(f"{{fact: memory_total_bytes, op: gte, value: {written}}}").values == (str(bytes_),)
    (spec,) = parse_class_file(f"classes:\n  - name: c\n    policy: {{model_memory_budget: {written}}}\n")
    assert spec.policy.model_memory_budget_bytes == bytes_


def test_values_are_kept_as_written_strings():
    assert one_rule("{fact: onnxruntime_version, op: version_gte, value: 1.20}").values == ("1.20",)
    assert one_rule("{fact: label:ok, op: eq, value: yes}").values == ("yes",)  # a label, not a YAML boolean
    assert one_rule("{fact: cpu_cores, op: in, values: [2, 04]}").values == ("2", "4")
    assert one_rule("{fact: simulated, op: eq, value: true}").values == ("true",)
    assert one_rule("{fact: simulated, op: ne, value: 'False'}").values == ("false",)
    assert one_rule("{fact: label:site, op: eq, value: ''}").values == ("",)


def test_an_empty_class_list_and_an_empty_match_are_allowed():
    assert parse_class_file("classes: []\n") == []
    (spec,) = parse_class_file("classes:\n  - name: c\n    match: []\n    policy: {}\n")
    assert spec.rules == () and spec.policy == Policy()
    (spec,) = parse_class_file("classes:\n  - name: c\n    match:\n    policy:\n      max_slice_gap:\n")
    assert spec.rules == () and spec.policy == Policy()


def test_zero_tolerance_is_kept_apart_from_no_limit():
    (spec,) = parse_class_file("classes:\n  - name: c\n    policy: {max_accuracy_drop: 0, max_slice_gap: 1}\n")
    assert spec.policy.max_accuracy_drop == 0.0 and spec.policy.max_slice_gap == 1.0


def test_default_may_close_the_file_and_replaces_the_builtin():
    specs = parse_class_file(
        "classes:\n  - name: a\n    match: [{fact: cpu_cores, op: gt, value: 2}]\n  - name: default\n"
    )
    assert effective_classes(specs) == specs
    (a,) = parse_class_file("classes:\n  - name: a\n")
    builtin = effective_classes([a])[-1]
    assert builtin.name == "default" and builtin.priority == 1 and builtin.rules == ()
    assert builtin.policy == DEFAULT_CLASS.policy == Policy()
    assert builtin.policy.objective == "most-accurate" and builtin.policy.benchmark_sample_size == 3


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty"),
        ("# just a comment\n", 1, "empty"),
        ("- name: a\n", 1, "must be a mapping with a 'classes' list"),
        ("fleet: x\n", 1, "unknown key 'fleet' in the class file; valid keys: classes"),
        ("classes: []\nversion: 2\n", 2, "unknown key 'version' in the class file"),
        ("classes:\n", 1, "'classes' must be a list of classes, got nothing"),
        ("classes: {a: 1}\n", 1, "'classes' must be a list"),
        ("classes:\n  - name: a\n  - just-a-string\n", 3, "each entry under 'classes' must be a mapping"),
        ("classes:\n  - match: []\n", 2, "has no 'name'"),
        ("classes:\n  - name: a\n    nmae: b\n", 3, "unknown key 'nmae' in class 1; valid keys: name, match, policy"),
        ("classes:\n  - name: Edge_X86\n", 2, "class name 'Edge_X86' is invalid"),
        ("classes:\n  - name:\n", 2, "the class name is missing a value"),
        ("classes:\n  - name: [a]\n", 2, "the class name must be a single value, got a list"),
        ("classes:\n  - name: a\n    name: b\n", 3, "duplicate key 'name' in class 1 (first at line 2)"),
    ],
)
def test_file_and_class_level_errors(text, line, words):
    exc = error(text)
    assert exc.line == line and words in exc.reason, str(exc)
    assert str(exc) == f"line {line}: {exc.reason}"


def test_duplicate_class_names_point_at_both():
    exc = error(
        """\
        classes:
          - name: edge-x86
          - name: other
          - name: edge-x86
        """
    )
    assert str(exc) == "line 4: duplicate class name 'edge-x86' (first at line 2)"


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        ("{fact: arch, op: eq, value: x}", "unknown fact 'arch'; valid facts: architecture, cpu_model"),
        ("{fact: 'label:Bad Key', op: eq, value: x}", "label key 'Bad Key'"),
        ("{fact: architecture, op: ge, value: x}", "unknown op 'ge'; valid ops: eq, ne"),
        ("{fact: architecture, op: gte, value: x}", "op 'gte' needs an integer fact; 'architecture' is a string"),
        ("{fact: cpu_model, op: version_gte, value: '1'}", "op 'version_gte' needs a version fact"),
        ("{fact: cpu_flags, op: eq, value: avx2}", "'cpu_flags' is a list; valid ops for it: contains, in, not_in"),
        ("{fact: simulated, op: in, values: [true]}", "'simulated' is a boolean; valid ops for it: eq, ne"),
        ("{fact: cpu_cores, op: contains, value: 4}", "op 'contains' needs a list or string fact"),
        ("{fact: cpu_cores, op: gte, value: 1GiB}", "'cpu_cores' needs a whole number, got '1GiB'"),
        ("{fact: cpu_cores, op: gte, value: -1}", "'cpu_cores' needs a value from 0 to"),
        ("{fact: memory_total_bytes, op: gte, value: lots}", "needs a size in bytes such as 1073741824 or 1GiB"),
        ("{fact: memory_total_bytes, op: gte, value: 1Gb}", "unknown unit 'Gb' in '1Gb'"),
        ("{fact: memory_total_bytes, op: gte, value: 1.3B}", "not a whole number of bytes"),
        ("{fact: simulated, op: eq, value: maybe}", "'simulated' is true or false, got 'maybe'"),
        ("{fact: agent_version, op: version_lt, value: v1.2}", "needs a dotted version such as 1.17"),
        ("{fact: architecture, op: eq, value: ~}", "is missing a value (quote it if you mean the text '~')"),
        ("{fact: architecture, op: eq, value: [a]}", "must be a single value, got a list"),
        ("{fact: architecture, op: eq, value: " + "x" * 257 + "}", "longer than 256 characters"),
    ],
)
def test_rule_errors_name_the_line_of_the_culprit(rule, words):
    exc = error(f"classes:\n  - name: c\n    match:\n      - {{fact: cpu_cores, op: gte, value: 1}}\n      - {rule}\n")
    assert exc.line == 5 and words in exc.reason, str(exc)


def test_rule_errors_on_block_style_rules_point_at_the_key_or_value():
    base = "classes:\n  - name: c\n    match:\n      - fact: architecture\n        op: {op}\n        {tail}\n"
    assert error(base.format(op="gte", tail="value: 3")).line == 5
    exc = error(base.format(op="eq", tail="values: [a]"))
    assert exc.line == 6 and "op 'eq' in rule 1 of class 'c' takes exactly one 'value', not 'values'" in exc.reason
    exc = error(base.format(op="in", tail="value: a"))
    assert exc.line == 4 and "needs a list under 'values'" in exc.reason
    exc = error(base.format(op="eq", tail="valeu: a"))
    assert exc.line == 6 and "unknown key 'valeu' in rule 1 of class 'c'; valid keys: fact, op, value, values" in str(
        exc
    )
    exc = error(base.format(op="in", tail="values: []"))
    assert exc.line == 6 and "must hold 1 to 64 values, got 0" in exc.reason
    exc = error(base.format(op="in", tail="values: a"))
    assert exc.line == 6 and "'values' of rule 1 of class 'c' must be a list" in exc.reason
    exc = error("classes:\n  - name: c\n    match:\n      - {op: eq, value: a}\n")
    assert exc.line == 4 and "rule 1 of class 'c' has no 'fact'" in exc.reason
    exc = error("classes:\n  - name: c\n    match: {fact: cpu_cores}\n")
    assert exc.line == 3 and "'match' of class 'c' must be a list of rules" in exc.reason


POLICY = "classes:\n  - name: edge-x86\n    policy:\n      objective: fastest\n      {line}\n"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (
            "latency: 5",
            "unknown key 'latency' in the policy of class 'edge-x86'; valid keys: latency_p95_ms, model_memory_budget,",
        ),
        (
            "latency_p95_ms: {text-nlu: -5}",
            "latency budget for text-nlu must be a positive number of milliseconds, got -5",
        ),
        ("latency_p95_ms: {vad: 0}", "latency budget for vad must be a positive number of milliseconds, got 0"),
        ("latency_p95_ms: {vad: .inf}", "must be a positive number of milliseconds, got .inf"),
        ("latency_p95_ms: {vad: .nan}", "must be a positive number of milliseconds, got .nan"),
        ("latency_p95_ms: {vad: 3600001}", "must be at most 3600000 ms"),
        ("latency_p95_ms: {vad: 20ms}", "latency budget for vad must be a number, got '20ms'"),
        ("latency_p95_ms: {nlu: 20}", "unknown key 'nlu' in latency_p95_ms of class 'edge-x86'; valid keys: text-nlu,"),
        ("latency_p95_ms: {vad: 1, vad: 2}", "duplicate key 'vad'"),
        ("latency_p95_ms: [20]", "must be a mapping"),
        ("model_memory_budget: 0", "model_memory_budget must be more than 0 bytes"),
        ("model_memory_budget: -1MiB", "model_memory_budget must be more than 0 bytes"),
        ("model_memory_budget: 1025TiB", "model_memory_budget must be at most"),
        ("model_memory_budget: big", "model_memory_budget must be a size such as 200MiB"),
        ("model_memory_budget: 1.5", "model_memory_budget must be a size such as 200MiB"),
        ("max_accuracy_drop: 1.5", "max_accuracy_drop must be a number from 0 to 1"),
        ("max_accuracy_drop: -0.1", "max_accuracy_drop must be a number from 0 to 1"),
        ("max_slice_gap: 2", "max_slice_gap must be a number from 0 to 1"),
        ("max_slice_gap: yes", "max_slice_gap must be a number, got 'yes'"),
        ("benchmark_sample_size: 0", "benchmark_sample_size must be a whole number from 1 to 50, got 0"),
        ("benchmark_sample_size: 51", "from 1 to 50, got 51"),
        ("benchmark_sample_size: 2.5", "from 1 to 50, got '2.5'"),
        ("objective: fastest", "duplicate key 'objective' in the policy of class 'edge-x86' (first at line 4)"),
    ],
)
def test_policy_errors(line, words):
    exc = error(POLICY.format(line=line))
    assert exc.line == 5 and words in exc.reason, str(exc)


def test_unknown_objective_and_non_mapping_policy():
    exc = error("classes:\n  - name: c\n    policy:\n      objective: best\n")
    assert str(exc) == "line 4: unknown objective 'best'; valid objectives: most-accurate, fastest, smallest"
    exc = error("classes:\n  - name: c\n    policy: fast\n")
    assert exc.line == 3 and "the policy of class 'c' must be a mapping" in exc.reason


def test_yaml_syntax_errors_report_their_line():
    exc = error("classes:\n  - name: a\n    match: [\n  - name: b\n")
    assert exc.reason.startswith("invalid YAML") and exc.line >= 3
    exc = error("classes:\n  - name: a\n    match: []\n    policy: a: b\n")
    assert str(exc) == "line 4: invalid YAML: mapping values are not allowed here"
    exc = error("classes: []\n---\nclasses: []\n")
    assert exc.reason.startswith("invalid YAML") and exc.line == 2
    exc = error("classes:\n  - name: a\x07\n")
    assert exc.reason.startswith("invalid YAML") and exc.line == 2


def test_unsafe_tags_aliases_merges_and_deep_nesting_are_refused():
    exc = error("classes:\n  - name: a\n    policy: !!python/object/apply:os.system ['true']\n")
    assert exc.line == 3 and "unsupported YAML tag" in exc.reason
    exc = error("classes:\n  - name: !custom a\n")
    assert exc.line == 2 and "unsupported YAML tag" in exc.reason
    exc = error("classes:\n  - &x {name: a}\n  - {<<: *x, name: b}\n")
    assert exc.line == 3 and "merge keys" in exc.reason
    exc = error("classes: " + "[" * 5000 + "]" * 5000 + "\n")
    assert exc.line == 1
    recursive = "classes:\n  - name: a\n    match: &m [*m]\n"
    exc = error(recursive)
    assert exc.line == 3


def test_limits():
    too_many = "classes:\n" + "".join(f"  - name: c{i}\n" for i in range(257))
    exc = error(too_many)
    assert exc.line == 258 and "too many classes (257); the limit is 256" in exc.reason
    assert len(parse_class_file("classes:\n" + "".join(f"  - name: c{i}\n" for i in range(256)))) == 256

    rules = "".join(f"      - {{fact: cpu_cores, op: gte, value: {i}}}\n" for i in range(33))
    exc = error("classes:\n  - name: c\n    match:\n" + rules)
    assert exc.line == 4 + 32 and "too many match rules (33); the limit is 32" in exc.reason

    values = ", ".join(str(i) for i in range(65))
    exc = error(f"classes:\n  - name: c\n    match:\n      - {{fact: cpu_cores, op: in, values: [{values}]}}\n")
    assert exc.line == 4 and "1 to 64 values, got 65" in exc.reason

    big = "classes: []\n" + "#" * MAX_FILE_BYTES + "\n"
    exc = error(big)
    assert exc.line == 1 and "the limit is 262144 bytes" in exc.reason


def test_default_must_be_last_and_rule_less():
    exc = error("classes:\n  - name: default\n  - name: b\n")
    assert exc.line == 2 and "class 'default' must be the last class" in exc.reason
    exc = error("classes:\n  - name: a\n  - name: default\n    match:\n      - {fact: cpu_cores, op: gte, value: 1}\n")
    assert exc.line == 4 and "class 'default' cannot have match rules" in exc.reason


def test_nothing_is_returned_when_a_later_class_is_bad():
    with pytest.raises(ClassFileError):
        parse_class_file(GOOD + "  - name: bad\n    policy: {objective: best}\n")


def test_class_file_error_is_a_value_error_and_pickles():
    import pickle

    exc = ClassFileError(7, "something")
    assert isinstance(exc, ValueError) and str(exc) == "line 7: something"
    again = pickle.loads(pickle.dumps(exc))
    assert (again.line, again.reason, str(again)) == (7, "something", "line 7: something")


# --- matching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "device", "expected"),
    [
        ("{fact: architecture, op: eq, value: x86_64}", {}, True),
        ("{fact: architecture, op: eq, value: X86_64}", {}, False),
        ("{fact: architecture, op: ne, value: aarch64}", {}, True),
        ("{fact: architecture, op: ne, value: x86_64}", {}, False),
        ("{fact: architecture, op: in, values: [aarch64, x86_64]}", {}, True),
        ("{fact: architecture, op: in, values: [aarch64, armv7l]}", {}, False),
        ("{fact: architecture, op: not_in, values: [aarch64, armv7l]}", {}, True),
        ("{fact: architecture, op: not_in, values: [x86_64]}", {}, False),
        ("{fact: os, op: contains, value: Debian}", {"os": "Linux 6.1 (Debian GNU/Linux 12)"}, True),
        ("{fact: os, op: contains, value: Ubuntu}", {"os": "Linux 6.1 (Debian GNU/Linux 12)"}, False),
        ("{fact: cpu_flags, op: contains, value: avx2}", {"cpu_flags": ["sse4_2", "avx2"]}, True),
        ("{fact: cpu_flags, op: contains, value: avx}", {"cpu_flags": ["sse4_2", "avx2"]}, False),
        ("{fact: cpu_flags, op: in, values: [avx512_vnni, avx2]}", {"cpu_flags": ["avx2"]}, True),
        ("{fact: cpu_flags, op: in, values: [avx512_vnni]}", {"cpu_flags": ["avx2"]}, False),
        ("{fact: cpu_flags, op: not_in, values: [avx512_vnni]}", {"cpu_flags": ["avx2"]}, True),
        ("{fact: execution_providers, op: contains, value: CPUExecutionProvider}", {}, False),
        (
            "{fact: execution_providers, op: contains, value: CPUExecutionProvider}",
            {"execution_providers": ["CPUExecutionProvider"]},
            True,
        ),
        ("{fact: cpu_cores, op: eq, value: 4}", {}, True),
        ("{fact: cpu_cores, op: ne, value: 4}", {}, False),
        ("{fact: cpu_cores, op: in, values: [2, 4]}", {}, True),
        ("{fact: cpu_cores, op: not_in, values: [2, 4]}", {}, False),
        ("{fact: cpu_cores, op: gte, value: 4}", {}, True),
        ("{fact: cpu_cores, op: gt, value: 4}", {}, False),
        ("{fact: cpu_cores, op: lte, value: 4}", {}, True),
        ("{fact: cpu_cores, op: lt, value: 4}", {}, False),
        ("{fact: cpu_cores, op: gt, value: 10}", {"cpu_cores": 16}, True),  # numeric, not "16" < "10"
        ("{fact: memory_total_bytes, op: lte, value: 1GiB}", {"memory_total_bytes": 2**30}, True),
        ("{fact: memory_total_bytes, op: lte, value: 1GiB}", {"memory_total_bytes": 2**30 + 1}, False),
        ("{fact: memory_total_bytes, op: gt, value: 1GB}", {"memory_total_bytes": 2**30}, True),
        ("{fact: onnx_threads, op: eq, value: 0}", {}, True),
        ("{fact: model_memory_budget_bytes, op: lte, value: 256MiB}", {"model_memory_budget_bytes": 2**27}, True),
        ("{fact: model_memory_budget_bytes, op: lte, value: 256MiB}", {}, False),  # 0 = no budget = unlimited
        ("{fact: model_memory_budget_bytes, op: gte, value: 256MiB}", {}, True),
        ("{fact: model_memory_budget_bytes, op: eq, value: 0}", {}, False),
        ("{fact: simulated, op: eq, value: true}", {"simulated": True}, True),
        ("{fact: simulated, op: eq, value: true}", {}, False),
        ("{fact: simulated, op: ne, value: true}", {}, True),
        ("{fact: onnxruntime_version, op: version_gte, value: 1.17}", {"onnxruntime_version": "1.20.1"}, True),
        ("{fact: onnxruntime_version, op: version_gte, value: '1.20'}", {"onnxruntime_version": "1.9.0"}, False),
        ("{fact: onnxruntime_version, op: version_lt, value: '1.20'}", {"onnxruntime_version": "1.9.0"}, True),
        ("{fact: onnxruntime_version, op: version_gte, value: 1.17.0}", {"onnxruntime_version": "1.17"}, True),
        ("{fact: onnxruntime_version, op: version_lt, value: 1.17.0}", {"onnxruntime_version": "1.17"}, False),
        ("{fact: onnxruntime_version, op: version_gte, value: 1.17}", {"onnxruntime_version": "1.18.0rc1"}, True),
        ("{fact: onnxruntime_version, op: version_gte, value: 0}", {}, False),  # not importable: no version
        ("{fact: onnxruntime_version, op: version_lt, value: 99}", {}, False),
        ("{fact: agent_version, op: version_lt, value: 0.2}", {"agent_version": "0.1.9"}, True),
        ("{fact: label:site, op: eq, value: depot-a}", {"labels": {"site": "depot-a"}}, True),
        ("{fact: label:site, op: in, values: [depot-a, depot-b]}", {"labels": {"site": "depot-b"}}, True),
        ("{fact: label:site, op: in, values: [depot-a, depot-b]}", {"labels": {"site": "depot-c"}}, False),
        ("{fact: label:site, op: contains, value: depot}", {"labels": {"site": "depot-c"}}, True),
        ("{fact: label:site, op: ne, value: depot-a}", {"labels": {"site": "depot-c"}}, True),
        ("{fact: label:site, op: ne, value: depot-a}", {}, False),  # an absent label never holds
        ("{fact: label:site, op: not_in, values: [depot-a]}", {}, False),
        ("{fact: label:fw, op: version_gte, value: 2.10}", {"labels": {"fw": "2.9"}}, False),
        ("{fact: label:fw, op: version_gte, value: 2.10}", {"labels": {"fw": "2.10.3"}}, True),
    ],
)
def test_every_op_matches(rule, device, expected):
    spec = spec_with(one_rule(rule))
    assert matches(spec, facts(**device)) is expected


def test_all_rules_must_hold():
    (arm, _x86, _any) = parse_class_file(GOOD)
    device = facts(
        architecture="aarch64", memory_total_bytes=2**29, cpu_flags=["asimd", "asimddp"], labels={"site": "depot-a"}
    )
    assert matches(arm, device)
    assert not matches(arm, facts(architecture="aarch64", memory_total_bytes=2**29, cpu_flags=["asimddp"]))
    device.memory_total_bytes = 2**31
    assert not matches(arm, device)


def test_a_device_without_facts_matches_only_rule_less_classes():
    empty = common_pb2.DeviceFacts()
    ne = spec_with(Rule("architecture", "ne", ("aarch64",)))
    not_in = spec_with(Rule("cpu_flags", "not_in", ("avx2",)))
    assert not matches(ne, empty) and not matches(not_in, empty)
    assert matches(spec_with(), empty)
    assert classify(parse_class_file(GOOD), empty) == ("any", ())
    assert classify(parse_class_file(GOOD)[:2], empty) == ("default", ())


def test_classify_first_match_wins_and_reports_later_matches():
    specs = parse_class_file(
        """\
        classes:
          - name: big
            match: [{fact: cpu_cores, op: gte, value: 8}]
          - name: x86
            match: [{fact: architecture, op: eq, value: x86_64}]
          - name: arm
            match: [{fact: architecture, op: eq, value: aarch64}]
          - name: avx2
            match: [{fact: cpu_flags, op: contains, value: avx2}]
          - name: default
        """.replace("        ", "")
    )
    assert classify(specs, facts(cpu_cores=16, cpu_flags=["avx2"])) == ("big", ("x86", "avx2"))
    assert classify(specs, facts(cpu_cores=2)) == ("x86", ())
    assert classify(specs, facts(architecture="armv7l")) == ("default", ())  # rule-less default never an "other"
    assert classify(specs[:-1], facts(architecture="armv7l")) == ("default", ())
    assert classify(effective_classes(specs[:-1]), facts(architecture="aarch64")) == ("arm", ())


# --- overlap warnings ----------------------------------------------------------------------------------


def test_static_warnings_for_shadowing_classes():
    x86 = Rule("architecture", "eq", ("x86_64",))
    big = Rule("cpu_cores", "gte", ("8",))
    specs = [
        spec_with(x86, name="x86", priority=0),
        spec_with(big, x86, name="x86-big", priority=1),  # includes all of x86's rules
        spec_with(x86, name="x86-again", priority=2),
        spec_with(name="any", priority=3),
        spec_with(big, name="big", priority=4),
    ]
    warnings = overlap_warnings(specs, {})
    assert "class 'any' has no match rules and comes before 'big': big can never match" in warnings
    assert "classes 'x86' and 'x86-again' have identical match rules: x86-again can never match" in warnings
    assert any("'x86-big'" in w and "can never match" in w and w.startswith("every device") for w in warnings)
    assert len(warnings) == 3
    # a rule-less class at the end is the intended catch-all: no warning
    assert overlap_warnings([spec_with(big, name="big"), spec_with(name="default", priority=1)], {}) == []
    trailing_any = [spec_with(big, name="big"), spec_with(name="any", priority=1)]
    assert overlap_warnings(effective_classes(trailing_any), {"d": facts(cpu_cores=9)}) == []
    assert overlap_warnings([spec_with(name="any"), spec_with(name="default", priority=1)], {}) == []


def test_observed_overlaps_name_the_devices():
    specs = [
        spec_with(Rule("architecture", "eq", ("x86_64",)), name="a", priority=0),
        spec_with(Rule("cpu_cores", "gte", ("8",)), name="b", priority=1),
        spec_with(name="default", priority=2),
    ]
    devices = {
        "gw-2": facts(cpu_cores=8),
        "gw-1": facts(cpu_cores=16),
        "gw-3": facts(cpu_cores=2),
        "arm-1": facts(architecture="aarch64", cpu_cores=8),
        "empty": common_pb2.DeviceFacts(),
    }
    assert overlap_warnings(specs, devices) == [
        "classes 'a' and 'b' overlap on 2 devices (gw-1, gw-2); first match wins: they are in 'a'"
    ]
    one = overlap_warnings(specs, {"gw-1": facts(cpu_cores=16)})
    assert one == ["classes 'a' and 'b' overlap on 1 device (gw-1); first match wins: it is in 'a'"]
    many = {f"gw-{i:02d}": facts(cpu_cores=16) for i in range(8)}
    assert overlap_warnings(specs, many) == [
        "classes 'a' and 'b' overlap on 8 devices (gw-00, gw-01, gw-02, gw-03, gw-04, +3 more); "
        "first match wins: they are in 'a'"
    ]


# --- conversions ---------------------------------------------------------------------------------------


def test_to_proto_carries_everything_and_encodes_no_limit_as_minus_one():
    arm, x86, _ = parse_class_file(GOOD)
    message = to_proto(arm, device_count=7, overlaps_with=["edge-x86"])
    assert message.name == "vehicle-arm-1g" and message.priority == 0 and message.device_count == 7
    assert list(message.overlaps_with) == ["edge-x86"]
    assert [(r.fact, r.op, list(r.values)) for r in message.match] == [
        ("architecture", "eq", ["aarch64"]),
        ("memory_total_bytes", "lte", [str(2**30)]),
        ("label:site", "in", ["depot-a", "depot-b"]),
        ("cpu_flags", "contains", ["asimddp"]),
    ]
    policy = message.policy
    assert [(b.task, b.latency_p95_ms) for b in policy.latency_budgets] == [
        ("text-nlu", 20.0),
        ("speech-command", 15.5),
    ]
    assert policy.model_memory_budget_bytes == 200 * 2**20
    assert (policy.max_accuracy_drop, policy.max_slice_gap) == (0.01, 0.05)
    assert (policy.objective, policy.benchmark_sample_size) == ("fastest", 5)

    plain = to_proto(x86).policy
    assert plain.max_accuracy_drop == NO_LIMIT == -1 and plain.max_slice_gap == -1
    assert to_proto(x86).priority == 1 and to_proto(x86).device_count == 0
    assert from_proto(to_proto(arm)) == arm and from_proto(to_proto(x86)) == x86
    zero = ClassSpec("z", 0, (), Policy(max_accuracy_drop=0.0))
    assert to_proto(zero).policy.max_accuracy_drop == 0.0 and from_proto(to_proto(zero)) == zero


def test_dict_round_trip_is_exact_through_json():
    for spec in parse_class_file(GOOD):
        again = from_dict(json.loads(json.dumps(to_dict(spec))))
        assert again == spec and again.line == spec.line


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(name="Bad Name"),
        lambda d: d["rules"].append({"fact": "arch", "op": "eq", "values": ["x"]}),
        lambda d: d["rules"].append({"fact": "architecture", "op": "gte", "values": ["1"]}),
        lambda d: d["policy"].update(objective="best"),
        lambda d: d["policy"].update(benchmark_sample_size=0),
        lambda d: d["policy"].update(max_slice_gap=3),
        lambda d: d["policy"].update(latency_budgets_ms=[["vad", -1]]),
        lambda d: d.pop("name"),
        lambda d: d.update(priority="1"),
    ],
)
def test_from_dict_refuses_what_the_parser_would(mutate):
    data = to_dict(parse_class_file(GOOD)[0])
    mutate(data)
    with pytest.raises(ValueError):
        from_dict(data)


def test_to_yaml_round_trips_the_good_file():
    specs = parse_class_file(GOOD)
    text = to_yaml(specs)
    assert parse_class_file(text) == specs
    assert "model_memory_budget: 200MiB" in text and "value: 1GiB" in text


# Hypothesis: any valid set of specs survives to_yaml -> parse_class_file and to_dict -> from_dict.

_names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True).filter(lambda n: n != "default")
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).filter(str.isprintable)
_version = st.lists(st.integers(0, 10_000), min_size=1, max_size=4).map(lambda parts: ".".join(map(str, parts)))
_label = st.from_regex(r"[a-z0-9][a-z0-9._/-]{0,10}", fullmatch=True).map(lambda k: "label:" + k)


def _rules_for(fact: str, ops: tuple[str, ...], value: st.SearchStrategy[str]) -> st.SearchStrategy[Rule]:
    def build(op: str, values: list[str]) -> Rule:
        return Rule(fact, op, tuple(values) if op in ("in", "not_in") else (values[0],))

    return st.builds(build, st.sampled_from(ops), st.lists(value, min_size=1, max_size=4))


_rule = st.one_of(
    st.sampled_from(["architecture", "cpu_model", "os"]).flatmap(
        lambda f: _rules_for(f, ("eq", "ne", "in", "not_in", "contains"), _text)
    ),
    st.sampled_from(["onnxruntime_version", "agent_version"]).flatmap(
        lambda f: _rules_for(f, ("version_gte", "version_lt"), _version)
    ),
    _label.flatmap(lambda f: _rules_for(f, ("eq", "in", "contains", "version_lt"), _version)),
    _label.flatmap(lambda f: _rules_for(f, ("eq", "ne", "not_in"), _text)),
    st.sampled_from(["cpu_flags", "execution_providers"]).flatmap(
        lambda f: _rules_for(f, ("contains", "in", "not_in"), _text)
    ),
    st.sampled_from(["cpu_cores", "onnx_threads", "memory_total_bytes", "model_memory_budget_bytes"]).flatmap(
        lambda f: _rules_for(
            f, ("eq", "ne", "in", "not_in", "gte", "lte", "gt", "lt"), st.integers(0, 2**64 - 1).map(str)
        )
    ),
    _rules_for("simulated", ("eq", "ne"), st.sampled_from(["true", "false"])),
)
_fraction = st.none() | st.floats(0, 1)
_policy = st.builds(
    Policy,
    latency_budgets_ms=st.dictionaries(
        st.sampled_from(["text-nlu", "speech-command", "vad", "generic"]),
        st.floats(min_value=0, max_value=3_600_000, exclude_min=True),
    ).map(lambda d: tuple(d.items())),
    model_memory_budget_bytes=st.integers(0, 2**50) | st.sampled_from([2**20, 3 * 2**30, 1000]),
    max_accuracy_drop=_fraction,
    max_slice_gap=_fraction,
    objective=st.sampled_from(["most-accurate", "fastest", "smallest"]),
    benchmark_sample_size=st.integers(1, 50),
)


@st.composite
def _specs(draw) -> list[ClassSpec]:
    names = draw(st.lists(_names, unique=True, max_size=5))
    specs = [
        ClassSpec(name, i, tuple(draw(st.lists(_rule, max_size=4))), draw(_policy)) for i, name in enumerate(names)
    ]
    if draw(st.booleans()):
        specs.append(ClassSpec("default", len(specs), (), draw(_policy)))
    return specs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs())
def test_to_yaml_and_to_dict_round_trip(specs):
    assert parse_class_file(to_yaml(specs)) == specs
    assert [from_dict(json.loads(json.dumps(to_dict(spec)))) for spec in specs] == specs
    assert [from_proto(to_proto(spec)) for spec in specs] == specs
