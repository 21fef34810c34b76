"""protos.strict_json: exact fields, exact types, errors that name the path, in the caller's exception."""

from __future__ import annotations

import json

import pytest

from protos.strict_json import FieldError, FieldReader, reject_constant


class StateError(ValueError):
    pass


def test_fields_are_read_with_their_types():
    r = FieldReader({"n": 3, "x": 2, "ok": False, "name": "a", "gone": None}, "state")
    r.keys("n x ok name gone")
    assert r.get("n", int) == 3
    assert r.get("x", float) == 2.0 and isinstance(r.get("x", float), float)
    assert r.get("ok", bool) is False
    assert r.get("gone", str, optional=True) is None


@pytest.mark.parametrize(
    ("data", "call", "message"),
    [
        ({"a": 1, "b": 2}, lambda r: r.keys("a"), "state: unknown field 'b'"),
        ({"a": 1}, lambda r: r.keys(["a", "c"]), "state: missing field 'c'"),
        ({"a": True}, lambda r: r.get("a", int), "state.a: expected int, got True"),
        ({"a": 1}, lambda r: r.get("a", bool), "state.a: expected bool, got 1"),
        ({"a": None}, lambda r: r.get("a", str), "state.a: expected str, got None"),
        ({"a": "1.5"}, lambda r: r.get("a", float), "state.a: expected float, got '1.5'"),
    ],
)
def test_errors_name_the_field_and_use_the_callers_exception(data, call, message):
    with pytest.raises(StateError) as raised:
        call(FieldReader(data, "state", error=StateError))
    assert str(raised.value) == message


def test_not_an_object_and_nested_errors_carry_the_path():
    with pytest.raises(FieldError, match=r"^state: expected an object, got list$"):
        FieldReader([1], "state")

    def build(value, where):
        FieldReader(value, where).keys("x")
        return value

    r = FieldReader({"inner": {"x": 1}, "bad": {"y": 1}, "odd": 5}, "state")
    assert r.nested("inner", build) == {"x": 1}
    with pytest.raises(FieldError, match=r"^state.bad: unknown field 'y'$"):
        r.nested("bad", build)

    def refuse(value, where):
        raise ValueError("must be even")

    with pytest.raises(FieldError, match=r"^state.odd: must be even$"):
        r.nested("odd", refuse)


def test_nan_and_infinity_are_refused():
    for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}'):
        with pytest.raises(ValueError, match="is not a number"):
            json.loads(text, parse_constant=reject_constant)
