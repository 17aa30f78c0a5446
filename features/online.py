"""Fast bulk loading of the latest feature snapshot into Feast's online store.

``feast materialize`` builds one protobuf message per feature value in Python and writes the
values one statement (SQLite) or one redis-py argument (Redis) at a time. This loader writes the
**same bytes in the same layout**, so Feast's ``get_online_features`` reads them unchanged, but
encodes whole columns at once with numpy and Arrow kernels and hands each store its cheapest
bulk path:

- values: Feast's ``ValueProto`` bytes (``int64_val`` as a varint, ``double_val`` as 8 bytes,
  ``string_val`` as length-prefixed UTF-8; a null or NaN is the empty message, as Feast writes
  it). The tests compare them byte for byte with ``SerializeToString``.
- SQLite: each view's rows go, in primary-key order, into a fresh hidden table beside Feast's
  (same columns, same primary key, ``WITHOUT ROWID``), cut by SQLite itself out of two blobs
  bound per batch. Rows of the live table that are newer than the snapshot (real-time updates)
  and customers the snapshot does not hold are then carried over, and one transaction renames
  the new table into place: readers see the old table or the new one, never a half-loaded one,
  and an interrupted load leaves only a hidden table that the next load drops.
- Redis: each customer's hash is serialised whole in the RDB format that ``DUMP`` produces
  (framed and CRC-64-checksummed with numpy) and sent with ``RESTORE``, which the server loads
  several times faster than an ``HSET`` of ~140 fields. ``RESTORE`` without ``REPLACE`` only
  creates hashes; an existing hash is replaced by a script that first checks, atomically, that
  none of its views is newer and that nothing changed since it was read, or else gets Feast's
  own per-view ``HSET``.

Batches are written by one background thread while the main thread reads and encodes the next
one, so the store's own work (SQLite's B-tree, the Redis server) overlaps with the encoding.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
from feast import FeatureStore, FeatureView
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
from feast.infra.online_stores.sqlite import SqliteOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.utils import to_naive_utc
from google.protobuf.timestamp_pb2 import Timestamp
from redis.exceptions import ResponseError

from features.catalog import Dtype, FeatureCatalog, FeatureSpec
from features.pipeline import ENTITY, TIMESTAMP_FIELD

logger = logging.getLogger(__name__)

# ValueProto tags (field number << 3 | wire type), from feast/protos/feast/types/Value.proto
_TAG_STRING = 0x12  # string_val = 2, length-delimited
_TAG_INT64 = 0x20  # int64_val = 4, varint
_TAG_DOUBLE = 0x29  # double_val = 5, fixed 64-bit

Bytes = npt.NDArray[np.uint8]
Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]


@dataclass
class LoadReport:
    """What one load wrote.

    Attributes:
        store: the online store type (``sqlite`` or ``redis``).
        customers: customers read from the snapshots (one latest row each).
        rows: feature values written.
        skipped_newer: (customer, view) rows left alone because the store held newer state.
        seconds: wall time of the whole load, reading the snapshots included.
        per_view: customers written per feature view.
    """

    store: str
    customers: int = 0
    rows: int = 0
    skipped_newer: int = 0
    seconds: float = 0.0
    per_view: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def add(self, view: str, customers: int, written: int, features: int) -> None:
        """Counts one view of one batch: ``written`` of ``customers`` rows went in."""
        self.per_view[view] = self.per_view.get(view, 0) + written
        self.rows += written * features
        self.skipped_newer += customers - written


# -- encoding ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    """One column's serialised values: value ``i`` is ``rows[i, :lengths[i]]``."""

    rows: Bytes  # (n, width) bytes, left-aligned; what follows a value is padding
    lengths: Ints

    def binary(self) -> pa.BinaryArray:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int32)
        np.cumsum(self.lengths, out=offsets[1:])
        data = self.rows[np.arange(self.rows.shape[1]) < self.lengths[:, None]]  # row by row
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        return pa.Array.from_buffers(pa.binary(), len(self.lengths), buffers)

    def take(self, indices: Ints) -> _Column:
        return _Column(self.rows[indices], self.lengths[indices])

    @classmethod
    def of(cls, values: pa.BinaryArray) -> _Column:
        """The padded matrix of a binary array (nulls are empty)."""
        values = values.fill_null(b"")
        offsets, data = _buffers(values)
        lengths = np.diff(offsets)
        width = int(lengths.max(initial=0))
        if len(data) == 0:
            return cls(np.zeros((len(values), width), dtype=np.uint8), lengths)
        index = np.minimum(offsets[:-1, None] + np.arange(width), len(data) - 1)
        return cls(data[index], lengths)


def _buffers(values: pa.BinaryArray) -> tuple[Ints, Bytes]:
    """A binary array's offsets (``len + 1``, from 0) and data, without copying the data."""
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)
    offsets = offsets[values.offset : values.offset + len(values) + 1].astype(np.int64)
    data_buffer = values.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer else np.zeros(0, np.uint8)
    return offsets - offsets[0], data[offsets[0] : offsets[-1]]


def _tagged_varints(tag: int, values: Words) -> _Column:
    """A protobuf tag then a varint per value (7 bits a byte, low bits first)."""
    groups = np.ones(len(values), dtype=np.int64)
    widest = 1
    for k in range(1, 10):
        longer = values >= np.uint64(1 << (7 * k))
        if not longer.any():
            break
        groups += longer
        widest = k + 1
    rows = np.empty((len(values), widest + 1), dtype=np.uint8)
    rows[:, 0] = tag
    for k in range(widest):
        low7 = ((values >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        rows[:, k + 1] = np.where(k < groups - 1, low7 | 0x80, low7)
    return _Column(rows, groups + 1)


def _encode(values: pa.Array, dtype: Dtype) -> _Column:
    null = values.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
    if dtype == "float64":
        doubles = values.to_numpy(zero_copy_only=False).astype("<f8")
        rows = np.empty((len(values), 9), dtype=np.uint8)
        rows[:, 0] = _TAG_DOUBLE
        rows[:, 1:] = doubles.view(np.uint8).reshape(-1, 8)
        return _Column(rows, np.where(null, 0, 9))
    if dtype == "int64":
        ints = values.fill_null(0).to_numpy().astype(np.int64)
        column = _tagged_varints(_TAG_INT64, ints.view(np.uint64))
        return _Column(column.rows, np.where(null, 0, column.lengths))
    raw = pc.cast(values, pa.binary())
    sizes = pc.binary_length(raw).fill_null(0).to_numpy().astype(np.uint64)
    head = _tagged_varints(_TAG_STRING, sizes).binary()
    return _Column.of(pc.binary_join_element_wise(head, raw, _EMPTY))


def encode_values(values: pa.Array, dtype: Dtype) -> pa.BinaryArray:
    """Serialised ``ValueProto`` per value, byte-identical to Feast's materialize.

    Args:
        values: a column of the snapshots (int64, float64 or string).
        dtype: the feature's catalog type.

    Returns:
        ``Value(int64_val=...)``/``double_val``/``string_val`` bytes; a null (and a NaN, which
        Feast treats as null) is the empty message ``b""``.
    """
    return _encode(values, dtype).binary()


def value_texts(values: pa.Array, dtype: Dtype) -> pa.StringArray:
    """Feast's SQLite ``value_text``: ``str()`` of the value, null for a null (or NaN).

    Arrow prints a double with the shortest digits that read back exactly, as Python does,
    but writes ``26`` for ``26.0`` and chooses exponent notation by other rules: integral
    values get Python's ``.0``, and whatever Arrow writes with an exponent, or Python would
    (below 1e-4 or from 1e16 on), goes through ``repr``.
    """
    if dtype != "float64":  # Arrow prints an int64 as Python does; a string is itself
        return pc.cast(values, pa.string())
    doubles = values.to_numpy(zero_copy_only=False).astype(np.float64)
    null = values.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
    texts = pc.cast(pa.array(doubles), pa.string())
    finite = np.isfinite(doubles)
    with np.errstate(invalid="ignore"):  # NaN and infinities are not integral
        integral = finite & (doubles == np.round(doubles))
    texts = pc.if_else(pa.array(integral), pc.binary_join_element_wise(texts, ".0", ""), texts)
    size = np.abs(doubles)
    python_exponent = (size >= 1e16) | ((size < 1e-4) & (size > 0))
    arrow_exponent = pc.match_substring(texts, "e").to_numpy(zero_copy_only=False)
    odd = np.flatnonzero(finite & ~null & (python_exponent | arrow_exponent))
    if len(odd):
        out = texts.to_numpy(zero_copy_only=False).astype(object)
        out[odd] = [repr(float(v)) for v in doubles[odd]]
        texts = pa.array(out, pa.string())
    return pc.if_else(pa.array(null), pa.scalar(None, pa.string()), texts)


_EMPTY = pa.scalar(b"", pa.binary())


def _join(*parts: pa.Array | bytes, skip_nulls: bool = False) -> pa.BinaryArray:
    """Concatenates binary columns and constants row by row."""
    args = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p for p in parts]
    return pc.binary_join_element_wise(
        *args, _EMPTY, null_handling="skip" if skip_nulls else "emit_null"
    )


def _decimal(numbers: npt.NDArray[Any]) -> pa.BinaryArray:
    return pc.cast(pc.cast(pa.array(numbers), pa.string()), pa.binary())


def _lengths(values: pa.BinaryArray) -> Ints:
    return pc.binary_length(values).to_numpy().astype(np.int64)


def entity_keys(customer_ids: pa.Array, serialization_version: int = 3) -> pa.BinaryArray:
    """Feast's serialised entity keys (``serialize_entity_key``) for string customer ids."""
    empty = serialize_entity_key(
        EntityKeyProto(join_keys=[ENTITY], entity_values=[ValueProto(string_val="")]),
        entity_key_serialization_version=serialization_version,
    )
    if serialization_version < 3 or not empty.endswith(b"\x00" * 4):
        raise ValueError(f"entity key serialisation version {serialization_version} unsupported")
    # version 3 ends with the id: its little-endian uint32 length, then its UTF-8 bytes
    raw = pc.cast(customer_ids, pa.binary())
    sizes = _lengths(raw).astype("<u4").view(np.uint8).reshape(-1, 4)
    return _join(empty[:-4], _Column(sizes, np.full(len(raw), 4)).binary(), raw)


# -- reading ----------------------------------------------------------------------------------


def latest_rows(
    snapshot_path: Path, columns: Sequence[str], as_of: datetime | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Each customer's latest snapshot row at or before ``as_of``, in batches.

    Rows come in the byte order of Feast's serialised entity keys (id length, then id), which
    is the order of SQLite's primary key, so the new table is written front to back.
    """
    source = snapshot_path / "**" / "*.parquet" if snapshot_path.is_dir() else snapshot_path
    selected = ", ".join(_quote(c) for c in dict.fromkeys([ENTITY, TIMESTAMP_FIELD, *columns]))
    key, ts = _quote(ENTITY), _quote(TIMESTAMP_FIELD)
    size = f"octet_length(encode({key}))"
    query = (
        f"SELECT {selected} FROM read_parquet($source) WHERE {key} IS NOT NULL"
        + (f" AND {ts} <= $as_of" if as_of is not None else "")
        + f" QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {ts} DESC) = 1"
        # the key's length is a little-endian uint32: its low byte sorts first
        f" ORDER BY {size} % 256, {size} // 256 % 256, {size} // 65536 % 256,"
        f" {size} // 16777216, encode({key})"
    )
    params: dict[str, object] = {"source": str(source)}
    if as_of is not None:
        params["as_of"] = as_of
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield from con.sql(query, params=params).to_arrow_reader(batch_rows)
    finally:
        con.close()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- loading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _View:
    """A feature view as the writers need it: Feast's object and the catalog's features."""

    table: FeatureView
    specs: list[FeatureSpec]


@dataclass(frozen=True)
class _Batch:
    """One batch of latest rows, with what every writer needs encoded once."""

    rows: pa.RecordBatch
    keys: pa.BinaryArray  # Feast's serialised entity keys
    stamps: list[datetime]  # the batch's distinct snapshot times, UTC
    stamp_index: Ints  # each row's position in ``stamps``
    values: dict[str, _Column]

    def take(self, indices: Ints) -> _Batch:
        """The batch restricted to some of its rows."""
        chosen = pa.array(indices)
        return _Batch(
            rows=self.rows.take(chosen),
            keys=self.keys.take(chosen),
            stamps=self.stamps,
            stamp_index=self.stamp_index[indices],
            values={name: column.take(indices) for name, column in self.values.items()},
        )


class _Writer(Protocol):
    def prepare(self, batch: _Batch) -> Callable[[LoadReport], None]:
        """Encodes a batch (main thread); the result writes it (background thread)."""
        ...

    def finish(self, report: LoadReport) -> None:
        """Makes everything written visible (after the last batch was written)."""
        ...

    def close(self) -> None:
        """Releases connections; undoes an unfinished load."""
        ...


def load_latest_snapshot(
    store: FeatureStore,
    catalog: FeatureCatalog,
    snapshot_path: str | Path,
    as_of: datetime | None = None,
    batch_rows: int = 10_000,
) -> LoadReport:
    """Loads each customer's latest snapshot into the store's online store, fast.

    Reads through Feast's API afterwards return exactly what ``store.materialize`` would have
    written. A customer's view already holding newer state than the snapshot (a real-time
    update) is left as it is, so loading an older snapshot never moves a customer back.

    Args:
        store: a Feast store with the journey definitions applied (SQLite or Redis online).
        catalog: the feature catalog behind those definitions.
        snapshot_path: the snapshot Parquet folder (or one file).
        as_of: ignore snapshot rows after this time; the latest row per customer otherwise.
        batch_rows: customers encoded and written at a time (bounds memory).

    Returns:
        Counts and timing of the load.
    """
    started = time.perf_counter()
    views = [_registered_view(store, catalog, name) for name in catalog.views]
    kind = store.config.online_store.type
    report = LoadReport(store=kind, per_view=dict.fromkeys(catalog.views, 0))
    writer: _Writer
    if kind == "sqlite":
        writer = _SqliteWriter(store, views)
    elif kind == "redis":
        writer = _RedisWriter(store, views)
    else:
        raise ValueError(f"fast loading supports the sqlite and redis online stores, not {kind}")
    version = store.config.entity_key_serialization_version
    # one batch is written in the background while the next one is read and encoded
    background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="online-load")
    pending: Future[None] | None = None
    try:
        batches = latest_rows(Path(snapshot_path), catalog.names, as_of, batch_rows)
        for rows in _small_first(batches, max(batch_rows // 8, 1)):
            write = writer.prepare(_encode_batch(rows, catalog, version))
            if pending is not None:
                pending.result()
            pending = background.submit(write, report)
            report.customers += rows.num_rows
        if pending is not None:
            pending.result()
        writer.finish(report)
    finally:
        background.shutdown(wait=True)
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


def _small_first(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """The batches, the first one cut short so that the writing thread starts early."""
    for i, batch in enumerate(batches):
        if i == 0 and batch.num_rows > rows:
            yield batch.slice(0, rows)
            batch = batch.slice(rows)
        yield batch


def _registered_view(store: FeatureStore, catalog: FeatureCatalog, name: str) -> _View:
    table = store.get_feature_view(name)
    specs = catalog.view_features(name)
    if [f.name for f in table.features] != [s.name for s in specs]:
        raise ValueError(
            f"feature view {name} in the registry differs from the catalog: apply the "
            "definitions first (journeyml features apply)"
        )
    return _View(table, specs)


def _encode_batch(rows: pa.RecordBatch, catalog: FeatureCatalog, version: int) -> _Batch:
    stamps = rows.column(TIMESTAMP_FIELD)
    distinct = pc.unique(stamps)
    return _Batch(
        rows=rows,
        keys=entity_keys(rows.column(ENTITY), version),
        stamps=[s if s.tzinfo else s.replace(tzinfo=UTC) for s in distinct.to_pylist()],
        stamp_index=pc.index_in(stamps, distinct).to_numpy().astype(np.int64),
        values={s.name: _encode(rows.column(s.name), s.dtype) for s in catalog.features},
    )


# -- SQLite -----------------------------------------------------------------------------------

_BUILD_SUFFIX = "__journeyml_load"
_RETIRED_SUFFIX = "__journeyml_retired"
_REQUIRED_COLUMNS = ("entity_key", "feature_name", "value", "value_text", "event_ts", "created_ts")


@dataclass(frozen=True)
class _SqliteTable:
    """One view's live table (Feast's), the table the load builds, and its column layout."""

    view: _View
    live: str
    columns: list[tuple[str, str]]  # the live table's columns and declared types, in order
    has_num: bool  # Feast's optional value_num column
    order: list[int]  # the view's features in primary-key order (by name)

    @property
    def build(self) -> str:
        return self.live + _BUILD_SUFFIX

    @property
    def retired(self) -> str:
        return self.live + _RETIRED_SUFFIX


class _SqliteWriter:
    """Builds each view's table afresh beside Feast's, then swaps it in atomically.

    Feast's table (``<project>_<view>``) holds one row per (entity key, feature) under the
    primary key ``(entity_key, feature_name)``; Feast reads it only by ``entity_key IN (...)``
    and writes it by upserting on that key. The new table has the same columns and primary
    key but is ``WITHOUT ROWID`` (one B-tree instead of Feast's rowid table, primary-key
    index and ``entity_key`` index), and it is written in key order, front to back.

    A batch reaches SQLite as two bound blobs per view: every customer's ValueProtos side by
    side (each in a fixed slot; the lengths of values that differ in length up front as
    decimal digits) and their ``value_text`` laid out alike. ``INSERT ... SELECT`` over
    customers x features cuts them into Feast's one-row-per-value layout with ``substr``, so
    Python binds a few parameters per batch instead of six per value.

    Feast's ``<table>_ek`` index (on ``entity_key``, a prefix of the primary key, so it serves
    no query) gives way to an empty partial index of that name on the new table: Feast's
    ``CREATE INDEX IF NOT EXISTS`` (run by every ``feast apply``) then finds it and does not
    index millions of rows again. The live table's own is dropped when the load starts (reads
    use the primary key); if the load fails, the next ``feast apply`` rebuilds it.
    """

    _PRAGMAS: ClassVar[dict[str, str]] = {
        # No fsync per batch while building the hidden table. The swap's commit runs with the
        # database's own setting again, and its fsync of the database file covers every page
        # the build wrote before the new table becomes visible.
        "synchronous": "OFF",
        "cache_size": "-262144",
        "temp_store": "MEMORY",
        # This build of SQLite zeroes every freed page (SECURE_DELETE); dropping the replaced
        # table would rewrite (and journal) all of it. FAST still zeroes deleted content on
        # pages written anyway; the freed pages are reused by the next load.
        "secure_delete": "FAST",
    }

    def __init__(self, store: FeatureStore, views: list[_View]):
        config = store.config
        if getattr(config.online_store, "vector_enabled", False):
            raise NotImplementedError("fast loading does not write SQLite vector columns")
        self.conn = sqlite3.connect(
            SqliteOnlineStore._get_db_path(config),
            timeout=60,
            isolation_level=None,
            check_same_thread=False,  # opened here, used by the writing thread
        )
        self.finished = False
        try:
            self._setup(store, views)
        except BaseException:
            self.conn.close()
            raise

    def _setup(self, store: FeatureStore, views: list[_View]) -> None:
        config = store.config
        self.saved = {p: self.conn.execute(f"PRAGMA {p}").fetchone()[0] for p in self._PRAGMAS}
        for pragma, value in self._PRAGMAS.items():
            self.conn.execute(f"PRAGMA {pragma} = {value}")
        adapter = sqlite3.adapters.get((datetime, sqlite3.PrepareProtocol))
        # event_ts as Feast binds it: the naive UTC datetime through the registered adapter
        self.adapt: Callable[[datetime], Any] = adapter or (lambda ts: ts)
        versioning = config.registry.enable_online_feature_view_versioning
        self.tables = [
            self._table(view, compute_table_id(config.project, view.table, versioning))
            for view in views
        ]
        self.oldest: Any = None  # the oldest snapshot time written, as stored
        self.customers = 0
        self.temp_tables = ["customers"]
        self.conn.execute("CREATE TEMP TABLE journeyml_customers (i INTEGER PRIMARY KEY, k, ts)")
        self.expand_sql: list[dict[bool, str]] = []
        for n, t in enumerate(self.tables):
            self.temp_tables.append(f"slots_{n}")
            self.conn.execute(f"CREATE TEMP TABLE journeyml_slots_{n} ({', '.join(_SLOT_COLUMNS)})")
            if t.has_num:
                self.temp_tables.append(f"num_{n}")
                raw = ", ".join(f"r{i}" for i in range(len(t.view.specs)))
                self.conn.execute(
                    f"CREATE TEMP TABLE journeyml_num_{n} (i INTEGER PRIMARY KEY, {raw})"
                )
            self.expand_sql.append({nulls: self._expand(n, t, nulls) for nulls in (False, True)})
        self._transaction("BEGIN IMMEDIATE", self._create_build_tables())

    def _table(self, view: _View, live: str) -> _SqliteTable:
        info = self.conn.execute(f"PRAGMA table_info({_quote(live)})").fetchall()
        columns = [(str(row[1]), str(row[2])) for row in info]
        missing = set(_REQUIRED_COLUMNS) - {name for name, _ in columns}
        if missing:
            raise ValueError(
                f"online table {live} is missing or lacks {sorted(missing)}: apply the "
                "definitions first (journeyml features apply)"
            )
        return _SqliteTable(
            view=view,
            live=live,
            columns=columns,
            has_num=any(name == "value_num" for name, _ in columns),
            order=_primary_key_order(view.specs),
        )

    def _create_build_tables(self) -> Iterator[str]:
        for t in self.tables:
            yield f"DROP TABLE IF EXISTS {_quote(t.build)}"  # left by an interrupted load
            yield f"DROP TABLE IF EXISTS {_quote(t.retired)}"
            yield f"DROP INDEX IF EXISTS {_quote(t.live + '_ek')}"
            columns = ", ".join(f"{_quote(name)} {decl}".rstrip() for name, decl in t.columns)
            yield (
                f"CREATE TABLE {_quote(t.build)} ({columns}, "
                "PRIMARY KEY (entity_key, feature_name)) WITHOUT ROWID"
            )
            yield (
                f"CREATE INDEX {_quote(t.live + '_ek')} ON {_quote(t.build)} (entity_key) WHERE 0"
            )

    def _transaction(self, begin: str, statements: Iterator[str]) -> None:
        self.conn.execute(begin)
        try:
            for sql in statements:
                self.conn.execute(sql)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _expand(self, n: int, t: _SqliteTable, nulls: bool) -> str:
        """SQL cutting a batch's blobs into one row per value, appended in key order.

        Parameters: the value blob, the text blob, and their bytes per customer.
        """

        def cut(blob: str, row: str, p: str) -> tuple[str, str]:
            base = f"c.i * {row}"
            size = (
                f"coalesce(n.{p}fixed, "
                f"CAST(substr({blob}, {base} + n.{p}length, n.{p}digits) AS INTEGER))"
            )
            return f"substr({blob}, {base} + n.{p}slot, {size})", size

        value, size = cut("?1", "?3", "")
        text = f"CAST({cut('?2', '?4', 't')[0]} AS TEXT)"
        # integers of different widths sit space-padded in equally wide slots: SQLite prints
        # an int64 as Python does, so reading the number back saves finding its length
        number = "CAST(CAST(substr(?2, c.i * ?4 + n.tslot, n.tfixed) AS INTEGER) AS TEXT)"
        text = f"CASE WHEN n.padded THEN {number} ELSE {text} END"
        if nulls:  # a null value (the empty message) has a null value_text
            text = f"CASE WHEN {size} = 0 THEN NULL ELSE {text} END"
        columns, picks = ["value", "value_text"], [value, text]
        source = f"temp.journeyml_customers AS c CROSS JOIN temp.journeyml_slots_{n} AS n"
        if t.has_num:
            # Feast's value_num: float() of a number, null for strings and nulls
            cast = {"int64": "CAST(r.r{i} AS REAL)", "float64": "r.r{i}", "string": "NULL"}
            specs = t.view.specs
            columns.append("value_num")
            picks.append(_by_position([cast[specs[i].dtype].format(i=i) for i in t.order]))
            source += f" CROSS JOIN temp.journeyml_num_{n} AS r ON r.i = c.i"
        return (
            f"INSERT INTO {_quote(t.build)} (entity_key, feature_name, {', '.join(columns)}, "
            f"event_ts, created_ts) SELECT c.k, n.name, {', '.join(picks)}, c.ts, NULL "
            f"FROM {source} ORDER BY c.i, n.pos"
        )

    def prepare(self, batch: _Batch) -> Callable[[LoadReport], None]:
        stamps = [self.adapt(to_naive_utc(s)) for s in batch.stamps]
        keys = batch.keys.to_pylist()
        event_ts = [stamps[i] for i in batch.stamp_index]
        customers = list(zip(range(len(keys)), keys, event_ts, strict=True))
        staged = [self._stage(t, batch, len(keys)) for t in self.tables]
        oldest = min(stamps) if stamps else None

        def write(report: LoadReport) -> None:
            conn = self.conn
            conn.execute("BEGIN")
            try:
                conn.execute("DELETE FROM temp.journeyml_customers")
                conn.executemany("INSERT INTO temp.journeyml_customers VALUES (?, ?, ?)", customers)
                for n, (t, stage) in enumerate(zip(self.tables, staged, strict=True)):
                    conn.execute(f"DELETE FROM temp.journeyml_slots_{n}")
                    marks = ", ".join("?" * len(_SLOT_COLUMNS))
                    conn.executemany(
                        f"INSERT INTO temp.journeyml_slots_{n} VALUES ({marks})", stage.slots
                    )
                    if stage.num:
                        conn.execute(f"DELETE FROM temp.journeyml_num_{n}")
                        marks = ", ".join("?" * len(stage.num[0]))
                        conn.executemany(
                            f"INSERT INTO temp.journeyml_num_{n} VALUES ({marks})", stage.num
                        )
                    if customers:
                        conn.execute(self.expand_sql[n][stage.nulls], stage.params)
                    report.add(t.view.table.name, len(keys), len(keys), len(t.view.specs))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self.customers += len(keys)
            if oldest is not None and (self.oldest is None or oldest < self.oldest):
                self.oldest = oldest

        return write

    def _stage(self, t: _SqliteTable, batch: _Batch, customers: int) -> _Staged:
        """One view of a batch as SQLite gets it: packed blobs, slots, raw numbers."""
        specs = [t.view.specs[i] for i in t.order]
        values = [batch.values[s.name] for s in specs]
        texts = [
            _Column.of(pc.cast(value_texts(batch.rows.column(s.name), s.dtype), pa.binary()))
            for s in specs
        ]
        padded = [
            s.dtype == "int64" and not _equally_long(c.lengths)
            for s, c in zip(specs, texts, strict=True)
        ]
        for i, pad in enumerate(padded):
            if pad:  # right-padded with spaces, which SQLite's CAST AS INTEGER ignores
                rows = texts[i].rows.copy()
                rows[np.arange(rows.shape[1]) >= texts[i].lengths[:, None]] = ord(" ")
                texts[i] = _Column(rows, np.full(len(rows), rows.shape[1], dtype=np.int64))
        value_blob, value_layout = _packed(values)
        text_blob, text_layout = _packed(texts)
        slots = [
            (pos, spec.name, *value, *text, int(pad))
            for pos, (spec, value, text, pad) in enumerate(
                zip(specs, value_layout.slots, text_layout.slots, padded, strict=True)
            )
        ]
        num: list[tuple[Any, ...]] = []
        if t.has_num:
            raw = [batch.rows.column(s.name) for s in t.view.specs]
            columns = [c.to_pylist() if c.type != pa.float64() else _floats(c) for c in raw]
            num = list(zip(range(customers), *columns, strict=True))
        return _Staged(
            params=(value_blob, text_blob, value_layout.row, text_layout.row),
            slots=slots,
            num=num,
            nulls=any(bool((c.lengths == 0).any()) for c in values),
        )

    def finish(self, report: LoadReport) -> None:
        """Carries newer and unknown rows over from the live tables, then swaps the tables.

        One write transaction: no other writer can change a live table between the carry-over
        and the rename, and a reader sees either every old table or every new one.
        """
        if self.customers == 0:
            return  # nothing read: leave the store as it is (close drops the empty tables)
        self.conn.execute(f"PRAGMA synchronous = {self.saved['synchronous']}")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for t in self.tables:
                newer = self._carry_over(t)
                features = len(t.view.specs)
                report.per_view[t.view.table.name] -= newer
                report.rows -= newer * features
                report.skipped_newer += newer
            for t in self.tables:
                self.conn.execute(f"ALTER TABLE {_quote(t.live)} RENAME TO {_quote(t.retired)}")
                self.conn.execute(f"ALTER TABLE {_quote(t.build)} RENAME TO {_quote(t.live)}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.finished = True
        # the old tables are out of sight; freeing their pages is a transaction of its own
        self._transaction("BEGIN", (f"DROP TABLE {_quote(t.retired)}" for t in self.tables))

    def _carry_over(self, t: _SqliteTable) -> int:
        """Copies the live rows the snapshot must not replace into the new table.

        Those are the rows of customers the snapshot does not hold, and rows whose
        ``event_ts`` is newer than the snapshot's row for the same key (a real-time update).
        Only rows newer than the oldest snapshot time can be newer than their snapshot row,
        so one scan filtered on ``event_ts`` finds them; customers missing from the snapshot
        are found by stepping through the live table's distinct keys.

        Returns:
            How many customers of the snapshot keep newer state in this view.
        """
        live, build = _quote(t.live), _quote(t.build)
        columns = ", ".join(_quote(name) for name, _ in t.columns)
        updates = ", ".join(
            f"{_quote(name)} = excluded.{_quote(name)}"
            for name, _ in t.columns
            if name not in ("entity_key", "feature_name")
        )
        self.conn.execute("DROP TABLE IF EXISTS temp.journeyml_newer")
        self.conn.execute(
            f"CREATE TEMP TABLE journeyml_newer AS SELECT {columns} FROM {live} WHERE event_ts > ?",
            (self.oldest,),
        )
        (newer,) = self.conn.execute(
            "SELECT count(DISTINCT l.entity_key) FROM temp.journeyml_newer AS l "
            f"CROSS JOIN {build} AS b ON b.entity_key = l.entity_key "
            "AND b.feature_name = l.feature_name WHERE l.event_ts > b.event_ts"
        ).fetchone()
        # every row of a customer the snapshot does not hold
        self.conn.execute(
            "WITH RECURSIVE keys(k) AS ("
            f" SELECT (SELECT entity_key FROM {live} ORDER BY entity_key LIMIT 1)"
            " UNION ALL"
            f" SELECT (SELECT entity_key FROM {live} WHERE entity_key > keys.k"
            " ORDER BY entity_key LIMIT 1) FROM keys WHERE keys.k IS NOT NULL)"
            f" INSERT INTO {build} ({columns}) SELECT {columns} FROM {live}"
            " WHERE entity_key IN (SELECT k FROM keys WHERE k IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {build} AS b WHERE b.entity_key = keys.k))"
        )
        # rows newer than the snapshot's
        self.conn.execute(
            f"INSERT INTO {build} ({columns}) SELECT {columns} FROM temp.journeyml_newer "
            "WHERE true ON CONFLICT (entity_key, feature_name) DO UPDATE SET "
            f"{updates} WHERE excluded.event_ts > {build}.event_ts"
        )
        self.conn.execute("DROP TABLE temp.journeyml_newer")
        return int(newer)

    def close(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            if not self.finished:  # an interrupted load: its hidden tables go
                self._transaction(
                    "BEGIN IMMEDIATE",
                    (f"DROP TABLE IF EXISTS {_quote(t.build)}" for t in self.tables),
                )
            for name in self.temp_tables:
                self.conn.execute(f"DROP TABLE IF EXISTS temp.journeyml_{name}")
            for pragma, value in self.saved.items():
                self.conn.execute(f"PRAGMA {pragma} = {value}")
        except sqlite3.Error:
            # the next load drops whatever is left over
            logger.warning("could not clean up after the online load", exc_info=True)
        finally:
            self.conn.close()


@dataclass(frozen=True)
class _Staged:
    """One view of one batch, ready for SQLite."""

    params: tuple[bytes, bytes, int, int]  # value blob, text blob, their bytes per customer
    slots: list[tuple[Any, ...]]  # per feature: position, name, where its value and text sit
    num: list[tuple[Any, ...]]  # per customer: position, raw numbers (for value_num)
    nulls: bool  # some value is null (its value_text must be null)


_SLOT_COLUMNS = [
    "pos INTEGER PRIMARY KEY",
    "name",
    "slot",
    "length",
    "digits",
    "fixed",
    "tslot",
    "tlength",
    "tdigits",
    "tfixed",
    "padded",
]


def _primary_key_order(specs: list[FeatureSpec]) -> list[int]:
    """Features in primary-key order: names by UTF-8 bytes, the order Python sorts str."""
    return sorted(range(len(specs)), key=lambda i: specs[i].name)


def _floats(values: pa.Array) -> list[float | None]:
    return [None if v is None or v != v else v for v in values.to_pylist()]


@dataclass(frozen=True)
class _Layout:
    """Where each column's value sits in a customer's stretch of a packed blob."""

    row: int  # bytes per customer
    slots: list[tuple[int, int, int, int | None]]  # per column: slot, length, digits, fixed


def _equally_long(lengths: Ints) -> bool:
    return len(lengths) == 0 or bool((lengths == lengths[0]).all())


def _packed(columns: list[_Column]) -> tuple[bytes, _Layout]:
    """Every customer's values side by side, customers one after another, in one blob.

    A customer's stretch starts with the length of each value whose column has values of
    different lengths, as ``digits`` decimal digits, then holds each value in a slot as wide
    as its column's longest. Per column: the 1-based offset (within the stretch) of its slot
    and of its length digits, the number of digits, and the length of all its values when
    they are all equally long (then there are no digits to read).
    """
    lengths = np.stack([c.lengths for c in columns], axis=1)
    widths = [c.rows.shape[1] for c in columns]
    fixed = [
        int(lengths[0, c])
        if len(lengths) and bool((lengths[:, c] == lengths[0, c]).all())
        else None
        for c in range(len(columns))
    ]
    varying = [c for c in range(len(columns)) if fixed[c] is None]
    digits = len(str(max(widths, default=0)))
    powers = 10 ** np.arange(digits - 1, -1, -1)
    text = ((lengths[:, varying, None] // powers) % 10 + ord("0")).astype(np.uint8)
    matrix = np.hstack([text.reshape(len(lengths), -1), *(c.rows for c in columns)])
    starts = 1 + digits * len(varying) + np.concatenate([[0], np.cumsum(widths)[:-1]])
    where = {c: 1 + i * digits for i, c in enumerate(varying)}
    slots = [(int(starts[c]), where.get(c, 0), digits, fixed[c]) for c in range(len(columns))]
    return matrix.tobytes(), _Layout(int(matrix.shape[1]), slots)


def _by_position(exprs: list[str], low: int = 0, high: int | None = None) -> str:
    """SQL picking ``exprs[n.pos]`` by binary search: a few comparisons per row, not ~100."""
    high = len(exprs) if high is None else high
    if high - low <= 4:
        arms = " ".join(f"WHEN {i} THEN {exprs[i]}" for i in range(low, high))
        return f"CASE n.pos {arms} END"
    mid = (low + high) // 2
    return (
        f"CASE WHEN n.pos < {mid} THEN {_by_position(exprs, low, mid)} "
        f"ELSE {_by_position(exprs, mid, high)} END"
    )


# -- Redis ------------------------------------------------------------------------------------


def _bulk(value: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _bulks(values: pa.BinaryArray) -> pa.BinaryArray:
    return _join(b"$", _decimal(_lengths(values)), b"\r\n", values, b"\r\n")


# RDB serialisation (the DUMP/RESTORE payload): an object type, the object, the RDB version
# (little-endian uint16) and a CRC-64 (Jones polynomial, reflected, little-endian) of it all.
_RDB_TYPE_HASH = 4  # a length, then field and value strings: every Redis since 2.x loads it
_RDB_VERSION = b"\x09\x00"  # Redis >= 5 accepts payloads of this version


def _rdb_length(n: int) -> bytes:
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return bytes([0x40 | n >> 8, n & 0xFF])
    return b"\x80" + n.to_bytes(4, "big")


def _rdb_string(value: bytes) -> bytes:
    return _rdb_length(len(value)) + value


def _rdb_lengths(lengths: Ints) -> pa.BinaryArray:
    """RDB length prefixes: 1 byte below 64, 2 bytes below 16384, else 0x80 and 4 bytes."""
    if len(lengths) == 0 or int(lengths.max()) < 1 << 6:
        return _Column(lengths.astype(np.uint8)[:, None], np.ones(len(lengths), np.int64)).binary()
    small, mid = lengths < 1 << 6, lengths < 1 << 14
    rows = np.zeros((len(lengths), 5), dtype=np.uint8)
    rows[:, 0] = np.where(small, lengths, np.where(mid, 0x40 | (lengths >> 8), 0x80))
    rows[:, 1] = np.where(mid, lengths & 0xFF, (lengths >> 24) & 0xFF)
    rows[:, 2] = (lengths >> 16) & 0xFF
    rows[:, 3] = (lengths >> 8) & 0xFF
    rows[:, 4] = lengths & 0xFF
    return _Column(rows, np.where(small, 1, np.where(mid, 2, 5))).binary()


def _crc64_tables() -> Words:
    """Slicing-by-8 tables of Redis's CRC-64: ``[k][b]`` is byte ``b`` then ``k`` zero bytes."""
    poly = np.uint64(0x95AC9329AC4BC9B5)  # 0xad93d23594c935a9, reflected
    table = np.arange(256, dtype=np.uint64)
    for _ in range(8):
        table = np.where(
            table & np.uint64(1), (table >> np.uint64(1)) ^ poly, table >> np.uint64(1)
        )
    tables = np.empty((8, 256), dtype=np.uint64)
    tables[0] = table
    for k in range(1, 8):
        previous = tables[k - 1]
        tables[k] = (previous >> np.uint64(8)) ^ table[(previous & np.uint64(0xFF)).astype(np.intp)]
    return tables


_CRC64 = _crc64_tables()


def crc64(values: pa.BinaryArray) -> Words:
    """Redis's CRC-64 of each value, all values at once.

    The CRC starts at zero, so leading zero bytes leave it unchanged: the values are
    right-aligned in a zero-padded matrix and processed eight bytes a step, in lockstep.
    """
    offsets, data = _buffers(values)
    lengths = np.diff(offsets)
    width = -(-int(lengths.max(initial=0)) // 8) * 8
    matrix = np.zeros((len(values), width), dtype=np.uint8)
    for i, (start, end) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        matrix[i, width - (end - start) :] = data[start:end]
    words = np.ascontiguousarray(matrix.view("<u8").T)  # (width / 8, n)
    crc = np.zeros(len(values), dtype=np.uint64)
    t = _CRC64
    for word in words:
        b = (crc ^ word).view(np.uint8).reshape(-1, 8)  # little-endian: byte 0 comes first
        crc = (t[7][b[:, 0]] ^ t[6][b[:, 1]] ^ t[5][b[:, 2]] ^ t[4][b[:, 3]]) ^ (
            t[3][b[:, 4]] ^ t[2][b[:, 5]] ^ t[1][b[:, 6]] ^ t[0][b[:, 7]]
        )
    return crc


def _uint64_le(values: Words) -> pa.BinaryArray:
    rows = values.astype("<u8").view(np.uint8).reshape(-1, 8)
    return _Column(rows, np.full(len(values), 8, dtype=np.int64)).binary()


class _RedisWriter:
    """Writes Feast's Redis hashes whole, with ``RESTORE``.

    Layout (Feast's ``RedisOnlineStore``): one hash per customer at the serialised entity key
    followed by the project name; field ``mmh3("<view>:<feature>")`` holds the ValueProto,
    ``_ts:<view>`` the view's event time as a serialised ``Timestamp``.

    A customer's hash (every view) is serialised as an RDB hash, the ``DUMP`` format, and sent
    as ``RESTORE key ttl payload``: the server builds the hash in one pass, in the encoding its
    own ``hash-max-listpack-*`` settings choose, as ``HSET`` would, several times faster than it
    applies an ``HSET`` of ~140 fields (each field of which it looks up in the hash).

    - A new customer: ``RESTORE`` without ``REPLACE``, which fails on a key that exists, so it
      only ever creates a hash.
    - A customer whose hash exists: its stored ``_ts`` fields and field count are read
      (pipelined). If no view is newer than the snapshot and the hash holds exactly as many
      fields as this load writes, a script replaces it, checking atomically that those
      ``_ts`` fields and the count are still what was read (so a concurrent real-time write
      is never lost). Otherwise the views that are not newer are written with ``HSET``, as
      Feast does, with Feast's window between the read and the write.
    """

    def __init__(self, store: FeatureStore, views: list[_View]):
        config = store.config
        online = config.online_store
        if online.redis_type == "redis_cluster":
            raise NotImplementedError("fast loading into a Redis cluster is not supported")
        client = store._get_provider().online_store._get_client(online)  # type: ignore[attr-defined]
        self.pool = client.connection_pool
        self.connection = self.pool.get_connection()
        self.ttl: int | None = online.key_ttl_seconds
        self.project = config.project.encode()
        versioning = config.registry.enable_online_feature_view_versioning
        self.views = views
        names = [compute_versioned_name(v.table, versioning) for v in views]
        self.ts_fields = [f"_ts:{name}".encode() for name in names]
        fields = [
            [_mmh3(f"{name}:{s.name}") for s in v.specs]
            for name, v in zip(names, views, strict=True)
        ]
        self.pairs = sum(len(v.specs) + 1 for v in views)
        # HSET framing
        self.ts_bulks = [_bulk(f) for f in self.ts_fields]
        self.field_bulks = [[_bulk(f) + b"$" for f in fs] for fs in fields]
        self.check = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(views))
        # RESTORE framing
        self.rdb_ts_fields = [_rdb_string(f) for f in self.ts_fields]
        self.rdb_fields = [[_rdb_string(f) for f in fs] for fs in fields]
        self.rdb_head = bytes([_RDB_TYPE_HASH]) + _rdb_length(self.pairs)
        self.restore_ttl = _bulk(b"%d" % (self.ttl * 1000 if self.ttl else 0))
        self.replace_args = b"".join(
            [_bulk(b"%d" % self.pairs), _bulk(b"%d" % len(views)), *self.ts_bulks]
        )
        # A server that refuses RESTORE or scripts (renamed commands, ACLs) still gets every
        # row, through HSET: the faster paths switch themselves off at their first refusal.
        self.restore = True
        self.replace_sha: bytes | None = None
        try:
            self.replace_sha = _bulk(client.script_load(_REPLACE_SCRIPT).encode())
        except ResponseError as error:
            logger.warning("Redis refuses scripts (%s): existing hashes get HSET", error)

    def prepare(self, batch: _Batch) -> Callable[[LoadReport], None]:
        keys = _bulks(_join(batch.keys, self.project))
        payloads = self._payloads(batch)
        restores = _join(b"*4\r\n$7\r\nRESTORE\r\n", keys, self.restore_ttl, payloads)

        def write(report: LoadReport) -> None:
            if not self.restore:
                self._hset(batch, keys, report)
                return
            replies = _roundtrip(self.connection, restores, len(keys))
            refused = _refused(replies, "RESTORE")
            if refused:
                self.restore = False
                rest = np.flatnonzero([isinstance(r, ResponseError) for r in replies])
            else:
                rest = _errors(replies, allowed="BUSYKEY")
            created = len(keys) - len(rest)
            for view in self.views:
                report.add(view.table.name, created, created, len(view.specs))
            if len(rest) and refused:
                self._hset(batch.take(rest), keys.take(pa.array(rest)), report)
            elif len(rest):  # these customers have a hash already
                self._update(
                    batch.take(rest),
                    keys.take(pa.array(rest)),
                    payloads.take(pa.array(rest)),
                    report,
                )

        return write

    def _payloads(self, batch: _Batch) -> pa.BinaryArray:
        """Each customer's hash, every view, as a RESP bulk string of its ``DUMP`` payload."""
        parts: list[pa.Array | bytes] = [self.rdb_head]
        for n, view in enumerate(self.views):
            stamps = [
                self.rdb_ts_fields[n] + _rdb_string(_timestamp(s).SerializeToString())
                for s in batch.stamps
            ]
            parts.append(pc.take(pa.array(stamps, pa.binary()), pa.array(batch.stamp_index)))
            for field_string, spec in zip(self.rdb_fields[n], view.specs, strict=True):
                column = batch.values[spec.name]
                parts += [field_string, _rdb_lengths(column.lengths), column.binary()]
        parts.append(_RDB_VERSION)
        payloads = _join(*parts)
        return _join(
            b"$",
            _decimal(_lengths(payloads) + 8),
            b"\r\n",
            payloads,
            _uint64_le(crc64(payloads)),
            b"\r\n",
        )

    def _update(
        self, batch: _Batch, keys: pa.BinaryArray, payloads: pa.BinaryArray, report: LoadReport
    ) -> None:
        """Existing hashes: replace a hash whole where that loses nothing, else ``HSET``."""
        checks = _join(self.check, keys, b"".join(self.ts_bulks), b"*2\r\n$4\r\nHLEN\r\n", keys)
        replies = _roundtrip(self.connection, checks, 2 * len(keys))
        _errors(replies)
        stored: list[list[bytes | None]] = replies[0::2]
        keep = self._not_newer(stored, batch)
        whole = keep.all(axis=1) & (np.array(replies[1::2], dtype=np.int64) == self.pairs)
        replaced = np.zeros(len(keys), dtype=bool)
        if whole.any() and self.replace_sha is not None:
            rows = np.flatnonzero(whole)
            expected = pa.array(
                [b"".join(_bulk(b"0" if v is None else b"1" + v) for v in stored[i]) for i in rows],
                pa.binary(),
            )
            argc = 8 + 2 * len(self.views)
            commands = _join(
                b"*%d\r\n$7\r\nEVALSHA\r\n" % argc,
                self.replace_sha,
                b"$1\r\n1\r\n",
                keys.take(pa.array(rows)),
                payloads.take(pa.array(rows)),
                self.restore_ttl,
                self.replace_args,
                expected,
            )
            answers = _roundtrip(self.connection, commands, len(rows))
            if _refused(answers, "the replace script"):
                self.replace_sha = None
            else:
                _errors(answers)
                replaced[rows] = np.array(answers, dtype=np.int64) == 1
        if replaced.any():
            done = int(replaced.sum())
            for view in self.views:
                report.add(view.table.name, done, done, len(view.specs))
        rest = np.flatnonzero(~replaced)
        if len(rest):
            self._hset(batch.take(rest), keys.take(pa.array(rest)), report)

    def _hset(self, batch: _Batch, keys: pa.BinaryArray, report: LoadReport) -> None:
        """Feast's way: each view unless its stored ``_ts`` is newer, with ``HSET``."""
        checks = _join(self.check, keys, b"".join(self.ts_bulks))
        stored = _roundtrip(self.connection, checks, len(keys))
        _errors(stored)
        keep = self._not_newer(stored, batch)
        sizes = [2 * len(v.specs) + 2 for v in self.views]
        argc = 2 + keep.astype(np.int64) @ np.array(sizes, dtype=np.int64)
        parts: list[pa.Array | bytes] = [b"*", _decimal(argc), b"\r\n$4\r\nHSET\r\n", keys]
        for n in range(len(self.views)):
            body = self._view_body(n, batch)
            parts.append(pc.if_else(pa.array(keep[:, n]), body, pa.scalar(None, pa.binary())))
        if self.ttl:
            parts += [b"*3\r\n$6\r\nEXPIRE\r\n", keys, _bulk(str(self.ttl).encode())]
        written = keep.any(axis=1)
        commands = pc.filter(_join(*parts, skip_nulls=True), pa.array(written))
        replies = int(written.sum()) * (2 if self.ttl else 1)
        _errors(_roundtrip(self.connection, commands, replies))
        for n, view in enumerate(self.views):
            report.add(view.table.name, len(keys), int(keep[:, n].sum()), len(view.specs))

    def _view_body(self, n: int, batch: _Batch) -> pa.BinaryArray:
        """Each customer's field-value pairs of one view, RESP-framed."""
        parts: list[pa.Array | bytes] = []
        for field_bulk, spec in zip(self.field_bulks[n], self.views[n].specs, strict=True):
            column = batch.values[spec.name]
            parts += [field_bulk, _decimal(column.lengths), b"\r\n", column.binary(), b"\r\n"]
        stamps = [self.ts_bulks[n] + _bulk(_timestamp(s).SerializeToString()) for s in batch.stamps]
        parts.append(pc.take(pa.array(stamps, pa.binary()), pa.array(batch.stamp_index)))
        return _join(*parts)

    def _not_newer(self, stored: list[Any], batch: _Batch) -> npt.NDArray[np.bool_]:
        """Which (customer, view) rows may be written: the stored ``_ts`` is not newer."""
        new = [_nanos(_timestamp(s)) for s in batch.stamps]
        keep = np.ones((len(stored), len(self.views)), dtype=bool)
        parsed: dict[bytes, int] = {}
        for row, stamps in enumerate(stored):
            for n, raw in enumerate(stamps):
                if raw is None:
                    continue
                if raw not in parsed:
                    previous = Timestamp()
                    previous.ParseFromString(raw)
                    parsed[raw] = _nanos(previous)
                keep[row, n] = parsed[raw] <= new[batch.stamp_index[row]]
        return keep

    def finish(self, report: LoadReport) -> None:
        """Every command was answered: nothing is left to make visible."""

    def close(self) -> None:
        self.pool.release(self.connection)


# KEYS[1]: the hash. ARGV: the DUMP payload, the TTL in ms, the field count the payload holds,
# the number of views k, k ``_ts`` field names, then k expected values of those fields
# ("0" when absent, "1" and the bytes otherwise). Replaces the hash only if nothing changed.
_REPLACE_SCRIPT = """
local k = tonumber(ARGV[4])
local names = {}
for i = 1, k do names[i] = ARGV[4 + i] end
local stored = redis.call('HMGET', KEYS[1], unpack(names))
for i = 1, k do
  local expected = ARGV[4 + k + i]
  if stored[i] then
    if expected ~= '1' .. stored[i] then return 0 end
  elseif expected ~= '0' then
    return 0
  end
end
if redis.call('HLEN', KEYS[1]) ~= tonumber(ARGV[3]) then return 0 end
redis.call('RESTORE', KEYS[1], ARGV[2], ARGV[1], 'REPLACE')
return 1
"""


def _refused(replies: list[Any], what: str) -> bool:
    """Whether the server refused a command outright (unknown, forbidden, unreadable)."""
    for reply in replies:
        if isinstance(reply, ResponseError) and not str(reply).startswith("BUSYKEY"):
            logger.warning("Redis refused %s (%s): falling back to HSET", what, reply)
            return True
    return False


def _errors(replies: list[Any], allowed: str | None = None) -> Ints:
    """Positions of error replies starting with ``allowed``; raises any other error."""
    failed = []
    for i, reply in enumerate(replies):
        if isinstance(reply, ResponseError):
            if allowed is None or not str(reply).startswith(allowed):
                raise reply
            failed.append(i)
    return np.array(failed, dtype=np.int64)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _nanos(stamp: Timestamp) -> int:
    return int(stamp.seconds) * 1_000_000_000 + int(stamp.nanos)


def _roundtrip(connection: Any, commands: pa.BinaryArray, replies: int) -> list[Any]:
    """Sends RESP commands held back to back in an Arrow array; returns their replies.

    An error reply is returned as its ``ResponseError`` (the caller decides), after which the
    connection is still in step; anything else going wrong drops the connection.
    """
    if replies == 0:
        return []
    view = _buffers(commands)[1].data  # a memoryview of Arrow's buffer, not a copy
    chunk = 1 << 20
    out: list[Any] = []
    try:
        connection.send_packed_command([view[i : i + chunk] for i in range(0, len(view), chunk)])
        for _ in range(replies):
            try:
                out.append(connection.read_response())
            except ResponseError as error:
                out.append(error)
    except BaseException:
        connection.disconnect()  # replies may be left unread
        raise
    return out
