"""Request models of the HTTP API: strict (unknown fields are errors), bounded, and never
echoing input back (BentoML answers a validation error with 400 and the field paths only)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
)

CustomerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$", strict=True)]
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
DecisionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", strict=True)]
OUTCOMES = ("accepted", "ignored", "clicked", "converted", "declined", "complained", "unsubscribed")


def _aware(value: datetime | None) -> datetime | None:
    """The time in UTC; naive times and times that UTC cannot hold (0001-01-01 at +01:00)
    are refused here, as a 400 naming the field."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a timestamp needs a time zone, e.g. 2026-11-22T10:00:00Z")
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("a timestamp between years 1 and 9999 in UTC") from None


def _not_a_number(value: Any) -> Any:
    """Pydantic's lax mode took numbers as epoch seconds; the API documents ISO 8601 strings."""
    if isinstance(value, bool | int | float):
        raise ValueError("expected an ISO 8601 string, e.g. 2026-11-22T10:00:00Z")
    return value


def _not_a_boolean(value: Any) -> Any:
    """Lax mode took booleans as 0 and 1; the API documents numbers."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    return value


AwareTime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_aware)]
Amount = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_a_boolean)]


def _small_mapping(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    if len(value) > 20:
        raise ValueError("at most 20 keys")
    for key, item in value.items():
        if len(key) > 64:
            raise ValueError("keys are at most 64 characters")
        if isinstance(item, str) and len(item) > 256:
            raise ValueError("string values are at most 256 characters")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite")
        if not isinstance(item, (str, int, float, bool)) and item is not None:
            raise ValueError("values must be strings, numbers, booleans or null")
    return value


SmallMapping = Annotated[dict[str, Any] | None, AfterValidator(_small_mapping)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequestContext(Strict):
    """Where and when the customer is now (all optional)."""

    channel: Token | None = None
    event_type: Token | None = None
    page: Annotated[str, StringConstraints(max_length=200)] | None = None
    at: AwareTime | None = Field(
        default=None,
        description=(
            "The time of the decision, with a time zone (default: now). Refused (400) when "
            "later than now plus the event contract's future tolerance (10 minutes by "
            "default) or earlier than the lake's first event minus its margin; a time a few "
            "minutes ahead (clock skew) is taken as now, so no contact is ever recorded in "
            "the future."
        ),
    )


class NextBestActionRequest(Strict):
    """One customer, the moment's context, and how the answer is to be recorded."""

    customer_id: CustomerId
    context: RequestContext = RequestContext()
    request_id: RequestId | None = Field(
        default=None,
        description=(
            "Idempotency key chosen by the caller (1-64 of A-Z a-z 0-9 _ . : -). A retry with "
            "the same request_id from the same API key gets the first answer again (same "
            "decision_id, `replayed: true`) and records no second contact, for "
            "`request_ids.keep_hours` of configs/serving.yaml (24 h by default). Reused for "
            "another customer or another mode: 409."
        ),
    )
    mode: Literal["decide", "preview"] = Field(
        default="decide",
        description=(
            "`decide` (default): the decision is logged and its contact counts against the "
            "contact policy. `preview`: the same decision is computed and logged as a preview, "
            "but no contact is recorded: it does not count against caps or cooldowns, and "
            "previews are left out of the decision log that off-policy evaluation reads."
        ),
    )


class ScoreRequest(Strict):
    customer_ids: list[CustomerId] = Field(min_length=1, max_length=1000)


class EventIn(Strict):
    """One journey event, in the event contract's columns."""

    customer_id: CustomerId
    timestamp: AwareTime
    event_type: Token
    event_id: Token | None = None
    channel: Token | None = None
    value: Amount | None = None
    session_id: Token | None = None
    properties: SmallMapping = None


class EventsRequest(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=10_000)


class FeedbackRequest(Strict):
    decision_id: DecisionId
    outcome: Literal[
        "accepted", "ignored", "clicked", "converted", "declined", "complained", "unsubscribed"
    ]
    at: AwareTime | None = None
    details: SmallMapping = None


# -- answers (documented in the OpenAPI document; the handlers build plain dicts) ------------


class NextStepProbability(BaseModel):
    step: str = Field(description="An event type, `(session_end)`, `(none)` or `other`.")
    probability: float = Field(ge=0.0, le=1.0)


class NextEventOut(BaseModel):
    """The next step after the customer's latest event (the next_event model), computed from
    the state that includes the events just received."""

    next: list[NextStepProbability] = Field(
        description="The most likely next steps, most likely first (`next_steps_top_k`)."
    )
    p_abandon: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Calibrated probability that the session ends without a conversion.",
    )


class CustomerNextEventOut(NextEventOut):
    customer_id: str
