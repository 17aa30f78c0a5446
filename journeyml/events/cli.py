"""``journeyml events``: validate and ingest journey event logs.

Exit codes: 0 success; 2 the input or the options were rejected and nothing was written
(an invalid log, a bad ``--map``, an invalid config, a lake that exists without ``--mode``).
Heavy imports (DuckDB) happen inside the commands so that ``journeyml --help`` stays fast.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from journeyml.events.config import EventsConfig
    from journeyml.events.ingest import EventsSummary
    from journeyml.events.problems import EventLogError, Problem

app = typer.Typer(
    help="Validate and ingest journey event logs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

REJECTED = 2

PathArg = Annotated[
    Path,
    typer.Argument(help="The event log: a CSV or Parquet file, or a folder of them."),
]
CustomersOpt = Annotated[
    Path | None,
    typer.Option(
        "--customers",
        help="A customers table (customer_id, signup_at, attributes): file or folder.",
    ),
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        metavar="SRC=DST",
        help="Rename an input column, e.g. --map user_id=customer_id (repeatable; extends "
        "column_map of the config). A target that is not a contract column renames a property.",
    ),
]
CustomersMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--customers-map",
        metavar="SRC=DST",
        help="Rename a column of the customers table (repeatable).",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file (default: configs/events.yaml)."),
]
NowOpt = Annotated[
    str | None,
    typer.Option(
        "--now",
        metavar="ISO-8601",
        help="The current time for the future-timestamp check (reproducible runs).",
    ),
]


@app.command("validate")
def validate(
    path: PathArg,
    customers: CustomersOpt = None,
    maps: MapOpt = None,
    customers_maps: CustomersMapOpt = None,
    config: ConfigOpt = None,
    now: NowOpt = None,
) -> None:
    """Check an event log against the contract and summarise it; writes nothing."""
    from journeyml.events.ingest import validate_events
    from journeyml.events.problems import EventLogError

    out, err = _consoles()
    settings = _settings(err, config, maps, customers_maps)
    try:
        report = validate_events(
            path, config=settings, customers=customers, now=_parse_now(err, now)
        )
    except EventLogError as exc:
        _print_error(err, exc)
        raise typer.Exit(REJECTED) from None
    out.print(f"[green]✓[/] {path} is a valid event log")
    _print_summary(out, report.events, report.dropped)
    if report.customers is not None:
        c = report.customers
        out.print(f"  customers table: {c.rows:,} customers, columns {', '.join(c.columns)}")
    if report.warnings:
        out.print(_problem_table(report.warnings, _plural(len(report.warnings), "warning")))


@app.command("ingest")
def ingest(
    path: PathArg,
    out_dir: Annotated[
        Path, typer.Option("--out", help="The lake folder to write (created when absent).")
    ],
    mode: Annotated[
        Literal["replace", "append"] | None,
        typer.Option(
            "--mode",
            help="replace: the lake becomes this log (default for a new lake); append: add a "
            "batch, dropping event_ids already in the lake. An existing lake needs --mode.",
        ),
    ] = None,
    customers: CustomersOpt = None,
    maps: MapOpt = None,
    customers_maps: CustomersMapOpt = None,
    config: ConfigOpt = None,
    now: NowOpt = None,
) -> None:
    """Validate an event log and write it into the normalised, partitioned lake (atomically)."""
    from journeyml.events.ingest import ingest_events
    from journeyml.events.problems import EventLogError, LakeError

    out, err = _consoles()
    settings = _settings(err, config, maps, customers_maps)
    try:
        result = ingest_events(
            path,
            out_dir,
            mode=mode,
            config=settings,
            customers=customers,
            now=_parse_now(err, now),
        )
    except EventLogError as exc:
        _print_error(err, exc)
        raise typer.Exit(REJECTED) from None
    except LakeError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(REJECTED) from None
    b = result.batch
    out.print(
        f"[green]✓[/] ingested {path} into {result.lake} "
        f"(batch {b.batch_id}, {b.mode}, {result.seconds:.1f} s)"
    )
    _print_summary(out, result.events, b.rows.dropped)
    out.print(
        f"  written: {_plural(b.rows.written, 'event')} in {_plural(len(b.files), 'file')}; "
        f"the lake holds {_plural(result.manifest.rows, 'event')} in "
        f"{_plural(len(result.manifest.batches), 'batch')}"
    )
    if result.customers is not None:
        out.print(f"  customers table: {result.customers.rows:,} customers")
    if result.warnings:
        out.print(_problem_table(result.warnings, _plural(len(result.warnings), "warning")))


def _consoles() -> tuple[Console, Console]:
    return Console(highlight=False), Console(stderr=True, highlight=False)


def _settings(
    err: Console,
    path: Path | None,
    maps: list[str] | None,
    customers_maps: list[str] | None,
) -> EventsConfig:
    """The config file with the ``--map`` options applied; exits 2 when either is invalid."""
    from journeyml.config import ConfigError
    from journeyml.events.config import load_events_config, parse_column_map

    try:
        events_map = parse_column_map(maps or [], "--map")
        customers_map = parse_column_map(customers_maps or [], "--customers-map")
        return load_events_config(path).with_column_maps(events_map, customers_map)
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(REJECTED) from None


def _parse_now(err: Console, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/] --now {text!r} is not an ISO-8601 time (2024-05-01T12:00:00Z)")
        raise typer.Exit(REJECTED) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _print_error(err: Console, exc: EventLogError) -> None:
    err.print(f"[red]error:[/] {exc.source}: {exc.headline()}")
    err.print(_problem_table(exc.problems, "problems"))


def _problem_table(problems: list[Problem], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True)
    table.add_column("", no_wrap=True)
    table.add_column("column", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("rows", justify="right")
    table.add_column("problem", overflow="fold")
    table.add_column("first rows", overflow="fold")
    for p in problems:
        mark = "[red]error[/]" if p.severity == "error" else "[yellow]warning[/]"
        examples = "\n".join(e.render() for e in p.examples)
        table.add_row(mark, p.where, p.rule, f"{p.count:,}", p.message, examples, end_section=False)
    return table


def _print_summary(out: Console, s: EventsSummary, dropped: dict[str, int]) -> None:
    files = _plural(len(s.inputs), "file")
    n_dropped = sum(v for k, v in dropped.items() if k != "already_in_lake")
    out.print(f"  format: {s.format}, {files}")
    out.print(
        f"  rows: {s.rows_read:,} read, {s.rows_valid:,} valid"
        + (f" ({_plural(n_dropped, 'duplicate')} dropped)" if n_dropped else "")
    )
    if s.duplicates_kept:
        out.print(
            f"  identical rows: {_plural(s.duplicates_kept, 'repeated row')} kept as events "
            f"of their own ({s.duplicate_rows_reason})"
        )
    elif n_dropped and dropped.get("duplicate_row"):
        out.print(f"  identical rows: dropped ({s.duplicate_rows_reason})")
    out.print(f"  customers: {s.customers:,}")
    if s.first is not None and s.last is not None:
        out.print(f"  time range (UTC): {s.first:%Y-%m-%d %H:%M:%S} .. {s.last:%Y-%m-%d %H:%M:%S}")
    top = ", ".join(f"{t} {n:,}" for t, n in s.top_event_types)
    more = ", ..." if s.event_types > len(s.top_event_types) else ""
    out.print(f"  event types: {s.event_types:,} ({top}{more})")
    optional = [c for c in s.columns if c in ("channel", "value", "event_id", "session_id")]
    out.print(f"  optional columns: {', '.join(optional) or 'none'}")
    out.print(f"  properties: {', '.join(s.property_keys) or 'none'}")


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}{'es' if noun.endswith('ch') else 's'}"
