"""Request models of the HTTP API: strict (unknown fields are errors), bounded, and never
echoing input back (BentoML answers a validation error with 400 and the field paths only)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

CustomerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@-]{1,64}$", strict=True)]
Token = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
DecisionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
OUTCOMES = ("accepted", "ignored", "clicked", "converted", "declined", "complained", "unsubscribed")


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("a timestamp needs a time zone, e.g. 2026-11-22T10:00:00Z")
    return value


AwareTime = Annotated[datetime, AfterValidator(_aware)]


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
    at: AwareTime | None = None


class NextBestActionRequest(Strict):
    customer_id: CustomerId
    context: RequestContext = RequestContext()


class ScoreRequest(Strict):
    customer_ids: list[CustomerId] = Field(min_length=1, max_length=1000)


class EventIn(Strict):
    """One journey event, in the event contract's columns."""

    customer_id: CustomerId
    timestamp: AwareTime
    event_type: Token
    event_id: Token | None = None
    channel: Token | None = None
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None
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
