"""Real-time updates: parity with the batch pipeline, idempotent replays, late events,
freshness — on the SQLite and the Redis online store, with SQLite and PostgreSQL event stores."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import redis
import sqlalchemy as sa

from features.catalog import FeatureCatalog
from features.pipeline import build_snapshots
from features.realtime import EventStore, EventTimeError, RealtimeUpdater, read_online
from features.settings import OnlineStoreSettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from journeyml.events.bounds import TimeBounds
from tests.features.helpers import (
    events_table,
    postgres_available,
    redis_available,
    write_lake,
)
from tests.services import skip_or_fail

T0 = datetime(2025, 1, 1, tzinfo=UTC)
PAST = [
    {
        "event_id": "p1",
        "customer_id": "a",
        "timestamp": T0,
        "event_type": "page_view",
        "channel": "web",
        "session_id": "s1",
    },
    {
        "event_id": "p2",
        "customer_id": "a",
        "timestamp": T0 + timedelta(days=3),
        "event_type": "purchase",
        "value": 20.0,
        "channel": "web",
        "session_id": "s2",
    },
    {
        "event_id": "p3",
        "customer_id": "b",
        "timestamp": T0 + timedelta(days=4),
        "event_type": "login",
        "channel": "app",
        "session_id": "s3",
    },
]
NEW = [
    {
        "event_id": "n1",
        "customer_id": "a",
        "timestamp": T0 + timedelta(days=9),
        "event_type": "complaint",
        "channel": "phone",
    },
    {
        "event_id": "n2",
        "customer_id": "a",
        "timestamp": T0 + timedelta(days=10),
        "event_type": "purchase",
        "value": 35.5,
        "channel": "app",
        "session_id": "s9",
    },
    {
        "event_id": "n3",
        "customer_id": "c",
        "timestamp": T0 + timedelta(days=10),
        "event_type": "signup",
        "channel": "web",
    },
]
AS_OF = T0 + timedelta(days=11)


@pytest.fixture(params=["sqlite", "redis"])
def online(request: pytest.FixtureRequest) -> Iterator[StoreSettings]:
    if request.param == "sqlite":
        yield StoreSettings()
        return
    if not redis_available():
        skip_or_fail("Redis is not running on 127.0.0.1:6379")
    project = f"rt_{uuid.uuid4().hex[:8]}"
    yield StoreSettings(
        project=project,
        online=OnlineStoreSettings(type="redis", connection_string="127.0.0.1:6379"),
    )
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=f"*{project}*"):
        client.delete(key)


def make_updater(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> RealtimeUpdater:
    ws = Workspace(tmp_path)
    customers = pa.table(
        {
            "customer_id": ["a", "b", "c"],
            "segment": ["gold", "silver", "gold"],
            "plan": ["premium", "basic", "basic"],
        }
    )
    write_lake(ws.lake, events_table(PAST), customers)
    report = build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)
    store = open_store(online, ws)
    apply_definitions(store, catalog, ws)
    store.materialize(report.as_of - timedelta(days=30), report.as_of + timedelta(seconds=1))
    events = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    return RealtimeUpdater(store, catalog, journey_map, events, ws.lake)


def expected(journey_map: JourneyMap, catalog: FeatureCatalog, rows: list[dict[str, object]]):
    """What the batch pipeline computes at AS_OF from the same history."""
    lake = Path(tempfile.mkdtemp())
    write_lake(
        lake,
        events_table(rows),
        pa.table(
            {
                "customer_id": ["a", "b", "c"],
                "segment": ["gold", "silver", "gold"],
                "plan": ["premium", "basic", "basic"],
            }
        ),
    )
    out = lake.parent / f"{lake.name}-features"
    build_snapshots(lake, out, journey_map, catalog, as_of=AS_OF)
    frame = pd.read_parquet(out)
    return frame[frame["event_timestamp"] == AS_OF].set_index("customer_id")


def assert_online_equals_batch(updater: RealtimeUpdater, batch, customers: list[str]) -> None:
    got = read_online(updater.store, updater.catalog, customers, now=AS_OF)
    for row in got:
        assert row.found, row.customer_id
        for spec in updater.catalog.features:
            want = batch.loc[row.customer_id, spec.name]
            value = row.values[spec.name]
            if spec.dtype == "float64":
                assert value == pytest.approx(want, rel=1e-9, abs=1e-9), spec.name
            else:
                assert value == want, (row.customer_id, spec.name, value, want)


def test_update_equals_the_batch_pipeline(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, online, journey_map, catalog)
    report = updater.apply(events_table(NEW), as_of=AS_OF)
    assert report.stored == 3
    assert report.customers == ["a", "c"]
    assert read_online(updater.store, catalog, ["c"], now=AS_OF)[0].values["segment"] == "gold"
    # a gains two events, c is new; the next decision sees them at once
    assert_online_equals_batch(updater, expected(journey_map, catalog, PAST + NEW), ["a", "c"])


def test_replays_are_idempotent(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, online, journey_map, catalog)
    updater.apply(events_table(NEW), as_of=AS_OF)
    again = updater.apply(events_table(NEW + NEW[:1]), as_of=AS_OF)
    assert again.stored == 0
    assert_online_equals_batch(updater, expected(journey_map, catalog, PAST + NEW), ["a", "c"])


def test_a_late_older_event_is_placed_in_time(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, online, journey_map, catalog)
    updater.apply(events_table(NEW[1:2]), as_of=AS_OF)  # the newer purchase first
    updater.apply(events_table(NEW[0:1]), as_of=AS_OF)  # then the older complaint
    batch = expected(journey_map, catalog, PAST + NEW[:2])
    assert_online_equals_batch(updater, batch, ["a"])
    assert read_online(updater.store, catalog, ["a"], now=AS_OF)[0].values["last_event_1"] == (
        "purchase"
    )


def test_an_older_computation_never_overwrites_newer_state(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, online, journey_map, catalog)
    updater.apply(events_table(NEW[:2]), as_of=AS_OF)
    before = read_online(updater.store, catalog, ["a"], now=AS_OF)[0].values
    # a worker that computed as of an earlier time and writes last must not win the race
    stale = updater.compute(["a"], T0 + timedelta(days=6))
    assert updater.write_features(stale, T0 + timedelta(days=6)) == 4
    assert read_online(updater.store, catalog, ["a"], now=AS_OF)[0].values == before


def test_snapshot_time_only_moves_forward(
    tmp_path: Path, online: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, online, journey_map, catalog)
    first = updater.apply(events_table(NEW[:1]), as_of=AS_OF)
    # a second update in the same instant (or with a clock behind) still lands, later
    second = updater.apply(events_table(NEW[1:2]), as_of=AS_OF - timedelta(days=1))
    assert first.as_of is not None and second.as_of is not None
    assert second.as_of > first.as_of
    got = read_online(updater.store, catalog, ["a"], now=second.as_of)[0].values
    assert got["conversions_total"] == 2


def test_freshness_flags_and_ageing(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    updater = make_updater(tmp_path, StoreSettings(), journey_map, catalog)
    updater.apply(events_table(NEW), as_of=AS_OF)
    fresh = read_online(updater.store, catalog, ["a"], now=AS_OF + timedelta(hours=1))[0]
    assert not fresh.any_stale
    assert fresh.age_seconds["journey_state"] == pytest.approx(3600)
    later = read_online(updater.store, catalog, ["a"], now=AS_OF + timedelta(hours=30))[0]
    assert later.stale == {view: True for view in later.stale}
    # recency features grow with the age of the row; counts do not
    grown = later.values["days_since_last_event"] - fresh.values["days_since_last_event"]
    assert grown == pytest.approx(29 / 24)
    assert later.values["events_total"] == fresh.values["events_total"]
    unknown = read_online(updater.store, catalog, ["nobody"], now=AS_OF)[0]
    assert not unknown.found
    assert unknown.any_stale


@pytest.mark.postgres
def test_event_store_on_postgres_is_idempotent() -> None:
    if not postgres_available():
        skip_or_fail("PostgreSQL is not running on 127.0.0.1:5432")
    table = f"events_{uuid.uuid4().hex[:8]}"
    store = EventStore("postgresql+psycopg://postgres@127.0.0.1:5432/test", table=table)
    try:
        assert store.add(events_table(NEW)) == 3
        assert store.add(events_table(NEW)) == 0
        got = store.customer_events(["a"])
        assert sorted(got.column("event_id").to_pylist()) == ["n1", "n2"]
        assert got.column("timestamp").to_pylist()[0].tzinfo is not None
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))


@pytest.mark.parametrize(
    "when",
    [
        datetime(2099, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, tzinfo=UTC),  # no lake manifest here: 1970 is the floor
    ],
)
def test_an_event_outside_the_window_is_refused_and_nothing_moves(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog, when: datetime
) -> None:
    updater = make_updater(tmp_path, StoreSettings(), journey_map, catalog)
    updater.bounds = TimeBounds(timedelta(minutes=10), timedelta(days=30), updater.lake)
    updater.apply(events_table(NEW[:1]))  # an ordinary event: features as of now
    clock = updater._stored_timestamps(["a"])
    now = datetime.now(UTC)
    before = read_online(updater.store, catalog, ["a"], now=now)[0].values
    bad = {**NEW[1], "event_id": "far", "timestamp": when}
    with pytest.raises(EventTimeError, match=r"events\[1\]\.timestamp: (later|earlier) than"):
        updater.apply(events_table([NEW[2], bad]))
    # nothing of the batch is stored, the customer's feature clock and features did not move
    stored = updater.event_store.customer_events(["a", "c"]).column("event_id").to_pylist()
    assert stored == ["n1"]
    assert updater._stored_timestamps(["a"]) == clock
    assert read_online(updater.store, catalog, ["a"], now=now)[0].values == before
