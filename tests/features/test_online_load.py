"""The bulk online loader writes exactly what Feast's materialize writes, in SQLite and Redis."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from feast.value_type import ValueType
from hypothesis import given
from hypothesis import strategies as st

import features.online as online
from features.catalog import Dtype, FeatureCatalog
from features.online import crc64, encode_values, entity_keys, load_latest_snapshot, value_texts
from features.pipeline import build_snapshots
from features.realtime import read_online
from features.settings import OnlineStoreSettings, RegistrySettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from tests.features.helpers import (
    day,
    events_table,
    postgres_available,
    redis_available,
    write_lake,
)
from tests.services import skip_or_fail

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ARROW = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
FEAST = {"int64": ValueType.INT64, "float64": ValueType.DOUBLE, "string": ValueType.STRING}

# -- value and key encoding -------------------------------------------------------------------


def feast_bytes(values: list[object], dtype: Dtype) -> list[bytes]:
    """What Feast's materialize serialises: its own conversion of the column Arrow hands it."""
    column = pa.array(values, ARROW[dtype]).to_numpy(zero_copy_only=False)
    return [v.SerializeToString() for v in python_values_to_proto_values(column, FEAST[dtype])]


def proto_bytes(value: object, dtype: Dtype) -> bytes:
    """``ValueProto`` built by hand; Feast writes a null (and a NaN) as the empty message."""
    if value is None or value != value:
        return Value().SerializeToString()
    field = {"int64": "int64_val", "float64": "double_val", "string": "string_val"}[dtype]
    return Value(**{field: value}).SerializeToString()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("int64", [0, 1, 127, 128, 16383, 16384, 2**35, -1, -300, -(2**63), 2**63 - 1]),
        ("float64", [0.0, -0.0, 1.5, -2.25, 0.1, 1e300, -1e-300, 5e-324, float("inf")]),
        ("float64", [1.5, float("nan"), None, -float("inf")]),
        ("string", ["", "a", "ünïcødé ✓", "x" * 127, "y" * 128, "z" * 20_000, None]),
    ],
)
def test_value_encoding_is_byte_identical_to_feast(dtype: Dtype, values: list[object]) -> None:
    encoded = encode_values(pa.array(values, ARROW[dtype]), dtype).to_pylist()
    assert encoded == feast_bytes(values, dtype)
    assert encoded == [proto_bytes(v, dtype) for v in values]


def test_null_ints_are_empty_messages() -> None:
    # Feast's own path turns an int column with nulls into floats; the wire format is the point
    values = [None, 5, None, -5]
    encoded = encode_values(pa.array(values, pa.int64()), "int64").to_pylist()
    assert encoded == [proto_bytes(v, "int64") for v in values]


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=60))
def test_int_encoding_property(values: list[int | None]) -> None:
    encoded = encode_values(pa.array(values, pa.int64()), "int64").to_pylist()
    assert encoded == [proto_bytes(v, "int64") for v in values]


@given(st.lists(st.one_of(st.none(), st.floats()), max_size=60))
def test_float_encoding_property(values: list[float | None]) -> None:
    encoded = encode_values(pa.array(values, pa.float64()), "float64").to_pylist()
    assert encoded == [proto_bytes(v, "float64") for v in values]


@given(st.lists(st.one_of(st.none(), st.text(max_size=200)), max_size=40))
def test_string_encoding_property(values: list[str | None]) -> None:
    encoded = encode_values(pa.array(values, pa.string()), "string").to_pylist()
    assert encoded == [proto_bytes(v, "string") for v in values]


@given(st.lists(st.text(max_size=300), max_size=30))
def test_entity_keys_match_feast(ids: list[str]) -> None:
    expected = [
        serialize_entity_key(
            EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=c)]), 3
        )
        for c in ids
    ]
    assert entity_keys(pa.array(ids, pa.string())).to_pylist() == expected


@given(st.lists(st.one_of(st.none(), st.floats(), st.integers(-(10**17), 10**17)), max_size=60))
def test_float_texts_are_pythons_str(values: list[float | None]) -> None:
    # Feast's SQLite value_text is str() of the value; a null (or NaN) has none
    floats = [None if v is None else float(v) for v in values]
    expected = [None if v is None or v != v else str(v) for v in floats]
    assert value_texts(pa.array(floats, pa.float64()), "float64").to_pylist() == expected


def test_float_texts_at_the_edges() -> None:
    values = [0.0, -0.0, 26.0, 1e15, 1e16, 123456789012345.6, 1e-4, 9.99e-5, 1e-7, 5e-324]
    values += [float("inf"), -float("inf"), 2.0**53, 0.1, 1 / 3, -1e300]
    texts = value_texts(pa.array(values, pa.float64()), "float64").to_pylist()
    assert texts == [str(v) for v in values]


def crc64_bitwise(data: bytes) -> int:
    """Redis's CRC-64 (Jones polynomial, reflected, no final xor), one bit at a time."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x95AC9329AC4BC9B5 if crc & 1 else 0)
    return crc


def test_crc64_is_redis_crc() -> None:
    # the CRC-64 Redis puts at the end of DUMP payloads; its published check value
    assert crc64(pa.array([b"123456789"]))[0] == 0xE9C6D914C4B8D9CA
    payloads = [b"", b"a", b"x" * 7, b"y" * 8, bytes(range(256)) * 5, b"\x00\x01" * 33]
    expected = [crc64_bitwise(p) for p in payloads]
    assert crc64(pa.array(payloads, pa.binary())).tolist() == expected


@pytest.mark.redis
def test_crc64_matches_the_servers_dump() -> None:
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    client = redis.Redis(host="127.0.0.1", port=6379)
    key = f"crc_{uuid.uuid4().hex}"
    try:
        client.hset(key, mapping={b"f%d" % i: b"\x20" + bytes([i]) for i in range(150)})
        dump = client.dump(key)
        assert isinstance(dump, bytes)
        body = dump[:-8]
        assert crc64(pa.array([body]))[0] == int.from_bytes(dump[-8:], "little")
    finally:
        client.delete(key)


# -- loading against Feast's materialize ------------------------------------------------------

NEWER = datetime(2025, 6, 30, tzinfo=UTC)
OLDER = NEWER - timedelta(days=7)


def customer_ids(n: int) -> list[str]:
    # several lengths (Feast's key starts with the id's length) and non-ASCII ids
    return [f"c{i}" if i % 3 else f"kunde-ü{i:05d}" for i in range(n)]


def write_snapshots(catalog: FeatureCatalog, path: Path, customers: int = 300) -> None:
    """Two snapshot times; at the newer one a few customers are missing (they keep the older)."""
    rng = np.random.default_rng(7)
    tables = []
    for when, n in ((OLDER, customers), (NEWER, customers - 20)):
        data: dict[str, object] = {
            "customer_id": customer_ids(customers)[:n],
            "event_timestamp": pa.array([when] * n, pa.timestamp("us", tz="UTC")),
        }
        for spec in catalog.features:
            if spec.dtype == "int64":
                ints = rng.integers(-5, 400, n)
                ints[::37] = 2**62
                data[spec.name] = pa.array(ints, pa.int64())
            elif spec.dtype == "float64":
                floats = rng.normal(0, 50, n)
                floats[::11] = np.nan  # written as null by Feast
                floats[::13] = -0.0
                floats[::17] = 1e-7
                data[spec.name] = pa.array(floats, pa.float64())
            else:
                words = ["none", "retention", "", "ünïcødé ✓", "x" * 200]
                data[spec.name] = pa.array([words[i] for i in rng.integers(0, 5, n)])
        tables.append(pa.table(data))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.concat_tables(tables), path / "part-0.parquet")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def settings(request: pytest.FixtureRequest) -> Iterator[StoreSettings]:
    project = f"ol_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield StoreSettings(project=project)
        return
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    yield StoreSettings(project=project, online=OnlineStoreSettings(type="redis"))
    client = redis.Redis(host="127.0.0.1", port=6379)
    for suffix in ("feast", "fast"):
        for key in client.scan_iter(match=f"*{project}{suffix}", count=1000):
            client.delete(key)


def open_applied(
    ws: Workspace, settings: StoreSettings, catalog: FeatureCatalog, name: str
) -> FeatureStore:
    store = open_store(settings.model_copy(update={"project": settings.project + name}), ws)
    apply_definitions(store, catalog, ws)
    return store


def online_frame(store: FeatureStore, ids: list[str]) -> pd.DataFrame:
    features = [f"{v.name}:{f.name}" for v in store.list_feature_views() for f in v.features]
    return store.get_online_features(
        features=features, entity_rows=[{"customer_id": c} for c in ids]
    ).to_df()


def event_times(store: FeatureStore, catalog: FeatureCatalog, ids: list[str]) -> list[object]:
    return [r.age_seconds for r in read_online(store, catalog, ids, now=NEWER)]


def sqlite_rows(store: FeatureStore) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every view's table, as stored (minus the project prefix)."""
    con = sqlite3.connect(SqliteOnlineStore._get_db_path(store.config))
    try:
        return {
            view.name: con.execute(
                "SELECT entity_key, feature_name, value, value_text, vector_value, event_ts, "
                f'created_ts FROM "{store.project}_{view.name}" ORDER BY 1, 2'
            ).fetchall()
            for view in store.list_feature_views()
        }
    finally:
        con.close()


def two_stores(
    root: Path, settings: StoreSettings, catalog: FeatureCatalog
) -> tuple[FeatureStore, FeatureStore, Workspace]:
    stores = []
    for name in ("feast", "fast"):
        ws = Workspace(root / name)
        write_snapshots(catalog, ws.snapshots)
        stores.append((open_applied(ws, settings, catalog, name), ws))
    return stores[0][0], stores[1][0], stores[1][1]


IDS = [*customer_ids(300)[::7], "nobody"]


def test_load_equals_feast_materialize(
    tmp_path: Path, settings: StoreSettings, catalog: FeatureCatalog
) -> None:
    feast_store, fast_store, ws = two_stores(tmp_path, settings, catalog)
    feast_store.materialize(OLDER - timedelta(days=1), NEWER + timedelta(seconds=1))
    report = load_latest_snapshot(fast_store, catalog, ws.snapshots, batch_rows=64)

    assert report.customers == 300
    assert report.rows == 300 * len(catalog.features)
    assert report.per_view == {v: 300 for v in report.per_view}
    assert report.skipped_newer == 0
    expected = online_frame(feast_store, IDS)
    pd.testing.assert_frame_equal(online_frame(fast_store, IDS), expected)
    assert event_times(fast_store, catalog, IDS) == event_times(feast_store, catalog, IDS)
    if settings.online.type == "sqlite":  # every column, value_text included
        assert sqlite_rows(fast_store) == sqlite_rows(feast_store)

    # loading again changes nothing
    load_latest_snapshot(fast_store, catalog, ws.snapshots)
    pd.testing.assert_frame_equal(online_frame(fast_store, IDS), expected)
    if settings.online.type == "sqlite":
        assert sqlite_rows(fast_store) == sqlite_rows(feast_store)


def test_an_older_snapshot_never_overwrites_newer_state(
    tmp_path: Path, settings: StoreSettings, catalog: FeatureCatalog
) -> None:
    ws = Workspace(tmp_path)
    write_snapshots(catalog, ws.snapshots)
    store = open_applied(ws, settings, catalog, "fast")
    load_latest_snapshot(store, catalog, ws.snapshots)
    newest = online_frame(store, IDS)
    ages = event_times(store, catalog, IDS)

    report = load_latest_snapshot(store, catalog, ws.snapshots, as_of=OLDER)
    assert report.customers == 300
    # only the 20 customers whose latest snapshot *is* the older one are written again
    assert report.per_view == {v: 20 for v in report.per_view}
    assert report.skipped_newer == 280 * len(report.per_view)
    pd.testing.assert_frame_equal(online_frame(store, IDS), newest)
    assert event_times(store, catalog, IDS) == ages


def test_a_newer_snapshot_replaces_older_state(
    tmp_path: Path, settings: StoreSettings, catalog: FeatureCatalog
) -> None:
    feast_store, fast_store, ws = two_stores(tmp_path, settings, catalog)
    feast_store.materialize(OLDER - timedelta(days=1), NEWER + timedelta(seconds=1))
    load_latest_snapshot(fast_store, catalog, ws.snapshots, as_of=OLDER)
    assert not online_frame(fast_store, IDS).equals(online_frame(feast_store, IDS))

    load_latest_snapshot(fast_store, catalog, ws.snapshots)
    pd.testing.assert_frame_equal(online_frame(fast_store, IDS), online_frame(feast_store, IDS))


def realtime_frame(
    catalog: FeatureCatalog, view: str, ids: list[str], when: datetime, mark: int = 0
) -> pd.DataFrame:
    """A view's features for some customers, as the real-time updater writes them."""
    data: dict[str, object] = {"customer_id": ids, "event_timestamp": [when] * len(ids)}
    values = {"int64": 4242 + mark, "float64": 42.5 + mark, "string": f"realtime {mark}"}
    for spec in catalog.view_features(view):
        data[spec.name] = pd.Series([values[spec.dtype]] * len(ids), dtype=PANDAS[spec.dtype])
    return pd.DataFrame(data)


PANDAS = {"int64": "int64", "float64": "float64", "string": "object"}


@pytest.mark.parametrize("loaded_before", [True, False])
def test_newer_state_and_unknown_customers_survive_a_load(
    tmp_path: Path, settings: StoreSettings, catalog: FeatureCatalog, loaded_before: bool
) -> None:
    ws = Workspace(tmp_path)
    write_snapshots(catalog, ws.snapshots)
    store = open_applied(ws, settings, catalog, "fast")
    if loaded_before:
        load_latest_snapshot(store, catalog, ws.snapshots)
    # real-time updates through Feast: a newer state for a known customer, and a customer
    # the snapshots do not hold
    known = customer_ids(300)[1]
    newer = NEWER + timedelta(days=1)
    store.write_to_online_store(
        "journey_state", realtime_frame(catalog, "journey_state", [known, "ghost"], newer)
    )
    written = online_frame(store, [known, "ghost"])

    report = load_latest_snapshot(store, catalog, ws.snapshots)
    assert report.skipped_newer == 1
    assert report.per_view["journey_state"] == 299
    after = online_frame(store, [known, "ghost"])
    state = [f.name for f in catalog.view_features("journey_state")]
    pd.testing.assert_frame_equal(after[state], written[state])
    # the known customer's other views come from the snapshot
    snapshot = pq.read_table(ws.snapshots / "part-0.parquet").to_pandas()
    latest = snapshot[snapshot["customer_id"] == known].sort_values("event_timestamp").iloc[-1]
    activity = [f.name for f in catalog.view_features("journey_activity")]
    assert after.loc[0, activity].tolist() == latest[activity].tolist()

    # Feast keeps working on the loaded store: it applies its definitions, writes and reads
    apply_definitions(store, catalog, ws)
    later = realtime_frame(catalog, "journey_state", ["ghost"], newer + timedelta(days=1), 1)
    store.write_to_online_store("journey_state", later)
    assert online_frame(store, ["ghost"])[state].iloc[0].tolist() == later[state].iloc[0].tolist()


def test_sqlite_load_interrupted_leaves_the_store_as_it_was(
    tmp_path: Path, catalog: FeatureCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(tmp_path)
    write_snapshots(catalog, ws.snapshots)
    store = open_applied(ws, StoreSettings(project=f"crash_{uuid.uuid4().hex[:6]}"), catalog, "")
    load_latest_snapshot(store, catalog, ws.snapshots, as_of=OLDER)
    before = sqlite_rows(store)

    def crash(*args: object) -> int:
        raise RuntimeError("crash in the middle of the swap")

    monkeypatch.setattr(online._SqliteWriter, "_carry_over", crash)
    with pytest.raises(RuntimeError, match="crash"):
        load_latest_snapshot(store, catalog, ws.snapshots, batch_rows=64)
    assert sqlite_rows(store) == before
    con = sqlite3.connect(SqliteOnlineStore._get_db_path(store.config))
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master")]
    finally:
        con.close()
    assert not [n for n in names if "journeyml" in n]  # the hidden tables are gone

    monkeypatch.undo()
    load_latest_snapshot(store, catalog, ws.snapshots)
    assert sqlite_rows(store) != before


@pytest.mark.redis
def test_redis_reload_keeps_fields_it_does_not_write(
    tmp_path: Path, catalog: FeatureCatalog
) -> None:
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    project = f"extra_{uuid.uuid4().hex[:8]}"
    ws = Workspace(tmp_path)
    write_snapshots(catalog, ws.snapshots, customers=30)
    store = open_applied(
        ws, StoreSettings(project=project, online=OnlineStoreSettings(type="redis")), catalog, ""
    )
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        load_latest_snapshot(store, catalog, ws.snapshots, as_of=OLDER)
        keys = sorted(client.scan_iter(match=f"*{project}", count=1000))
        client.hset(keys[0], b"another view's field", b"kept")
        before = online_frame(store, IDS[:5])
        load_latest_snapshot(store, catalog, ws.snapshots)
        assert client.hget(keys[0], b"another view's field") == b"kept"
        assert not online_frame(store, IDS[:5]).equals(before)
    finally:
        for key in client.scan_iter(match=f"*{project}", count=1000):
            client.delete(key)


@pytest.mark.redis
def test_redis_falls_back_to_hset_when_the_server_refuses(
    tmp_path: Path, catalog: FeatureCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    settings = StoreSettings(
        project=f"refuse_{uuid.uuid4().hex[:8]}", online=OnlineStoreSettings(type="redis")
    )
    # a payload the server rejects (wrong checksum) and a script that fails
    monkeypatch.setattr(online, "crc64", lambda values: np.zeros(len(values), np.uint64))
    monkeypatch.setattr(online, "_REPLACE_SCRIPT", "return redis.call('NO_SUCH_COMMAND')")
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        feast_store, fast_store, ws = two_stores(tmp_path, settings, catalog)
        feast_store.materialize(OLDER - timedelta(days=1), NEWER + timedelta(seconds=1))
        load_latest_snapshot(fast_store, catalog, ws.snapshots, as_of=OLDER, batch_rows=64)
        report = load_latest_snapshot(fast_store, catalog, ws.snapshots, batch_rows=64)
        assert report.per_view == {v: 300 for v in report.per_view}
        expected = online_frame(feast_store, IDS)
        pd.testing.assert_frame_equal(online_frame(fast_store, IDS), expected)
    finally:
        for key in client.scan_iter(match=f"*{settings.project}*", count=1000):
            client.delete(key)


@pytest.mark.redis
def test_redis_replace_script_refuses_a_changed_hash() -> None:
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    client = redis.Redis(host="127.0.0.1", port=6379)
    key, source = f"cas_{uuid.uuid4().hex}", f"cas_src_{uuid.uuid4().hex}"
    try:
        client.hset(source, mapping={"_ts:v": b"new", "f": b"2"})
        payload = client.dump(source)
        client.hset(key, mapping={"_ts:v": b"old", "f": b"1"})
        script = client.register_script(online._REPLACE_SCRIPT)
        # the stored _ts is no longer what the loader read: nothing happens
        assert script(keys=[key], args=[payload, 0, 2, 1, "_ts:v", b"1older"]) == 0
        assert script(keys=[key], args=[payload, 0, 3, 1, "_ts:v", b"1old"]) == 0  # count
        assert client.hgetall(key) == {b"_ts:v": b"old", b"f": b"1"}
        # unchanged since read: replaced whole
        assert script(keys=[key], args=[payload, 0, 2, 1, "_ts:v", b"1old"]) == 1
        assert client.hgetall(key) == {b"_ts:v": b"new", b"f": b"2"}
    finally:
        client.delete(key, source)


def test_sqlite_value_num_column_when_enabled(tmp_path: Path, catalog: FeatureCatalog) -> None:
    stores = []
    for name in ("feast", "fast"):
        ws = Workspace(tmp_path / name)
        write_snapshots(catalog, ws.snapshots, customers=40)
        store = open_store(StoreSettings(project=f"num_{name}"), ws)
        store.config.online_store.enable_openai_compatible_store = True
        apply_definitions(store, catalog, ws)  # adds Feast's value_num column
        stores.append((store, ws))
    (feast_store, _), (fast_store, ws) = stores
    feast_store.materialize(OLDER - timedelta(days=1), NEWER + timedelta(seconds=1))
    load_latest_snapshot(fast_store, catalog, ws.snapshots)

    def with_num(store: FeatureStore) -> list[tuple[object, ...]]:
        con = sqlite3.connect(SqliteOnlineStore._get_db_path(store.config))
        try:
            return con.execute(
                f'SELECT entity_key, feature_name, value_text, value_num FROM "{store.project}'
                '_journey_state" ORDER BY 1, 2'
            ).fetchall()
        finally:
            con.close()

    rows = with_num(fast_store)
    assert any(r[3] is not None for r in rows)
    assert rows == with_num(feast_store)
    assert sqlite_rows(fast_store) == sqlite_rows(feast_store)


@pytest.mark.redis
def test_redis_keys_get_the_stores_ttl(tmp_path: Path, catalog: FeatureCatalog) -> None:
    if not redis_available():
        skip_or_fail("Redis is not reachable on 127.0.0.1:6379")
    project = f"ttl_{uuid.uuid4().hex[:8]}"
    ws = Workspace(tmp_path)
    write_snapshots(catalog, ws.snapshots, customers=30)
    store = open_applied(
        ws, StoreSettings(project=project, online=OnlineStoreSettings(type="redis")), catalog, ""
    )
    store.config.online_store.key_ttl_seconds = 3600
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        load_latest_snapshot(store, catalog, ws.snapshots)
        keys = list(client.scan_iter(match=f"*{project}", count=1000))
        assert len(keys) == 30
        assert all(0 < int(client.ttl(k)) <= 3600 for k in keys)  # type: ignore[arg-type]
    finally:
        for key in client.scan_iter(match=f"*{project}", count=1000):
            client.delete(key)


# -- the production configuration -------------------------------------------------------------

LOG: list[dict[str, object]] = [
    {"customer_id": c, "timestamp": day(d), "event_type": t, "value": v, "channel": "web"}
    for c, d, t, v in [
        ("a", 1, "page_view", None),
        ("a", 3, "purchase", 12.5),
        ("b", 2, "signup", None),
        ("b", 9, "complaint", None),
        ("c", 4, "product_view", None),
        ("a", 12, "login", None),
    ]
]


@pytest.mark.redis
@pytest.mark.postgres
def test_production_store_redis_and_postgres_registry(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    if not (redis_available() and postgres_available()):
        skip_or_fail("needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432")
    project = f"prod_{uuid.uuid4().hex[:8]}"
    settings = StoreSettings(
        project=project,
        online=OnlineStoreSettings(type="redis"),
        registry=RegistrySettings(type="sql", url=PG_URL),
    )
    ws = Workspace(tmp_path)
    write_lake(ws.lake, events_table(LOG))
    build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)
    store = open_store(settings, ws)
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        apply_definitions(store, catalog, ws)
        report = load_latest_snapshot(store, catalog, ws.snapshots)
        assert report.customers == 3
        # a second process sees the definitions through the PostgreSQL registry
        other = open_store(settings, Workspace(tmp_path / "elsewhere"))
        row = read_online(other, catalog, ["a"], now=datetime(2025, 1, 13, tzinfo=UTC))[0]
        assert row.found
        assert row.values["conversions_total"] == 1
        assert row.values["stage"] == "purchase"  # a login after buying moves nobody back
        assert online_frame(other, ["a", "b", "c"])["stage"].notna().all()
    finally:
        store.teardown()  # drops the project's registry rows and online keys
        for key in client.scan_iter(match=f"*{project}", count=1000):
            client.delete(key)
