"""The rule language: what it rejects (and how it says so), its semantics with missing values,
and the agreement of the scalar and the vectorised evaluator on random rules and data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serving.rules import MAX_DEPTH, MAX_RULE_CHARS, Rule, RuleError, compile_rule

# -- what is rejected -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("__import__('os')", ["`__import__`", "column 1", "not allowed"]),
        ("__import__('os').system('ls')", ["not allowed"]),
        ("().__class__", ["`().__class__`", "attribute access"]),
        ("x.__class__", ["x.__class__", "may not start with _"]),
        ("__builtins__", ["__builtins__", "may not start with _"]),
        ("[x for x in y]", ["comprehension `[x for x in y]`"]),
        ("any(x for x in y)", ["call to `any`"]),
        ("a[0]", ["subscript `a[0]`"]),
        ("x > 1 and a[0] == 2", ["subscript `a[0]`", "column 11"]),
        ("lambda: 1", ["lambda `lambda: 1`"]),
        ("open('f')", ["call to `open`", "abs, coalesce, is_missing, max, min"]),
        ("eval('1')", ["call to `eval`"]),
        ("abs(x).real", ["attribute access `abs(x).real`"]),
        ("'a'.upper()", ["call `'a'.upper()`"]),
        ("x ** 2 > 1", ["operator Pow `x ** 2`"]),
        ("x // 2 > 1", ["operator FloorDiv"]),
        ("a & b", ["operator BitAnd"]),
        ("~a", ["operator ~"]),
        ("x if y else z", ["conditional expression"]),
        ("(y := 1)", ["assignment expression"]),
        ("f'{x}' == 'a'", ["f-string"]),
        ("{'a': 1}", ["dict"]),
        ("{1, 2}", ["set"]),
        ("x in {1, 2}", ["write a list of constants"]),
        ("x in y", ["the right side of in `y`"]),
        ("x in [y, 1]", ["list element `y`"]),
        ("x in [None]", ["None in a list"]),
        ("[1, 2]", ["list `[1, 2]`", "lists may only follow in"]),
        ("x == None", ["compares with None", "is_missing"]),
        ("x is None", ["`is`", "is_missing"]),
        ("(a > 1) + 1", ["`a > 1` is a condition"]),
        ("abs(a > 1) > 0", ["`a > 1` is a condition"]),
        ("is_missing(x) == True", ["`is_missing(x)` is a condition"]),
        ("abs(x, y) > 1", ["abs() takes 1 arguments, got 2"]),
        ("min(x) > 1", ["min() takes 2 to 16 arguments, got 1"]),
        ("coalesce(x, default=1) > 0", ["keyword argument"]),
        ("max(*xs) > 0", ["starred"]),
        ("x in [1] in [2]", ["chains in / not in"]),
        ("b'x' == x", ["constant of type bytes"]),
        ("x > 1j", ["constant of type complex"]),
        ("x > 1e999", ["out of range"]),
        ("x >", ["not a valid expression"]),
        ("x = 1", ["not a valid expression"]),
        ("import os", ["not a valid expression"]),
        ("", ["rule is empty"]),
        ("   ", ["rule is empty"]),
        ("x > 1\0", ["not a valid expression"]),
    ],
)
def test_forbidden_rules_are_rejected_naming_the_offending_part(
    text: str, fragments: list[str]
) -> None:
    with pytest.raises(RuleError) as info:
        compile_rule(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert info.value.text == text.strip()


def test_a_rejected_rule_points_at_the_column() -> None:
    with pytest.raises(RuleError) as info:
        Rule("churn_risk > 0.5 and open('x')")
    assert info.value.offset == len("churn_risk > 0.5 and ")
    assert "column 22" in str(info.value)


def test_long_and_deeply_nested_rules_are_rejected() -> None:
    long = " or ".join(f"x == {i}" for i in range(400))
    assert len(long) > MAX_RULE_CHARS
    with pytest.raises(RuleError, match="characters long"):
        Rule(long)
    deep = "(" * 60 + "x" + ")" * 60 + " > 1"
    Rule(deep)  # parentheses alone add no depth
    nested = "x" + " + x" * (MAX_DEPTH + 5) + " > 1"
    with pytest.raises(RuleError, match="nested deeper"):
        Rule(nested)
    with pytest.raises(RuleError):
        Rule("-" * 1500 + "x > 1")
    with pytest.raises(RuleError):
        Rule("(" * 500 + "x" + ")" * 500)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcx_.()[]{}'\"+-*/%<>=!~&|:,0123456789 \n\tinotdrlambd", max_size=60))
@example("x.__class__.__mro__")
@example("(lambda: 1)()")
def test_any_text_compiles_or_raises_rule_error_only(text: str) -> None:
    try:
        rule = Rule(text)
    except RuleError:
        return
    assert all(not part.startswith("_") for n in rule.names for part in n.split("."))


# -- what is accepted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("churn_risk >= 0.6 and stage in ['retention', 'purchase']", ("churn_risk", "stage")),
        ("context.channel == 'web'", ("context.channel",)),
        ("days_since_last_complaint > 30 or complaints_90d == 0", None),
        ("not opted_out", ("opted_out",)),
        ("conversion_propensity * 100 - cost > 5", ("conversion_propensity", "cost")),
        ("abs(trend_sessions_30d) < 2", ("trend_sessions_30d",)),
        ("0 < x < 1 and x != 0.5", ("x",)),
        ("coalesce(x, y, 0) > 1 or is_missing(z)", ("x", "y", "z")),
        ("stage not in ('advocacy',)", ("stage",)),
        ("min(a, b) <= max(a, 3) % 2", ("a", "b")),
        ("-x < +y", ("x", "y")),
        ("a.b.c == 1", ("a.b.c",)),
        ("True", ()),
        ("\n  x > 1\n", ("x",)),
    ],
)
def test_allowed_rules_compile_and_list_their_names(
    text: str, names: tuple[str, ...] | None
) -> None:
    rule = compile_rule(text)
    if names is not None:
        assert rule.names == names
    assert rule == Rule(text) and hash(rule) == hash(Rule(text))


# -- semantics --------------------------------------------------------------------------------

NAN = float("nan")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("churn_risk >= 0.6", {"churn_risk": 0.6}, True),
        ("churn_risk >= 0.6", {"churn_risk": 0.59}, False),
        # missing values fail closed, also under not (three-valued logic)
        ("churn_risk >= 0.6", {"churn_risk": None}, False),
        ("churn_risk >= 0.6", {"churn_risk": NAN}, False),
        ("churn_risk < 0.6", {"churn_risk": None}, False),
        ("not churn_risk >= 0.6", {"churn_risk": None}, False),
        ("not churn_risk >= 0.6", {"churn_risk": 0.1}, True),
        ("x != 1", {"x": None}, False),
        ("x not in [1, 2]", {"x": None}, False),
        ("x not in [1, 2]", {"x": 3}, True),
        ("not opted_out", {"opted_out": None}, False),
        ("not opted_out", {"opted_out": False}, True),
        ("not opted_out", {"opted_out": True}, False),
        # Kleene: False settles an and, True settles an or, even next to a missing value
        ("x > 1 or y > 1", {"x": None, "y": 2}, True),
        ("x > 1 or y > 1", {"x": None, "y": 0}, False),
        ("not (x > 1 and y > 1)", {"x": None, "y": 0}, True),
        ("not (x > 1 and y > 1)", {"x": None, "y": 2}, False),
        ("not (x > 1 or y > 1)", {"x": None, "y": 0}, False),
        # explicit handling of missing values
        ("is_missing(x)", {"x": None}, True),
        ("is_missing(x)", {"x": NAN}, True),
        ("is_missing(x)", {"x": pd.NA}, True),
        ("is_missing(x)", {"x": 0}, False),
        ("is_missing(x) or x > 2", {"x": None}, True),
        ("coalesce(x, 0) == 0", {"x": None}, True),
        ("coalesce(x, y, 5) == 5", {"x": None, "y": NAN}, True),
        ("coalesce(x, 0) == 0", {"x": 3}, False),
        ("coalesce(s, 'none') == 'none'", {"s": None}, True),
        # chained comparisons
        ("0 < x < 1", {"x": 0.5}, True),
        ("0 < x < 1", {"x": 1}, False),
        ("0 < x < 1", {"x": 0}, False),
        ("0 <= last_nps <= 6", {"last_nps": -1.0}, False),
        ("1 < x > 0", {"x": 2}, True),
        ("0 < x < 1", {"x": None}, False),
        # arithmetic and functions
        ("conversion_propensity * 100 - cost > 5", {"conversion_propensity": 0.1, "cost": 4}, True),
        (
            "conversion_propensity * 100 - cost > 5",
            {"conversion_propensity": 0.05, "cost": 4},
            False,
        ),
        ("x * 2 > 1", {"x": None}, False),
        ("x / y > 1", {"x": 3, "y": 0}, False),  # division by zero is missing
        ("is_missing(x / y)", {"x": 3, "y": 0}, True),
        ("is_missing(x % y)", {"x": 3, "y": 0}, True),
        ("x % 3 == 1", {"x": 7}, True),
        ("x % 3 == 2", {"x": -1}, True),  # the sign of the divisor, as in Python
        ("x % -3 == -2", {"x": 1}, True),
        ("x * 0.1 == 0.30000000000000004", {"x": 3}, True),  # float64 in both paths
        ("-x == -2", {"x": 2}, True),
        ("abs(x) < 2", {"x": -1.5}, True),
        ("abs(x) < 2", {"x": None}, False),
        ("min(x, y) == 1 and max(x, y) == 4", {"x": 4, "y": 1}, True),
        ("min(x, y) < 10", {"x": None, "y": 1}, False),
        ("x + 1 == 3", {"x": True}, False),
        ("x + 1 == 2", {"x": True}, True),
        # text
        ("stage in ['retention', 'purchase']", {"stage": "purchase"}, True),
        ("stage in ['retention', 'purchase']", {"stage": "awareness"}, False),
        ("stage in ['retention', 'purchase']", {"stage": None}, False),
        ("context.channel == 'web'", {"context.channel": "web"}, True),
        ("context.channel != 'web'", {"context.channel": None}, False),
        ("stage < 'b'", {"stage": "a"}, True),
        # what cannot be computed is missing, not an error
        ("stage > 2", {"stage": "a"}, False),
        ("not stage > 2", {"stage": "a"}, False),
        ("stage + 1 > 0", {"stage": "a"}, False),
        ("stage", {"stage": "a"}, False),
        ("not stage", {"stage": "a"}, False),
        ("x", {"x": 2}, True),
        ("x", {"x": 0.0}, False),
        # numpy scalars behave like Python values
        ("x >= 1", {"x": np.float64(1.0)}, True),
        ("x in [1, 2]", {"x": np.int64(2)}, True),
        ("x", {"x": np.bool_(True)}, True),
        ("x > 0", {"x": np.float32("nan")}, False),
    ],
)
def test_semantics(text: str, env: dict[str, Any], expected: bool) -> None:
    rule = Rule(text)
    assert rule.evaluate(env) is expected
    frame = pd.DataFrame({k: pd.Series([v], dtype=object) for k, v in env.items()})
    assert rule.evaluate_frame(frame).tolist() == [expected]
    if not any(isinstance(v, (np.generic, type(pd.NA))) for v in env.values()):
        assert rule.evaluate_frame(pd.DataFrame({k: [v] for k, v in env.items()})).tolist() == [
            expected
        ]


def test_three_valued_truth_is_exposed() -> None:
    rule = Rule("x > 1 and y > 1")
    assert rule.truth({"x": None, "y": 2}) is None
    assert rule.truth({"x": None, "y": 0}) is False
    assert rule.truth({"x": 2, "y": 2}) is True


def test_unknown_names_at_evaluation_are_errors_naming_them() -> None:
    rule = Rule("x > 1 or churn_rsk > 0.5")
    with pytest.raises(RuleError, match=r"unknown name.*churn_rsk"):
        rule.evaluate({"x": 2})  # even when x alone would settle it
    with pytest.raises(RuleError, match="churn_rsk"):
        rule.evaluate_frame(pd.DataFrame({"x": [2.0]}))
    with pytest.raises(RuleError, match="churn_rsk"):
        rule.explain({"x": 2})


def test_check_names_lists_unknown_names_with_close_matches() -> None:
    rule = Rule("churn_rsk > 0.5 and stage == 'purchase' and xyzzy > 1")
    rule.check_names({"churn_rsk", "stage", "xyzzy"})
    with pytest.raises(RuleError) as info:
        rule.check_names({"churn_risk", "stage", "conversion_propensity"})
    message = str(info.value)
    assert "churn_rsk (did you mean churn_risk?)" in message
    listed = [part.split(" (")[0] for part in message.split("unknown name(s): ")[1].split("; ")]
    assert listed == ["churn_rsk", "xyzzy"]  # stage is known
    assert "xyzzy (closest known names: " in message  # nothing alike: the nearest names anyway
    assert info.value.offset == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("stage > 2", "compares text (stage) with a number (2)"),
        ("stage == 1", "compares text"),
        ("churn_risk == 'high'", "compares text ('high') with a number (churn_risk)"),
        ("stage + 1 > 2", "stage is text: '+' needs numbers"),
        ("abs(stage) > 1", "abs() needs numbers"),
        ("-stage < 0", "unary '-' needs numbers"),
        ("stage", "stage is text, not a condition"),
        ("not marketing_opt_out", "marketing_opt_out is text, not a condition"),
        ("stage in [1, 2]", "the list holds numbers"),
        ("churn_risk in ['a']", "the list holds text"),
        ("coalesce(stage, 0) == 1", "mixes text and numbers"),
    ],
)
def test_check_types_rejects_text_mixed_with_numbers(text: str, fragment: str) -> None:
    kinds = {"stage": "string", "churn_risk": "number", "marketing_opt_out": "string"}
    with pytest.raises(RuleError) as info:
        Rule(text).check_types(kinds)
    assert fragment in str(info.value)


def test_check_types_accepts_well_typed_rules() -> None:
    kinds = {"stage": "string", "churn_risk": "number", "flag": "bool"}
    for text in [
        "stage in ['a', 'b'] and churn_risk > 0.5",
        "coalesce(churn_risk, 0) * 2 > 1",
        "flag or churn_risk",
        "unknown_kind > 1 and unknown_kind == 'a'",  # not listed: not checked
        "is_missing(stage)",
        "flag == True",
    ]:
        Rule(text).check_types(kinds)


# -- explanations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "explanation"),
    [
        ("churn_risk >= 0.6", {"churn_risk": 0.41}, "churn_risk 0.41 < 0.6"),
        ("churn_risk >= 0.6", {"churn_risk": 0.72}, "churn_risk 0.72 >= 0.6"),
        ("churn_risk >= 0.6", {"churn_risk": None}, "churn_risk is missing"),
        (
            "churn_risk >= 0.6 and stage in ['retention', 'purchase']",
            {"churn_risk": 0.7, "stage": "awareness"},
            "stage 'awareness' not in ['retention', 'purchase']",
        ),
        (
            "days_since_last_complaint > 30 or complaints_90d == 0",
            {"days_since_last_complaint": 4.0, "complaints_90d": 2},
            "days_since_last_complaint 4 <= 30 and complaints_90d 2 != 0",
        ),
        (
            "days_since_last_complaint > 30 or complaints_90d == 0",
            {"days_since_last_complaint": 4.0, "complaints_90d": 0},
            "complaints_90d 0 == 0",
        ),
        ("not opted_out", {"opted_out": True}, "opted_out is True"),
        ("is_missing(x)", {"x": 3}, "x is 3 (not missing)"),
        (
            "conversion_propensity * 100 - cost > 5",
            {"conversion_propensity": 0.05, "cost": 4.0},
            "conversion_propensity * 100 - cost (= 1) <= 5",
        ),
        ("0 < x < 1", {"x": 2}, "x 2 >= 1"),
        ("stage == 2", {"stage": "a"}, "stage 'a' != 2"),
        ("stage < 2", {"stage": "a"}, "stage 'a' cannot be compared with 2"),
    ],
)
def test_explain_gives_the_deciding_facts(text: str, env: dict[str, Any], explanation: str) -> None:
    assert Rule(text).explain(env) == explanation


# -- the scalar and the vector evaluator agree ---------------------------------------------------

_FLOATS = st.sampled_from([-2.5, -1.0, 0.0, 0.5, 1.0, 3.0, None, NAN])
_COLUMNS: dict[str, st.SearchStrategy[Any]] = {
    "x": _FLOATS,
    "y": _FLOATS,
    "k": st.integers(-2, 3),
    "ki": st.one_of(st.none(), st.integers(-2, 3)),
    "s": st.sampled_from(["a", "b", "web", None]),
    "flag": st.booleans(),
    "flagn": st.sampled_from([True, False, None]),
    "context.channel": st.sampled_from(["web", "app", None]),
}

_number = st.sampled_from(["0", "1", "2.5", "-1", "0.5", "3", "True", "False"])
_text = st.sampled_from(["'a'", "'b'", "'web'"])
_values = st.recursive(
    st.one_of(st.sampled_from(list(_COLUMNS)), _number, _text),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        inner.map(lambda v: f"(-{v})"),
        inner.map(lambda v: f"abs({v})"),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), inner, inner).map(
            lambda t: f"{t[0]}({t[1]}, {t[2]})"
        ),
    ),
    max_leaves=5,
)
_compare = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
_list = st.lists(st.one_of(_number, _text), max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
_conditions = st.recursive(
    st.one_of(
        st.tuples(_values, _compare, _values).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(_values, _compare, _values, _compare, _values).map(lambda t: f"({' '.join(t)})"),
        st.tuples(_values, st.sampled_from(["in", "not in"]), _list).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        _values.map(lambda v: f"is_missing({v})"),
        _values,
    ),
    lambda inner: st.one_of(
        inner.map(lambda c: f"(not {c})"),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
    ),
    max_leaves=6,
)
_rows = st.lists(st.fixed_dictionaries(_COLUMNS), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=_conditions, rows=_rows)
@example(text="(s < 'b')", rows=[{**dict.fromkeys(_COLUMNS), "k": 1, "flag": True}])
@example(text="(coalesce(s, x) >= 0)", rows=[{**dict.fromkeys(_COLUMNS), "k": 1, "flag": True}])
def test_scalar_and_vector_evaluation_agree(text: str, rows: list[dict[str, Any]]) -> None:
    rule = Rule(text)
    frame = pd.DataFrame({c: [r[c] for r in rows] for c in _COLUMNS})
    vector = rule.evaluate_frame(frame)
    assert vector.dtype == bool and vector.shape == (len(rows),)
    scalar = [rule.evaluate(r) for r in rows]
    assert vector.tolist() == scalar, text
    # the frame's own values (numpy scalars, NaN for missing numbers) give the same answers
    columns = {c: frame[c].to_numpy() for c in _COLUMNS}
    from_frame = [rule.evaluate({c: columns[c][i] for c in _COLUMNS}) for i in range(len(rows))]
    assert from_frame == scalar, text
    for r in rows:
        assert isinstance(rule.explain(r), str)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=1, max_size=6),
    texts=st.lists(st.one_of(st.none(), st.sampled_from(["a", "b"])), min_size=1, max_size=6),
)
def test_pandas_extension_dtypes_agree_with_scalars(
    values: list[int | None], texts: list[str | None]
) -> None:
    n = min(len(values), len(texts))
    values, texts = values[:n], texts[:n]
    frame = pd.DataFrame(
        {"v": pd.array(values, dtype="Int64"), "t": pd.array(texts, dtype="string")}
    )
    for text in [
        "v > 0",
        "v in [1, 2]",
        "t == 'a'",
        "t in ['b']",
        "coalesce(v, 0) == 0",
        "is_missing(t) or v < 1",
        "not t < 'b'",
        "v",
    ]:
        rule = Rule(text)
        expected = [rule.evaluate({"v": v, "t": t}) for v, t in zip(values, texts, strict=True)]
        na = [rule.evaluate({"v": frame["v"][i], "t": frame["t"][i]}) for i in range(n)]
        assert rule.evaluate_frame(frame).tolist() == expected == na, text


def test_vector_evaluation_of_a_large_frame() -> None:
    n = 20_000
    rng = np.random.default_rng(0)
    risk = rng.random(n)
    risk[::7] = np.nan
    stage = rng.choice(np.array(["retention", "purchase", "awareness", None], dtype=object), n)
    frame = pd.DataFrame({"churn_risk": risk, "stage": stage})
    rule = Rule("churn_risk >= 0.6 and stage in ['retention', 'purchase']")
    got = rule.evaluate_frame(frame)
    want = (risk >= 0.6) & np.isin(stage.astype(str), ["retention", "purchase"])
    assert got.tolist() == want.tolist()
    assert not got[::7].any()
    assert math.isclose(got.mean(), want.mean())


# -- the next step after an event: p_next['step'] and p_abandon ---------------------------------


def test_p_next_reads_one_step_by_name() -> None:
    rule = compile_rule("p_next['checkout'] < 0.2 and p_abandon > 0.5")
    assert rule.names == ("p_next['checkout']", "p_abandon")
    assert rule.evaluate({"p_next['checkout']": 0.1, "p_abandon": 0.7})
    assert not rule.evaluate({"p_next['checkout']": 0.3, "p_abandon": 0.7})
    # a step the model does not have is missing: the rule fails closed
    assert rule.truth({"p_next['checkout']": None, "p_abandon": 0.7}) is None
    frame = pd.DataFrame({"p_next['checkout']": [0.1, 0.3, np.nan], "p_abandon": [0.7] * 3})
    assert rule.evaluate_frame(frame).tolist() == [True, False, False]
    assert compile_rule('p_next["(session_end)"] >= 0.5').names == ("p_next['(session_end)']",)


@pytest.mark.parametrize(
    "text",
    ["x['checkout'] > 0", "p_next[0] > 0", "p_next[step] > 0", "p_next['a']['b'] > 0",
     "p_next['a':'b'] > 0"],
)  # fmt: skip
def test_other_subscripts_are_refused(text: str) -> None:
    with pytest.raises(RuleError, match="subscript"):
        compile_rule(text)
