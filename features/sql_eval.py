"""The catalog's SQL expressions as Python functions of one row, with DuckDB's semantics.

The incremental journey state (:mod:`features.journey_state`) evaluates the feature catalog's
expressions (counters, conditions, latest values, features) on one event or one customer's
readings at a time, where planning a DuckDB query would cost far more than the arithmetic.
The expressions stay written once, in SQL, in the catalog: :func:`compile_expression` reads
them with sqlglot, as :func:`features.pipeline.to_spark_sql` does for Spark, and builds a
closure over the row. Only the small part of SQL the catalog uses is supported (columns,
literals, ``CASE``, ``COALESCE``, arithmetic, comparisons, ``AND``/``OR``/``NOT``,
``IS [NOT] NULL``, ``IN``, ``ABS``, ``CAST``/``TRY_CAST``, ``JSON_EXTRACT_STRING``); anything
else raises :class:`UnsupportedExpressionError`, and the caller falls back to the SQL engine.

NULL follows SQL: arithmetic and comparisons with NULL are NULL, ``CASE`` takes a branch only
when its condition is true, ``AND``/``OR`` use three-valued logic. Division is DuckDB's: a
double, infinite or NaN when dividing by zero. ``CAST(x AS BIGINT)`` rounds half away from
zero, as DuckDB does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import sqlglot
from sqlglot import exp

Row = Mapping[str, Any]
Compiled = Callable[[Row], Any]


class UnsupportedExpressionError(ValueError):
    """An expression uses SQL this evaluator does not implement; the message names it."""


def compile_expression(sql: str) -> Compiled:
    """A function of a row (column name → value) that computes ``sql`` as DuckDB would."""
    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise UnsupportedExpressionError(f"cannot parse {sql!r}: {exc}") from exc
    if not isinstance(tree, exp.Expression):
        raise UnsupportedExpressionError(f"not an expression: {sql!r}")
    return _compile(tree)


def columns_of(sql: str) -> set[str]:
    """The column names an expression reads (table qualifiers dropped)."""
    return {c.name for c in sqlglot.parse_one(sql, read="duckdb").find_all(exp.Column)}


def to_bigint(value: Any) -> int | None:
    """``CAST(value AS BIGINT)``: booleans are 0/1, doubles round half away from zero."""
    if value is None:
        return None
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"cannot cast {value} to BIGINT")
        return math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)
    return to_bigint(float(value))


def to_double(value: Any) -> float | None:
    """``CAST(value AS DOUBLE)``."""
    return None if value is None else float(value)


def to_text(value: Any) -> str | None:
    """``CAST(value AS VARCHAR)`` for the values the catalog casts (text, integers, booleans)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def try_double(value: Any) -> float | None:
    """``TRY_CAST(value AS DOUBLE)``: NULL when the text is not a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def json_extract_string(text: Any, path: tuple[str, ...]) -> str | None:
    """``JSON_EXTRACT_STRING(text, '$.key')``: a string as is, anything else as its JSON text,
    NULL for a missing key or a JSON null."""
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except (TypeError, ValueError):
        return None
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    if doc is None:
        return None
    if isinstance(doc, str):
        return doc
    if isinstance(doc, bool):
        return "true" if doc else "false"
    if isinstance(doc, float):
        return repr(doc)
    if isinstance(doc, int):
        return str(doc)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def _divide(a: Any, b: Any) -> float | None:
    if a is None or b is None:
        return None
    a, b = float(a), float(b)
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _truth(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _compile(node: exp.Expression) -> Compiled:
    if isinstance(node, exp.Paren):
        return _compile(node.this)
    if isinstance(node, exp.Column):
        name = node.name
        return lambda row: row.get(name)
    if isinstance(node, exp.Null):
        return lambda row: None
    if isinstance(node, exp.Boolean):
        value = bool(node.this)
        return lambda row: value
    if isinstance(node, exp.Literal):
        if node.is_string:
            text = node.this
            return lambda row: text
        number: float | int = (
            float(node.this) if any(c in node.this for c in ".eE") else int(node.this)
        )
        return lambda row: number
    if isinstance(node, exp.Neg):
        inner = _compile(node.this)

        def neg(row: Row) -> Any:
            v = inner(row)
            return None if v is None else -v

        return neg
    binary = _BINARY.get(type(node))
    if binary is not None:
        left, right = _compile(node.this), _compile(node.expression)

        def apply(row: Row) -> Any:
            a = left(row)
            if a is None:
                return None
            b = right(row)
            return None if b is None else binary(a, b)

        return apply
    if isinstance(node, exp.Div):
        left, right = _compile(node.this), _compile(node.expression)
        return lambda row: _divide(left(row), right(row))
    if isinstance(node, exp.And):
        left, right = _compile(node.this), _compile(node.expression)

        def and_(row: Row) -> bool | None:
            a = _truth(left(row))
            if a is False:
                return False
            b = _truth(right(row))
            if b is False:
                return False
            return None if a is None or b is None else True

        return and_
    if isinstance(node, exp.Or):
        left, right = _compile(node.this), _compile(node.expression)

        def or_(row: Row) -> bool | None:
            a = _truth(left(row))
            if a is True:
                return True
            b = _truth(right(row))
            if b is True:
                return True
            return None if a is None or b is None else False

        return or_
    if isinstance(node, exp.Not):
        inner = _compile(node.this)

        def not_(row: Row) -> bool | None:
            v = _truth(inner(row))
            return None if v is None else not v

        return not_
    if isinstance(node, exp.Is):
        if not isinstance(node.expression, exp.Null):
            raise UnsupportedExpressionError(f"IS {node.expression.sql('duckdb')}")
        inner = _compile(node.this)
        return lambda row: inner(row) is None
    if isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            raise UnsupportedExpressionError(f"IN over a query: {node.sql('duckdb')}")
        inner = _compile(node.this)
        options = [_compile(o) for o in node.expressions]

        def in_(row: Row) -> bool | None:
            v = inner(row)
            if v is None:
                return None
            values = [o(row) for o in options]
            if any(v == o for o in values if o is not None):
                return True
            return None if any(o is None for o in values) else False

        return in_
    if isinstance(node, exp.Case):
        subject = _compile(node.this) if node.this is not None else None
        branches = [(_compile(i.this), _compile(i.args["true"])) for i in node.args["ifs"]]
        default = node.args.get("default")
        otherwise = _compile(default) if default is not None else (lambda row: None)

        def case(row: Row) -> Any:
            if subject is None:
                for cond, value in branches:
                    if cond(row):
                        return value(row)
                return otherwise(row)
            s = subject(row)
            if s is not None:
                for when, value in branches:
                    w = when(row)
                    if w is not None and w == s:
                        return value(row)
            return otherwise(row)

        return case
    if isinstance(node, exp.If):
        cond, then = _compile(node.this), _compile(node.args["true"])
        false = node.args.get("false")
        other = _compile(false) if false is not None else (lambda row: None)
        return lambda row: then(row) if cond(row) else other(row)
    if isinstance(node, exp.Coalesce):
        parts = [_compile(node.this), *(_compile(e) for e in node.expressions)]

        def coalesce(row: Row) -> Any:
            for p in parts:
                v = p(row)
                if v is not None:
                    return v
            return None

        return coalesce
    if isinstance(node, exp.Abs):
        inner = _compile(node.this)

        def abs_(row: Row) -> Any:
            v = inner(row)
            return None if v is None else abs(v)

        return abs_
    if isinstance(node, exp.Cast):  # TryCast is a Cast
        inner = _compile(node.this)
        target = node.to.this
        safe = isinstance(node, exp.TryCast)
        if target in (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT):
            return (
                (lambda row: try_double(inner(row)))
                if safe
                else (lambda row: to_double(inner(row)))
            )
        if target in (exp.DataType.Type.BIGINT, exp.DataType.Type.INT):
            return lambda row: to_bigint(inner(row))
        if target in (exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT):
            return lambda row: to_text(inner(row))
        raise UnsupportedExpressionError(f"CAST to {node.to.sql('duckdb')}")
    if isinstance(node, exp.JSONExtractScalar):
        inner = _compile(node.this)
        path = _json_path(node.expression)
        return lambda row: json_extract_string(inner(row), path)
    raise UnsupportedExpressionError(f"{type(node).__name__}: {node.sql('duckdb')}")


def _json_path(node: exp.Expression) -> tuple[str, ...]:
    if isinstance(node, exp.JSONPath):
        keys = []
        for part in node.expressions:
            if isinstance(part, exp.JSONPathRoot):
                continue
            if not isinstance(part, exp.JSONPathKey):
                raise UnsupportedExpressionError(f"JSON path {node.sql('duckdb')}")
            keys.append(str(part.this))
        return tuple(keys)
    if isinstance(node, exp.Literal) and node.is_string:
        text = node.this
        if not text.startswith("$."):
            raise UnsupportedExpressionError(f"JSON path {text!r}")
        return tuple(text[2:].split("."))
    raise UnsupportedExpressionError(f"JSON path {node.sql('duckdb')}")


_BINARY: dict[type[exp.Expression], Callable[[Any, Any], Any]] = {
    exp.Add: lambda a, b: a + b,
    exp.Sub: lambda a, b: a - b,
    exp.Mul: lambda a, b: a * b,
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
}
