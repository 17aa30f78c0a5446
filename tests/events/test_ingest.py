"""Ingestion: the normalised lake, its manifest, dedup, append, atomicity, round trips."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journeyml.events import ingest as ingest_module
from journeyml.events.config import EventsConfig
from journeyml.events.ingest import IngestResult, ingest_events
from journeyml.events.lake import (
    Mode,
    load_manifest,
    open_events,
    read_customers_sql,
    read_events_sql,
)
from journeyml.events.problems import EventLogError, LakeError
from journeyml.events.schema import NORMALISED_EVENT_COLUMNS, NORMALISED_EVENT_SCHEMA
from tests.events.conftest import GOOD_CSV, NOW, snapshot

WriteText = Callable[[str, str], Path]
WriteParquet = Callable[[str, pa.Table], Path]


def read_lake(lake: Path) -> list[dict[str, object]]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        rel = open_events(con, lake)
        rows = con.execute(f"{read_events_sql(lake)} ORDER BY customer_id, timestamp").fetchall()
        assert rel.columns == list(NORMALISED_EVENT_COLUMNS)
        return [dict(zip(NORMALISED_EVENT_COLUMNS, r, strict=True)) for r in rows]
    finally:
        con.close()


def ingest(
    source: Path,
    lake: Path,
    config: EventsConfig,
    mode: Mode | None = None,
    customers: Path | None = None,
) -> IngestResult:
    return ingest_events(source, lake, config=config, now=NOW, mode=mode, customers=customers)


# --- the normalised layout ----------------------------------------------------------------


def test_ingest_writes_the_normalised_layout(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    result = ingest_events(write_text("log.csv", GOOD_CSV), lake, config=config, now=NOW)
    batch = result.batch
    assert sorted(batch.files) == [
        f"events/event_month=2024-01/{batch.batch_id}-0.parquet",
        f"events/event_month=2024-02/{batch.batch_id}-0.parquet",
    ]
    for f in batch.files:
        assert pq.read_schema(lake / f).remove_metadata().equals(NORMALISED_EVENT_SCHEMA)
    rows = read_lake(lake)
    assert [(r["customer_id"], r["event_type"], r["channel"], r["value"]) for r in rows] == [
        ("c1", "page_view", "web", None),
        ("c1", "purchase", "email", 19.99),
        ("c2", "signup", "web", None),
    ]
    assert rows[1]["timestamp"] == datetime(2024, 1, 2, 8, tzinfo=UTC)
    assert json.loads(str(rows[0]["properties"])) == {"plan": "gold"}
    assert all(isinstance(r["event_id"], str) and len(str(r["event_id"])) == 32 for r in rows)
    # Nothing but the lake is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake", "log.csv"]


def test_manifest_records_the_batch(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text(
        "export.csv", "user_id,ts,event,amount\nu1,2024-03-01,buy,5\nu1,2024-03-01,buy,5\n"
    )
    config = config.model_copy(update={"dedupe": "drop"}).with_column_maps(
        {"user_id": "customer_id", "ts": "timestamp", "event": "event_type", "amount": "value"}
    )
    ingest(src, tmp_path / "lake", config)
    manifest = load_manifest(tmp_path / "lake")
    (batch,) = manifest.batches
    assert batch.mode == "replace" and batch.format == "csv"
    assert batch.source == str(src)
    assert batch.column_map["user_id"] == "customer_id"
    assert batch.rows.read == 2 and batch.rows.written == 1
    assert batch.rows.dropped == {"duplicate_event_id": 0, "duplicate_row": 1}
    assert batch.time_range is not None
    assert batch.time_range.first == batch.time_range.last == datetime(2024, 3, 1, tzinfo=UTC)
    assert (batch.customers, batch.event_types, batch.property_keys) == (1, 1, [])
    assert [(i.path, i.rows) for i in batch.inputs] == [("export.csv", 2)]
    assert len(batch.fingerprint) == 64 and manifest.rows == 1


def test_files_are_sorted_by_customer_and_time(tmp_path: Path, config: EventsConfig) -> None:
    src = tmp_path / "log.csv"
    with src.open("w") as fh:
        fh.write("customer_id,timestamp,event_type\n")
        for i in range(3000):
            fh.write(f"c{(i * 7919) % 97},2024-01-{1 + (i * 31) % 28:02d}T{i % 24:02d}:00:00Z,x\n")
    result = ingest(src, tmp_path / "lake", config)
    for f in result.batch.files:
        t = pq.read_table(tmp_path / "lake" / f)
        keys = list(zip(t["customer_id"].to_pylist(), t["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("text", "utc", "month"),
    [
        ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12), "2024-05"),
        ("2024-05-01 12:00:00Z", datetime(2024, 5, 1, 12), "2024-05"),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12), "2024-05"),
        ("2024-01-31T23:30:00-02:00", datetime(2024, 2, 1, 1, 30), "2024-02"),
        ("2024-05-01T12:00:00.1234567", datetime(2024, 5, 1, 12, 0, 0, 123456), "2024-05"),
        ("2024-05-01", datetime(2024, 5, 1), "2024-05"),
    ],
)
def test_timestamps_are_stored_in_utc(
    write_text: WriteText,
    config: EventsConfig,
    tmp_path: Path,
    text: str,
    utc: datetime,
    month: str,
) -> None:
    src = write_text("log.csv", f"customer_id,timestamp,event_type\nc1,{text},x\n")
    result = ingest(src, tmp_path / "lake", config)
    assert read_lake(tmp_path / "lake")[0]["timestamp"] == utc.replace(tzinfo=UTC)
    assert f"event_month={month}" in result.batch.files[0]


# --- properties ---------------------------------------------------------------------------


def test_csv_properties_keep_json_types(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text(
        "log.csv",
        "customer_id,timestamp,event_type,n,score,flag,code,note,big\n"
        'c1,2024-01-01,x,1,1.5,true,007,"say ""hi"", ok",12345678901234567890\n'
        "c2,2024-01-01,x,2,2,FALSE,010,,1\n"
        "c3,2024-01-01,x,,,,,  ,\n",
    )
    ingest(src, tmp_path / "lake", config)
    props = [r["properties"] for r in read_lake(tmp_path / "lake")]
    assert json.loads(str(props[0])) == {
        "n": 1,
        "score": 1.5,
        "flag": True,
        "code": "007",
        "note": 'say "hi", ok',
        "big": "12345678901234567890",
    }
    assert json.loads(str(props[1])) == {
        "n": 2,
        "score": 2.0,
        "flag": False,
        "code": "010",
        "big": "1",
    }
    assert props[2] is None  # every extra value empty: no properties


def test_parquet_properties_keep_their_types(
    write_parquet: WriteParquet, config: EventsConfig, tmp_path: Path
) -> None:
    table = pa.table(
        {
            "customer_id": ["c1", "c2"],
            "timestamp": pa.array([datetime(2024, 1, 1), datetime(2024, 1, 2)], pa.timestamp("us")),
            "event_type": ["x", "y"],
            "count": pa.array([3, None], pa.int32()),
            "ratio": [math.nan, 0.25],
            "tags": [["a", "b"], []],
            "ok": [True, None],
            "ünïcode key": ["  padded  ", "é"],
        }
    )
    ingest(write_parquet("log.parquet", table), tmp_path / "lake", config)
    props = [json.loads(str(r["properties"])) for r in read_lake(tmp_path / "lake")]
    assert props == [
        {"count": 3, "ratio": "nan", "tags": ["a", "b"], "ok": True, "ünïcode key": "padded"},
        {"ratio": 0.25, "tags": [], "ünïcode key": "é"},
    ]


def test_mapping_renames_a_property(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text("log.csv", "customer_id,timestamp,event_type,tier\nc1,2024-01-01,x,gold\n")
    ingest(src, tmp_path / "lake", config.with_column_maps({"tier": "plan"}))
    assert json.loads(str(read_lake(tmp_path / "lake")[0]["properties"])) == {"plan": "gold"}


# --- ids and dedup ------------------------------------------------------------------------


def test_content_ids_are_deterministic(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text("log.csv", GOOD_CSV)
    a = ingest(src, tmp_path / "a", config)
    b = ingest(src, tmp_path / "b", config)
    ids_a = [r["event_id"] for r in read_lake(tmp_path / "a")]
    assert ids_a == [r["event_id"] for r in read_lake(tmp_path / "b")]
    assert len(set(ids_a)) == 3
    assert a.batch.fingerprint == b.batch.fingerprint
    # The same events in another layout (Parquet, other column order) get the same ids.
    same = pa.table(
        {
            "plan": ["gold", "gold", "silver"],
            "value": [None, 19.99, None],
            "event_type": ["page_view", "purchase", "signup"],
            "channel": ["web", "email", "WEB "],
            "timestamp": ["2024-01-01T10:00:00Z", "2024-01-02T08:00:00Z", "2024-02-01"],
            "customer_id": ["c1", "c1", "c2"],
        }
    )
    pq.write_table(same, tmp_path / "same.parquet")
    ingest(tmp_path / "same.parquet", tmp_path / "c", config)
    assert [r["event_id"] for r in read_lake(tmp_path / "c")] == ids_a


def test_given_event_ids_are_kept_and_deduplicated(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    src = write_text(
        "log.csv",
        "customer_id,timestamp,event_type,event_id\n"
        "c1,2024-01-02,late,e1\n"
        "c1,2024-01-01,early,e1\n"
        "c2,2024-01-01,x,e2\n",
    )
    result = ingest(src, tmp_path / "lake", config)
    rows = read_lake(tmp_path / "lake")
    assert [(r["event_id"], r["event_type"]) for r in rows] == [("e1", "early"), ("e2", "x")]
    assert result.batch.rows.dropped["duplicate_event_id"] == 1


# --- append, replace and atomicity --------------------------------------------------------


def test_append_drops_ids_already_in_the_lake(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    header = "customer_id,timestamp,event_type,event_id\n"
    first = ingest(
        write_text("a.csv", header + "c1,2024-01-01,x,e1\nc1,2024-01-02,y,e2\n"), lake, config
    )
    before = snapshot(lake / "events")
    second = ingest(
        write_text("b.csv", header + "c1,2024-01-02,y,e2\nc2,2024-01-03,z,e3\n"),
        lake,
        config,
        mode="append",
    )
    assert second.batch.rows.dropped["already_in_lake"] == 1
    assert second.batch.rows.written == 1
    assert [r["event_id"] for r in read_lake(lake)] == ["e1", "e2", "e3"]
    manifest = load_manifest(lake)
    assert [b.batch_id for b in manifest.batches] == [
        first.batch.batch_id,
        second.batch.batch_id,
    ]
    after = snapshot(lake / "events")
    assert {k: after[k] for k in before} == before  # earlier batch files untouched
    # Replaying the same file appends nothing.
    third = ingest(tmp_path / "b.csv", lake, config, mode="append")
    assert third.batch.rows.written == 0 and third.batch.files == []
    assert len(read_lake(lake)) == 3


def test_replace_replaces_everything(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    ingest(write_text("a.csv", GOOD_CSV), lake, config)
    ingest(
        write_text("b.csv", "customer_id,timestamp,event_type\nz9,2023-06-01,x\n"),
        lake,
        config,
        mode="replace",
    )
    assert [r["customer_id"] for r in read_lake(lake)] == ["z9"]
    assert len(load_manifest(lake).batches) == 1
    assert [p.name for p in (lake / "events").iterdir()] == ["event_month=2023-06"]


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_invalid_input_leaves_the_lake_unchanged(
    write_text: WriteText, config: EventsConfig, tmp_path: Path, mode: Mode
) -> None:
    lake = tmp_path / "lake"
    ingest(write_text("a.csv", GOOD_CSV), lake, config)
    before = snapshot(lake)
    bad = write_text("bad.csv", "customer_id,timestamp,event_type\nc1,whenever,x\n")
    with pytest.raises(EventLogError):
        ingest(bad, lake, config, mode=mode)
    assert snapshot(lake) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "bad.csv", "lake"]


def test_invalid_input_creates_no_lake(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    with pytest.raises(EventLogError):
        ingest(
            write_text("bad.csv", "customer_id,timestamp\nc1,2024-01-01\n"),
            tmp_path / "lake",
            config,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


@pytest.mark.parametrize("step", ["write_event_batch", "write_manifest", "commit"])
def test_a_crash_during_append_leaves_the_lake_unchanged(
    write_text: WriteText,
    config: EventsConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    lake = tmp_path / "lake"
    ingest(write_text("a.csv", GOOD_CSV), lake, config)
    before = snapshot(lake)

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ingest_module, step, crash)
    more = write_text("b.csv", "customer_id,timestamp,event_type\nc7,2024-03-01,x\n")
    with pytest.raises(OSError, match="disk full"):
        ingest(more, lake, config, mode="append")
    assert snapshot(lake) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv", "lake"]


def test_leftovers_of_a_killed_ingest_are_cleaned(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    stale = tmp_path / ".lake.ingest-b20240101T000000-dead00" / "lake" / "events"
    stale.mkdir(parents=True)
    ingest(write_text("a.csv", GOOD_CSV), tmp_path / "lake", config)
    assert not stale.exists()


@pytest.mark.parametrize(
    ("setup", "mode", "message"),
    [
        ("lake", None, "choose --mode append"),
        ("other", None, "not an event lake"),
        ("file", None, "is a file"),
        ("none", "append", "needs an existing lake"),
    ],
)
def test_unsafe_outputs_are_refused(
    write_text: WriteText,
    config: EventsConfig,
    tmp_path: Path,
    setup: str,
    mode: Mode | None,
    message: str,
) -> None:
    src = write_text("a.csv", GOOD_CSV)
    out = tmp_path / "out"
    if setup == "lake":
        ingest(src, out, config)
    elif setup == "other":
        write_text("out/precious.txt", "keep me")
    elif setup == "file":
        write_text("out", "a file")
    before = snapshot(out) if out.is_dir() else None
    with pytest.raises(LakeError, match=message):
        ingest(src, out, config, mode=mode)
    if before is not None:
        assert snapshot(out) == before


# --- the customers table ------------------------------------------------------------------


def test_customers_table_is_written_and_kept_on_append(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    lake = tmp_path / "lake"
    customers = write_text(
        "customers.csv",
        "customer_id,signup_at,segment,seats\n c1 ,2023-12-01T10:00:00+01:00,smb,3\nc2,,ent,40\n",
    )
    ingest(write_text("a.csv", GOOD_CSV), lake, config, customers=customers)
    sql = read_customers_sql(lake)
    assert sql is not None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rows = con.execute(f"{sql} ORDER BY customer_id").fetchall()
    assert rows == [
        ("c1", datetime(2023, 12, 1, 9, tzinfo=UTC), "smb", 3),
        ("c2", None, "ent", 40),
    ]
    record = load_manifest(lake).customers
    assert record is not None and record.rows == 2
    assert record.columns == ["customer_id", "signup_at", "segment", "seats"]
    later = write_text("b.csv", "customer_id,timestamp,event_type\nc3,2024-03-01,x\n")
    result = ingest(later, lake, config, mode="append")
    assert load_manifest(lake).customers == record
    assert con.execute(f"SELECT count(*) FROM ({sql})").fetchall() == [(2,)]
    # c3 is not in the lake's customers table.
    assert any(w.rule == "unknown_customer" for w in result.warnings)


def test_reader_api_on_a_lake_without_events(tmp_path: Path) -> None:
    con = duckdb.connect()
    rel = open_events(con, tmp_path / "nowhere")
    assert rel.columns == list(NORMALISED_EVENT_COLUMNS)
    assert con.execute(f"SELECT count(*) FROM ({read_events_sql(tmp_path)})").fetchall() == [(0,)]
    assert read_customers_sql(tmp_path) is None
    with pytest.raises(LakeError, match="not an event lake"):
        load_manifest(tmp_path)


# --- round trip (property test) -----------------------------------------------------------

_name = (
    st.text(
        alphabet=st.characters(codec="ascii", categories=("L", "N"), include_characters=' _-.:,"'),
        min_size=1,
        max_size=12,
    )
    .map(lambda s: s.strip())
    .filter(bool)
)
_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(
    lambda s: s not in ("true", "false")
)
_row = st.fixed_dictionaries(
    {
        "customer_id": _name,
        "timestamp": st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2024, 12, 31)),
        "event_type": _name,
        "channel": st.none() | _word,
        "value": st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64),
        "plan": st.none() | _word,
        "n": st.none() | st.integers(-(10**12), 10**12),
    }
)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value) if isinstance(value, float) else str(value)


def _expected(rows: list[dict[str, object]]) -> set[tuple[object, ...]]:
    out: set[tuple[object, ...]] = set()
    for r in rows:
        props = {k: r[k] for k in ("n", "plan") if r[k] is not None}
        ts = r["timestamp"]
        assert isinstance(ts, datetime)
        out.add(
            (
                r["customer_id"],
                ts.replace(tzinfo=UTC),
                r["event_type"],
                r["channel"],
                r["value"],
                json.dumps(props, sort_keys=True) if props else None,
            )
        )
    return out


def _actual(lake: Path) -> set[tuple[object, ...]]:
    return {
        (
            r["customer_id"],
            r["timestamp"],
            r["event_type"],
            r["channel"],
            r["value"],
            json.dumps(json.loads(str(r["properties"])), sort_keys=True)
            if r["properties"]
            else None,
        )
        for r in read_lake(lake)
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=st.lists(_row, min_size=1, max_size=30), fmt=st.sampled_from(["csv", "parquet"]))
def test_round_trip_preserves_every_valid_row(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, object]], fmt: str
) -> None:
    folder = tmp_path_factory.mktemp("roundtrip")
    src = folder / f"log.{fmt}"
    columns = list(rows[0])
    if fmt == "csv":
        with src.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            writer.writerows([_cell(r[c]) for c in columns] for r in rows)
    else:
        table = pa.Table.from_pylist(
            rows,
            schema=pa.schema(
                [
                    ("customer_id", pa.string()),
                    ("timestamp", pa.timestamp("us")),
                    ("event_type", pa.string()),
                    ("channel", pa.string()),
                    ("value", pa.float64()),
                    ("plan", pa.string()),
                    ("n", pa.int64()),
                ]
            ),
        )
        pq.write_table(table, src)
    lake = folder / "lake"
    result = ingest_events(src, lake, config=EventsConfig(threads=2), now=NOW)
    expected = _expected(rows)
    assert _actual(lake) == expected
    assert result.batch.rows.read == len(rows)
    assert result.batch.rows.written == len(expected)


def test_now_defaults_to_the_clock(
    write_text: WriteText, config: EventsConfig, tmp_path: Path
) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    src = write_text("log.csv", f"customer_id,timestamp,event_type\nc1,{soon},x\n")
    ingest_events(src, tmp_path / "lake", config=config)  # within the 10 minute tolerance


def test_one_writer_at_a_time(write_text: WriteText, config: EventsConfig, tmp_path: Path) -> None:
    from journeyml.events.lake import lake_lock

    src = write_text("a.csv", GOOD_CSV)
    with lake_lock(tmp_path / "lake"), pytest.raises(LakeError, match="another ingest"):
        ingest(src, tmp_path / "lake", config)
    assert not (tmp_path / "lake").exists()
