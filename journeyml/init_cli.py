"""``journeyml init``: profile an event log and write a config set for it.

Exit codes: 0 written; 2 the log, the flags or the output folder were rejected (nothing written).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

REJECTED = 2
CONFIG_FILES = (
    "journeys.yaml",
    "events.yaml",
    "features.yaml",
    "models.yaml",
    "actions.yaml",
    "monitoring.yaml",
    "serving.yaml",
)

Days = Annotated[int | None, typer.Option(min=1, metavar="DAYS")]


def init(
    log: Annotated[
        Path, typer.Argument(help="The event log: a CSV or Parquet file, or a folder of them.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The config folder to write.")],
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="SRC=DST",
            help="Rename an input column to a contract column, as for events ingest "
            "(e.g. --map user_id=customer_id); written to events.yaml.",
        ),
    ] = None,
    conversions: Annotated[
        list[str] | None,
        typer.Option("--conversion", metavar="EVENT", help="A conversion event (repeatable)."),
    ] = None,
    churn_events: Annotated[
        list[str] | None,
        typer.Option(
            "--churn-event", metavar="EVENT", help="An explicit churn event (repeatable)."
        ),
    ] = None,
    no_churn_events: Annotated[
        bool, typer.Option("--no-churn-events", help="Churn by inactivity only.")
    ] = False,
    inactivity_days: Annotated[
        int | None, typer.Option("--inactivity-days", min=1, help="Churn after this silence.")
    ] = None,
    horizon_days: Annotated[
        int | None,
        typer.Option("--horizon-days", min=1, help="Churn and conversion label horizon."),
    ] = None,
    next_step_days: Annotated[
        int | None, typer.Option("--next-step-days", min=1, help="Next-step label horizon.")
    ] = None,
    cadence_days: Annotated[
        int | None, typer.Option("--cadence-days", min=1, help="Days between snapshots.")
    ] = None,
    warmup_days: Annotated[
        int | None, typer.Option("--warmup-days", min=0, help="History before the first one.")
    ] = None,
    test_days: Annotated[
        int | None, typer.Option("--test-days", min=1, help="Test period (last cutoffs).")
    ] = None,
    validation_days: Annotated[
        int | None, typer.Option("--validation-days", min=1, help="Validation period.")
    ] = None,
    segments: Annotated[
        list[str] | None,
        typer.Option("--segment", metavar="COLUMN", help="A segment column (repeatable)."),
    ] = None,
    stages: Annotated[
        list[str] | None,
        typer.Option(
            "--stage",
            metavar="EVENT=STAGE",
            help="Place an event in a stage (awareness, consideration, purchase, retention, "
            "advocacy), overriding its name's (repeatable).",
        ),
    ] = None,
    regressions: Annotated[
        list[str] | None,
        typer.Option(
            "--regression",
            metavar="EVENT=STAGE",
            help="An event that sends a customer back to STAGE (repeatable; replaces the "
            "inferred regressions).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace config files already in --out.")
    ] = False,
) -> None:
    """Profile an event log (DuckDB, out of core) and write a config set for it into --out.

    Writes journeys.yaml, events.yaml, features.yaml, models.yaml, actions.yaml,
    monitoring.yaml and serving.yaml (each validated by the project's own config models, the
    actions checked against the feature catalog of the set) and profile.json, and prints each
    inferred value with the reason. Use the folder with `journeyml --config-dir DIR ...`.

    How values are inferred (each has a flag):

    - stages: each event is placed by the words of its name (order, payment, checkout ->
      purchase; search, product, cart -> consideration; login, usage, support -> retention;
      review, referral -> advocacy; home, visit, view -> awareness). Stages only move forward.
      Errors, failures, cancellations and downgrades get no stage: cancellations become
      regressions to the first stage, purchase errors and failures regressions to the stage
      before purchase. Events left without a stage (logout, downgrades) are listed.

    - conversions: events carrying a value on most rows, else events named like orders or
      purchases.

    - churn: events named like cancellations; inactivity_days = the gap within which 90 % of
      returning customers come back (days between consecutive active days, each returning
      customer weighted once), rounded to weeks (months beyond 90 days).

    - horizons: the gap within which 75 % of returning customers come back, 14 to 90 days,
      shortened until warm-up, 8 training cutoffs, validation, test and the two purge gaps fit
      the log's span; weekly snapshots on logs of 300+ days, about 45 cutoffs on shorter ones;
      test ~12 % and validation ~8 % of the span.

    - features: every event type counted; channels from a mapped channel column; the log's
      own text columns with 2-50 values as dimensions (values on 1 %+ of rows, at most 12) and
      its numeric columns as measures; marketing_opt_out as the consent profile attribute
      (customers without consent get no marketing action).

    - monitoring: KPIs per segment column (text columns with 2-12 values on nearly every
      row); journey steps within 2 hours on session logs; support and cancellation events
      as rates.

    - actions: the shipped starter catalog with thresholds from the log's gaps and horizon,
      keeping only rules the feature catalog of this set can evaluate.
    """
    from journeyml.config import ConfigError
    from journeyml.events.config import parse_column_map
    from journeyml.infer import (
        InitError,
        InitOverrides,
        check_config_set,
        infer_config,
        write_config_set,
    )
    from journeyml.profile import ProfileError, profile_log

    console, err = Console(highlight=False), Console(stderr=True, highlight=False)

    def fail(message: str) -> typer.Exit:
        err.print(f"[red]error:[/] {message}")
        return typer.Exit(REJECTED)

    existing = [n for n in CONFIG_FILES if (out / n).exists()]
    if existing and not force:
        raise fail(f"{out} already holds {', '.join(existing)}; use --force to replace them")
    if churn_events and no_churn_events:
        raise fail("--churn-event and --no-churn-events exclude each other")
    try:
        mapping = parse_column_map(maps or [], "--map")
        placed = parse_column_map(stages or [], "--stage")
        back = parse_column_map(regressions or [], "--regression")
    except ValueError as exc:
        raise fail(str(exc)) from None
    overrides = InitOverrides(
        conversions=tuple(conversions or ()),
        churn_events=() if no_churn_events else (tuple(churn_events) if churn_events else None),
        inactivity_days=inactivity_days,
        horizon_days=horizon_days,
        next_step_days=next_step_days,
        cadence_days=cadence_days,
        warmup_days=warmup_days,
        test_days=test_days,
        validation_days=validation_days,
        segments=tuple(segments) if segments else None,
        stages=placed,
        regressions=back,
    )
    try:
        profile = profile_log(log, mapping)
        plan = infer_config(profile, overrides)
    except (ProfileError, InitError, ConfigError) as exc:
        raise fail(str(exc)) from None

    staging = out.with_name(f".{out.name}.init")
    if staging.exists():
        for stale in staging.iterdir():
            stale.unlink()
    try:
        write_config_set(plan, staging, str(log), target=out)
        check_config_set(staging)
    except ConfigError as exc:
        raise fail(f"the inferred config set does not validate (please report): {exc}") from None
    (staging / "profile.json").write_text(json.dumps(profile.to_dict(), indent=2, default=str))
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.iterdir()):
        path.replace(out / path.name)
    staging.rmdir()

    console.print(
        f"[bold]{log}[/]: {profile.rows:,} events, {profile.customers:,} customers, "
        f"{len(profile.event_types)} event types, {profile.first_event:%Y-%m-%d} to "
        f"{profile.last_event:%Y-%m-%d} ({profile.span_days:.0f} days), "
        + ("date-only timestamps" if profile.date_only else "timestamps with time of day")
        + (f", value column {profile.value_column}" if profile.value_column else ", no value")
    )
    table = Table(title="What init inferred", show_lines=False)
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    table.add_column("why", overflow="fold")
    table.add_column("set with")
    for d in plan.decisions:
        value = ", ".join(map(str, d.value)) if isinstance(d.value, list) else str(d.value)
        if isinstance(d.value, dict):
            value = "; ".join(f"{k}: {', '.join(v)}" for k, v in d.value.items())
        table.add_row(d.key, value, d.why, d.flag)
    console.print(table)
    if plan.unplaced:
        console.print(
            f"[yellow]Events in no stage:[/] {', '.join(plan.unplaced)} (place one with "
            "--stage EVENT=STAGE)"
        )
    console.print(
        f"[green]✓[/] wrote {len(CONFIG_FILES)} config files, init.json and profile.json to "
        f"{out}; next:\n"
        f"  journeyml --config-dir {out} events ingest {log} --out data/lake"
    )
