"""Reasons people read: a feature's value in plain words, with units and rounding.

One function, :func:`say`, writes every reason the product shows (the endpoint's, the batch
list's, the reports'): "no activity for 45 days", "spend down 60 % on the 30 days before",
"2 complaints in the last 90 days", "never answered the NPS survey". It reads the feature's
:class:`features.catalog.Phrase` (how to say it) and, for "days since ..." features, the
customer's tenure (a recency one day past the tenure means it never happened). Numbers are
rounded for people (whole days and counts, money to the cent under 100 and to the unit above,
percentages to the unit), with thousands separators and never in scientific notation.

:func:`choose_reasons` picks a row's reasons: the features that raise the score most, at most
one per family (:data:`features.catalog.FAMILIES`), so a list does not say one fact three ways.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features.catalog import NONE_LABEL, FeatureSpec, Phrase

CALENDAR_SPECS: dict[str, FeatureSpec] = {
    "calendar_month": FeatureSpec(
        "calendar_month",
        "month of the year at decision time, for seasonality",
        "int64",
        "calendar",
        "",
        family="calendar",
        phrase=Phrase("month"),
    ),
}
"""Features of the decision time (training.bundle.CALENDAR_FEATURES) as the catalog would
describe them."""

_MONTHS = tuple(calendar.month_name[m] for m in range(1, 13))  # the C locale's names
_UNKNOWN = {NONE_LABEL, "unknown", "", "nan", "None"}


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) or math.isinf(x) else x


def whole(x: float) -> str:
    """A count or a number of days: rounded to the unit, with thousands separators."""
    return f"{round(x):,d}"


def amount(x: float) -> str:
    """Money or a measure: to the unit from 100 on, else to two decimals (trailing zeros
    dropped); never in scientific notation."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    text = f"{x:,.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def percent(share: float) -> str:
    return f"{round(share * 100):,d} %"


def _plural(what: str, n: float) -> str:
    """ "support contact" → "support contacts", "response to marketing" → "responses to
    marketing", "event on web" → "events on web" (the head noun takes the plural)."""
    if round(n) == 1:
        return what
    for joint in (" to ", " on ", " with "):
        head, sep, tail = what.partition(joint)
        if sep:
            return _plural(head, n) + sep + tail
    if what.endswith(("s", "x", "ch", "sh")):
        return what + "es"
    return what + "s"


def _window(window: int | None) -> str:
    return f"in the last {window} days" if window is not None else "in all"


def _days(x: float) -> str:
    n = round(x)
    return "1 day" if n == 1 else f"{n:,d} days"


def _words(value: Any) -> str:
    return str(value).replace("_", " ").strip()


def say(spec: FeatureSpec, value: Any, row: Mapping[str, Any] | None = None) -> str:
    """The feature's value in plain words (see the module documentation).

    Args:
        spec: the catalog's feature.
        value: its value for the customer.
        row: the customer's other feature values (the tenure, for "days since" features).
    """
    p = spec.phrase
    x = _number(value)
    if value is None or (x is None and p.kind not in ("category",)):
        label = spec.description.split(";")[0].replace("'", "")
        return f"{_words(label)} not known"
    if p.kind == "category":
        if str(value) in _UNKNOWN:
            return p.never or f"{p.what or _words(spec.name)} not known"
        shown = amount(x) if x is not None and not isinstance(value, str) else _words(value)
        return f"{p.what or _words(spec.name)}: {shown}"
    assert x is not None
    if p.kind == "since":
        tenure = _number((row or {}).get("tenure_days"))
        if tenure is not None and x > tenure + 0.5:
            return p.never
        if round(x) < 1:
            return f"last {p.what} today"
        if p.what == "activity":
            return f"no activity for {_days(x)}"
        return f"last {p.what} {_days(x)} ago"
    if p.kind == "days":
        tenure = _number((row or {}).get("tenure_days"))
        if p.never and tenure is not None and x > tenure + 0.5:
            return p.never
        return f"{p.what} {_days(x)}"
    if p.kind == "count":
        n = round(x)
        if n == 0:
            return p.never or f"no {p.what} {_window(p.window)}"
        return f"{n:,d} {_plural(p.what, n)} {_window(p.window)}"
    if p.kind == "money":
        if round(x, 2) == 0:
            return f"nothing spent {_window(p.window)}" if p.window else "nothing spent yet"
        return f"spent {amount(x)} {_window(p.window)}"
    if p.kind == "money_mean":
        if round(x, 2) == 0:
            return f"no order with a value {_window(p.window)}"
        return f"average order of {amount(x)} {_window(p.window)}"
    if p.kind == "trend":
        change = x - 1.0
        days = f"the {p.window} days before"
        if abs(change) < 0.1:
            return f"{p.what} about the same as {days}"
        way = "up" if change > 0 else "down"
        return f"{p.what} {way} {percent(abs(change))} on {days}"
    if p.kind == "per":
        if round(x, 1) == 0:
            return f"no session {_window(p.window)}"
        return f"{x:,.1f} {p.what} {_window(p.window)}"
    if p.kind == "rate":
        if round(x, 2) == 0:
            return f"no answer to {p.what} {_window(p.window)}"
        return f"answered {percent(x)} of {p.what} {_window(p.window)}"
    if p.kind == "share":
        return f"{percent(x)} of the {p.what} {_window(p.window)}"
    if p.kind == "position":
        if x < 0:
            return "no journey stage yet"
        return f"{p.what} {round(x) + 1:,d}"
    if p.kind == "score":
        if x < 0:
            return p.never
        scale = " of 10" if "NPS" in p.what else " points"
        return f"latest {p.what} {amount(x)}{scale}"
    if p.kind == "times":
        n = round(x)
        if n == 0:
            return f"never {p.what}"
        return f"{p.what} {'once' if n == 1 else f'{n:,d} times'}"
    if p.kind == "measure":
        return f"{p.what} {amount(x)} {_window(p.window)}"
    if p.kind == "month":
        month = round(x)
        return f"decided in {_MONTHS[month - 1]}" if 1 <= month <= 12 else "month not known"
    return f"{_words(spec.description.split(';')[0])}: {amount(x)}"


def choose_reasons(contributions: np.ndarray, families: Sequence[str], k: int) -> np.ndarray:
    """Per row, the columns of the ``k`` largest positive contributions with at most one per
    family, largest first; -1 past the positive ones.

    Contributions within 1e-9 of each other rank in column order (the batch list and the
    endpoint add the same path contributions in different orders, and a tie must not rank two
    ways). One row or a million, the same function chooses them.
    """
    key = np.round(contributions, 9)
    n, width = key.shape
    out = np.full((n, k), -1, dtype=np.intp)
    if width == 0 or k == 0:
        return out
    m = min(width, 4 * k + 4)  # enough candidates for k families in all but rare rows
    if m < width:
        cand = np.argpartition(-key, m - 1, axis=1)[:, :m]
    else:
        cand = np.tile(np.arange(width), (n, 1))
    vals = np.take_along_axis(key, cand, axis=1)
    order = np.take_along_axis(cand, np.lexsort((cand, -vals), axis=1), axis=1)
    family_of = np.asarray(families, dtype=object)
    full = np.arange(width)
    for i in range(n):
        seen: set[str] = set()
        r = 0
        row = order[i]
        more = m < width and vals[i].min() > 0  # positives beyond the candidates
        if more and len({family_of[j] for j in row if key[i, j] > 0}) < k:
            row = full[np.lexsort((full, -key[i]))]  # a rare row: every column
        for j in row:
            if key[i, j] <= 0 or r == k:
                break
            family = family_of[j]
            if family in seen:
                continue
            seen.add(family)
            out[i, r] = j
            r += 1
    return out


def new_customer_values(specs: Mapping[str, FeatureSpec]) -> dict[str, Any]:
    """What the features of a customer without history read: no events, no tenure (a
    "days since" one day past it, as the catalog defines never), no stage, no survey answer,
    an unknown profile. Rules run on these for a welcome path."""
    values: dict[str, Any] = {}
    for name, spec in specs.items():
        kind = spec.phrase.kind
        if spec.dtype == "string":
            values[name] = "unknown" if spec.family == "profile" else NONE_LABEL
        elif kind == "since" or kind == "trend":
            values[name] = 1.0
        elif kind in ("score", "position"):
            values[name] = -1.0
        elif kind == "month":
            continue  # the decision time's, not the customer's
        else:
            values[name] = 0.0
    return values
