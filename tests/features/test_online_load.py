"""The bulk online loader writes exactly what Feast's materialize writes, in SQLite and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from hypothesis import given
from hypothesis import strategies as st

from features.catalog import FeatureCatalog, build_catalog
from features.online import encode_values, entity_keys, load_latest_snapshot
from features.pipeline import build_snapshots
from features.realtime import read_online
from features.settings import (
    FeatureSettings,
    OnlineStoreSettings,
    RegistrySettings,
    SnapshotSettings,
    StoreSettings,
)
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import JourneyMap
from tests.features.helpers import (
    day,
    events_table,
    postgres_available,
    redis_available,
    write_lake,
)

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def proto(value: object, dtype: str) -> Value:
    if value is None:
        return Value()
    if dtype == "int64":
        return Value(int64_val=value)  # type: ignore[arg-type]
    if dtype == "float64":
        return Value(double_val=value)  # type: ignore[arg-type]
    return Value(string_val=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("int64", [0, 1, 127, 128, 16383, 16384, -1, -(2**63), 2**63 - 1, None]),
        ("float64", [0.0, -0.0, 1.5, -2.25, 1e300, 1e-300, 0.1, None]),
        ("string", ["", "a", "ünïcødé ✓", "x" * 300, None]),
    ],
)
def test_value_encoding_is_byte_identical(dtype: str, values: list[object]) -> None:
    arrow_type = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}[dtype]
    encoded, texts = encode_values(pa.array(values, arrow_type), dtype)
    assert encoded == [proto(v, dtype).SerializeToString() for v in values]
    assert texts == [None if v is None else str(v) for v in values]


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=50))
def test_int_encoding_property(values: list[int | None]) -> None:
    encoded, _ = encode_values(pa.array(values, pa.int64()), "int64")
    assert encoded == [proto(v, "int64").SerializeToString() for v in values]


@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=False)), max_size=50))
def test_float_encoding_property(values: list[float | None]) -> None:
    encoded, _ = encode_values(pa.array(values, pa.float64()), "float64")
    assert encoded == [proto(v, "float64").SerializeToString() for v in values]


@given(st.lists(st.text(max_size=40), max_size=30))
def test_entity_keys_match_feast(ids: list[str]) -> None:
    expected = [
        serialize_entity_key(
            EntityKey(join_keys=["customer_id"], entity_values=[Value(string_val=c)]), 3
        )
        for c in ids
    ]
    assert entity_keys(ids) == expected


LOG = [
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


@pytest.fixture(params=["sqlite", "redis"])
def settings(request: pytest.FixtureRequest) -> Iterator[StoreSettings]:
    project = f"ol_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield StoreSettings(project=project)
        return
    if not redis_available():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    yield StoreSettings(project=project, online=OnlineStoreSettings(type="redis"))
    client = redis.Redis(host="127.0.0.1", port=6379)
    for key in client.scan_iter(match=f"*{project}*"):
        client.delete(key)


def two_stores(
    root: Path, settings: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> tuple[FeatureStore, FeatureStore, Workspace, datetime]:
    stores = []
    for name in ("feast", "fast"):
        ws = Workspace(root / name)
        write_lake(ws.lake, events_table(LOG))
        report = build_snapshots(ws.lake, ws.snapshots, journey_map, catalog)
        project = settings.project + name
        store = open_store(settings.model_copy(update={"project": project}), ws)
        apply_definitions(store, catalog, ws)
        stores.append((store, ws))
    return stores[0][0], stores[1][0], stores[1][1], report.as_of


def online_frame(store: FeatureStore, ids: list[str]) -> pd.DataFrame:
    return store.get_online_features(
        features=[f"{v.name}:{f.name}" for v in store.list_feature_views() for f in v.features],
        entity_rows=[{"customer_id": c} for c in ids],
    ).to_df()


def test_load_equals_feast_materialize(
    tmp_path: Path, settings: StoreSettings, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    feast_store, fast_store, ws, as_of = two_stores(tmp_path, settings, journey_map, catalog)
    feast_store.materialize(as_of - timedelta(days=60), as_of + timedelta(seconds=1))
    report = load_latest_snapshot(fast_store, catalog, ws.snapshots)
    assert report.customers == 3
    assert report.rows == 3 * len(catalog.features)
    ids = ["a", "b", "c", "nobody"]
    pd.testing.assert_frame_equal(online_frame(feast_store, ids), online_frame(fast_store, ids))
    ages = [r.age_seconds for r in read_online(feast_store, catalog, ids, now=as_of)]
    assert ages == [r.age_seconds for r in read_online(fast_store, catalog, ids, now=as_of)]
    # loading twice changes nothing
    load_latest_snapshot(fast_store, catalog, ws.snapshots)
    pd.testing.assert_frame_equal(online_frame(feast_store, ids), online_frame(fast_store, ids))


def test_an_older_snapshot_never_overwrites_newer_state(
    tmp_path: Path, settings: StoreSettings, journey_map: JourneyMap
) -> None:
    # snapshots every 3 days from 2 Jan, so there is an older one to load
    catalog = build_catalog(
        journey_map, FeatureSettings(snapshots=SnapshotSettings(cadence_days=3, warmup_days=1))
    )
    _, store, ws, as_of = two_stores(tmp_path, settings, journey_map, catalog)
    load_latest_snapshot(store, catalog, ws.snapshots)
    newest = online_frame(store, ["a", "b", "c"])
    older = as_of - timedelta(days=3)
    report = load_latest_snapshot(store, catalog, ws.snapshots, as_of=older)
    assert report.customers >= 1
    pd.testing.assert_frame_equal(online_frame(store, ["a", "b", "c"]), newest)


@pytest.mark.redis
@pytest.mark.postgres
def test_production_store_redis_and_postgres_registry(
    tmp_path: Path, journey_map: JourneyMap, catalog: FeatureCatalog
) -> None:
    if not (redis_available() and postgres_available()):
        pytest.skip("needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432")
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
    try:
        apply_definitions(store, catalog, ws)
        load_latest_snapshot(store, catalog, ws.snapshots)
        # a second process sees the definitions through the PostgreSQL registry
        other = open_store(settings, Workspace(tmp_path / "elsewhere"))
        row = read_online(other, catalog, ["a"], now=datetime(2025, 1, 13, tzinfo=UTC))[0]
        assert row.found
        assert row.values["conversions_total"] == 1
        assert row.values["stage"] == "retention"
    finally:
        store.teardown()
