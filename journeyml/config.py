"""Loading and validating YAML configuration.

Every YAML file under ``configs/`` is validated once, at the entry point, by a pydantic model
and passed down as an argument. A wrong file fails with a :class:`ConfigError` that names the
file and the key path of every problem.
"""

from __future__ import annotations

import os
import re
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
"""The shipped configuration set: defaults that work on any event log."""
SIMULATOR_CONFIG_DIR = CONFIG_DIR / "simulator"
"""The simulator's config set (its actions and monitored steps): ``--config-dir`` of the demo."""
CONFIG_DIR_ENV = "JOURNEYML_CONFIG_DIR"
"""Environment variable naming the folder configuration files are read from."""

_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-*?\[\]]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def config_dir() -> Path:
    """The folder configuration files are read from: ``$JOURNEYML_CONFIG_DIR`` (which the
    command's ``--config-dir`` sets for the run), else the shipped ``configs/``."""
    value = os.environ.get(CONFIG_DIR_ENV, "").strip()
    return Path(value).expanduser() if value else CONFIG_DIR


def config_path(name: str) -> Path:
    """Where the configuration file ``name`` (``actions.yaml``, ...) is read from by default.

    The file in :func:`config_dir` when it is there; otherwise the shipped default in
    ``configs/``, so a config folder holds only the files that differ from the defaults (one
    folder per event log). A per-file option (``--config``, ``--journeys``...) overrides both.
    """
    chosen = config_dir() / name
    if chosen.is_file():
        return chosen
    return CONFIG_DIR / name


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid.

    Attributes:
        source: the file (or other origin) that was being read.
        problems: one line per problem, each starting with the key path.
    """

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration in {source}:\n{listing}")


class StrictModel(BaseModel):
    """Base for configuration models: unknown keys are errors, values are immutable.

    A list or mapping key written with nothing after it (``eligibility:``, which YAML reads as
    null) is an empty list or mapping, not an error; keys that may really be null (typed
    ``... | None``) keep their null.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_collections(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not any(v is None for v in data.values()):
            return data
        fixed = dict(data)
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if value is None and field is not None:
                empty = _empty_of(field.annotation)
                if empty is not None:
                    fixed[key] = empty
        return fixed


def _empty_of(annotation: Any) -> list[Any] | dict[Any, Any] | None:
    """The empty value of a list, tuple or mapping annotation; None for anything else
    (including optional collections, where null means something)."""
    origin = get_origin(annotation) or annotation
    if origin in (list, tuple, set, frozenset):
        return []
    if origin is dict:
        return {}
    return None


M = TypeVar("M", bound=BaseModel)


def format_validation_error(error: ValidationError) -> list[str]:
    """Turns a pydantic error into one ``key.path: message`` line per problem."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the documented keys)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{path}: {message}")
    return lines


def validate_config(data: Any, model: type[M], source: str) -> M:
    """Validates already-parsed configuration data against ``model``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config(path: str | Path, model: type[M]) -> M:
    """Reads a YAML file and validates it against ``model``.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the model.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["(file): not found"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [f"{where}: not valid YAML ({exc})"]) from None
    return validate_config(data, model, str(path))


def matches_any(value: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """True when ``value`` matches one of the shell-style ``patterns`` (case-sensitive)."""
    return any(fnmatchcase(value, p) for p in patterns)


def _check_patterns(patterns: list[str]) -> list[str]:
    for p in patterns:
        if not _PATTERN.match(p):
            raise ValueError(
                f"{p!r} is not an event-type pattern (letters, digits, _ . : - and the "
                "wildcards * ? [] only)"
            )
    return patterns


class ChurnDefinition(StrictModel):
    """When a customer counts as churned.

    A customer is churned at time T when they sent an explicit churn event (``events``) or when
    they had no activity for ``inactivity_days`` days. Activity is any event matching
    ``activity_events``; marketing actions (treatments) never count as activity.
    """

    inactivity_days: PositiveInt | None = 60
    events: list[str] = Field(default_factory=list)
    activity_events: list[str] = Field(default_factory=lambda: ["*"])

    _patterns = field_validator("events", "activity_events")(_check_patterns)

    @model_validator(mode="after")
    def _needs_a_rule(self) -> ChurnDefinition:
        if self.inactivity_days is None and not self.events:
            raise ValueError("set inactivity_days, events, or both: churn needs a rule")
        if not self.activity_events:
            raise ValueError("activity_events must list at least one pattern")
        return self


class Horizons(StrictModel):
    """How far after a cutoff the labels look, in days."""

    churn_days: PositiveInt = 30
    conversion_days: PositiveInt = 30
    next_step_days: PositiveInt = 14


class Treatments(StrictModel):
    """Which events are marketing actions sent to the customer (not customer behaviour)."""

    patterns: list[str] = Field(default_factory=lambda: ["action_*"])
    action_property: str = "action_id"
    propensity_property: str = "propensity"

    _patterns = field_validator("patterns")(_check_patterns)


class Experience(StrictModel):
    """Event types that describe the customer's experience (service and surveys)."""

    support: list[str] = Field(default_factory=list)
    complaints: list[str] = Field(default_factory=list)
    nps: list[str] = Field(default_factory=list)
    csat: list[str] = Field(default_factory=list)
    score_property: str = "score"

    _patterns = field_validator("support", "complaints", "nps", "csat")(_check_patterns)


class Regression(StrictModel):
    """Events that move a customer back: after one of ``events`` the customer is at stage ``to``."""

    events: list[str]
    to: str

    _patterns = field_validator("events")(_check_patterns)

    @field_validator("events")
    @classmethod
    def _some_event(cls, events: list[str]) -> list[str]:
        if not events:
            raise ValueError("list at least one event type that moves a customer back")
        return events


class JourneyMap(StrictModel):
    """The journey map: stages, what moves a customer between them, and what counts as what.

    Stages only move forward on the customer's own behaviour: an event of ``stage_events``
    moves a customer to its stage when that stage is later than the current one, and leaves an
    earlier or equal stage as it is (a page view never sends a buyer back to "awareness").
    Only the events named in ``regressions`` move a customer back, to the stage their entry
    names. Events that map to no stage (email opens, marketing actions) leave it unchanged.
    Patterns are shell-style (``checkout_*``); an exact event type name wins over a pattern,
    among patterns the first listed stage wins, and a regression event is never a stage event.
    """

    stages: list[str] = Field(
        default_factory=lambda: ["awareness", "consideration", "purchase", "retention", "advocacy"]
    )
    stage_events: dict[str, list[str]]
    conversions: list[str]
    churn: ChurnDefinition = Field(default_factory=ChurnDefinition)
    horizons: Horizons = Field(default_factory=Horizons)
    treatments: Treatments = Field(default_factory=Treatments)
    regressions: list[Regression] = Field(default_factory=list)
    responses: list[str] = Field(default_factory=list)
    experience: Experience = Field(default_factory=Experience)

    _patterns = field_validator("conversions", "responses")(_check_patterns)

    @field_validator("stages")
    @classmethod
    def _stages_are_names(cls, stages: list[str]) -> list[str]:
        if len(stages) < 2:
            raise ValueError("list at least two stages, in journey order")
        if len(set(stages)) != len(stages):
            raise ValueError("stage names must be unique")
        for s in stages:
            if not _NAME.match(s):
                raise ValueError(f"{s!r} is not a stage name (lower case, digits, _)")
        return stages

    @field_validator("stage_events")
    @classmethod
    def _stage_patterns(cls, mapping: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in mapping.values():
            _check_patterns(patterns)
        return mapping

    @field_validator("conversions")
    @classmethod
    def _some_conversion(cls, conversions: list[str]) -> list[str]:
        if not conversions:
            raise ValueError("list at least one conversion event type")
        return conversions

    @model_validator(mode="after")
    def _stage_keys_known(self) -> JourneyMap:
        unknown = [s for s in self.stage_events if s not in self.stages]
        if unknown:
            raise ValueError(
                f"stage_events names stages that are not in stages: {', '.join(unknown)}"
            )
        exact: dict[str, str] = {}
        for stage, patterns in self.stage_events.items():
            for p in patterns:
                if not any(c in p for c in "*?["):
                    if p in exact and exact[p] != stage:
                        raise ValueError(
                            f"stage_events: event type {p!r} is mapped to both "
                            f"{exact[p]!r} and {stage!r}"
                        )
                    exact[p] = stage
        back: dict[str, str] = {}
        for i, regression in enumerate(self.regressions):
            if regression.to not in self.stages:
                raise ValueError(
                    f"regressions.{i}.to: {regression.to!r} is not a stage "
                    f"(stages: {', '.join(self.stages)})"
                )
            for p in regression.events:
                if p in exact:
                    raise ValueError(
                        f"regressions.{i}: event type {p!r} is also a stage event of "
                        f"{exact[p]!r}; an event either moves a customer forward or back"
                    )
                if p in back and back[p] != regression.to:
                    raise ValueError(
                        f"regressions: event type {p!r} moves back to both {back[p]!r} "
                        f"and {regression.to!r}"
                    )
                back[p] = regression.to
        return self

    @cached_property
    def _exact_stage(self) -> dict[str, str]:
        return {
            p: stage
            for stage, patterns in self.stage_events.items()
            for p in patterns
            if not any(c in p for c in "*?[")
        }

    @cached_property
    def _glob_stage(self) -> list[tuple[str, str]]:
        ordered = sorted(self.stage_events.items(), key=lambda kv: self.stages.index(kv[0]))
        return [(p, stage) for stage, pats in ordered for p in pats if any(c in p for c in "*?[")]

    def stage_of(self, event_type: str) -> str | None:
        """The stage an event type moves a customer forward to, or None when it moves nobody
        forward (no stage, a marketing action, or a regression event)."""
        if self.is_treatment(event_type) or self.regression_to(event_type) is not None:
            return None
        if event_type in self._exact_stage:
            return self._exact_stage[event_type]
        for pattern, stage in self._glob_stage:
            if fnmatchcase(event_type, pattern):
                return stage
        return None

    def regression_to(self, event_type: str) -> str | None:
        """The stage a regression event sends a customer back to, None for other events.

        The first entry of ``regressions`` that matches wins.
        """
        if self.is_treatment(event_type):
            return None
        for regression in self.regressions:
            if matches_any(event_type, regression.events):
                return regression.to
        return None

    def stage_index(self, stage: str) -> int:
        """Position of ``stage`` in the journey, 0 for the first stage."""
        return self.stages.index(stage)

    def is_conversion(self, event_type: str) -> bool:
        return matches_any(event_type, self.conversions)

    def is_treatment(self, event_type: str) -> bool:
        return matches_any(event_type, self.treatments.patterns)

    def is_response(self, event_type: str) -> bool:
        return matches_any(event_type, self.responses)

    def is_activity(self, event_type: str) -> bool:
        """Whether an event shows the customer is still active (for the churn definition)."""
        return not self.is_treatment(event_type) and matches_any(
            event_type, self.churn.activity_events
        )

    def is_churn_event(self, event_type: str) -> bool:
        return matches_any(event_type, self.churn.events)


def load_journey_map(path: str | Path | None = None) -> JourneyMap:
    """Loads and validates the journey map (``journeys.yaml`` of the config folder by
    default, see :func:`config_path`)."""
    return load_config(path or config_path("journeys.yaml"), JourneyMap)
