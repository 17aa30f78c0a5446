"""From a log's profile to a complete config set: what ``journeyml init`` writes, and why.

Every inferred value comes with the reason it was chosen (:class:`Inferred`) and the flag that
sets it instead; the rules are:

- **journey map**: each event type is placed in a stage by the words of its name (``order``,
  ``payment``, ``checkout`` -> purchase; ``search``, ``product``, ``cart`` -> consideration;
  ``login``, ``usage``, ``support`` -> retention; ``review``, ``referral`` -> advocacy; ``home``,
  ``visit``, ``view`` -> awareness). Stages only move forward, so generic events (a page view,
  a login) never send a customer back. Errors, failures, cancellations and downgrades are not
  progress and get no stage; cancellations become regressions to the first stage and
  purchase errors or failures regressions to the stage before purchase. Generic events such as
  ``logout`` get no stage. Only stages that receive events are kept. Events it could not place
  are reported.
- **conversions**: the event types that carry a value on most rows; without a value column,
  the types named like orders or purchases (``order_placed``, ``purchase``, ``paid``).
- **churn**: explicit events named like cancellations; ``inactivity_days`` is the gap within
  which 90 % of returning customers come back (days between consecutive active days, each
  returning customer weighted once), rounded.
- **horizons and splits**: the label horizon is the gap within which 75 % of returning
  customers come back, between 14 and 90 days, shortened until warm-up, training (at least
  eight snapshot cutoffs), validation and test periods and the purge gaps fit the log's span;
  snapshots are weekly on logs of 300 days or more, more frequent on shorter ones.
- **features**: every event type counted; channels from a mapped channel column; windows up
  to the churn gap; the log's own text columns with a few values as dimensions (their frequent
  values listed) and its own numeric columns as measures.
- **monitoring**: KPIs per segment column (low-cardinality text columns such as a platform);
  funnel steps from the journey map within 2 hours on session logs; support and cancellation
  events as rates (errors come from the shipped error patterns).
- **actions**: the shipped starter catalog, with thresholds from the log's gaps and horizon,
  keeping only rules whose names the feature catalog of this config set has. Consent stays a
  rule: ``marketing_opt_out`` is a profile attribute, and a customer the customers table does
  not clear (or without a customers table) gets no marketing action.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from journeyml.config import CONFIG_DIR
from journeyml.profile import LogProfile


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STAGES: tuple[str, ...] = ("awareness", "consideration", "purchase", "retention", "advocacy")

#: Words that mark an event as not being progress (never placed in a stage).
NEGATIVE_WORDS = _words(
    """
error errors fail failed failure declined decline denied cancel cancelled canceled
cancellation unsubscribe unsubscribed churn churned refund refunded returned
downgrade bounce bounced abandon abandoned expired lapsed suspended
"""
)
CHURN_WORDS = _words(
    """
cancel cancelled canceled cancellation unsubscribe unsubscribed churn churned
terminate terminated deactivate deactivated closed
"""
)
GENERIC_NAMES = _words(
    """
logout log_out sign_out signout logoff heartbeat ping session_end session_start
"""
)
SUPPORT_WORDS = _words(
    """
support ticket help helpdesk contact chat call
"""
)
COMPLAINT_WORDS = _words(
    """
complaint complaints complain
"""
)
STAGE_WORDS: dict[str, frozenset[str]] = {
    "purchase": _words(
        """
checkout order orders ordered purchase purchased buy bought payment pay paid invoice
transaction sale shipping delivery subscribe subscribed upgrade renew renewal
billing booking booked
"""
    ),
    "advocacy": _words(
        """
referral refer referred review reviewed rating rated share shared recommend
testimonial invite
"""
    ),
    "retention": _words(
        """
login signin logon usage use used reorder reactivate reactivated renewed support
ticket help complaint feedback survey nps csat
"""
    ),
    "consideration": _words(
        """
search catalog catalogue category product item items detail details compare wishlist
cart basket add quote trial signup register registered registration demo pricing
configure
"""
    ),
    "awareness": _words(
        """
home homepage landing visit view viewed page pageview ad ads impression click browse
welcome
"""
    ),
}
#: Multi-word names, matched on the whole name.
STAGE_PHRASES: dict[str, tuple[str, ...]] = {
    "retention": ("sign_in", "log_in"),
    "consideration": ("sign_up", "account_opened", "account_created", "create_account"),
}
CONVERSION_WORDS = _words(
    """
order purchase purchased buy bought paid sale transaction subscribe subscribed
booking booked
"""
)
SESSION_SHARE = 0.5
"""A log is a session log when at least this share of consecutive events are < 30 min apart."""


@dataclass(frozen=True)
class Inferred:
    """One value ``init`` chose: where it goes, the value, why, and the flag that sets it."""

    key: str
    value: Any
    why: str
    flag: str


@dataclass(frozen=True)
class InitOverrides:
    """Values given on the command line instead of inferred (None / empty: infer)."""

    conversions: tuple[str, ...] = ()
    churn_events: tuple[str, ...] | None = None
    inactivity_days: int | None = None
    horizon_days: int | None = None
    next_step_days: int | None = None
    cadence_days: int | None = None
    warmup_days: int | None = None
    test_days: int | None = None
    validation_days: int | None = None
    segments: tuple[str, ...] | None = None
    stages: dict[str, str] = field(default_factory=dict)
    regressions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InitPlan:
    """The config set to write (file name -> content) and what was inferred."""

    files: dict[str, dict[str, Any]]
    decisions: tuple[Inferred, ...]
    unplaced: tuple[str, ...]
    segment_columns: tuple[str, ...]
    dropped_rules: tuple[str, ...]
    split_cutoffs: dict[str, int]


class InitError(ValueError):
    """The log or the flags leave a required value undecidable (e.g. no conversion event)."""


def words(name: str) -> set[str]:
    """The lower-case words of an event name (``orderPlaced``, ``order-placed``: order, placed)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w}


def _normal(name: str) -> str:
    return "_".join(sorted(words(name), key=lambda w: name.lower().find(w)))


def place_event(name: str) -> str | None:
    """The stage an event name suggests, or None (negative, generic or unknown)."""
    found = words(name)
    if found & NEGATIVE_WORDS or _normal(name) in GENERIC_NAMES:
        return None
    normal = _normal(name)
    for stage in ("purchase", "advocacy", "retention", "consideration", "awareness"):
        if found & STAGE_WORDS[stage] or normal in STAGE_PHRASES.get(stage, ()):
            return stage
    return None


def nice_days(days: float, minimum: int = 7) -> int:
    """Days rounded the way people state them: weeks up to 90 days, 30-day months beyond."""
    if days <= 84:
        return max(minimum, 7 * math.ceil(days / 7 - 1e-9))
    if days <= 90:
        return 90
    return max(minimum, 30 * round(days / 30))


def _shipped(name: str) -> dict[str, Any]:
    data = yaml.safe_load((CONFIG_DIR / name).read_text(encoding="utf-8"))
    return dict(data or {})


def infer_config(profile: LogProfile, overrides: InitOverrides | None = None) -> InitPlan:
    """The config set for the profiled log (see the module docstring for the rules).

    Raises:
        InitError: no conversion event can be found or a flag names an unknown event or column.
    """
    o = overrides or InitOverrides()
    decisions: list[Inferred] = []
    vocabulary = [e.name for e in profile.event_types]
    counts = {e.name: e.events for e in profile.event_types}

    def decide(key: str, value: Any, why: str, flag: str) -> Any:
        decisions.append(Inferred(key, value, why, flag))
        return value

    for event in (*o.conversions, *(o.churn_events or ()), *o.stages, *o.regressions):
        if event not in counts:
            raise InitError(f"{event!r} is not an event type of the log ({', '.join(vocabulary)})")

    # -- journey map
    placed: dict[str, str | None] = {
        e: None if e in o.regressions else o.stages.get(e) or place_event(e) for e in vocabulary
    }
    for option, chosen in (("--stage", o.stages), ("--regression", o.regressions)):
        for event, stage in chosen.items():
            if stage not in STAGES:
                raise InitError(f"{option} {event}={stage}: stages are {', '.join(STAGES)}")
    used = [
        s for s in STAGES if any(v == s for v in placed.values()) or s in o.regressions.values()
    ]
    if len(used) < 2:
        nxt = [s for s in STAGES if s not in used]
        after = [s for s in nxt if not used or STAGES.index(s) > STAGES.index(used[0])]
        used = sorted({*used, (after or nxt)[0]}, key=STAGES.index)
    stage_events = {s: [e for e in vocabulary if placed[e] == s] for s in used}
    unplaced = tuple(e for e in vocabulary if placed[e] is None)
    decide(
        "journeys.stage_events",
        {s: evs for s, evs in stage_events.items() if evs},
        "stages from the words of the event names"
        + (f"; no stage: {', '.join(unplaced)}" if unplaced else ""),
        "--stage EVENT=STAGE",
    )

    if o.conversions:
        conversions = list(o.conversions)
        decide("journeys.conversions", conversions, "given", "--conversion EVENT")
    else:
        valued = [
            e.name
            for e in profile.event_types
            if e.valued >= 0.5 * e.events and not words(e.name) & NEGATIVE_WORDS
        ]
        named = [
            e for e in vocabulary if words(e) & CONVERSION_WORDS and not words(e) & NEGATIVE_WORDS
        ]
        if valued:
            conversions = valued
            why = f"carry a value ({profile.value_column}) on most rows"
        elif named:
            conversions = named
            why = "named like orders or purchases (the log has no value column)"
        else:
            raise InitError(
                "no event type carries a value or is named like an order or purchase; "
                f"choose the conversion with --conversion EVENT (events: {', '.join(vocabulary)})"
            )
        decide("journeys.conversions", conversions, why, "--conversion EVENT")

    if o.churn_events is not None:
        churn_events = list(o.churn_events)
        decide("journeys.churn.events", churn_events, "given", "--churn-event EVENT")
    else:
        churn_events = [e for e in vocabulary if words(e) & CHURN_WORDS]
        decide(
            "journeys.churn.events",
            churn_events,
            "named like cancellations" if churn_events else "no event is named like a cancellation",
            "--churn-event EVENT",
        )

    gaps = profile.return_gap_days
    if o.inactivity_days is not None:
        inactivity = decide(
            "journeys.churn.inactivity_days", o.inactivity_days, "given", "--inactivity-days N"
        )
    elif gaps:
        inactivity = decide(
            "journeys.churn.inactivity_days",
            nice_days(gaps["p90"]),
            f"90 % of returning customers come back within {gaps['p90']:.0f} days "
            f"({profile.returning_customers:,} of {profile.customers:,} customers returned; "
            "days between consecutive active days, each customer weighted once), rounded",
            "--inactivity-days N",
        )
    else:
        inactivity = decide(
            "journeys.churn.inactivity_days",
            60,
            "no customer returned: the shipped default",
            "--inactivity-days N",
        )

    # -- snapshots, horizons, splits
    span = profile.span_days
    warmup = (
        o.warmup_days
        if o.warmup_days is not None
        else (28 if span >= 120 else max(7, round(span / 6)))
    )
    decide(
        "features.snapshots.warmup_days",
        warmup,
        "given"
        if o.warmup_days is not None
        else "four weeks of history before the first snapshot"
        if warmup == 28
        else f"a sixth of the {span:.0f}-day log",
        "--warmup-days N",
    )
    if o.cadence_days is not None:
        cadence = decide(
            "features.snapshots.cadence_days", o.cadence_days, "given", "--cadence-days N"
        )
    else:
        cadence = 7 if span >= 300 else max(1, min(7, int((span - warmup) // 45)))
        decide(
            "features.snapshots.cadence_days",
            cadence,
            "weekly snapshots"
            if cadence == 7
            else f"a snapshot every {cadence} days: about 45 cutoffs over the {span:.0f}-day log",
            "--cadence-days N",
        )
    test_days = o.test_days or max(4 * cadence, nice_days(0.12 * span, minimum=cadence))
    validation_days = o.validation_days or max(3 * cadence, nice_days(0.08 * span, minimum=cadence))
    min_train = 8 * cadence
    split_mode = str(_shipped("models.yaml").get("split", {}).get("validation", "customers"))
    by_customers = split_mode == "customers"
    # The horizon is needed after the last labelled cutoff and as the purge gap before the
    # test period (and before a validation period, when validation is a period).
    room = span - warmup - test_days - (0 if by_customers else validation_days) - min_train
    limit = max(1, int(room // (2 if by_customers else 3)))
    if o.horizon_days is not None:
        horizon = decide(
            "journeys.horizons.churn_days/conversion_days",
            o.horizon_days,
            "given",
            "--horizon-days N",
        )
    else:
        wanted = min(90, max(14, nice_days(gaps.get("p75", 30.0))))
        horizon = wanted if wanted <= limit else max(1, 7 * (limit // 7) or limit)
        why = (
            f"75 % of returning customers come back within {gaps.get('p75', 30):.0f} days "
            "(kept between 14 and 90 days)"
        )
        if horizon < wanted:
            why += (
                f"; shortened from {wanted} so that warm-up, training (8 cutoffs), "
                + ("" if by_customers else "validation, ")
                + f"test and the purge gaps fit the {span:.0f}-day log"
            )
        decide("journeys.horizons.churn_days/conversion_days", horizon, why, "--horizon-days N")
    next_step = o.next_step_days or min(horizon, 14)
    decide(
        "journeys.horizons.next_step_days",
        next_step,
        "given" if o.next_step_days else "the label horizon, at most two weeks",
        "--next-step-days N",
    )
    decide(
        "models.split.test_days",
        test_days,
        "given" if o.test_days else "the last ~12 % of the log",
        "--test-days N",
    )
    decide(
        "models.split.validation_days",
        validation_days,
        "given"
        if o.validation_days
        else "~8 % of the log before the test period (read when split.validation is period; "
        f"the shipped split validates on {split_mode})",
        "--validation-days N",
    )
    split_cutoffs = count_split_cutoffs(
        profile, warmup, cadence, max(horizon, next_step), test_days, validation_days, split_mode
    )
    decide(
        "training cutoffs (train / validation / test)",
        f"{split_cutoffs['train']} / {split_cutoffs['validation']} / {split_cutoffs['test']}",
        "snapshot cutoffs each split gets with these windows (purge gaps of the horizon)"
        + (
            "; validation holds out a share of the training cutoffs' customers"
            if by_customers
            else ""
        ),
        "--cadence-days, --horizon-days, --test-days, --validation-days",
    )

    # -- segments
    if o.segments is not None:
        missing = [c for c in o.segments if c not in {col.name for col in profile.columns}]
        if missing:
            raise InitError(f"--segment names columns the log does not have: {', '.join(missing)}")
        segments = tuple(o.segments)
        decide("monitoring.segments", list(segments), "given", "--segment COLUMN")
    else:
        segments = profile.segment_columns
        decide(
            "monitoring.segments",
            list(segments),
            "text columns with 2-12 values on nearly every row"
            if segments
            else "no low-cardinality text column",
            "--segment COLUMN",
        )

    regressions = _regressions(used, vocabulary, placed, churn_events, o.regressions)
    decide(
        "journeys.regressions",
        {r["to"]: r["events"] for r in regressions},
        "given"
        if o.regressions
        else "cancellations send a customer back to the first stage and purchase errors or "
        "failures to the stage before purchase; every other event only moves customers forward"
        if regressions
        else "no cancellation or purchase error in the log",
        "--regression EVENT=STAGE",
    )
    journeys = _journeys(
        stage_events, conversions, churn_events, inactivity, horizon, next_step, vocabulary
    )
    journeys["regressions"] = regressions
    moving_back = {e for r in regressions for e in r["events"]}
    unplaced = tuple(e for e in unplaced if e not in moving_back)
    features = _features(profile, vocabulary, counts, cadence, warmup, inactivity, decide)
    models = _models(conversions, test_days, validation_days)
    monitoring = _monitoring(profile, churn_events, segments, decide)
    actions, dropped = _actions(journeys, features, profile, horizon)
    decide(
        "actions",
        [a["id"] for a in actions["actions"]],
        "the shipped starter actions whose rules this log's features can evaluate"
        + (f"; rules left out: {'; '.join(dropped)}" if dropped else ""),
        "edit actions.yaml",
    )
    serving = _shipped("serving.yaml")
    dimension_names = {
        d["column"]: d.get("name") or d["column"].lower() for d in features["dimensions"]
    }
    segment_dims = [profile.column_map.get(c, c) for c in segments]
    segment_dims = [c for c in segment_dims if c in dimension_names]
    if segment_dims:
        serving["segment_column"] = f"{dimension_names[segment_dims[0]]}_last"
        decide(
            "serving.segment_column",
            serving["segment_column"],
            f"the latest {segment_dims[0]} of each customer: `lists churn-risk --segment VALUE`",
            "edit serving.yaml",
        )
    files = {
        "journeys.yaml": journeys,
        "events.yaml": {**_shipped("events.yaml"), "column_map": dict(profile.column_map)},
        "features.yaml": features,
        "models.yaml": models,
        "actions.yaml": actions,
        "monitoring.yaml": monitoring,
        "serving.yaml": serving,
    }
    return InitPlan(files, tuple(decisions), unplaced, segments, tuple(dropped), split_cutoffs)


def _regressions(
    stages: list[str],
    vocabulary: list[str],
    placed: Mapping[str, str | None],
    churn_events: list[str],
    given: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Regression entries: the given ones, or cancellations back to the first stage and
    purchase-domain errors back to the stage before purchase."""
    back: dict[str, list[str]] = {}
    if given:
        for event, stage in given.items():
            back.setdefault(stage, []).append(event)
    else:
        before = stages[0]
        if "purchase" in stages and stages.index("purchase") > 0:
            before = stages[stages.index("purchase") - 1]
        for event in vocabulary:
            if placed.get(event) is not None:
                continue
            found = words(event)
            if event in churn_events:
                back.setdefault(stages[0], []).append(event)
            elif found & (NEGATIVE_WORDS - CHURN_WORDS) and found & STAGE_WORDS["purchase"]:
                back.setdefault(before, []).append(event)
    return [{"events": events, "to": stage} for stage, events in back.items()]


def count_split_cutoffs(
    profile: LogProfile,
    warmup: int,
    cadence: int,
    horizon: int,
    test_days: int,
    validation_days: int,
    validation: str = "customers",
) -> dict[str, int]:
    """Snapshot cutoffs of each split, computed by the pipeline's and training's own planners
    (0 everywhere when the windows do not fit). With ``validation="customers"`` the validation
    cutoffs are the training cutoffs (a share of their customers is held out)."""
    from datetime import timedelta

    from features.pipeline import plan_snapshots
    from training.config import SplitSettings
    from training.labels import LabelError, plan_splits

    plan = plan_snapshots(profile.first_event, profile.last_event, cadence, warmup)
    labelled = [t for t in plan.cutoffs if t + timedelta(days=horizon) <= profile.last_event]
    try:
        split = plan_splits(
            labelled,
            SplitSettings.model_validate(
                {
                    "test_days": test_days,
                    "validation_days": validation_days,
                    "validation": validation,
                }
            ),
            horizon,
        )
    except LabelError:
        return {"train": 0, "validation": 0, "test": 0}
    return {"train": len(split.train), "validation": len(split.validation), "test": len(split.test)}


def _journeys(
    stage_events: dict[str, list[str]],
    conversions: list[str],
    churn_events: list[str],
    inactivity: int,
    horizon: int,
    next_step: int,
    vocabulary: list[str],
) -> dict[str, Any]:
    support = [e for e in vocabulary if words(e) & SUPPORT_WORDS and not words(e) & COMPLAINT_WORDS]
    complaints = [e for e in vocabulary if words(e) & COMPLAINT_WORDS]
    treatments = (
        ["action_*"] if not any(e.startswith("action_") for e in vocabulary) else ["jml_action_*"]
    )
    return {
        "stages": list(stage_events),
        "stage_events": {s: evs for s, evs in stage_events.items() if evs},
        "conversions": conversions,
        "churn": {"inactivity_days": inactivity, "events": churn_events, "activity_events": ["*"]},
        "horizons": {
            "churn_days": horizon,
            "conversion_days": horizon,
            "next_step_days": next_step,
        },
        "treatments": {
            "patterns": treatments,
            "action_property": "action_id",
            "propensity_property": "propensity",
        },
        "responses": [],
        "experience": {
            "support": support + complaints,
            "complaints": complaints,
            "nps": [],
            "csat": [],
            "score_property": "score",
        },
    }


def _features(
    profile: LogProfile,
    vocabulary: list[str],
    counts: Mapping[str, int],
    cadence: int,
    warmup: int,
    inactivity: int,
    decide: Any,
) -> dict[str, Any]:
    from features.catalog import slug
    from features.pipeline import MAX_EVENT_TYPES

    data = _shipped("features.yaml")
    windows = [7, 30, 90]
    if inactivity > 90 and profile.span_days >= 270:
        windows.append(180)
    decide(
        "features.windows_days",
        windows,
        "7, 30 and 90 days"
        + (", and 180 for a log whose customers return after months" if 180 in windows else ""),
        "edit features.yaml",
    )
    counted = sorted(vocabulary, key=lambda e: -counts[e])[: min(40, MAX_EVENT_TYPES)]
    decide(
        "features.count_event_types",
        len(counted),
        "every event type gets window counts (the 40 most frequent at most)",
        "edit features.yaml",
    )
    channels = sorted({slug(v) for v, _ in profile.channel_values[:10]})
    decide(
        "features.profile_attributes",
        ["marketing_opt_out"],
        "the consent column of actions.yaml, from a customers table (events ingest "
        "--customers); a customer without consent gets no marketing action",
        "edit features.yaml",
    )
    decide(
        "features.channels",
        channels,
        "values of the mapped channel column" if channels else "the log has no channel column",
        "--map COLUMN=channel",
    )
    dimensions, measures = propose_dimensions(profile), propose_measures(profile)
    decide(
        "features.dimensions",
        [f"{d['column']} ({', '.join(d['values'])})" for d in dimensions],
        "the log's own text columns with a few values: counts and shares by value, last value"
        if dimensions
        else "no extra text column with a few values",
        "edit features.yaml",
    )
    decide(
        "features.measures",
        [m["column"] for m in measures],
        "the log's own numeric columns: sums and means in every window"
        if measures
        else "no extra numeric column",
        "edit features.yaml",
    )
    data.update(
        windows_days=windows,
        count_event_types=counted,
        channels=channels,
        dimensions=dimensions,
        measures=measures,
        profile_attributes=["marketing_opt_out"],
        snapshots={"cadence_days": cadence, "warmup_days": warmup},
    )
    return data


#: A dimension's values: the frequent ones (at least this share of the column's rows) ...
DIMENSION_MIN_SHARE = 0.01
#: ... at most this many; a column with more distinct values than this is no dimension.
DIMENSION_MAX_VALUES = 12
DIMENSION_MAX_DISTINCT = 50
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def propose_dimensions(profile: LogProfile) -> list[dict[str, Any]]:
    """Extra text columns with a few values (and a mapped channel column is left to
    ``channels``): each with its frequent values."""
    out = []
    for col in profile.columns:
        name = profile.column_map.get(col.name, col.name)
        if col.role is not None or col.kind != "text" or not _COLUMN_NAME.match(name):
            continue
        if not 2 <= col.distinct <= DIMENSION_MAX_DISTINCT or not col.top_values:
            continue
        values = [v for v, n in col.top_values if n >= DIMENSION_MIN_SHARE * max(col.non_null, 1)][
            :DIMENSION_MAX_VALUES
        ]
        if len(values) >= 2:
            out.append({"column": name, "values": values})
    return out


def propose_measures(profile: LogProfile) -> list[dict[str, Any]]:
    """Extra numeric columns that are not identifiers (fewer distinct values than rows)."""
    return [
        {"column": profile.column_map.get(c.name, c.name)}
        for c in profile.columns
        if c.role is None
        and c.kind == "number"
        and c.distinct < c.non_null
        and _COLUMN_NAME.match(profile.column_map.get(c.name, c.name))
    ]


def _models(conversions: list[str], test_days: int, validation_days: int) -> dict[str, Any]:
    from features.catalog import slug

    data = _shipped("models.yaml")
    data["split"] = {
        **data.get("split", {}),
        "test_days": test_days,
        "validation_days": validation_days,
    }
    churn = data["models"]["churn"]
    churn["monotone_decreasing"] = [
        "days_since_last_complaint",
        "conversions_*",
        *(f"n_{slug(c)}_*" for c in conversions),
    ]
    return data


def _monitoring(
    profile: LogProfile,
    churn_events: list[str],
    segments: tuple[str, ...],
    decide: Any,
) -> dict[str, Any]:
    """The shipped monitoring settings (funnel steps from the journey map, error patterns)
    with this log's segments, step window and support and cancellation rates."""
    data = _shipped("monitoring.yaml")
    vocabulary = [e.name for e in profile.event_types]
    support = [e for e in vocabulary if words(e) & (SUPPORT_WORDS | COMPLAINT_WORDS)]
    rates = [
        {"name": name, "events": list(events)}
        for name, events in (("support", support), ("cancellations", churn_events))
        if events
    ]
    sessions = profile.event_gap_seconds.get("share_within_30min", 0.0) >= SESSION_SHARE
    hours = 2.0 if sessions and not profile.date_only else float(data["journey_step_hours"])
    decide(
        "monitoring.journey_step_hours",
        hours,
        "a session log: a journey step should lead to the next within a visit"
        if hours == 2.0
        else "the shipped default (not a session log)",
        "edit monitoring.yaml",
    )
    decide(
        "monitoring.rates",
        [r["name"] for r in rates],
        "support and cancellation events per active customer (errors are the shipped "
        "error_events patterns)",
        "edit monitoring.yaml",
    )
    names = [profile.column_map.get(c, c) for c in segments]
    data.update(steps=[], rates=rates, journey_step_hours=hours, segments=names)
    return data


_RULE_NAMES = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def _actions(
    journeys: dict[str, Any], features: dict[str, Any], profile: LogProfile, horizon: int
) -> tuple[dict[str, Any], list[str]]:
    """The shipped starter actions with this log's thresholds, keeping the rules whose names
    the feature catalog of this config set has (checked by the catalog's own validator)."""
    from features.catalog import build_catalog
    from features.settings import FeatureSettings
    from journeyml.config import JourneyMap
    from serving.actions import SCORE_NAMES, validate_actions

    data = _shipped("actions.yaml")
    catalog = build_catalog(
        JourneyMap.model_validate(journeys), FeatureSettings.model_validate(features)
    )
    kinds = {
        f.name: {"int64": "number", "float64": "number", "string": "string"}.get(f.dtype, "other")
        for f in catalog.features
    }
    quiet = nice_days(profile.return_gap_days.get("p50", 14.0))
    replacements = {
        r"days_since_last_event > \d+": f"days_since_last_event > {quiet}",
        r"days_since_last_conversion > \d+": f"days_since_last_conversion > {horizon}",
    }
    known = set(kinds) | set(SCORE_NAMES) | {"context", "and", "or", "not", "in", "true", "false"}
    dropped: list[str] = []
    kept_actions = []
    for action in data.get("actions", []):
        for stage in ("eligibility", "applicability", "suitability"):
            rules = []
            for rule in action.get(stage) or []:
                for pattern, text in replacements.items():
                    rule = re.sub(pattern, text, rule)
                names = {n for n in _RULE_NAMES.findall(rule.split("#")[0]) if not n.isdigit()}
                strings = set(re.findall(r"'([^']*)'", rule))
                unknown = sorted(
                    n for n in names - known - strings if not rule.startswith("context.")
                )
                if unknown:
                    dropped.append(f"{action['id']}: {rule} ({', '.join(unknown)} not in this log)")
                    continue
                rules.append(rule)
            action[stage] = rules
        kept_actions.append(action)
    data["actions"] = kept_actions
    validate_actions(data, "actions.yaml (inferred)", known_names=kinds)
    return data, dropped


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated lists in full instead of as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Mapping[str, Any], header: Iterable[str]) -> str:
    """YAML text with a comment header."""
    lines = [f"# {line}".rstrip() for line in header]
    body = yaml.dump(
        dict(data), Dumper=_PlainDumper, sort_keys=False, default_flow_style=None, width=100
    )
    return "\n".join([*lines, "", body])


def write_config_set(
    plan: InitPlan, out: Path, source: str, target: Path | None = None
) -> list[Path]:
    """Writes the plan's files, and ``init.json`` (every inferred value and why), into ``out``
    (created when absent); ``target`` is the folder the files will be used from, when they
    are moved there after checking."""
    out.mkdir(parents=True, exist_ok=True)
    target = target or out
    written = []
    for name, data in plan.files.items():
        prefix = name.split(".")[0]
        notes = [
            f"{d.key}: {d.value} — {d.why}"
            for d in plan.decisions
            if d.key.startswith(prefix) or (prefix == "monitoring" and "segment" in d.key)
        ]
        header = [
            f"Written by `journeyml init` from {source}; use it with `journeyml --config-dir "
            f"{target}`.",
            "Validated by the same models as the shipped file of this name (configs/" + name + ").",
            *(["", "Inferred:"] + [f"  {n}" for n in notes] if notes else []),
        ]
        path = out / name
        path.write_text(dump_yaml(data, header), encoding="utf-8")
        written.append(path)
    summary = {
        "source": source,
        "inferred": [asdict(d) for d in plan.decisions],
        "unplaced_events": list(plan.unplaced),
        "segment_columns": list(plan.segment_columns),
        "split_cutoffs": plan.split_cutoffs,
        "dropped_rules": list(plan.dropped_rules),
    }
    path = out / "init.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    written.append(path)
    return written


def check_config_set(folder: Path) -> None:
    """Loads every file of a config set with the project's own models (and the actions
    catalog against the feature catalog of the set).

    Raises:
        ConfigError: the first file that does not validate.
    """
    from evaluation.monitor import load_monitor_settings
    from features.settings import load_feature_settings
    from journeyml.config import load_journey_map
    from journeyml.events.config import load_events_config
    from serving.actions import load_decision_catalogs
    from serving.config import load_serving_settings
    from training.config import load_training_config

    load_journey_map(folder / "journeys.yaml")
    load_events_config(folder / "events.yaml")
    load_feature_settings(str(folder / "features.yaml"))
    load_training_config(folder / "models.yaml")
    load_monitor_settings(folder / "monitoring.yaml")
    load_serving_settings(folder / "serving.yaml")
    load_decision_catalogs(
        folder / "actions.yaml", folder / "features.yaml", folder / "journeys.yaml"
    )
