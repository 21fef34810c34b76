"""Device classes: the operator's class file (YAML), its validation, and matching devices to classes.

Pure logic, no I/O. The file looks like::

    classes:
      - name: vehicle-arm-1g
        match:                      # every rule must hold; no rules = matches every device
          - {fact: architecture, op: eq, value: aarch64}
          - {fact: memory_total_bytes, op: lte, value: 1GiB}
          - {fact: label:site, op: in, values: [depot-a, depot-b]}
        policy:
          latency_p95_ms: {text-nlu: 20, speech-command: 15}
          model_memory_budget: 200MiB
          max_accuracy_drop: 0.01
          max_slice_gap: 0.05
          objective: most-accurate
          benchmark_sample_size: 3

Classes are tried in file order and the first whose rules all hold wins; a device no class matches
is in ``default`` (the built-in ``DEFAULT_CLASS``, or the file's own rule-less ``default``, which must
come last).

Facts and the ops each takes:

- string facts (architecture, cpu_model, os, onnxruntime_version, agent_version) and labels
  (``label:<key>``): eq, ne, in, not_in, contains (substring); onnxruntime_version, agent_version and
  labels also take version_gte / version_lt (dotted numbers compared numerically, "1.9" < "1.20"; a
  device version that does not start with a dotted number satisfies neither).
- list facts (cpu_flags, execution_providers): contains (the list holds the value), in (it holds any
  of the values), not_in (it holds none of them).
- integer facts (cpu_cores, onnx_threads, memory_total_bytes, model_memory_budget_bytes; the memory
  facts take units such as 1GiB): eq, ne, in, not_in, gte, lte, gt, lt. A device that reports
  model_memory_budget_bytes 0 has no budget: it compares as unlimited.
- simulated ("true" / "false"): eq, ne.

A rule on a label the device does not carry never holds (not even ne / not_in). A device that
reported no facts at all matches only classes without rules.

Values are kept as strings (``Rule.values``), normalised: sizes become plain byte counts, booleans
"true" / "false".

On the wire (``admin_pb2.ClassPolicy``) doubles have no presence, so ``max_accuracy_drop`` and
``max_slice_gap`` use ``-1`` (``NO_LIMIT``) for "no limit"; ``0`` means zero tolerance.
``model_memory_budget_bytes`` 0 means no memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from protos.edgefleet.v1 import admin_pb2, common_pb2
from protos.limits import LABEL_KEY_PATTERN, NAME_PATTERN

MAX_FILE_BYTES = 256 * 1024
MAX_CLASSES = 256
MAX_RULES = 32
MAX_VALUES = 64
MAX_STRING = 256
MAX_LATENCY_MS = 3_600_000
MAX_MEMORY_BUDGET_BYTES = 2**50
MAX_SAMPLE_SIZE = 50
MAX_FACT_INT = 2**64 - 1

TASKS = ("text-nlu", "speech-command", "vad", "generic")
OBJECTIVES = ("most-accurate", "fastest", "smallest")
DEFAULT_OBJECTIVE = "most-accurate"
DEFAULT_SAMPLE_SIZE = 3
DEFAULT_CLASS_NAME = "default"
NO_LIMIT = -1.0  # wire value of max_accuracy_drop / max_slice_gap when there is no limit

STRING_FACTS = ("architecture", "cpu_model", "os", "onnxruntime_version", "agent_version")
VERSION_FACTS = ("onnxruntime_version", "agent_version")
LIST_FACTS = ("cpu_flags", "execution_providers")
INT_FACTS = ("cpu_cores", "memory_total_bytes", "onnx_threads", "model_memory_budget_bytes")
SIZE_FACTS = ("memory_total_bytes", "model_memory_budget_bytes")
BOOL_FACTS = ("simulated",)
LABEL_PREFIX = "label:"
FACTS = STRING_FACTS + LIST_FACTS + INT_FACTS + BOOL_FACTS

OPS = ("eq", "ne", "in", "not_in", "contains", "gte", "lte", "gt", "lt", "version_gte", "version_lt")
MULTI_VALUE_OPS = ("in", "not_in")
_INT_OPS = ("gte", "lte", "gt", "lt")
_VERSION_OPS = ("version_gte", "version_lt")
_OPS_BY_KIND = {
    "string": ("eq", "ne", "in", "not_in", "contains"),
    "version": ("eq", "ne", "in", "not_in", "contains", "version_gte", "version_lt"),
    "list": ("contains", "in", "not_in"),
    "int": ("eq", "ne", "in", "not_in", "gte", "lte", "gt", "lt"),
    "bool": ("eq", "ne"),
}
_KIND_WORDS = {"string": "a string", "version": "a string", "list": "a list", "int": "an integer", "bool": "a boolean"}

# Binary and decimal size units, largest first (to_yaml renders the largest exact binary unit).
SIZE_UNITS = {
    "TiB": 1024**4,
    "GiB": 1024**3,
    "MiB": 1024**2,
    "KiB": 1024,
    "TB": 1000**4,
    "GB": 1000**3,
    "MB": 1000**2,
    "KB": 1000,
    "B": 1,
}

_TOP_KEYS = ("classes",)
_CLASS_KEYS = ("name", "match", "policy")
_RULE_KEYS = ("fact", "op", "value", "values")
_POLICY_KEYS = (
    "latency_p95_ms",
    "model_memory_budget",
    "max_accuracy_drop",
    "max_slice_gap",
    "objective",
    "benchmark_sample_size",
)

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_ALLOWED_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, _TAG + "timestamp", _TAG + "seq", _TAG + "map"}
_SIZE_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_VERSION_RE = re.compile(r"\d+(?:\.\d+)*")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class ClassFileError(ValueError):
    """The class file is invalid; ``str()`` is ``"line N: <reason>"`` (N is 1-based)."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.line, self.reason))


class _Invalid(ValueError):
    """A reason without a place; the parser adds the line."""


@dataclass(frozen=True)
class Rule:
    fact: str
    op: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    latency_budgets_ms: tuple[tuple[str, float], ...] = ()  # (task, p95 ms), file order
    model_memory_budget_bytes: int = 0  # 0 = no budget
    max_accuracy_drop: float | None = None  # None = no limit
    max_slice_gap: float | None = None  # None = no limit
    objective: str = DEFAULT_OBJECTIVE
    benchmark_sample_size: int = DEFAULT_SAMPLE_SIZE


@dataclass(frozen=True)
class ClassSpec:
    name: str
    priority: int  # position in the file, 0-based; first match wins
    rules: tuple[Rule, ...]
    policy: Policy
    line: int = field(default=0, compare=False)  # 1-based line in the class file; 0 when not from a file


DEFAULT_CLASS = ClassSpec(name=DEFAULT_CLASS_NAME, priority=0, rules=(), policy=Policy(), line=0)


def effective_classes(specs: Sequence[ClassSpec]) -> list[ClassSpec]:
    """``specs`` plus the built-in ``DEFAULT_CLASS`` (priority = after the last) unless they define ``default``."""
    result = list(specs)
    if not any(spec.name == DEFAULT_CLASS_NAME for spec in result):
        result.append(dataclasses.replace(DEFAULT_CLASS, priority=len(result)))
    return result


# --- value checks shared by the parser and from_dict ---------------------------------------------------


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _fact_kind(fact: str) -> str:
    """Return the kind of ``fact`` (string, version, list, int, bool) or raise _Invalid."""
    if fact.startswith(LABEL_PREFIX):
        key = fact[len(LABEL_PREFIX) :]
        if not LABEL_KEY_PATTERN.fullmatch(key):
            raise _Invalid(
                f"label key {_show(key)} in fact {_show(fact)} is invalid: use 1-63 characters a-z, 0-9, "
                "'.', '_', '/' or '-', starting with a letter or digit"
            )
        return "version"
    if fact in VERSION_FACTS:
        return "version"
    if fact in STRING_FACTS:
        return "string"
    if fact in LIST_FACTS:
        return "list"
    if fact in INT_FACTS:
        return "int"
    if fact in BOOL_FACTS:
        return "bool"
    raise _Invalid(f"unknown fact {_show(fact)}; valid facts: {', '.join(FACTS)}, {LABEL_PREFIX}<key>")


def _check_op(fact: str, kind: str, op: str) -> None:
    if op not in OPS:
        raise _Invalid(f"unknown op {_show(op)}; valid ops: {', '.join(OPS)}")
    allowed = _OPS_BY_KIND[kind]
    if op in allowed:
        return
    if op in _INT_OPS:
        need = "an integer fact"
    elif op in _VERSION_OPS:
        need = f"a version fact ({', '.join(VERSION_FACTS)} or a label)"
    elif op == "contains":
        need = "a list or string fact"
    elif op in MULTI_VALUE_OPS:
        need = "a string, integer or list fact"
    else:
        need = "a string, integer or boolean fact"
    raise _Invalid(f"op {op!r} needs {need}; {fact!r} is {_KIND_WORDS[kind]}; valid ops for it: {', '.join(allowed)}")


def _parse_size(text: str, *, units: bool) -> int:
    """Parse an integer, optionally with a size unit, or raise _Invalid (reason without context)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if not match or (match.group(2) and not units):
        raise _Invalid("")
    number, unit = match.groups()
    if unit and unit not in SIZE_UNITS:
        raise _Invalid(f"unknown unit {unit!r} in {_show(text)}; use {', '.join(SIZE_UNITS)}")
    multiplier = SIZE_UNITS[unit or "B"]
    if "." not in number:
        return int(number) * multiplier
    with localcontext(Context(prec=len(number) + 20)):
        value = Decimal(number) * multiplier
    if value != value.to_integral_value():
        raise _Invalid(f"{_show(text)} is not a whole number of bytes")
    return int(value)


def _normalise_value(fact: str, kind: str, op: str, text: str) -> str:
    """Return the canonical string form of one rule value, or raise _Invalid."""
    if len(text) > MAX_STRING:
        raise _Invalid(f"a value for {fact!r} is longer than {MAX_STRING} characters")
    if not text.isprintable():
        raise _Invalid(f"a value for {fact!r} contains control characters")
    if kind == "int":
        size = fact in SIZE_FACTS
        try:
            number = _parse_size(text, units=size)
        except _Invalid as exc:
            if str(exc):
                raise
            example = "a size in bytes such as 1073741824 or 1GiB" if size else "a whole number"
            raise _Invalid(f"{fact!r} needs {example}, got {_show(text)}") from None
        if not 0 <= number <= MAX_FACT_INT:
            raise _Invalid(f"{fact!r} needs a value from 0 to {MAX_FACT_INT}, got {_show(text)}")
        return str(number)
    if kind == "bool":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise _Invalid(f"{fact!r} is true or false, got {_show(text)}")
        return lowered
    if op in _VERSION_OPS and not _VERSION_RE.fullmatch(text):
        raise _Invalid(f"op {op!r} needs a dotted version such as 1.17 or 1.17.3, got {_show(text)}")
    return text


def _check_rule(fact: str, op: str, values: Sequence[str]) -> Rule:
    kind = _fact_kind(fact)
    _check_op(fact, kind, op)
    if op in MULTI_VALUE_OPS:
        if not 1 <= len(values) <= MAX_VALUES:
            raise _Invalid(f"op {op!r} needs 1 to {MAX_VALUES} values, got {len(values)}")
    elif len(values) != 1:
        raise _Invalid(f"op {op!r} takes exactly one value, got {len(values)}")
    return Rule(fact, op, tuple(_normalise_value(fact, kind, op, v) for v in values))


def _check_latency(task: str, ms: float, shown: str) -> float:
    if task not in TASKS:
        raise _Invalid(f"unknown task {_show(task)} in latency_p95_ms; valid tasks: {', '.join(TASKS)}")
    if not math.isfinite(ms) or ms <= 0:
        raise _Invalid(f"latency budget for {task} must be a positive number of milliseconds, got {shown}")
    if ms > MAX_LATENCY_MS:
        raise _Invalid(f"latency budget for {task} must be at most {MAX_LATENCY_MS} ms (one hour), got {shown}")
    return float(ms)


def _check_memory_budget(value: int, shown: str) -> int:
    if value <= 0:
        raise _Invalid(f"model_memory_budget must be more than 0 bytes (leave it out for no budget), got {shown}")
    if value > MAX_MEMORY_BUDGET_BYTES:
        raise _Invalid(f"model_memory_budget must be at most 1024TiB (2**50 bytes), got {shown}")
    return value


def _check_fraction(key: str, value: float, shown: str) -> float:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise _Invalid(f"{key} must be a number from 0 to 1 (absolute, e.g. 0.01 = 1 point), got {shown}")
    return float(value)


def _check_objective(value: str) -> str:
    if value not in OBJECTIVES:
        raise _Invalid(f"unknown objective {_show(value)}; valid objectives: {', '.join(OBJECTIVES)}")
    return value


def _check_sample_size(value: int, shown: str) -> int:
    if not 1 <= value <= MAX_SAMPLE_SIZE:
        raise _Invalid(f"benchmark_sample_size must be a whole number from 1 to {MAX_SAMPLE_SIZE}, got {shown}")
    return value


def _check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise _Invalid(
            f"class name {_show(name)} is invalid: use 1-63 characters a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


# --- the parser ----------------------------------------------------------------------------------------


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    return _show(node.value)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


@contextmanager
def _at(node: Node) -> Iterator[None]:
    """Turn an _Invalid raised inside into a ClassFileError at ``node``'s line."""
    try:
        yield
    except _Invalid as exc:
        raise ClassFileError(_line(node), str(exc)) from None


def _fail(node: Node, reason: str) -> ClassFileError:
    return ClassFileError(_line(node), reason)


def _check_tags(root: Node) -> None:
    """Refuse tags other than plain YAML data (no !!python/..., !!binary, custom tags, merge keys)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _ALLOWED_TAGS:
            if node.tag == _TAG + "merge":
                raise _fail(node, "YAML merge keys (<<) are not supported; write the keys out")
            raise _fail(node, f"unsupported YAML tag {_show(node.tag)}; use plain strings, numbers, lists and mappings")
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for key, value in node.value:
                stack.extend((key, value))


def _mapping(node: Node, where: str, valid: Sequence[str]) -> dict[str, tuple[Node, Node]]:
    """Return {key: (key node, value node)} of a mapping node with only ``valid`` keys, each once."""
    if not isinstance(node, MappingNode):
        raise _fail(node, f"{where} must be a mapping with keys {', '.join(valid)}; got {_describe(node)}")
    result: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            raise _fail(key_node, f"a key in {where} must be a plain word, got {_describe(key_node)}")
        key = key_node.value
        if key in result:
            first = _line(result[key][0])
            raise _fail(key_node, f"duplicate key {_show(key)} in {where} (first at line {first})")
        if key not in valid:
            raise _fail(key_node, f"unknown key {_show(key)} in {where}; valid keys: {', '.join(valid)}")
        result[key] = (key_node, value_node)
    return result


def _text(node: Node, what: str) -> str:
    """A scalar's text as written (``1.20`` stays "1.20"); null and collections are errors."""
    if not isinstance(node, ScalarNode):
        raise _fail(node, f"{what} must be a single value, got {_describe(node)}")
    if node.tag == _NULL:
        hint = f" (quote it if you mean the text {node.value!r})" if node.value else ""
        raise _fail(node, f"{what} is missing a value{hint}")
    if len(node.value) > MAX_STRING:
        raise _fail(node, f"{what} is longer than {MAX_STRING} characters")
    return node.value


def _number(node: Node, what: str) -> float:
    if not isinstance(node, ScalarNode) or node.tag not in (_INT, _FLOAT):
        raise _fail(node, f"{what} must be a number, got {_describe(node)}")
    if node.tag == _INT:
        return float(_CONSTRUCTOR.construct_yaml_int(node))
    return float(_CONSTRUCTOR.construct_yaml_float(node))


def _integer(node: Node, what: str, shown_range: str) -> int:
    if not isinstance(node, ScalarNode) or node.tag != _INT:
        raise _fail(node, f"{what} must be {shown_range}, got {_describe(node)}")
    return int(_CONSTRUCTOR.construct_yaml_int(node))


class _Parser:
    def __init__(self, root: Node) -> None:
        self.root = root

    def classes(self) -> list[ClassSpec]:
        root = self.root
        if not isinstance(root, MappingNode):
            raise _fail(root, f"the class file must be a mapping with a 'classes' list; got {_describe(root)}")
        top = _mapping(root, "the class file", _TOP_KEYS)
        if "classes" not in top:
            raise _fail(root, "the class file has no 'classes' list")
        seq = top["classes"][1]
        if not isinstance(seq, SequenceNode):
            raise _fail(seq, f"'classes' must be a list of classes, got {_describe(seq)}")
        entries = seq.value
        if len(entries) > MAX_CLASSES:
            raise _fail(entries[MAX_CLASSES], f"too many classes ({len(entries)}); the limit is {MAX_CLASSES}")
        specs: list[ClassSpec] = []
        first_line: dict[str, int] = {}
        for priority, entry in enumerate(entries):
            spec = self.one_class(entry, priority, last=priority == len(entries) - 1, first_line=first_line)
            specs.append(spec)
        return specs

    def one_class(self, node: Node, priority: int, *, last: bool, first_line: dict[str, int]) -> ClassSpec:
        if not isinstance(node, MappingNode):
            raise _fail(
                node, f"each entry under 'classes' must be a mapping with name, match and policy; got {_describe(node)}"
            )
        keys = _mapping(node, f"class {priority + 1}", _CLASS_KEYS)
        if "name" not in keys:
            raise _fail(node, f"class {priority + 1} has no 'name'")
        name_node = keys["name"][1]
        name = _text(name_node, "the class name")
        with _at(name_node):
            _check_name(name)
        if name in first_line:
            raise _fail(name_node, f"duplicate class name {name!r} (first at line {first_line[name]})")
        first_line[name] = _line(name_node)
        if name == DEFAULT_CLASS_NAME and not last:
            raise _fail(
                name_node,
                "class 'default' must be the last class: it catches the devices no other class matches",
            )
        rules: tuple[Rule, ...] = ()
        if "match" in keys:
            rules = self.rules(keys["match"][1], name)
            if rules and name == DEFAULT_CLASS_NAME:
                raise _fail(
                    keys["match"][0],
                    "class 'default' cannot have match rules: it catches the devices no other class matches",
                )
        policy = self.policy(keys["policy"][1], name) if "policy" in keys else Policy()
        return ClassSpec(name=name, priority=priority, rules=rules, policy=policy, line=_line(node))

    def rules(self, node: Node, cls: str) -> tuple[Rule, ...]:
        if _is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            raise _fail(node, f"'match' of class {cls!r} must be a list of rules, got {_describe(node)}")
        if len(node.value) > MAX_RULES:
            raise _fail(
                node.value[MAX_RULES],
                f"class {cls!r} has too many match rules ({len(node.value)}); the limit is {MAX_RULES}",
            )
        return tuple(self.rule(rule, cls, index) for index, rule in enumerate(node.value, start=1))

    def rule(self, node: Node, cls: str, index: int) -> Rule:
        where = f"rule {index} of class {cls!r}"
        keys = _mapping(node, where, _RULE_KEYS)
        for required in ("fact", "op"):
            if required not in keys:
                raise _fail(node, f"{where} has no {required!r}")
        fact_node, op_node = keys["fact"][1], keys["op"][1]
        fact = _text(fact_node, f"the fact of {where}")
        with _at(fact_node):
            kind = _fact_kind(fact)
        op = _text(op_node, f"the op of {where}")
        with _at(op_node):
            _check_op(fact, kind, op)
        if op in MULTI_VALUE_OPS:
            if "values" not in keys:
                raise _fail(node, f"op {op!r} in {where} needs a list under 'values', not a single 'value'")
            if "value" in keys:
                raise _fail(keys["value"][0], f"op {op!r} in {where} takes 'values' only, not also 'value'")
            seq = keys["values"][1]
            if not isinstance(seq, SequenceNode):
                raise _fail(seq, f"'values' of {where} must be a list, got {_describe(seq)}")
            if not 1 <= len(seq.value) <= MAX_VALUES:
                raise _fail(seq, f"'values' of {where} must hold 1 to {MAX_VALUES} values, got {len(seq.value)}")
            value_nodes = list(seq.value)
        else:
            if "values" in keys:
                raise _fail(keys["values"][0], f"op {op!r} in {where} takes exactly one 'value', not 'values'")
            if "value" not in keys:
                raise _fail(node, f"op {op!r} in {where} needs a 'value'")
            value_nodes = [keys["value"][1]]
        values = []
        for value_node in value_nodes:
            text = _text(value_node, f"a value of {where}")
            if kind == "bool" and value_node.tag == _BOOL:  # yes / on / True: YAML booleans
                text = "true" if _CONSTRUCTOR.construct_yaml_bool(value_node) else "false"
            with _at(value_node):
                values.append(_normalise_value(fact, kind, op, text))
        return Rule(fact, op, tuple(values))

    def policy(self, node: Node, cls: str) -> Policy:
        if _is_null(node):
            return Policy()
        where = f"the policy of class {cls!r}"
        keys = _mapping(node, where, _POLICY_KEYS)
        values = {key: value for key, (_, value) in keys.items() if not _is_null(value)}
        budgets: list[tuple[str, float]] = []
        if "latency_p95_ms" in values:
            lat = values["latency_p95_ms"]
            for task, (_, ms_node) in _mapping(lat, f"latency_p95_ms of class {cls!r}", TASKS).items():
                ms = _number(ms_node, f"latency budget for {task}")
                with _at(ms_node):
                    budgets.append((task, _check_latency(task, ms, ms_node.value)))
        memory = 0
        if "model_memory_budget" in values:
            mem_node = values["model_memory_budget"]
            what = "model_memory_budget"
            if not isinstance(mem_node, ScalarNode) or mem_node.tag not in (_INT, _STR):
                raise _fail(mem_node, f"{what} must be a size such as 200MiB or 209715200, got {_describe(mem_node)}")
            with _at(mem_node):
                try:
                    memory = _parse_size(mem_node.value, units=True)
                except _Invalid as exc:
                    if str(exc):
                        raise
                    raise _Invalid(
                        f"{what} must be a size such as 200MiB or 209715200, got {_show(mem_node.value)}"
                    ) from None
                _check_memory_budget(memory, mem_node.value)
        fractions: dict[str, float | None] = {"max_accuracy_drop": None, "max_slice_gap": None}
        for key in fractions:
            if key in values:
                number = _number(values[key], key)
                with _at(values[key]):
                    fractions[key] = _check_fraction(key, number, values[key].value)
        objective = DEFAULT_OBJECTIVE
        if "objective" in values:
            objective = _text(values["objective"], "objective")
            with _at(values["objective"]):
                _check_objective(objective)
        sample = DEFAULT_SAMPLE_SIZE
        if "benchmark_sample_size" in values:
            sample_node = values["benchmark_sample_size"]
            range_text = f"a whole number from 1 to {MAX_SAMPLE_SIZE}"
            sample = _integer(sample_node, "benchmark_sample_size", range_text)
            with _at(sample_node):
                _check_sample_size(sample, sample_node.value)
        return Policy(
            latency_budgets_ms=tuple(budgets),
            model_memory_budget_bytes=memory,
            max_accuracy_drop=fractions["max_accuracy_drop"],
            max_slice_gap=fractions["max_slice_gap"],
            objective=objective,
            benchmark_sample_size=sample,
        )


def _compose(text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            reason = f"{exc.problem} ({exc.context})"
        raise ClassFileError(line, f"invalid YAML: {reason}") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        raise ClassFileError(line, f"invalid YAML: character {exc.character!r} is not allowed") from None
    except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error above carries a place
        raise ClassFileError(1, f"invalid YAML: {exc}") from None
    except RecursionError:
        raise ClassFileError(1, "invalid YAML: nested too deeply") from None


def parse_class_file(text: str) -> list[ClassSpec]:
    """Parse and validate a whole class file; raises ClassFileError (``"line N: reason"``) on the first problem.

    Priorities are the classes' positions (0-based). Nothing is returned unless everything is valid.
    """
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_FILE_BYTES:
        raise ClassFileError(1, f"the class file is {size} bytes; the limit is {MAX_FILE_BYTES} bytes (256 KiB)")
    root = _compose(text)
    if root is None:
        raise ClassFileError(1, "the class file is empty; it needs a top-level 'classes' list")
    _check_tags(root)
    return _Parser(root).classes()


# --- matching ------------------------------------------------------------------------------------------


def _version_key(text: str) -> tuple[int, ...] | None:
    match = _VERSION_RE.match(text.strip())
    if not match:
        return None
    return tuple(int(part) for part in match.group(0).split("."))


def _version_cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    width = max(len(a), len(b))
    pa, pb = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return (pa > pb) - (pa < pb)


def _fact_value(facts: common_pb2.DeviceFacts, fact: str) -> Any:
    if fact.startswith(LABEL_PREFIX):
        return facts.labels.get(fact[len(LABEL_PREFIX) :])
    if fact in LIST_FACTS:
        return set(getattr(facts, fact))
    if fact in BOOL_FACTS:
        return "true" if getattr(facts, fact) else "false"
    if fact == "model_memory_budget_bytes" and facts.model_memory_budget_bytes == 0:
        return math.inf  # no budget configured: unlimited
    return getattr(facts, fact)


def _rule_holds(rule: Rule, facts: common_pb2.DeviceFacts) -> bool:
    actual = _fact_value(facts, rule.fact)
    if actual is None:
        return False
    op, values = rule.op, rule.values
    if rule.fact in LIST_FACTS:
        if op == "contains":
            return values[0] in actual
        found = any(value in actual for value in values)
        return found if op == "in" else not found
    if op in _VERSION_OPS:
        have, want = _version_key(actual), _version_key(values[0])
        if have is None or want is None:
            return False
        cmp = _version_cmp(have, want)
        return cmp >= 0 if op == "version_gte" else cmp < 0
    if rule.fact in INT_FACTS:
        wanted: Sequence[Any] = [int(value) for value in values]
    else:
        wanted = values
    if op == "eq":
        return actual == wanted[0]
    if op == "ne":
        return actual != wanted[0]
    if op == "in":
        return actual in wanted
    if op == "not_in":
        return actual not in wanted
    if op == "contains":
        return wanted[0] in actual
    if op == "gte":
        return actual >= wanted[0]
    if op == "lte":
        return actual <= wanted[0]
    if op == "gt":
        return actual > wanted[0]
    if op == "lt":
        return actual < wanted[0]
    raise ValueError(f"unknown op {op!r}")  # pragma: no cover - rules are validated


def matches(spec: ClassSpec, facts: common_pb2.DeviceFacts) -> bool:
    """Whether every rule of ``spec`` holds for ``facts``; a device with no facts matches only rule-less classes."""
    if not spec.rules:
        return True
    if facts.ByteSize() == 0:
        return False
    return all(_rule_holds(rule, facts) for rule in spec.rules)


def classify(specs: Sequence[ClassSpec], facts: common_pb2.DeviceFacts) -> tuple[str, tuple[str, ...]]:
    """Return (the first class that matches, or "default"; the later classes with rules that also match).

    Rule-less (catch-all) classes are never listed as other matches: everything matches them.
    """
    first: str | None = None
    others: list[str] = []
    for spec in specs:
        if first is None:
            if matches(spec, facts):
                first = spec.name
        elif spec.rules and matches(spec, facts):
            others.append(spec.name)
    return (first if first is not None else DEFAULT_CLASS_NAME), tuple(others)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def overlap_warnings(specs: Sequence[ClassSpec], devices: Mapping[str, common_pb2.DeviceFacts]) -> list[str]:
    """Warnings about classes that shadow each other, from their rules and from the ``devices`` (id -> facts).

    Static: a rule-less class before others shadows all of them (a rule-less last class is not
    reported: callers may pass ``effective_classes``); a later class whose rules include all of an
    earlier class's rules can never match. Observed: for each (first-match class, later class)
    pair, the devices in the first that the later one also matches.
    """
    warnings: list[str] = []
    for index, earlier in enumerate(specs):
        for later in specs[index + 1 :]:
            if not later.rules and later is specs[-1]:
                continue  # a trailing catch-all (e.g. the built-in default after the file's own) shadows nothing
            if not earlier.rules:
                warnings.append(
                    f"class {earlier.name!r} has no match rules and comes before {later.name!r}: "
                    f"{later.name} can never match"
                )
            elif later.rules and set(earlier.rules) == set(later.rules):
                warnings.append(
                    f"classes {earlier.name!r} and {later.name!r} have identical match rules: "
                    f"{later.name} can never match"
                )
            elif later.rules and set(earlier.rules) < set(later.rules):
                warnings.append(
                    f"every device class {later.name!r} matches also matches the earlier {earlier.name!r} "
                    f"(its rules include all of {earlier.name}'s): {later.name} can never match"
                )
    order = {spec.name: spec.priority for spec in specs}
    pairs: dict[tuple[str, str], list[str]] = {}
    for device_id, facts in devices.items():
        first, others = classify(specs, facts)
        if first not in order:
            continue
        for other in others:
            pairs.setdefault((first, other), []).append(device_id)
    for (first, other), ids in sorted(pairs.items(), key=lambda item: (order[item[0][0]], order[item[0][1]])):
        ids.sort()
        shown = ", ".join(ids[:5]) + (f", +{len(ids) - 5} more" if len(ids) > 5 else "")
        they = "they are" if len(ids) > 1 else "it is"
        warnings.append(
            f"classes {first!r} and {other!r} overlap on {_plural(len(ids), 'device')} ({shown}); "
            f"first match wins: {they} in {first!r}"
        )
    return warnings


# --- conversions ---------------------------------------------------------------------------------------


def to_proto(spec: ClassSpec, device_count: int = 0, overlaps_with: Sequence[str] = ()) -> admin_pb2.DeviceClass:
    """The wire form; max_accuracy_drop / max_slice_gap are ``NO_LIMIT`` (-1) when there is no limit."""
    policy = spec.policy
    return admin_pb2.DeviceClass(
        name=spec.name,
        priority=spec.priority,
        match=[admin_pb2.ClassRule(fact=r.fact, op=r.op, values=list(r.values)) for r in spec.rules],
        policy=admin_pb2.ClassPolicy(
            latency_budgets=[admin_pb2.TaskBudget(task=t, latency_p95_ms=ms) for t, ms in policy.latency_budgets_ms],
            model_memory_budget_bytes=policy.model_memory_budget_bytes,
            max_accuracy_drop=NO_LIMIT if policy.max_accuracy_drop is None else policy.max_accuracy_drop,
            max_slice_gap=NO_LIMIT if policy.max_slice_gap is None else policy.max_slice_gap,
            objective=policy.objective,
            benchmark_sample_size=policy.benchmark_sample_size,
        ),
        device_count=device_count,
        overlaps_with=list(overlaps_with),
    )


def from_proto(message: admin_pb2.DeviceClass) -> ClassSpec:
    """The inverse of ``to_proto`` (line 0); raises ValueError if the message is not a valid class."""
    policy = message.policy

    def limit(value: float) -> float | None:
        return None if value < 0 else value

    return from_dict(
        {
            "name": message.name,
            "priority": message.priority,
            "rules": [{"fact": r.fact, "op": r.op, "values": list(r.values)} for r in message.match],
            "policy": {
                "latency_budgets_ms": [[b.task, b.latency_p95_ms] for b in policy.latency_budgets],
                "model_memory_budget_bytes": policy.model_memory_budget_bytes,
                "max_accuracy_drop": limit(policy.max_accuracy_drop),
                "max_slice_gap": limit(policy.max_slice_gap),
                "objective": policy.objective or DEFAULT_OBJECTIVE,
                "benchmark_sample_size": policy.benchmark_sample_size or DEFAULT_SAMPLE_SIZE,
            },
        }
    )


def to_dict(spec: ClassSpec) -> dict[str, Any]:
    """A JSON-ready dict (for storage); ``from_dict`` gives back an equal spec, line included."""
    policy = spec.policy
    return {
        "name": spec.name,
        "priority": spec.priority,
        "line": spec.line,
        "rules": [{"fact": r.fact, "op": r.op, "values": list(r.values)} for r in spec.rules],
        "policy": {
            "latency_budgets_ms": [[task, ms] for task, ms in policy.latency_budgets_ms],
            "model_memory_budget_bytes": policy.model_memory_budget_bytes,
            "max_accuracy_drop": policy.max_accuracy_drop,
            "max_slice_gap": policy.max_slice_gap,
            "objective": policy.objective,
            "benchmark_sample_size": policy.benchmark_sample_size,
        },
    }


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"stored class: {what} has the wrong type ({type(value).__name__})")
    return value


def from_dict(data: Mapping[str, Any]) -> ClassSpec:
    """The inverse of ``to_dict``; re-validates and raises ValueError on anything ``parse_class_file`` would refuse."""
    try:
        name = _check_name(_typed(data["name"], str, "name"))
        priority = _typed(data.get("priority", 0), int, "priority")
        line = _typed(data.get("line", 0), int, "line")
        rules = []
        for raw in _typed(data.get("rules", []), list, "rules"):
            values = [_typed(v, str, "a rule value") for v in _typed(raw["values"], list, "rule values")]
            rules.append(_check_rule(_typed(raw["fact"], str, "fact"), _typed(raw["op"], str, "op"), values))
        raw_policy = _typed(data.get("policy", {}), dict, "policy")
        budgets = []
        for task, ms in _typed(raw_policy.get("latency_budgets_ms", []), list, "latency_budgets_ms"):
            number = float(_typed(ms, (int, float), "latency"))
            budgets.append((task, _check_latency(_typed(task, str, "task"), number, repr(ms))))
        memory = _typed(raw_policy.get("model_memory_budget_bytes", 0), int, "model_memory_budget_bytes")
        if memory:
            _check_memory_budget(memory, str(memory))
        fractions: dict[str, float | None] = {}
        for key in ("max_accuracy_drop", "max_slice_gap"):
            value = raw_policy.get(key)
            fractions[key] = None if value is None else _check_fraction(key, _typed(value, (int, float), key), value)
        objective = _check_objective(_typed(raw_policy.get("objective", DEFAULT_OBJECTIVE), str, "objective"))
        sample = _typed(raw_policy.get("benchmark_sample_size", DEFAULT_SAMPLE_SIZE), int, "benchmark_sample_size")
        _check_sample_size(sample, str(sample))
    except _Invalid as exc:
        raise ValueError(f"stored class: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"stored class is malformed: {exc!r}") from None
    if len(rules) > MAX_RULES:
        raise ValueError(f"stored class {name!r} has more than {MAX_RULES} rules")
    policy = Policy(
        latency_budgets_ms=tuple(budgets),
        model_memory_budget_bytes=memory,
        max_accuracy_drop=fractions["max_accuracy_drop"],
        max_slice_gap=fractions["max_slice_gap"],
        objective=objective,
        benchmark_sample_size=sample,
    )
    return ClassSpec(name=name, priority=priority, rules=tuple(rules), policy=policy, line=line)


def _render_size(value: int) -> str | int:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if value and value % SIZE_UNITS[unit] == 0:
            return f"{value // SIZE_UNITS[unit]}{unit}"
    return value


def _render_value(rule: Rule, value: str) -> Any:
    if rule.fact in SIZE_FACTS:
        return _render_size(int(value))
    if rule.fact in INT_FACTS:
        return int(value)
    if rule.fact in BOOL_FACTS:
        return value == "true"
    return value


def _render_ms(ms: float) -> float | int:
    return int(ms) if ms.is_integer() else ms


def to_yaml(specs: Sequence[ClassSpec]) -> str:
    """Render ``specs`` in the class-file format; ``parse_class_file`` of it equals ``specs`` (line aside)."""
    classes = []
    for spec in specs:
        entry: dict[str, Any] = {"name": spec.name}
        if spec.rules:
            entry["match"] = []
            for rule in spec.rules:
                item: dict[str, Any] = {"fact": rule.fact, "op": rule.op}
                if rule.op in MULTI_VALUE_OPS:
                    item["values"] = [_render_value(rule, v) for v in rule.values]
                else:
                    item["value"] = _render_value(rule, rule.values[0])
                entry["match"].append(item)
        policy = spec.policy
        rendered: dict[str, Any] = {}
        if policy.latency_budgets_ms:
            rendered["latency_p95_ms"] = {task: _render_ms(ms) for task, ms in policy.latency_budgets_ms}
        if policy.model_memory_budget_bytes:
            rendered["model_memory_budget"] = _render_size(policy.model_memory_budget_bytes)
        if policy.max_accuracy_drop is not None:
            rendered["max_accuracy_drop"] = policy.max_accuracy_drop
        if policy.max_slice_gap is not None:
            rendered["max_slice_gap"] = policy.max_slice_gap
        rendered["objective"] = policy.objective
        rendered["benchmark_sample_size"] = policy.benchmark_sample_size
        entry["policy"] = rendered
        classes.append(entry)
    return yaml.safe_dump(
        {"classes": classes}, sort_keys=False, allow_unicode=True, default_flow_style=False, width=4096
    )
