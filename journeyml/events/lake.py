"""The normalised event lake: its manifest, atomic commits and the reader API.

Layout (see :mod:`journeyml.events.schema`)::

    <lake>/events/event_month=YYYY-MM/<batch>-<n>.parquet
    <lake>/customers.parquet
    <lake>/manifest.json

A new version of the lake is always built in a work folder beside it (``.<lake>.ingest-<batch>``):
files already in the lake are hard-linked there (cheap, and never written to), the new batch
is written, then the new version takes the lake's place in one ``renameat2(RENAME_EXCHANGE)``
(two renames where the kernel lacks it). Until then the lake is untouched, so a failed
validation or a crash leaves it exactly as it was. One writer at a time: a lock on the folder
holding the lake serialises ingests.

Later stages read the lake through :func:`read_events_sql`, :func:`open_events`,
:func:`read_customers_sql` and :func:`load_manifest`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Literal

import duckdb
from pydantic import BaseModel, ConfigDict, ValidationError

from journeyml.events.problems import LakeError
from journeyml.events.schema import (
    CUSTOMERS_FILE,
    EVENTS_DIR,
    MANIFEST_FILE,
    NORMALISED_EVENT_COLUMNS,
    NORMALISED_EVENT_SCHEMA,
    PARTITION_KEY,
    events_glob,
)
from journeyml.events.sources import Format, sql_string

logger = logging.getLogger(__name__)

Mode = Literal["replace", "append"]
MANIFEST_VERSION = 1
ROW_GROUP_SIZE = 122_880

_EMPTY_EVENTS_SQL = (
    "SELECT CAST(NULL AS VARCHAR) AS event_id, CAST(NULL AS VARCHAR) AS customer_id, "
    "CAST(NULL AS TIMESTAMPTZ) AS timestamp, CAST(NULL AS VARCHAR) AS event_type, "
    "CAST(NULL AS VARCHAR) AS channel, CAST(NULL AS DOUBLE) AS value, "
    "CAST(NULL AS VARCHAR) AS session_id, CAST(NULL AS VARCHAR) AS properties WHERE false"
)


class _Record(BaseModel):
    # Unknown keys are ignored so that an older reader can open a newer manifest.
    model_config = ConfigDict(frozen=True)


class InputFileRecord(_Record):
    """One input file of a batch and the rows read from it."""

    path: str
    rows: int


class RowCounts(_Record):
    """Rows read, written, and dropped by reason (``duplicate_event_id``, ...); rows identical
    in every column to another but kept as events of their own (``dedupe``)."""

    read: int
    written: int
    dropped: dict[str, int]
    duplicates_kept: int = 0


class TimeRange(_Record):
    first: datetime
    last: datetime


class BatchRecord(_Record):
    """What one ingest added to the lake.

    Attributes:
        batch_id: names the batch's files (``<batch_id>-<n>.parquet``).
        fingerprint: hash of the written rows' content, independent of row order and file
            layout: ingesting the same content again gives the same fingerprint.
        files: the batch's event files, relative to the lake.
    """

    batch_id: str
    mode: Mode
    ingested_at: datetime
    source: str
    format: Format
    inputs: list[InputFileRecord]
    column_map: dict[str, str]
    rows: RowCounts
    time_range: TimeRange | None
    customers: int
    event_types: int
    property_keys: list[str]
    files: list[str]
    fingerprint: str


class CustomersRecord(_Record):
    """The customers table currently in the lake."""

    batch_id: str
    ingested_at: datetime
    source: str
    format: Format
    inputs: list[InputFileRecord]
    column_map: dict[str, str]
    rows: int
    columns: list[str]
    fingerprint: str


class Manifest(_Record):
    """Everything ingested into a lake, batch by batch (``manifest.json``)."""

    format_version: int = MANIFEST_VERSION
    batches: list[BatchRecord] = []
    customers: CustomersRecord | None = None

    @property
    def rows(self) -> int:
        """Events in the lake."""
        return sum(b.rows.written for b in self.batches)

    @property
    def property_keys(self) -> list[str]:
        """Every property key of every batch, in first-seen order."""
        return list(dict.fromkeys(k for b in self.batches for k in b.property_keys))


def manifest_path(lake: str | Path) -> Path:
    return Path(lake) / MANIFEST_FILE


def is_lake(lake: str | Path) -> bool:
    """Whether ``lake`` is a folder written by ``journeyml events ingest``."""
    return manifest_path(lake).is_file()


def load_manifest(lake: str | Path) -> Manifest:
    """Reads a lake's manifest.

    Raises:
        LakeError: the folder is not a lake or its manifest is unreadable.
    """
    path = manifest_path(lake)
    if not path.is_file():
        raise LakeError(f"{lake} is not an event lake (no {MANIFEST_FILE}): run ingest first")
    try:
        return Manifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, OSError) as exc:
        raise LakeError(f"{path} is unreadable: {exc}") from None


def write_manifest(lake_dir: Path, manifest: Manifest) -> None:
    """Writes ``manifest.json`` (a new file, flushed to disk)."""
    path = manifest_path(lake_dir)
    with path.open("x", encoding="utf-8") as fh:
        fh.write(manifest.model_dump_json(indent=2))
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def event_files(lake: str | Path) -> list[Path]:
    """The lake's event files, sorted."""
    events_dir = Path(lake) / EVENTS_DIR
    if not events_dir.is_dir():
        return []
    return sorted(events_dir.rglob("*.parquet"))


def read_events_sql(lake: str | Path) -> str:
    """A SELECT over every normalised event of a lake, in the columns of the contract.

    The query is typed and valid even when the lake holds no event file yet.
    """
    cols = ", ".join(NORMALISED_EVENT_COLUMNS)
    if not event_files(lake):
        return _EMPTY_EVENTS_SQL
    glob = sql_string(events_glob(lake))
    return f"SELECT {cols} FROM read_parquet({glob}, hive_partitioning = false)"


def open_events(con: duckdb.DuckDBPyConnection, lake: str | Path) -> duckdb.DuckDBPyRelation:
    """A DuckDB relation over a lake's events (lazy: nothing is read until it is queried)."""
    return con.sql(read_events_sql(lake))


def read_customers_sql(lake: str | Path) -> str | None:
    """A SELECT over the lake's customers table, or None when the lake has none."""
    path = Path(lake) / CUSTOMERS_FILE
    if not path.is_file():
        return None
    return f"SELECT * FROM read_parquet({sql_string(path)})"


def check_output(lake: Path, mode: Mode | None) -> Mode:
    """The mode to use for ``lake``, or a :class:`LakeError` when writing there is unsafe.

    A new (absent or empty) folder is created in replace mode. An existing lake needs an
    explicit mode, so that nothing stored is replaced by accident. Any other existing folder
    or file is refused.
    """
    if lake.exists() and not lake.is_dir():
        raise LakeError(f"--out {lake} is a file, not a folder")
    if is_lake(lake):
        if mode is None:
            raise LakeError(
                f"{lake} already holds an event lake: choose --mode append (add a batch) "
                "or --mode replace (replace everything)"
            )
        return mode
    if lake.is_dir() and any(lake.iterdir()):
        raise LakeError(
            f"--out {lake} is a folder that is not an event lake (no {MANIFEST_FILE}) and not "
            "empty: refusing to write into it"
        )
    if mode == "append":
        raise LakeError(f"--mode append needs an existing lake, and {lake} is none")
    return "replace"


@contextlib.contextmanager
def lake_lock(lake: Path) -> Iterator[None]:
    """Holds an exclusive lock for writing ``lake``: a ``flock`` on the folder that holds it.

    Locking the parent folder (rather than a lock file) leaves nothing behind; it serialises
    ingests into sibling lakes too, which is harmless.

    Raises:
        LakeError: another ingest holds the lock.
    """
    import fcntl

    lake.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lake.parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeError(
                f"another ingest is writing into {lake.parent}; try again when it ends"
            ) from None
        yield
    finally:
        os.close(fd)


def work_dir(lake: Path, batch_id: str) -> Path:
    """The work folder of a batch, beside the lake (same file system, so renames are atomic)."""
    return lake.parent / f".{lake.name}.ingest-{batch_id}"


def remove_stale_work_dirs(lake: Path) -> None:
    """Removes work folders left by crashed ingests (call with the lake lock held)."""
    for stale in lake.parent.glob(f".{lake.name}.ingest-*"):
        logger.info("removing %s, left by an interrupted ingest", stale)
        shutil.rmtree(stale, ignore_errors=True)


def link_lake(lake: Path, target: Path, keep_customers: bool) -> None:
    """Hard-links the lake's event files (and customers table) into ``target``.

    Linked files are never opened for writing: every new file gets a new name, and
    ``manifest.json`` is always written anew.
    """
    for src in event_files(lake):
        dst = target / src.relative_to(lake)
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst)
    customers = lake / CUSTOMERS_FILE
    if keep_customers and customers.is_file():
        _link_or_copy(customers, target / CUSTOMERS_FILE)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_event_batch(
    con: duckdb.DuckDBPyConnection, table: str, lake_dir: Path, batch_id: str
) -> list[str]:
    """Writes the batch table as ``events/event_month=YYYY-MM/<batch_id>-0.parquet`` files.

    ``table`` holds the normalised columns plus ``event_month``. Each month is streamed from
    DuckDB in Arrow record batches (never the whole month in memory), sorted by customer and
    time, into a Parquet file with exactly :data:`NORMALISED_EVENT_SCHEMA` (DuckDB's own writer
    would mark columns without nulls as required, making the schema depend on the data).

    Returns:
        The written files, relative to ``lake_dir``.
    """
    import pyarrow.parquet as pq

    cols = ", ".join(NORMALISED_EVENT_COLUMNS)
    months = [
        str(r[0])
        for r in con.execute(f"SELECT DISTINCT {PARTITION_KEY} FROM {table} ORDER BY 1").fetchall()
    ]
    written = []
    for month in months:
        part = lake_dir / EVENTS_DIR / f"{PARTITION_KEY}={month}"
        part.mkdir(parents=True, exist_ok=True)
        path = part / f"{batch_id}-0.parquet"
        if path.exists():
            raise LakeError(f"{path} exists already: batch ids must be unique")
        query = (
            f"SELECT {cols} FROM {table} WHERE {PARTITION_KEY} = {sql_string(month)} "
            "ORDER BY customer_id, timestamp"
        )
        reader = con.sql(query).to_arrow_reader(ROW_GROUP_SIZE)
        with pq.ParquetWriter(path, NORMALISED_EVENT_SCHEMA, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch.cast(NORMALISED_EVENT_SCHEMA))
        written.append(str(path.relative_to(lake_dir)))
    return written


def commit(new_version: Path, lake: Path) -> None:
    """Puts ``new_version`` in the place of ``lake``; afterwards ``new_version`` is gone.

    With an existing lake the two folders are exchanged atomically where the kernel allows
    it (Linux ``renameat2``); elsewhere the old lake is renamed aside first, which leaves a
    short window in which a crash would leave the lake under ``.<name>.old-<n>``.
    """
    if lake.is_dir() and not any(lake.iterdir()):
        lake.rmdir()
    if not lake.exists():
        new_version.rename(lake)
        _fsync_dir(lake.parent)
        return
    if _exchange(new_version, lake):
        _fsync_dir(lake.parent)
        shutil.rmtree(new_version)
        return
    old = lake.parent / f".{lake.name}.old-{os.getpid()}"
    lake.rename(old)
    new_version.rename(lake)
    _fsync_dir(lake.parent)
    shutil.rmtree(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths with ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
