"""The one place where journey features are defined: name, plain-language description, type,
feature view, and the SQL that computes each from the event stream.

The pipeline (``features.pipeline``) reads two kinds of values at each snapshot time T, counting
only events strictly before T, and every feature below is an expression over those *readings*:

- :class:`Counter` readings: a per-event count (or amount) summed over a look-back window,
  ``<counter>__w<W>`` for the events in [T - W days, T), and ``<counter>__total`` for every
  event before T;
- as-of readings of the customer's state: the time of the latest event of some kind
  (:class:`LastTime`, microseconds since the epoch), the latest value of an expression
  (:class:`LastValue`), the first activity (``first_ts``), the journey stage state
  (``cur_stage``, ``prev_stage``, ``stage_since_ts``, ``furthest_stage``) and the latest event
  types (``last_type_<k>``); plus ``snapshot_us``, T in microseconds.

The same catalog drives training snapshots, the online store and the real-time update, so a
feature has exactly one definition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from features.settings import FeatureSettings
from journeyml.config import JourneyMap

Dtype = Literal["int64", "float64", "string"]

OTHER_LABEL = "other"
"""Value of a dimension that is not among its listed values."""
NONE_LABEL = "none"
"""Value of a categorical feature that has nothing to report (no stage yet, fewer events)."""
NO_SCORE = -1.0
"""Value of a survey-score feature for a customer who never answered that survey."""

VIEW_ACTIVITY = "journey_activity"
VIEW_STATE = "journey_state"
VIEW_EXPERIENCE = "journey_experience"
VIEW_PROFILE = "customer_profile"
VIEWS: tuple[str, ...] = (VIEW_ACTIVITY, VIEW_STATE, VIEW_EXPERIENCE, VIEW_PROFILE)

US_PER_DAY = 86_400_000_000
"""Microseconds per day: as-of times are read in microseconds since the epoch."""


@dataclass(frozen=True)
class Counter:
    """A per-event count (or amount) summed over look-back windows that end at the snapshot.

    Attributes:
        name: reading prefix: ``<name>__w<W>`` sums the events in [T - W days, T),
            ``<name>__total`` every event before T.
        expr: per-event SQL over the enriched event columns: 0 or 1 for a count, a number for
            an amount. ``session_start`` is 1 once per session, at its first activity event.
        windows: look-back windows in days that are read.
        total: whether ``<name>__total`` is read.
        amount: an amount of money (summed as a double) rather than a count of events.
    """

    name: str
    expr: str
    windows: tuple[int, ...]
    total: bool = False
    amount: bool = False


@dataclass(frozen=True)
class LastTime:
    """Reading ``name``: the time of the latest event before T where ``condition`` holds
    (microseconds since the epoch), NULL when there is none."""

    name: str
    condition: str


@dataclass(frozen=True)
class LastValue:
    """Reading ``name``: the latest non-null value of ``expr`` before T (events ordered by time,
    then event id), NULL when there is none."""

    name: str
    expr: str


@dataclass(frozen=True)
class EventColumn:
    """A per-event column read from the event row (``e``, the normalised event table), for
    counters and last values to use by ``name``: the dimensions and measures of the settings."""

    name: str
    sql: str


@dataclass(frozen=True)
class Phrase:
    """How a reason says a feature's value in plain words (:func:`features.reasons.say`).

    Attributes:
        kind: count, money, money_mean, since, days, trend, per, rate, share, category,
            position, score, times or measure.
        what: the noun or phrase the kind puts the number with ("event", "support contact").
        window: the look-back in days (None: since the first event).
        never: the words when the event never happened or nothing is there.
    """

    kind: str
    what: str = ""
    window: int | None = None
    never: str = ""


FAMILIES = (
    "recency",
    "frequency",
    "money",
    "engagement",
    "experience",
    "stage",
    "channel",
    "profile",
)
"""Feature families: a list of reasons cites at most one feature of each (the log's own
dimensions and measures are families of their own, named after their column)."""


@dataclass(frozen=True)
class FeatureSpec:
    """One journey feature.

    Attributes:
        name: column name, also the Feast feature name.
        description: plain-language meaning, used in reason codes and reports.
        dtype: storage type.
        view: the Feast feature view it belongs to.
        sql: expression over the readings (see the module documentation).
        ages_with_time: the value grows one day per day while nothing happens (recency); an
            online read adds the age of the stored row so the value is right at read time.
    """

    name: str
    description: str
    dtype: Dtype
    view: str
    sql: str
    ages_with_time: bool = False
    family: str = "profile"
    phrase: Phrase = Phrase("category")


@dataclass(frozen=True)
class FeatureCatalog:
    """All readings and features for one journey map and feature settings."""

    counters: tuple[Counter, ...]
    last_times: tuple[LastTime, ...]
    last_values: tuple[LastValue, ...]
    features: tuple[FeatureSpec, ...]
    counted_event_types: tuple[str, ...]
    settings: FeatureSettings
    event_columns: tuple[EventColumn, ...] = ()

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def by_name(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def view_features(self, view: str) -> list[FeatureSpec]:
        return [f for f in self.features if f.view == view]

    @property
    def views(self) -> tuple[str, ...]:
        """The feature views that hold at least one feature (with no profile attributes the
        profile view has none, and Feast would read a view without a schema as every column
        of the source)."""
        return tuple(v for v in VIEWS if self.view_features(v))

    @property
    def descriptions(self) -> dict[str, str]:
        return {f.name: f.description for f in self.features}

    @property
    def specs(self) -> dict[str, FeatureSpec]:
        return {f.name: f for f in self.features}


def slug(value: str) -> str:
    """An event type or channel as a safe fragment of a column name."""
    out = "".join(c if c.isalnum() else "_" for c in value.lower()).strip("_")
    return out or "blank"


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _days_between(earlier_us: str, later_us: str) -> str:
    # microseconds, the resolution of event timestamps ('second' would count whole-second
    # boundaries and be off by up to a second)
    return f"(({later_us} - {earlier_us}) / {US_PER_DAY}.0)"


def counted_event_types(journey_map: JourneyMap, settings: FeatureSettings) -> tuple[str, ...]:
    """Event types that get their own window counts."""
    if settings.count_event_types is not None:
        return tuple(dict.fromkeys(settings.count_event_types))
    named = [
        *[p for patterns in journey_map.stage_events.values() for p in patterns],
        *[p for regression in journey_map.regressions for p in regression.events],
        *journey_map.conversions,
        *journey_map.responses,
        *journey_map.experience.support,
        *journey_map.experience.complaints,
        *journey_map.experience.nps,
        *journey_map.experience.csat,
        *journey_map.churn.events,
    ]
    exact = [n for n in named if not any(c in n for c in "*?[")]
    return tuple(n for n in dict.fromkeys(exact) if not journey_map.is_treatment(n))


def build_catalog(journey_map: JourneyMap, settings: FeatureSettings) -> FeatureCatalog:
    """Builds the readings and features for a journey map.

    Args:
        journey_map: stages and event roles.
        settings: windows, counted event types, channels and profile attributes.

    Returns:
        The catalog; feature names are unique and stable for the same inputs.
    """
    windows = tuple(settings.windows_days)
    trend = settings.trend_days
    with_trend = tuple(sorted({*windows, trend, 2 * trend}))
    types = counted_event_types(journey_map, settings)
    stages = journey_map.stages

    counters: list[Counter] = []
    last_times: list[LastTime] = []
    last_values: list[LastValue] = []
    feats: list[FeatureSpec] = []

    def add_counter(
        name: str,
        expr: str,
        spans: tuple[int, ...] = windows,
        total: bool = False,
        amount: bool = False,
    ) -> None:
        counters.append(Counter(name, expr, spans, total, amount))

    def add(
        name: str,
        description: str,
        dtype: Dtype,
        view: str,
        sql: str,
        ages: bool = False,
        family: str = "profile",
        phrase: Phrase | None = None,
    ) -> None:
        feats.append(
            FeatureSpec(
                name, description, dtype, view, sql, ages, family, phrase or Phrase("category")
            )
        )

    def window_count(counter: str, w: int) -> str:
        return f"{counter}__w{w}"

    # -- activity: window counts ------------------------------------------------------------
    add_counter("c_events", "is_activity", with_trend, total=True)
    add_counter("c_sessions", "session_start")
    add_counter(
        "c_value",
        "CASE WHEN is_activity = 1 THEN COALESCE(value, 0) ELSE 0 END",
        with_trend,
        total=True,
        amount=True,
    )
    add_counter("c_valued", "CASE WHEN is_activity = 1 AND value IS NOT NULL THEN 1 ELSE 0 END")
    add_counter("c_conversions", "is_conversion", total=True)
    for t in types:
        add_counter(
            f"c_type_{slug(t)}", f"CASE WHEN event_type = {sql_literal(t)} THEN 1 ELSE 0 END"
        )
    for ch in settings.channels:
        add_counter(
            f"c_channel_{ch}",
            f"CASE WHEN is_activity = 1 AND channel = {sql_literal(ch)} THEN 1 ELSE 0 END",
        )

    for w in windows:
        add(
            f"events_{w}d",
            f"customer events in the last {w} days",
            "int64",
            VIEW_ACTIVITY,
            window_count("c_events", w),
            family="frequency",
            phrase=Phrase("count", "event", w),
        )
        add(
            f"sessions_{w}d",
            f"web and app sessions in the last {w} days",
            "int64",
            VIEW_ACTIVITY,
            window_count("c_sessions", w),
            family="frequency",
            phrase=Phrase("count", "session", w),
        )
        add(
            f"conversions_{w}d",
            f"conversions in the last {w} days",
            "int64",
            VIEW_ACTIVITY,
            window_count("c_conversions", w),
            family="frequency",
            phrase=Phrase("count", "conversion", w),
        )
        add(
            f"value_sum_{w}d",
            f"money spent in the last {w} days",
            "float64",
            VIEW_ACTIVITY,
            window_count("c_value", w),
            family="money",
            phrase=Phrase("money", "", w),
        )
        add(
            f"value_mean_{w}d",
            f"average order value in the last {w} days",
            "float64",
            VIEW_ACTIVITY,
            f"CASE WHEN {window_count('c_valued', w)} > 0 THEN "
            f"{window_count('c_value', w)} / {window_count('c_valued', w)} ELSE 0.0 END",
            family="money",
            phrase=Phrase("money_mean", "", w),
        )
        for t in types:
            add(
                f"n_{slug(t)}_{w}d",
                f"'{t}' events in the last {w} days",
                "int64",
                VIEW_ACTIVITY,
                window_count(f"c_type_{slug(t)}", w),
                family=_type_family(journey_map, t),
                phrase=Phrase("count", f"{_words(t)} event", w),
            )
        for ch in settings.channels:
            add(
                f"channel_{ch}_{w}d",
                f"events on the {ch} channel in the last {w} days",
                "int64",
                VIEW_ACTIVITY,
                window_count(f"c_channel_{ch}", w),
                family="channel",
                phrase=Phrase("count", f"event on {_words(ch)}", w),
            )

    # [T - trend, T) against [T - 2 trend, T - trend)
    recent = window_count("c_events", trend)
    before = f"({window_count('c_events', 2 * trend)} - {recent})"
    add(
        f"events_trend_{trend}d",
        f"activity in the last {trend} days relative to the {trend} days before",
        "float64",
        VIEW_ACTIVITY,
        f"(({recent} + 1.0) / ({before} + 1.0))",
        family="frequency",
        phrase=Phrase("trend", "activity", trend),
    )
    recent_v = window_count("c_value", trend)
    before_v = f"({window_count('c_value', 2 * trend)} - {recent_v})"
    add(
        f"value_trend_{trend}d",
        f"spend in the last {trend} days relative to the {trend} days before",
        "float64",
        VIEW_ACTIVITY,
        f"(({recent_v} + 1.0) / ({before_v} + 1.0))",
        family="money",
        phrase=Phrase("trend", "spend", trend),
    )
    w_mid = 30 if 30 in windows else windows[-1]
    add(
        f"events_per_session_{w_mid}d",
        f"events per session in the last {w_mid} days",
        "float64",
        VIEW_ACTIVITY,
        f"CASE WHEN {window_count('c_sessions', w_mid)} > 0 THEN "
        f"{window_count('c_events', w_mid)} * 1.0 / {window_count('c_sessions', w_mid)} "
        "ELSE 0.0 END",
        family="engagement",
        phrase=Phrase("per", "events per session", w_mid),
    )
    add(
        "events_total",
        "customer events since the first one",
        "int64",
        VIEW_ACTIVITY,
        "c_events__total",
        family="frequency",
        phrase=Phrase("count", "event"),
    )
    add(
        "conversions_total",
        "conversions since the first event",
        "int64",
        VIEW_ACTIVITY,
        "c_conversions__total",
        family="frequency",
        phrase=Phrase("count", "conversion", never="no conversion yet"),
    )
    add(
        "value_total",
        "money spent since the first event",
        "float64",
        VIEW_ACTIVITY,
        "c_value__total",
        family="money",
        phrase=Phrase("money"),
    )

    # -- journey state and recency ----------------------------------------------------------
    last_times.append(LastTime("last_event_ts", "is_activity = 1"))
    last_times.append(LastTime("last_conversion_ts", "is_conversion = 1"))
    last_times.append(LastTime("last_support_ts", "is_support = 1"))
    last_times.append(LastTime("last_complaint_ts", "is_complaint = 1"))
    last_times.append(LastTime("last_action_ts", "is_treatment = 1"))
    add_counter(
        "c_regressions", "CASE WHEN stage_now < stage_prior THEN 1 ELSE 0 END", (), total=True
    )

    tenure = _days_between("first_ts", "snapshot_us")
    add(
        "tenure_days",
        "days since the customer's first event",
        "float64",
        VIEW_STATE,
        tenure,
        ages=True,
        family="stage",
        phrase=Phrase("days", "customer for"),
    )

    def since(reading: str, what: str, family: str, words: str, never: str) -> None:
        noun = what.removeprefix("last_").replace("_", " ")
        add(
            f"days_since_{what}",
            f"days since the last {noun}; one day more than the tenure when it never happened",
            "float64",
            VIEW_STATE,
            f"COALESCE({_days_between(reading, 'snapshot_us')}, {tenure} + 1.0)",
            ages=True,
            family=family,
            phrase=Phrase("since", words, never=never),
        )

    since("last_event_ts", "last_event", "recency", "activity", "no activity yet")
    since("last_conversion_ts", "last_conversion", "recency", "conversion", "no conversion yet")
    since(
        "last_support_ts",
        "last_support",
        "experience",
        "support contact",
        "never contacted support",
    )
    since("last_complaint_ts", "last_complaint", "experience", "complaint", "never complained")
    since(
        "last_action_ts",
        "last_action",
        "engagement",
        "marketing contact",
        "no marketing contact yet",
    )

    def stage_name(index_sql: str) -> str:
        cases = " ".join(f"WHEN {i} THEN {sql_literal(s)}" for i, s in enumerate(stages))
        return f"COALESCE(CASE {index_sql} {cases} END, {sql_literal(NONE_LABEL)})"

    add(
        "stage",
        "current journey stage",
        "string",
        VIEW_STATE,
        stage_name("cur_stage"),
        family="stage",
        phrase=Phrase("category", "journey stage", never="no journey stage yet"),
    )
    add(
        "stage_index",
        "position of the current stage in the journey; -1 before any",
        "int64",
        VIEW_STATE,
        "COALESCE(cur_stage, -1)",
        family="stage",
        phrase=Phrase("position", "journey step"),
    )
    add(
        "previous_stage",
        "journey stage before the current one",
        "string",
        VIEW_STATE,
        stage_name("prev_stage"),
        family="stage",
        phrase=Phrase("category", "previous journey stage", never="no earlier journey stage"),
    )
    add(
        "furthest_stage",
        "furthest journey stage ever reached",
        "string",
        VIEW_STATE,
        stage_name("furthest_stage"),
        family="stage",
        phrase=Phrase("category", "furthest journey stage reached", never="no journey stage yet"),
    )
    add(
        "furthest_stage_index",
        "position of the furthest stage reached; -1 before any",
        "int64",
        VIEW_STATE,
        "COALESCE(furthest_stage, -1)",
        family="stage",
        phrase=Phrase("position", "furthest journey step reached:"),
    )
    add(
        "days_in_stage",
        "days in the current stage; one day more than the tenure before any stage",
        "float64",
        VIEW_STATE,
        f"COALESCE({_days_between('stage_since_ts', 'snapshot_us')}, {tenure} + 1.0)",
        ages=True,
        family="stage",
        phrase=Phrase("days", "in the current stage for", never="no journey stage yet"),
    )
    add(
        "stage_regressions",
        "times the customer moved back to an earlier stage",
        "int64",
        VIEW_STATE,
        "c_regressions__total",
        family="stage",
        phrase=Phrase("times", "moved back to an earlier stage"),
    )
    for k in range(1, settings.last_k + 1):
        nth = {1: "latest", 2: "2nd latest", 3: "3rd latest"}.get(k, f"{k}th latest")
        add(
            f"last_event_{k}",
            f"{nth} event type",
            "string",
            VIEW_STATE,
            f"COALESCE(last_type_{k}, {sql_literal(NONE_LABEL)})",
            family="engagement",
            phrase=Phrase(
                "category",
                f"{nth} activity",
                never=f"fewer than {k} activities" if k > 1 else "no activity yet",
            ),
        )

    # -- experience: service, surveys, marketing --------------------------------------------
    add_counter("c_support", "is_support", total=True)
    add_counter("c_complaints", "is_complaint", total=True)
    add_counter("c_actions", "is_treatment", total=True)
    add_counter("c_responses", "is_response")
    last_values.append(LastValue("last_nps", "nps_score"))
    last_values.append(LastValue("last_csat", "csat_score"))
    for w in windows:
        add(
            f"support_{w}d",
            f"support contacts in the last {w} days",
            "int64",
            VIEW_EXPERIENCE,
            window_count("c_support", w),
            family="experience",
            phrase=Phrase("count", "support contact", w),
        )
        add(
            f"complaints_{w}d",
            f"complaints in the last {w} days",
            "int64",
            VIEW_EXPERIENCE,
            window_count("c_complaints", w),
            family="experience",
            phrase=Phrase("count", "complaint", w),
        )
        add(
            f"actions_{w}d",
            f"marketing actions received in the last {w} days",
            "int64",
            VIEW_EXPERIENCE,
            window_count("c_actions", w),
            family="engagement",
            phrase=Phrase("count", "marketing contact", w),
        )
        add(
            f"responses_{w}d",
            f"responses to marketing in the last {w} days",
            "int64",
            VIEW_EXPERIENCE,
            window_count("c_responses", w),
            family="engagement",
            phrase=Phrase("count", "response to marketing", w),
        )
    w_max = windows[-1]
    add(
        f"response_rate_{w_max}d",
        f"responses per marketing action in the last {w_max} days; 0 without actions",
        "float64",
        VIEW_EXPERIENCE,
        f"CASE WHEN {window_count('c_actions', w_max)} > 0 THEN "
        f"{window_count('c_responses', w_max)} * 1.0 / {window_count('c_actions', w_max)} "
        "ELSE 0.0 END",
        family="engagement",
        phrase=Phrase("rate", "marketing contacts", w_max),
    )
    add(
        "support_total",
        "support contacts since the first event",
        "int64",
        VIEW_EXPERIENCE,
        "c_support__total",
        family="experience",
        phrase=Phrase("count", "support contact"),
    )
    add(
        "complaints_total",
        "complaints since the first event",
        "int64",
        VIEW_EXPERIENCE,
        "c_complaints__total",
        family="experience",
        phrase=Phrase("count", "complaint"),
    )
    add(
        "actions_total",
        "marketing actions received since the first event",
        "int64",
        VIEW_EXPERIENCE,
        "c_actions__total",
        family="engagement",
        phrase=Phrase("count", "marketing contact"),
    )
    add(
        "last_nps",
        f"latest NPS answer; {NO_SCORE:g} when never answered",
        "float64",
        VIEW_EXPERIENCE,
        f"COALESCE(last_nps, {NO_SCORE})",
        family="experience",
        phrase=Phrase("score", "NPS answer", never="never answered the NPS survey"),
    )
    add(
        "last_csat",
        f"latest CSAT answer; {NO_SCORE:g} when never answered",
        "float64",
        VIEW_EXPERIENCE,
        f"COALESCE(last_csat, {NO_SCORE})",
        family="experience",
        phrase=Phrase(
            "score", "satisfaction score", never="never answered the satisfaction survey"
        ),
    )

    # -- profile: attributes of the customers table -----------------------------------------
    for attr in settings.profile_attributes:
        add(
            attr,
            f"customer {attr.replace('_', ' ')}, from the customers table",
            "string",
            VIEW_PROFILE,
            f"COALESCE(CAST(profile_{attr} AS VARCHAR), 'unknown')",
            family="profile",
            phrase=Phrase("category", f"customer {_words(attr)}", never="not known"),
        )

    event_columns = _add_log_columns(settings, add_counter, add, last_values)

    names = [f.name for f in feats]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(
            "feature names collide (rename an event type or channel in configs): "
            + ", ".join(dupes)
        )
    return FeatureCatalog(
        tuple(counters),
        tuple(last_times),
        tuple(last_values),
        tuple(feats),
        types,
        settings,
        tuple(event_columns),
    )


def _words(name: str) -> str:
    """An event type, channel or column name as words."""
    return name.replace("_", " ").strip()


def _type_family(journey_map: JourneyMap, event_type: str) -> str:
    """The family of an event type's counts: service and surveys are the experience,
    conversions and stage events the stage, churn events the stage, the rest engagement."""
    x = journey_map.experience
    if event_type in {*x.support, *x.complaints, *x.nps, *x.csat}:
        return "experience"
    if event_type in journey_map.conversions:
        return "frequency"
    if event_type in journey_map.churn.events:
        return "stage"
    return "engagement"


def _property(column: str) -> str:
    return f"JSON_EXTRACT_STRING(e.properties, '$.{column}')"


def _add_log_columns(
    settings: FeatureSettings,
    add_counter: Callable[..., None],
    add: Callable[..., None],
    last_values: list[LastValue],
) -> list[EventColumn]:
    """Features of the log's own columns: dimensions (counts and shares by value, the latest
    value) and measures (sums and means), over the same windows as every count."""
    windows = tuple(settings.windows_days)
    columns: list[EventColumn] = []
    for d in settings.dimensions:
        raw = f"e.{d.column}" if d.in_contract else _property(d.column)
        col = f"dim_{d.prefix}"
        listed = ", ".join(sql_literal(v) for v in d.values)
        columns.append(
            EventColumn(
                col,
                f"CASE WHEN {raw} IN ({listed}) THEN {raw} "
                f"WHEN {raw} IS NOT NULL THEN {sql_literal(OTHER_LABEL)} END",
            )
        )
        words = d.column.replace("_", " ")
        buckets = [*d.values, OTHER_LABEL]
        has_value = f"CASE WHEN is_activity = 1 AND {col} IS NOT NULL THEN 1 ELSE 0 END"
        add_counter(f"c_{col}", has_value)
        for v in buckets:
            add_counter(
                f"c_{col}_{slug(v)}",
                f"CASE WHEN is_activity = 1 AND {col} = {sql_literal(v)} THEN 1 ELSE 0 END",
            )
        for w in windows:
            for v in buckets:
                which = (
                    f"a {words} other than {', '.join(d.values)}"
                    if v == OTHER_LABEL
                    else f"{words} '{v}'"
                )
                said = (
                    f"a {words} other than {', '.join(_words(x) for x in d.values)}"
                    if v == OTHER_LABEL
                    else f"{words} {_words(v)}"
                )
                count = f"c_{col}_{slug(v)}__w{w}"
                add(
                    f"{d.prefix}_{slug(v)}_{w}d",
                    f"events with {which} in the last {w} days",
                    "int64",
                    VIEW_ACTIVITY,
                    count,
                    family=words,
                    phrase=Phrase("count", f"event with {said}", w),
                )
                add(
                    f"{d.prefix}_{slug(v)}_share_{w}d",
                    f"share of the events with a {words} that had {which}, last {w} days; "
                    "0 without any",
                    "float64",
                    VIEW_ACTIVITY,
                    f"CASE WHEN c_{col}__w{w} > 0 THEN {count} * 1.0 / c_{col}__w{w} ELSE 0.0 END",
                    family=words,
                    phrase=Phrase("share", f"events with a {words} had {said}", w),
                )
        last_values.append(LastValue(f"last_{col}", f"CASE WHEN is_activity = 1 THEN {col} END"))
        add(
            f"{d.prefix}_last",
            f"latest {words}; {OTHER_LABEL} when not listed, {NONE_LABEL} before any",
            "string",
            VIEW_STATE,
            f"COALESCE(last_{col}, {sql_literal(NONE_LABEL)})",
            family=words,
            phrase=Phrase("category", f"latest {words}", never=f"no {words} seen yet"),
        )
    for m in settings.measures:
        raw = f"e.{m.column}" if m.in_contract else f"TRY_CAST({_property(m.column)} AS DOUBLE)"
        col = f"meas_{m.prefix}"
        # NaN and infinities count as missing (NaN compares above every number)
        columns.append(EventColumn(col, f"CASE WHEN ABS({raw}) < 1e308 THEN {raw} END"))
        words = m.column.replace("_", " ")
        add_counter(
            f"c_{col}", f"CASE WHEN is_activity = 1 THEN COALESCE({col}, 0) ELSE 0 END", amount=True
        )
        has_value = f"CASE WHEN is_activity = 1 AND {col} IS NOT NULL THEN 1 ELSE 0 END"
        add_counter(f"c_{col}_n", has_value)
        for w in windows:
            add(
                f"{m.prefix}_sum_{w}d",
                f"{words} summed over the last {w} days",
                "float64",
                VIEW_ACTIVITY,
                f"c_{col}__w{w}",
                family=words,
                phrase=Phrase("measure", f"total {words}", w),
            )
            add(
                f"{m.prefix}_mean_{w}d",
                f"mean {words} of the events that have one, last {w} days; 0 without any",
                "float64",
                VIEW_ACTIVITY,
                f"CASE WHEN c_{col}_n__w{w} > 0 THEN c_{col}__w{w} / c_{col}_n__w{w} ELSE 0.0 END",
                family=words,
                phrase=Phrase("measure", f"average {words}", w),
            )
    return columns
