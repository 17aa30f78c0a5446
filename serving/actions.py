"""The actions catalog and the contact policy (``configs/actions.yaml``).

The catalog lists what the decision engine may do for a customer: each action's channel, cost,
the value of the outcome it targets (``retain`` lowers churn, ``convert`` raises conversion),
a business lever, context weights, and three lists of rules (:mod:`serving.rules`) that run in
the order decisioning products use:

* **eligibility**: may we contact this customer with this action at all (consent, status)?
* **applicability**: does the action fit the customer's situation (stage, history)?
* **suitability**: is it in the customer's interest (risk, satisfaction, propensity)?

Each stage is reported separately, so a removed action says which stage removed it and why.
"No action" is always a candidate. The catalog's ``version`` is recorded with every decision.

:func:`load_actions` validates the file once: structure by pydantic (unknown keys, negative
costs), then what pydantic cannot see: duplicate ids, unknown channels, rules that do not
parse, names that are neither features, scores nor context (with close matches), and
comparisons that mix text and numbers. Every problem is reported with the file and the key
path, e.g. ``configs/actions.yaml: actions[2].suitability[0]: ...``. Action ids equal the
simulator's marketing actions (``configs/simulator.yaml``), because the uplift model is trained
per logged action and the engine joins its effects to the catalog by id.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt, PrivateAttr

from journeyml.config import (
    ConfigError,
    StrictModel,
    config_path,
    load_config,
    validate_config,
)
from serving.consent import ConsentSettings
from serving.rules import Rule, RuleError

if TYPE_CHECKING:
    from features.catalog import FeatureCatalog

NO_ACTION = "none"
"""Id of the "no action" candidate; no catalog action may use it."""
ANY_CHANNEL = "any"
"""Channel of a contact cap that counts contacts on every channel."""

Stage = Literal["eligibility", "applicability", "suitability"]
STAGES: tuple[Stage, ...] = ("eligibility", "applicability", "suitability")
"""Rule stages in the order they run."""

SCORE_NAMES: dict[str, str] = {
    "churn_risk": "number",
    "conversion_propensity": "number",
    "next_step": "string",
    "next_step_probability": "number",
    "uplift_convert": "number",
    "uplift_churn": "number",
    "p_abandon": "number",
}
"""Model scores a rule may read, with their kinds (see :meth:`serving.rules.Rule.check_types`)."""
CONTEXT_NAMES: dict[str, str] = {
    "context.channel": "string",
    "context.event_type": "string",
    "context.page": "string",
    "context.hour": "number",
    "context.weekday": "number",
}
"""Request context a rule may read (hour and weekday of the decision, UTC, Monday = 0)."""

NEXT_STEP_OUTCOMES = ("(session_end)", "(none)", "other")
"""Next steps that are not event types (training.next_event): the session ends, nothing
within the horizon, and the rarer event types together."""


def next_step_patterns(journey_map: Any) -> list[str]:
    """The event types (and shell patterns) of a journey map that a next step can be:
    every event it names (stages, conversions, churn events, regressions, responses,
    experience), and :data:`NEXT_STEP_OUTCOMES`."""
    exp = journey_map.experience
    names = [
        *(e for events in journey_map.stage_events.values() for e in events),
        *journey_map.conversions,
        *journey_map.churn.events,
        *(e for r in journey_map.regressions for e in r.events),
        *journey_map.responses,
        *exp.support, *exp.complaints, *exp.nps, *exp.csat,
    ]  # fmt: skip
    return [*NEXT_STEP_OUTCOMES, *dict.fromkeys(names)]


def _p_next_key(name: str) -> str | None:
    """``p_next['checkout']`` → ``checkout`` (None for any other name)."""
    if not name.startswith("p_next["):
        return None
    import ast

    try:
        key = ast.literal_eval(name[len("p_next") :])
    except (ValueError, SyntaxError):
        return None
    return str(key[0]) if isinstance(key, list) and key else None


_ID = r"^[a-z][a-z0-9_]{0,63}$"
_NAME = r"^[a-z][a-z0-9_]*$"
_DTYPE_KINDS = {
    "int64": "number",
    "int32": "number",
    "float64": "number",
    "float32": "number",
    "number": "number",
    "string": "string",
    "str": "string",
    "object": "string",
    "bool": "bool",
}

Money = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class NoAction(StrictModel):
    """The "no action" candidate: always ranked, priority 0."""

    id: Literal["none"] = "none"
    value: float = Field(default=0.0, allow_inf_nan=False)


class Action(StrictModel):
    """One action the engine may choose."""

    id: str = Field(pattern=_ID)
    description: str = ""
    channel: str = Field(pattern=_NAME)
    cost: Money
    value: Money
    objective: Literal["retain", "convert"]
    marketing: bool = True  # needs marketing consent (see serving.consent); false: service
    eligibility: list[str] = Field(default_factory=list)
    applicability: list[str] = Field(default_factory=list)
    suitability: list[str] = Field(default_factory=list)
    lever: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    context_weights: dict[Literal["channel", "event_type", "page"], dict[str, Weight]] = Field(
        default_factory=dict
    )

    def rules(self, stage: Stage) -> list[str]:
        """The rule texts of one stage."""
        texts: list[str] = getattr(self, stage)
        return texts


class ContactCap(StrictModel):
    """At most ``max`` contacts on ``channel`` (or on ``any`` channel) per ``window_days``."""

    channel: str = Field(pattern=_NAME)
    max: NonNegativeInt
    window_days: PositiveInt


class ContactPolicy(StrictModel):
    """Caps, cooldowns and suppressions, enforced by the state store at decision time."""

    channels: list[Annotated[str, Field(pattern=_NAME)]] = Field(min_length=1)
    caps: list[ContactCap] = Field(default_factory=list)
    cooldown_hours: NonNegativeFloat = 24.0
    suppress_after_ignored: PositiveInt = 3
    suppress_days: PositiveInt = 30


class CapacityLimits(StrictModel):
    """A list's volume limits: at most N customers per action and per channel (a call
    centre's calls a week); a list assigns within them (:mod:`serving.capacity`)."""

    actions: dict[str, NonNegativeInt] = Field(default_factory=dict)
    channels: dict[str, NonNegativeInt] = Field(default_factory=dict)


class ActionsCatalog(StrictModel):
    """The validated catalog; build it with :func:`load_actions` (rules compiled, names
    checked). A catalog built directly compiles its rules on first use, unchecked."""

    version: str = Field(min_length=1)
    default_action: str = NO_ACTION
    no_action: NoAction = NoAction()  # frozen: safe to share
    actions: list[Action] = Field(min_length=1)
    contact_policy: ContactPolicy
    consent: ConsentSettings = ConsentSettings()
    capacity: CapacityLimits = CapacityLimits()
    # customers without history (unknown to the feature store) get the first of these whose
    # rules pass on a new customer's values (features.reasons.new_customer_values)
    welcome: list[str] = Field(default_factory=list)

    _stages: dict[str, list[tuple[Stage, Rule]]] = PrivateAttr(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """Action ids in catalog order (the order ties are broken in)."""
        return [a.id for a in self.actions]

    @property
    def channels(self) -> list[str]:
        """The channels the catalog's actions use, in catalog order."""
        return list(dict.fromkeys(a.channel for a in self.actions))

    def action(self, action_id: str) -> Action:
        """The action with this id.

        Raises:
            KeyError: no such action (the message lists the ids).
        """
        for a in self.actions:
            if a.id == action_id:
                return a
        raise KeyError(f"no action {action_id!r} in the catalog (actions: {', '.join(self.ids)})")

    def rule_stages(self, action: Action | str) -> list[tuple[Stage, Rule]]:
        """The action's compiled rules in order: eligibility, applicability, suitability."""
        action = self.action(action) if isinstance(action, str) else action
        if action.id not in self._stages:
            self._stages[action.id] = [
                (stage, Rule(text)) for stage in STAGES for text in action.rules(stage)
            ]
        return list(self._stages[action.id])


def _known_kinds(known_names: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Names a rule may read with their kinds ("any" when unknown)."""
    if known_names is None:
        from features.catalog import build_catalog
        from features.settings import load_feature_settings
        from journeyml.config import load_journey_map

        catalog = build_catalog(load_journey_map(), load_feature_settings())
        known: dict[str, str] = {f.name: f.dtype for f in catalog.features}
    elif isinstance(known_names, Mapping):
        known = {str(k): str(v) for k, v in known_names.items()}
    else:
        known = dict.fromkeys(known_names, "any")
    kinds = {name: _DTYPE_KINDS.get(dtype, "any") for name, dtype in known.items()}
    return {**kinds, **SCORE_NAMES, **CONTEXT_NAMES}


def _unknown(kind: str, value: str, known: Iterable[str]) -> str:
    pool = sorted(set(known))
    close = difflib.get_close_matches(value, pool, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {value!r} (known: {', '.join(pool)}{hint})"


def _problems(
    catalog: ActionsCatalog,
    kinds: Mapping[str, str],
    extra_channels: Iterable[str],
    next_steps: Sequence[str] = NEXT_STEP_OUTCOMES,
) -> tuple[list[str], dict[str, list[tuple[Stage, Rule]]]]:
    problems: list[str] = []
    policy = catalog.contact_policy
    channels = set(policy.channels) | set(extra_channels)
    if len(set(policy.channels)) != len(policy.channels):
        problems.append("contact_policy.channels: channels must be unique")
    for k, cap in enumerate(policy.caps):
        if cap.channel != ANY_CHANNEL and cap.channel not in channels:
            problems.append(
                f"contact_policy.caps[{k}].channel: "
                + _unknown("channel", cap.channel, [*channels, ANY_CHANNEL])
            )
    seen: dict[str, int] = {}
    stages: dict[str, list[tuple[Stage, Rule]]] = {}
    names = set(kinds)
    for i, action in enumerate(catalog.actions):
        where = f"actions[{i}]"
        if action.id == NO_ACTION:
            problems.append(f"{where}.id: {NO_ACTION!r} is reserved for the no-action candidate")
        elif action.id in seen:
            problems.append(
                f"{where}.id: duplicate action id {action.id!r} (also actions[{seen[action.id]}])"
            )
        else:
            seen[action.id] = i
        if action.channel not in channels:
            problems.append(f"{where}.channel: " + _unknown("channel", action.channel, channels))
        compiled: list[tuple[Stage, Rule]] = []
        for stage in STAGES:
            for j, text in enumerate(action.rules(stage)):
                try:
                    rule = Rule(text)
                    steps = {n: key for n in rule.names if (key := _p_next_key(n)) is not None}
                    unknown_steps = [
                        key for key in steps.values()
                        if not any(fnmatchcase(key, p) for p in next_steps)
                    ]  # fmt: skip
                    if unknown_steps:
                        raise RuleError(
                            rule.text,
                            "p_next: unknown next step(s) "
                            + ", ".join(repr(k) for k in unknown_steps)
                            + " (known: event types of the journey map, "
                            + ", ".join(NEXT_STEP_OUTCOMES)
                            + _did_you_mean(unknown_steps[0], next_steps)
                            + ")",
                        )
                    rule.check_names(names | set(steps))
                    rule.check_types({**kinds, **dict.fromkeys(steps, "number")})
                except RuleError as exc:
                    problems.append(f"{where}.{stage}[{j}]: action {action.id!r}, {exc}")
                    continue
                compiled.append((stage, rule))
        stages[action.id] = compiled
    for k, action_id in enumerate(catalog.welcome):
        if action_id not in seen:
            problems.append(f"welcome[{k}]: " + _unknown("action", action_id, catalog.ids))
    for action_id in catalog.capacity.actions:
        if action_id not in seen:
            problems.append(
                f"capacity.actions.{action_id}: " + _unknown("action", action_id, catalog.ids)
            )
    used = list(dict.fromkeys(a.channel for a in catalog.actions))
    for channel in catalog.capacity.channels:
        if channel not in used:
            problems.append(f"capacity.channels.{channel}: " + _unknown("channel", channel, used))
    column = catalog.consent.column
    if column is not None and column not in kinds and any(a.marketing for a in catalog.actions):
        close = difflib.get_close_matches(column, sorted(kinds), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        problems.append(
            f"consent.column: {column!r} is not a feature{hint}; add it to profile_attributes "
            "in features.yaml, or set consent.column: null when the log holds no consent "
            "(every customer's consent is then unknown)"
        )
    if catalog.default_action != NO_ACTION and catalog.default_action not in seen:
        problems.append(
            "default_action: "
            + _unknown("action", catalog.default_action, [NO_ACTION, *catalog.ids])
        )
    return problems, stages


def _did_you_mean(value: str, pool: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, [p for p in pool if "*" not in p], n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


_INDEX = re.compile(r"\.(\d+)(?=\.|$)")


def _bracket_paths(error: ConfigError) -> ConfigError:
    """``actions.2.cost: ...`` → ``actions[2].cost: ...``: list positions read as indexes."""
    lines = []
    for line in error.problems:
        path, sep, message = line.partition(": ")
        lines.append(_INDEX.sub(r"[\1]", path) + sep + message if sep else line)
    return ConfigError(error.source, lines)


def _checked(
    catalog: ActionsCatalog,
    source: str,
    known_names: Iterable[str] | Mapping[str, str] | None,
    channels: Iterable[str],
    next_steps: Sequence[str] | None = None,
) -> ActionsCatalog:
    if next_steps is None:
        from journeyml.config import load_journey_map

        next_steps = next_step_patterns(load_journey_map())
    problems, stages = _problems(catalog, _known_kinds(known_names), channels, next_steps)
    if problems:
        raise ConfigError(source, problems)
    catalog._stages.update(stages)
    return catalog


def validate_actions(
    data: Any,
    source: str,
    known_names: Iterable[str] | Mapping[str, str] | None = None,
    channels: Iterable[str] = (),
    next_steps: Sequence[str] | None = None,
) -> ActionsCatalog:
    """Validates already-parsed catalog data; see :func:`load_actions` for the arguments.

    Raises:
        ConfigError: every problem, each with its key path.
    """
    try:
        catalog = validate_config(data, ActionsCatalog, source)
    except ConfigError as exc:
        raise _bracket_paths(exc) from None
    return _checked(catalog, source, known_names, channels, next_steps)


def load_actions(
    path: str | Path | None = None,
    known_names: Iterable[str] | Mapping[str, str] | None = None,
    channels: Iterable[str] = (),
    next_steps: Sequence[str] | None = None,
) -> ActionsCatalog:
    """Loads and checks the actions catalog (``actions.yaml`` of the config folder by default).

    Rules are compiled here, once, and their names checked, so a misspelt feature fails the
    load rather than a decision.

    Args:
        path: the YAML file.
        known_names: names a rule may read besides :data:`SCORE_NAMES` and
            :data:`CONTEXT_NAMES` (the engine passes the feature names). A mapping of names to
            dtypes (``float64``, ``string``...) also rejects comparisons of text with numbers.
            None: the feature catalog built from the project's ``configs/``, with dtypes.
        channels: channels an action may use besides ``contact_policy.channels``.
        next_steps: the next steps a ``p_next['...']`` may name (event types or shell
            patterns, see :func:`next_step_patterns`); None: those of the project's journey
            map.

    Raises:
        ConfigError: the file is missing or invalid; every problem names the key path.
    """
    path = path or config_path("actions.yaml")
    try:
        catalog = load_config(path, ActionsCatalog)
    except ConfigError as exc:
        raise _bracket_paths(exc) from None
    return _checked(catalog, str(path), known_names, channels, next_steps)


_KINDS = {"int64": "number", "float64": "number", "string": "string", "bool": "bool"}


def load_decision_catalogs(
    actions_path: str | Path, features_path: str | Path, journeys_path: str | Path
) -> tuple[FeatureCatalog, ActionsCatalog]:
    """The feature catalog and the actions catalog checked against it (rules may read only
    features, scores and context): what the endpoint and the batch list both decide with."""
    from features.catalog import build_catalog
    from features.settings import load_feature_settings
    from journeyml.config import load_journey_map
    from training.bundle import CALENDAR_FEATURES

    journey_map = load_journey_map(journeys_path)
    catalog = build_catalog(journey_map, load_feature_settings(str(features_path)))
    known = {f.name: _KINDS.get(f.dtype, "other") for f in catalog.features}
    known.update({name: "number" for name in CALENDAR_FEATURES})
    return catalog, load_actions(
        actions_path, known_names=known, next_steps=next_step_patterns(journey_map)
    )
