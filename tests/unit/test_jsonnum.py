"""sentinel.jsonnum: NaN/Inf spelled as strings in strict JSON, and read back."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sentinel.jsonnum import NONFINITE, decode_number, dumps, encode, encode_number
from tests.support.strictjson import strict_loads


def same_float(a: float, b: float) -> bool:
    """Equal, NaN equal to NaN, and -0.0 told apart from 0.0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def same_tree(orig: Any, back: Any) -> bool:
    """Whether ``back`` (parsed JSON) is ``orig``, reading a number where orig had a float."""
    if isinstance(orig, float):
        return same_float(orig, decode_number(back))
    if isinstance(orig, dict):
        return (isinstance(back, dict) and set(back) == {str(k) for k in orig}
                and all(same_tree(v, back[str(k)]) for k, v in orig.items()))
    if isinstance(orig, list | tuple):
        return (isinstance(back, list) and len(back) == len(orig)
                and all(same_tree(a, b) for a, b in zip(orig, back, strict=True)))
    return type(orig) is type(back) and orig == back


leaves = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**62), 2**62)
          | st.text(max_size=8) | st.booleans() | st.none())
trees = st.recursive(
    leaves,
    lambda kids: (st.lists(kids, max_size=5) | st.tuples(kids, kids)
                  | st.dictionaries(st.text(max_size=6), kids, max_size=5)),
    max_leaves=30,
)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_every_float_round_trips(x: float) -> None:
    text = json.dumps(encode_number(x), allow_nan=False)
    assert same_float(x, decode_number(strict_loads(text)))


@given(trees)
def test_every_tree_round_trips_as_strict_json(tree: Any) -> None:
    text = dumps(tree)
    assert same_tree(tree, strict_loads(text))


@given(trees)
def test_encode_leaves_its_input_alone(tree: Any) -> None:
    before = repr(tree)
    encode(tree)
    assert repr(tree) == before


@given(st.text().filter(lambda s: s not in NONFINITE))
def test_only_the_three_spellings_decode_from_strings(s: str) -> None:
    with pytest.raises(ValueError, match='valid: a number, or "NaN", "Infinity", "-Infinity"'):
        decode_number(s)


@pytest.mark.parametrize("v", [True, None, [1.0], {"x": 1}, "nan", "inf", "+Inf", "1.5"])
def test_other_values_are_refused_naming_them(v: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a number \(valid: "):
        decode_number(v)


def test_huge_integer_is_refused_not_an_overflow() -> None:
    with pytest.raises(ValueError, match="too large for a float"):
        decode_number(10**400)


def test_the_spellings_are_the_wire_format() -> None:
    """The spelling every existing reader and writer uses (agent steps, findings, outbox)."""
    assert [encode_number(v) for v in (math.nan, math.inf, -math.inf, 1.5, None)] == [
        "NaN", "Infinity", "-Infinity", 1.5, None]
    assert dumps({"a": (math.nan, 2), 3: [-math.inf]}, sort_keys=True) == (
        '{"3": ["-Infinity"], "a": ["NaN", 2]}')
    assert math.isnan(decode_number("NaN")) and decode_number("-Infinity") == -math.inf
    assert decode_number(2) == 2.0 and isinstance(decode_number(2), float)
