"""Settings for validating and ingesting event logs (``configs/events.yaml``).

The column maps rename the columns of an input file to the contract's names (see
:mod:`journeyml.events.schema`), so any clickstream, CRM or transaction export loads without
code. A map target that is not a contract column renames a property.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from journeyml.config import (
    CONFIG_DIR,
    ConfigError,
    StrictModel,
    config_path,
    format_validation_error,
    load_config,
)
from journeyml.events.schema import CONTRACT_EVENT_COLUMNS

DEFAULT_EVENTS_CONFIG = CONFIG_DIR / "events.yaml"
"""The shipped event contract settings (the config folder's ``events.yaml`` wins)."""

#: Names an input column may not be mapped to: ``properties`` is built from the extra columns.
RESERVED_EVENT_NAMES: frozenset[str] = frozenset({"properties"})

_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB|TB|TiB)\s*$", re.IGNORECASE)


def _check_map(mapping: dict[str, str], reserved: frozenset[str]) -> dict[str, str]:
    for src, dst in mapping.items():
        if not src.strip() or not dst.strip():
            raise ValueError(f"{src!r}: {dst!r}: column names must not be empty")
        if src != src.strip() or dst != dst.strip():
            raise ValueError(f"{src!r}: {dst!r}: column names must not start or end with spaces")
        if dst in reserved:
            raise ValueError(
                f"{src!r} -> {dst!r}: {dst!r} is built from the extra columns; "
                "map this column to another name"
            )
    targets: dict[str, str] = {}
    for src, dst in mapping.items():
        if dst in targets:
            raise ValueError(f"{targets[dst]!r} and {src!r} are both mapped to {dst!r}")
        targets[dst] = src
    return mapping


class EventsConfig(StrictModel):
    """How event logs and customer tables are read and checked.

    Attributes:
        column_map: input column name -> contract name (``user_id: customer_id``); a target
            that is not a contract column renames a property.
        customers_column_map: the same for the customers table.
        future_tolerance_minutes: timestamps later than now plus this are errors (clock skew
            between systems is tolerated up to here); the online paths (events posted to the
            service, decision and feedback times) follow it too.
        past_margin_days: the online paths also refuse times earlier than the lake's first
            event minus this (see :mod:`journeyml.events.bounds`).
        max_examples: offending rows shown per problem.
        memory_limit: DuckDB's memory limit; beyond it DuckDB spills to a temporary folder.
        threads: DuckDB worker threads (default: one per core).
        dedupe: rows without an event_id that are identical in every column: ``drop`` keeps
            the first, ``keep`` keeps each as an event of its own, ``auto`` keeps them when no
            timestamp of the input has a time of day (a date-only log: two equal orders by one
            customer on one day are real) and drops them otherwise. Duplicate event ids are
            always dropped.
    """

    column_map: dict[str, str] = Field(default_factory=dict)
    customers_column_map: dict[str, str] = Field(default_factory=dict)
    future_tolerance_minutes: NonNegativeInt = 10
    past_margin_days: NonNegativeFloat = 30.0
    max_examples: PositiveInt = Field(default=5, le=100)
    memory_limit: str = "4GB"
    threads: PositiveInt | None = None
    dedupe: Literal["auto", "drop", "keep"] = "auto"

    @field_validator("column_map")
    @classmethod
    def _events_map(cls, mapping: dict[str, str]) -> dict[str, str]:
        return _check_map(mapping, RESERVED_EVENT_NAMES)

    @field_validator("customers_column_map")
    @classmethod
    def _customers_map(cls, mapping: dict[str, str]) -> dict[str, str]:
        return _check_map(mapping, frozenset())

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, value: str) -> str:
        if not _MEMORY.match(value):
            raise ValueError(f"{value!r} is not a memory size such as '4GB' or '512MB'")
        return value.strip()

    def with_column_maps(
        self,
        events: Mapping[str, str] | None = None,
        customers: Mapping[str, str] | None = None,
    ) -> EventsConfig:
        """A copy whose column maps are extended (and, per source column, overridden).

        Raises:
            ConfigError: the merged maps are invalid (e.g. two columns mapped to one name).
        """
        data = self.model_dump()
        data["column_map"] = {**self.column_map, **(events or {})}
        data["customers_column_map"] = {**self.customers_column_map, **(customers or {})}
        try:
            return EventsConfig.model_validate(data)
        except ValidationError as exc:
            raise ConfigError("the column maps", format_validation_error(exc)) from None


def load_events_config(path: str | Path | None = None) -> EventsConfig:
    """Loads ``path``, or ``events.yaml`` of the config folder (:func:`config_path`) when it
    exists, or the defaults.

    Raises:
        ConfigError: the file is missing (when ``path`` is given) or invalid.
    """
    if path is None:
        path = config_path("events.yaml")
        if not path.is_file():
            return EventsConfig()
    return load_config(path, EventsConfig)


def parse_column_map(items: Iterable[str], option: str = "--map") -> dict[str, str]:
    """Parses ``SRC=DST`` strings (the CLI's ``--map``) into a mapping.

    A target that is not a contract column is allowed: it renames a property.

    Raises:
        ValueError: an item has no ``=``, an empty side, or a source given twice.
    """
    mapping: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ValueError(
                f"{option} {item!r}: expected SRC=DST, e.g. {option} user_id=customer_id "
                f"(contract columns: {', '.join(CONTRACT_EVENT_COLUMNS)})"
            )
        if src in mapping and mapping[src] != dst:
            raise ValueError(f"{option}: {src!r} is mapped twice ({mapping[src]!r}, {dst!r})")
        mapping[src] = dst
    return mapping
