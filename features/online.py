"""Fast bulk loading of the latest feature snapshot into Feast's online store.

``feast materialize`` converts every value to a protobuf message and writes row by row. This
loader writes the **same bytes in the same layout** (so Feast's own ``get_online_features``
reads them unchanged) but encodes values column-wise with numpy and writes in bulk:

- SQLite: rows go into a temporary table, then one ``INSERT ... SELECT ... ON CONFLICT DO
  UPDATE ... WHERE excluded.event_ts >= event_ts`` moves them in, so a row already holding a
  newer state (a real-time update) is never replaced by an older snapshot.
- Redis: one hash per customer (Feast's key: serialised entity key + project; fields: murmur3 of
  ``view:feature`` and ``_ts:view``), written through a non-transactional pipeline after a
  pipelined read of the stored ``_ts`` fields, again skipping views that hold newer state.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
from feast import FeatureStore, FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_table_id
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.value_type import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

from features.catalog import VIEWS, FeatureCatalog, FeatureSpec
from features.pipeline import ENTITY, TIMESTAMP_FIELD

logger = logging.getLogger(__name__)

# ValueProto field tags (field number << 3 | wire type), see feast/protos/feast/types/Value.proto
_TAG_STRING = b"\x12"  # string_val = 2, length-delimited
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, 64-bit


@dataclass
class LoadReport:
    """What one load wrote."""

    store: str
    customers: int = 0
    rows: int = 0
    skipped_newer: int = 0
    seconds: float = 0.0
    per_view: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 is ten bytes of two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_INTS = [bytes([_TAG_INT64]) + _varint(i) for i in range(1 << 14)]


def encode_values(values: pa.Array, dtype: str) -> tuple[list[bytes], list[str | None]]:
    """Serialised ValueProto bytes and Feast's ``value_text`` for a column of values.

    Byte-identical to ``ValueProto(...).SerializeToString()``; a null is an empty message.
    """
    py = values.to_pylist()
    if dtype == "float64":
        arr = values.to_numpy(zero_copy_only=False).astype("<f8")
        packed = np.empty(len(arr), dtype=[("tag", "u1"), ("v", "<f8")])
        packed["tag"] = _TAG_DOUBLE
        packed["v"] = arr
        buf = packed.tobytes()
        out = [buf[i : i + 9] for i in range(0, 9 * len(arr), 9)]
        texts: list[str | None] = [None if v is None else str(v) for v in py]
        for i, v in enumerate(py):
            if v is None:
                out[i] = b""
        return out, texts
    if dtype == "int64":
        small = _SMALL_INTS
        encoded = [
            b""
            if v is None
            else small[v]
            if 0 <= v < len(small)
            else bytes([_TAG_INT64]) + _varint(v)
            for v in py
        ]
        return encoded, [None if v is None else str(v) for v in py]
    cache: dict[str, bytes] = {}
    encoded = []
    for v in py:
        if v is None:
            encoded.append(b"")
            continue
        hit = cache.get(v)
        if hit is None:
            raw = v.encode("utf-8")
            hit = cache[v] = _TAG_STRING + _varint(len(raw)) + raw
        encoded.append(hit)
    return encoded, list(py)


_KEY_PREFIX = (
    struct.pack("<I", 1)
    + struct.pack("<I", ValueType.STRING.value)
    + struct.pack("<I", len(ENTITY))
    + ENTITY.encode()
    + struct.pack("<I", ValueType.STRING.value)
)


def entity_keys(customer_ids: list[str]) -> list[bytes]:
    """Feast's serialised entity keys (version 3) for string customer ids."""
    out = []
    for c in customer_ids:
        raw = c.encode("utf-8")
        out.append(_KEY_PREFIX + struct.pack("<I", len(raw)) + raw)
    return out


def latest_rows(
    snapshot_path: Path, as_of: datetime | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Each customer's latest snapshot row at or before ``as_of``, in batches."""
    glob = (
        str(snapshot_path / "*.parquet").replace("'", "''")
        if snapshot_path.is_dir()
        else (str(snapshot_path).replace("'", "''"))
    )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    where = ""
    params: list[object] = []
    if as_of is not None:
        where = f"WHERE {TIMESTAMP_FIELD} <= ?"
        params.append(as_of)
    reader = con.sql(
        f"SELECT * FROM read_parquet('{glob}') {where} "
        f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {ENTITY} ORDER BY {TIMESTAMP_FIELD} DESC) = 1 "
        f"ORDER BY {ENTITY}",
        params=params,
    ).to_arrow_reader(batch_rows)
    try:
        yield from reader
    finally:
        con.close()


def load_latest_snapshot(
    store: FeatureStore,
    catalog: FeatureCatalog,
    snapshot_path: str | Path,
    as_of: datetime | None = None,
    batch_rows: int = 50_000,
) -> LoadReport:
    """Loads each customer's latest snapshot into the store's online store, fast.

    Reads through Feast's API afterwards return exactly what ``store.materialize`` would have
    written. Rows holding newer state than the snapshot are left as they are.
    """
    started = time.perf_counter()
    kind = store.config.online_store.type
    views = {v: store.get_feature_view(v) for v in VIEWS}
    report = LoadReport(store=kind, per_view=dict.fromkeys(VIEWS, 0))
    if kind == "sqlite":
        writer: _Writer = _SqliteWriter(store)
    elif kind == "redis":
        writer = _RedisWriter(store)
    else:
        raise ValueError(f"fast loading supports the sqlite and redis online stores, not {kind}")
    try:
        for batch in latest_rows(Path(snapshot_path), as_of, batch_rows):
            ids = batch.column(ENTITY).to_pylist()
            keys = entity_keys(ids)
            stamps = batch.column(TIMESTAMP_FIELD).to_pylist()
            encoded = {
                spec.name: encode_values(batch.column(spec.name), spec.dtype)
                for spec in catalog.features
            }
            for view, table in views.items():
                specs = catalog.view_features(view)
                written, skipped = writer.write(table, specs, keys, stamps, encoded)
                report.per_view[view] += written
                report.rows += written * len(specs)
                report.skipped_newer += skipped
            report.customers += len(ids)
        writer.finish()
    finally:
        writer.close()
    report.seconds = time.perf_counter() - started
    logger.info(
        "loaded %d customers (%d feature values) into %s in %.1f s",
        report.customers,
        report.rows,
        kind,
        report.seconds,
    )
    return report


class _Writer:
    def write(
        self,
        table: FeatureView,
        specs: list[FeatureSpec],
        keys: list[bytes],
        stamps: list[datetime],
        encoded: dict[str, tuple[list[bytes], list[str | None]]],
    ) -> tuple[int, int]:
        raise NotImplementedError

    def finish(self) -> None:
        """Makes everything written visible."""

    def close(self) -> None:
        """Releases connections."""


class _SqliteWriter(_Writer):
    """Stages one wide row per customer, then expands it to Feast's rows inside SQLite.

    One bound row per customer (instead of one per feature value) keeps Python out of the
    per-value work; SQLite's own ``INSERT ... SELECT`` then writes the rows in primary-key
    order, which is the cheapest order for its index.
    """

    def __init__(self, store: FeatureStore):
        config = store.config
        self.project = config.project
        self.versioning = config.registry.enable_online_feature_view_versioning
        self.conn = sqlite3.connect(SqliteOnlineStore._get_db_path(config), timeout=60)
        adapter = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
        self.adapt = adapter if adapter is not None else (lambda ts: ts)
        self.conn.execute("PRAGMA temp_store = MEMORY")
        self.conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for the index build
        self.conn.execute("BEGIN")
        self.staged: dict[str, tuple[str, list[str]]] = {}

    def write(
        self,
        table: FeatureView,
        specs: list[FeatureSpec],
        keys: list[bytes],
        stamps: list[datetime],
        encoded: dict[str, tuple[list[bytes], list[str | None]]],
    ) -> tuple[int, int]:
        target = compute_table_id(self.project, table, self.versioning)
        if target not in self.staged:
            stage = f"stage_{len(self.staged)}"
            cols = ", ".join(f"v{i} BLOB, t{i} TEXT" for i in range(len(specs)))
            self.conn.execute(f"CREATE TEMP TABLE {stage} (entity_key BLOB, event_ts, {cols})")
            self.staged[target] = (stage, [spec.name for spec in specs])
        stage, _ = self.staged[target]
        ts = [self.adapt(s.astimezone(UTC).replace(tzinfo=None)) for s in stamps]
        columns = [col for spec in specs for col in encoded[spec.name]]
        marks = ", ".join("?" * (2 + len(columns)))
        rows = zip(keys, ts, *columns, strict=True)
        self.conn.executemany(f"INSERT INTO {stage} VALUES ({marks})", rows)
        return len(keys), 0

    def finish(self) -> None:
        for target, (stage, names) in self.staged.items():
            quoted = '"' + target.replace('"', '""') + '"'
            order = sorted(range(len(names)), key=lambda i: names[i])
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS stage_names "
                "(pos INTEGER PRIMARY KEY, name TEXT, i INTEGER)"
            )
            self.conn.execute("DELETE FROM stage_names")
            self.conn.executemany(
                "INSERT INTO stage_names VALUES (?, ?, ?)",
                [(p, names[i], i) for p, i in enumerate(order)],
            )
            value = _pick_column("v", 0, len(names))
            text = _pick_column("t", 0, len(names))
            insert = (
                f"INSERT INTO {quoted} (entity_key, feature_name, value, value_text, event_ts, "
                f"created_ts) SELECT s.entity_key, n.name, {value}, {text}, s.event_ts, "
                f"NULL FROM {stage} AS s CROSS JOIN stage_names AS n "
                # WHERE true lets SQLite parse the ON CONFLICT clause after a SELECT
                "WHERE true ORDER BY s.rowid, n.pos"
            )
            empty = self.conn.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {quoted})").fetchone()[0]
            if not empty:
                # never replace a row that holds newer state (a real-time update)
                insert += (
                    " ON CONFLICT(entity_key, feature_name) DO UPDATE SET value = excluded.value,"
                    " value_text = excluded.value_text, event_ts = excluded.event_ts,"
                    " created_ts = excluded.created_ts"
                    f" WHERE excluded.event_ts >= {quoted}.event_ts"
                )
            self.conn.execute(insert)
            self.conn.execute(f"DROP TABLE {stage}")
        self.conn.commit()

    def close(self) -> None:
        if self.conn.in_transaction:
            self.conn.rollback()
        self.conn.close()


def _pick_column(prefix: str, low: int, high: int) -> str:
    """SQL choosing column ``s.<prefix><n.i>`` by binary search (a few comparisons a row)."""
    if high - low <= 4:
        arms = " ".join(f"WHEN {i} THEN s.{prefix}{i}" for i in range(low, high))
        return f"CASE n.i {arms} END"
    mid = (low + high) // 2
    return (
        f"CASE WHEN n.i < {mid} THEN {_pick_column(prefix, low, mid)} "
        f"ELSE {_pick_column(prefix, mid, high)} END"
    )


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class _RedisWriter(_Writer):
    """Writes Feast's Redis hashes with ``HSET`` commands encoded here and sent pipelined.

    redis-py packs each argument in Python; with ~40 fields per view that is the bottleneck,
    so the RESP bytes are built directly (field names are constant and encoded once).
    """

    def __init__(self, store: FeatureStore):
        from feast.infra.online_stores.redis import RedisOnlineStore

        config = store.config
        self.project = config.project.encode()
        self.ttl = config.online_store.key_ttl_seconds
        online = store._get_provider().online_store
        assert isinstance(online, RedisOnlineStore)
        self.client = online._get_client(config.online_store)

    def write(
        self,
        table: FeatureView,
        specs: list[FeatureSpec],
        keys: list[bytes],
        stamps: list[datetime],
        encoded: dict[str, tuple[list[bytes], list[str | None]]],
    ) -> tuple[int, int]:
        redis_keys = [k + self.project for k in keys]
        ts_field = f"_ts:{table.name}".encode()
        read = self.client.pipeline(transaction=False)
        for key in redis_keys:
            read.hget(key, ts_field)
        stored = read.execute()
        header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(specs) + 1))
        fields = [_bulk(_mmh3(f"{table.name}:{spec.name}")) for spec in specs]
        ts_bulk = _bulk(ts_field)
        columns = [encoded[spec.name][0] for spec in specs]
        commands: list[bytes] = []
        written = skipped = 0
        for i, key in enumerate(redis_keys):
            stamp = Timestamp()
            stamp.FromDatetime(stamps[i])
            if stored[i]:
                prev = Timestamp()
                prev.ParseFromString(stored[i])
                if (prev.seconds, prev.nanos) > (stamp.seconds, stamp.nanos):
                    skipped += 1
                    continue
            parts = [header, _bulk(key)]
            for name, col in zip(fields, columns, strict=True):
                parts.append(name)
                parts.append(_bulk(col[i]))
            parts.append(ts_bulk)
            parts.append(_bulk(stamp.SerializeToString()))
            commands.append(b"".join(parts))
            if self.ttl:
                commands.append(
                    b"*3\r\n$6\r\nEXPIRE\r\n" + _bulk(key) + _bulk(str(self.ttl).encode())
                )
            written += 1
        self._send(commands)
        return written, skipped

    def _send(self, commands: list[bytes], chunk: int = 2000) -> None:
        connection = self.client.connection_pool.get_connection()
        try:
            for start in range(0, len(commands), chunk):
                batch = commands[start : start + chunk]
                connection.send_packed_command(batch)
                for _ in batch:
                    connection.read_response()  # raises on an error reply
        finally:
            self.client.connection_pool.release(connection)
