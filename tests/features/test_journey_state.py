"""The incremental journey state equals the batch pipeline: for random event sequences, fed in
random batches and orders with duplicates and late events, the features a customer's state
gives at T are those ``build_snapshots`` computes at T from the same (deduplicated) events; on
the simulator's journey map and on a foreign clickstream's config written by ``journeyml init``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from features.catalog import FeatureCatalog, build_catalog
from features.journey_state import CustomerJourney, JourneyProgram, epoch_us, rows_of
from features.pipeline import build_snapshots
from features.settings import load_feature_settings
from features.sql_eval import compile_expression, to_bigint
from journeyml.cli import app
from journeyml.config import JourneyMap, load_journey_map
from tests.features.helpers import events_table, write_lake
from tests.foreign_logs import generate_clickstream

T0 = datetime(2025, 1, 1, tzinfo=UTC)
CUSTOMERS = ["a", "b", "c"]
TYPES = [
    "ad_click",
    "page_view",
    "signup",
    "login",
    "add_to_cart",
    "purchase",
    "support_contact",
    "complaint",
    "referral",
    "cancel_subscription",
    "payment_failed",
    "action_winback",
    "email_open",
    "nps_response",
    "csat_response",
    "something_else",
]
DAYS = st.one_of(st.sampled_from([0, 31, 61, 91, 114, 120]), st.integers(0, 120))
"""Event days, often on the start of a window of the snapshot at day 121 (7, 30, 60, 90)."""
EXAMPLES = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def batch_features(
    rows: list[dict[str, Any]],
    as_of: datetime,
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
    customers: pa.Table | None,
) -> pd.DataFrame:
    """What ``build_snapshots`` computes at ``as_of`` from these events."""
    work = Path(tempfile.mkdtemp(prefix="journey-state-"))
    try:
        lake = write_lake(work / "lake", events_table(rows), customers)
        build_snapshots(lake, work / "out", journey_map, catalog, as_of=as_of)
        frame = pd.read_parquet(work / "out")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return frame[frame["event_timestamp"] == as_of].set_index("customer_id")


def incremental_features(
    program: JourneyProgram,
    batches: list[list[dict[str, Any]]],
    as_of: datetime,
    profiles: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any] | None]:
    journeys: dict[str, CustomerJourney] = {}
    for batch in batches:
        rows = rows_of(events_table(batch))
        for c in sorted({r["customer_id"] for r in rows}):
            journey = journeys.setdefault(c, CustomerJourney(program, profile=profiles.get(c, {})))
            journey.add([r for r in rows if r["customer_id"] == c])
    return {c: j.features(epoch_us(as_of)) for c, j in journeys.items()}


def assert_same(
    got: dict[str, dict[str, Any] | None], want: pd.DataFrame, catalog: FeatureCatalog
) -> None:
    assert sorted(c for c, f in got.items() if f is not None) == sorted(want.index)
    for c, features in got.items():
        if features is None:
            continue
        for spec in catalog.features:
            value, expected = features[spec.name], cast(Any, want.loc[c, spec.name])
            if expected is None or (isinstance(expected, float) and math.isnan(expected)):
                assert value is None or (isinstance(value, float) and math.isnan(value)), (
                    c,
                    spec.name,
                    value,
                )
            elif spec.dtype == "float64":
                assert value == pytest.approx(float(expected), rel=1e-9, abs=1e-9), (c, spec.name)
            elif spec.dtype == "int64":
                assert value == int(expected), (c, spec.name, value, expected)
            else:
                assert value == expected, (c, spec.name, value, expected)


@st.composite
def journeys(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]], datetime]:
    """Events of three customers, the batches they arrive in (shuffled, with duplicates) and a
    snapshot time after the last one."""
    n = draw(st.integers(1, 40))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        event_type = draw(st.sampled_from(TYPES))
        props: dict[str, Any] = {}
        if event_type in ("nps_response", "csat_response") and draw(st.booleans()):
            props["score"] = draw(st.one_of(st.integers(0, 10), st.sampled_from(["7", "x"])))
        rows.append(
            {
                "event_id": f"e{i}",
                "customer_id": draw(st.sampled_from(CUSTOMERS)),
                # whole days apart or within one: windows start at midnight and mid-day
                "timestamp": T0 + timedelta(days=draw(DAYS), hours=draw(st.sampled_from([0, 9]))),
                "event_type": event_type,
                "channel": draw(st.sampled_from([None, "web", "app", "email", "phone"])),
                "value": draw(st.one_of(st.none(), st.sampled_from([0.0, 9.99, 120.5]))),
                "session_id": draw(st.sampled_from([None, "s1", "s2", "s3"])),
                "properties": json.dumps(props) if props else None,
            }
        )
    order = draw(st.permutations(range(n)))
    replayed = draw(st.lists(st.integers(0, n - 1), max_size=5))
    arrivals = [rows[i] for i in order] + [rows[i] for i in replayed]
    cuts = sorted(draw(st.lists(st.integers(1, len(arrivals)), max_size=6)))
    batches, start = [], 0
    for cut in [*cuts, len(arrivals)]:
        if cut > start:
            batches.append(arrivals[start:cut])
            start = cut
    last = max(r["timestamp"] for r in rows)
    gap = draw(st.sampled_from([timedelta(microseconds=1), timedelta(hours=3), None]))
    # None: T = day 121, whose windows start on days 114, 91, 61 and 31, exactly on events
    return rows, batches, last + gap if gap is not None else T0 + timedelta(days=121)


@EXAMPLES
@given(case=journeys())
def test_incremental_state_equals_the_batch_features_on_the_simulator_map(
    case: tuple[list[dict[str, Any]], list[list[dict[str, Any]]], datetime],
    journey_map: JourneyMap,
    catalog: FeatureCatalog,
) -> None:
    rows, batches, as_of = case
    program = JourneyProgram(catalog, journey_map)
    attrs = catalog.settings.profile_attributes
    customers = pa.table({"customer_id": CUSTOMERS, **{a: ["true", "false", None] for a in attrs}})
    profiles = {r["customer_id"]: {a: r[a] for a in attrs} for r in customers.to_pylist()}
    got = incremental_features(program, batches, as_of, profiles)
    assert_same(got, batch_features(rows, as_of, journey_map, catalog, customers), catalog)


@pytest.fixture(scope="module")
def clickstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """A foreign clickstream, its config from ``journeyml init`` and its ingested events."""
    root = tmp_path_factory.mktemp("clickstream")
    log = generate_clickstream(root / "log", seed=3)
    cfg = root / "cfg"
    runner = CliRunner()
    result = runner.invoke(app, ["init", str(log.events_csv), *log.map_args(), "--out", str(cfg)])
    assert result.exit_code == 0, result.output
    lake = root / "lake"
    args = ["--config-dir", str(cfg), "events", "ingest", str(log.events_csv), "--out", str(lake)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    journey_map = load_journey_map(cfg / "journeys.yaml")
    catalog = build_catalog(journey_map, load_feature_settings(str(cfg / "features.yaml")))
    events = pq.read_table(lake / "events").select(events_table([]).schema.names)
    ids = sorted(set(events.column("customer_id").to_pylist()))[:4]
    mine = events.filter(pa.compute.is_in(events.column("customer_id"), pa.array(ids)))
    yield journey_map, catalog, mine.cast(events_table([]).schema).to_pylist()


@EXAMPLES
@given(data=st.data())
def test_incremental_state_equals_the_batch_features_on_a_foreign_clickstream(
    data: st.DataObject, clickstream: tuple[Any, ...]
) -> None:
    journey_map, catalog, pool = clickstream
    assert catalog.event_columns, "init proposed no dimension: the test would miss log columns"
    n = data.draw(st.integers(1, min(len(pool), 80)))
    start = data.draw(st.integers(0, len(pool) - n))
    rows = pool[start : start + n]
    order = data.draw(st.permutations(range(n)))
    replayed = data.draw(st.lists(st.integers(0, n - 1), max_size=5))
    arrivals = [rows[i] for i in order] + [rows[i] for i in replayed]
    size = data.draw(st.integers(1, 10))
    batches = [arrivals[i : i + size] for i in range(0, len(arrivals), size)]
    last = max(r["timestamp"] for r in rows)
    as_of = last + data.draw(st.sampled_from([timedelta(microseconds=1), timedelta(days=3)]))
    got = incremental_features(JourneyProgram(catalog, journey_map), batches, as_of, {})
    assert_same(got, batch_features(rows, as_of, journey_map, catalog, None), catalog)


def test_a_late_event_recomputes_and_an_in_order_one_appends(
    journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    journey = CustomerJourney(JourneyProgram(catalog, journey_map))
    first = {"customer_id": "a", "event_type": "page_view", "session_id": "s"}
    journey.add(rows_of(events_table([{**first, "event_id": "1", "timestamp": T0}])))
    later = T0 + timedelta(days=2)
    journey.add(rows_of(events_table([{**first, "event_id": "2", "timestamp": later}])))
    assert journey.recomputations == 0
    journey.add(rows_of(events_table([{**first, "event_id": "3", "timestamp": T0}])))
    assert journey.recomputations == 1
    assert not journey.add(rows_of(events_table([{**first, "event_id": "2", "timestamp": later}])))
    assert [e["event_id"] for e in journey.recent] == ["1", "3", "2"]


@pytest.mark.parametrize(
    ("sql", "row", "want"),
    [
        ("a / b", {"a": 1, "b": 0}, math.inf),
        ("a / b", {"a": 7, "b": 2}, 3.5),
        ("CASE WHEN a > 0 THEN 'x' END", {"a": None}, None),
        ("a = 1 AND b IS NULL", {"a": 2, "b": None}, False),
        ("a = 1 OR b = 1", {"a": None, "b": 2}, None),
        ("a IN ('x', 'y')", {"a": "y"}, True),
        ("COALESCE(a, b, 3)", {"a": None, "b": None}, 3),
        ("CASE a WHEN 0 THEN 'zero' WHEN 1 THEN 'one' END", {"a": 1}, "one"),
        ("TRY_CAST(JSON_EXTRACT_STRING(p, '$.s') AS DOUBLE)", {"p": '{"s": "7"}'}, 7.0),
        ("JSON_EXTRACT_STRING(p, '$.s')", {"p": '{"s": 9.0}'}, "9.0"),
        ("CAST(a AS VARCHAR)", {"a": 3}, "3"),
        ("-a + 2 * b", {"a": 1, "b": 3}, 5),
    ],
)
def test_expressions_evaluate_as_duckdb_does(sql: str, row: dict[str, Any], want: Any) -> None:
    import duckdb

    got = compile_expression(sql)(row)
    con = duckdb.connect()
    cols = ", ".join(f"? AS {k}" for k in row)
    found = con.execute(f"SELECT {sql} FROM (SELECT {cols})", list(row.values())).fetchone()
    assert found is not None
    duck = found[0]
    assert got == want
    assert got == duck or (got is None and duck is None)


def test_bigint_casts_round_half_away_from_zero() -> None:
    assert [to_bigint(x) for x in (2.5, -2.5, 3.49, True)] == [3, -3, 3, 1]
