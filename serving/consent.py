"""Marketing consent: one rule, decided by one function for the endpoint and the batch list.

A customer's consent comes from one column of the customers table (a profile feature, see
``profile_attributes`` in ``configs/features.yaml``), named by the ``consent`` key of the actions
catalog. Its value is read as *given*, *refused* or *unknown*; unknown covers every way of not
knowing: the log has no customers table or no such column, the customer has no row, the value
is null or anything that is not a yes or a no. What unknown means is the catalog's rule
(``consent.unknown``): ``not_contactable`` (the default: no marketing action without a known
yes) or ``contactable``. Actions marked ``marketing: false`` (service actions) do not need
consent.

:func:`marketing_consent` is the only place this is decided: the real-time decision, the batch
list and its summary all call it, so a customer gets the same answer everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from journeyml.config import StrictModel

GIVEN = "given"
REFUSED = "refused"
UNKNOWN = "unknown"

_YES = frozenset({"true", "1", "yes", "y", "t"})
_NO = frozenset({"false", "0", "no", "n", "f"})


class ConsentSettings(StrictModel):
    """The ``consent`` key of the actions catalog.

    Attributes:
        column: the profile feature holding consent; null when the log has none (everyone's
            consent is then unknown).
        meaning: ``opt_out`` when a yes in the column means "does not want marketing"
            (``marketing_opt_out``), ``opt_in`` when a yes means consent was given.
        unknown: whether a customer whose consent is unknown may get marketing actions.
    """

    column: str | None = Field(default="marketing_opt_out", pattern=r"^[a-z][a-z0-9_]*$")
    meaning: Literal["opt_out", "opt_in"] = "opt_out"
    unknown: Literal["not_contactable", "contactable"] = "not_contactable"


@dataclass(frozen=True)
class Consent:
    """The consent of a batch of customers, in their order."""

    status: np.ndarray  # given | refused | unknown, per customer
    contactable: np.ndarray  # bool: may get marketing actions

    def counts(self) -> dict[str, int]:
        """Customers per status (every status listed, zeros included)."""
        return {s: int((self.status == s).sum()) for s in (GIVEN, REFUSED, UNKNOWN)}


def _answer(value: Any) -> bool | None:
    """True for a yes, False for a no, None when the value says neither (or is missing)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = str(value).strip().lower()
    if text in _YES:
        return True
    if text in _NO:
        return False
    return None


def marketing_consent(values: Iterable[Any] | None, n: int, settings: ConsentSettings) -> Consent:
    """The consent of ``n`` customers from their values of the consent column.

    Args:
        values: the column's values in customer order, or None when there is no such column
            (or the catalog names none): every customer's consent is then unknown.
        n: the number of customers.
        settings: the catalog's consent rule.
    """
    status = np.full(n, UNKNOWN, dtype=object)
    if values is not None and settings.column is not None:
        given = settings.meaning == "opt_in"
        for i, value in enumerate(values):
            answer = _answer(value)
            if answer is not None:
                status[i] = GIVEN if answer == given else REFUSED
    contactable = status == GIVEN
    if settings.unknown == "contactable":
        contactable |= status == UNKNOWN
    return Consent(status, np.asarray(contactable, dtype=bool))


def consent_of_frame(frame: pd.DataFrame, settings: ConsentSettings) -> Consent:
    """:func:`marketing_consent` for the rows of a frame of features."""
    column = settings.column
    values = frame[column].to_numpy(dtype=object) if column and column in frame else None
    return marketing_consent(values, len(frame), settings)


def consent_of_customer(values: Mapping[str, Any], settings: ConsentSettings) -> tuple[str, bool]:
    """:func:`marketing_consent` for one customer's features: (status, contactable)."""
    column = settings.column
    column_values = [values[column]] if column is not None and column in values else None
    consent = marketing_consent(column_values, 1, settings)
    return str(consent.status[0]), bool(consent.contactable[0])


def consent_reason(status: str, settings: ConsentSettings) -> str:
    """Why a marketing action was removed for consent, for the decision record."""
    if status == REFUSED:
        return f"no marketing consent ({settings.column}: refused)"
    where = settings.column or "no consent column"
    return f"marketing consent unknown ({where}); unknown consent is not contactable"
