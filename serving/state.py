"""The decision engine's state store: contact history under an atomically enforced contact
policy, the decision log, and feedback.

SQLite (one embedded file, WAL mode, busy timeout) or PostgreSQL (production); several server
worker processes share one store. :meth:`StateStore.commit` re-checks the contact policy and
writes the contact and the decision record in **one** transaction under the customer's lock,
so concurrent decisions for one customer, in any number of threads or processes, cannot break
a cap: SQLite takes the database write lock up front (``BEGIN IMMEDIATE``), PostgreSQL a
transaction-scoped advisory lock on a 64-bit hash of the customer id.

The contact policy, as :meth:`StateStore.blocked`, :meth:`StateStore.commit` and the batch
:meth:`StateStore.contact_counts` all apply it at a decision time ``t``:

* **cap** ``(channel, max, window)``: blocked when ``max`` contacts on the channel (every
  channel for ``any``) were sent after ``t - window`` (a contact exactly ``window`` old no
  longer counts). Contacts stamped after ``t`` (another worker's clock ran ahead) count too, so
  the stored contacts never exceed a cap in *any* window, whatever order commits arrive in.
* **cooldown**: an action sent after ``t - cooldown`` (or later) is blocked; 0 disables it.
* **suppression**: take a channel's contacts sent after its last contact with a positive
  outcome (accepted, clicked, converted; a contact with both counts as positive). When at
  least ``suppress_after_ignored`` of them were ignored, the channel is suppressed until
  ``suppress_days`` after the last of those "ignored" outcomes. Only feedback received by
  ``t`` counts; 0 disables suppression.

The first reason that applies is reported: the caps in policy order, then the cooldown, then
the suppression. A cap of 0 blocks its channel outright.

Request ids: a decision may be settled with a caller's idempotency key (:class:`RequestKey`),
stored with the answer given in the decision's own transaction, under the key's primary key, so
that of concurrent retries exactly one decides and contacts; the others read its answer
(:meth:`StateStore.find_request`). Previews (``mode`` ``preview``) are logged without a
contact, so the policy never counts them, and :meth:`StateStore.iter_decisions` leaves them out.

Times are stored as integer microseconds since the epoch (UTC), JSON as text: both portable.

Hot path, measured with ``timeit`` on the 2-core development machine (SQLite 3.40, WAL,
``synchronous=NORMAL``; 2,000 customers with 4 contacts and feedback each; 6 candidates; a
decision record with 12 candidates and 30 features), medians: ``blocked`` 0.14 ms, ``commit``
with a contact 0.45 ms, the pair 0.62 ms; p99 of the pair about 1 ms on a quiet machine (a few
ms while other jobs share the cores). SQLite's checkpoints sync the database file (10-20 ms
here), so they run on a background thread (:class:`_Checkpointer`) instead of inside one
commit in a hundred. ``synchronous=NORMAL`` in WAL mode survives a crash of the process but may
lose the last commits on a power failure. Both calls read the customer's whole contact history
(the suppression rule looks back to the last positive outcome): about 3 ms for a customer with
1,000 contacts. On PostgreSQL 15 (same machine, loaded): ``blocked``
0.9 ms, ``commit`` 2-4 ms (round trips and the fsync at ``COMMIT``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import event

from serving.breaker import CircuitBreaker, StoreUnavailableError

logger = logging.getLogger(__name__)

ANY_CHANNEL = "any"
"""Channel of a cap that counts the contacts of every channel."""
OUTCOMES = ("accepted", "ignored", "clicked", "converted", "declined", "complained", "unsubscribed")
"""The feedback vocabulary."""
POSITIVE_OUTCOMES = ("accepted", "clicked", "converted")
"""Outcomes that end a run of ignored contacts (no suppression across them)."""
IGNORED = "ignored"

STORE_ERRORS: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    sa.exc.TimeoutError,
)
"""What the store raises when it is down, locked, read-only or slower than its timeout."""

FeedbackStatus = Literal["created", "duplicate", "unknown_decision"]
MODES = ("decide", "preview")
"""How a decision is recorded: ``decide`` (its contact counts) or ``preview`` (no contact)."""

_DECISION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,29})?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 86_400_000_000
_ID_LEN = 128
_CHANNEL_LEN = 64
_IN_LIST_LIMIT = 1000  # longer customer lists are filtered after one unfiltered query
_SQLITE_BUSY_MS = 30_000
_SQLITE_CHECKPOINT_SECONDS = 1.0
_SQLITE_AUTOCHECKPOINT_PAGES = 25_000  # the safety net when no checkpointer runs (~100 MB)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_PURGE_SECONDS = 60.0  # expired request ids are deleted at most this often


# -- the policy and the records ------------------------------------------------------------


@dataclass(frozen=True)
class ChannelCap:
    """At most ``max_contacts`` contacts on ``channel`` (or on ``any`` channel) per window."""

    channel: str
    max_contacts: int
    window_days: float

    def __post_init__(self) -> None:
        if not self.channel:
            raise ValueError("cap: channel must be a channel name or 'any'")
        if self.max_contacts < 0:
            raise ValueError(f"cap on {self.channel}: max_contacts must be >= 0")
        if not (math.isfinite(self.window_days) and self.window_days > 0):
            raise ValueError(f"cap on {self.channel}: window_days must be a positive number")


@dataclass(frozen=True)
class ContactPolicy:
    """Caps, a per-action cooldown, and suppression after ignored contacts."""

    caps: tuple[ChannelCap, ...]
    cooldown_hours: float
    suppress_after_ignored: int
    suppress_days: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "caps", tuple(self.caps))
        for name in ("cooldown_hours", "suppress_days"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"contact policy: {name} must be a number >= 0")
        if self.suppress_after_ignored < 0:
            raise ValueError("contact policy: suppress_after_ignored must be >= 0 (0: never)")


@dataclass(frozen=True)
class Candidate:
    """An action the engine may send, on its channel."""

    action_id: str
    channel: str

    def __post_init__(self) -> None:
        if not self.action_id or len(self.action_id) > _ID_LEN:
            raise ValueError(f"candidate: action_id must have 1 to {_ID_LEN} characters")
        if self.channel == ANY_CHANNEL or len(self.channel) > _CHANNEL_LEN:
            raise ValueError(f"candidate {self.action_id}: invalid channel {self.channel!r}")


@dataclass(frozen=True)
class DecisionRecord:
    """One logged decision: what was chosen, with which probability, among which candidates."""

    decision_id: str
    decided_at: datetime
    customer_id: str
    request: dict[str, Any]
    chosen_action: str
    propensity: float
    channel: str | None
    holdout: bool
    explored: bool
    fallback_reason: str | None
    candidates: list[dict[str, Any]]
    features: dict[str, Any] | None
    feature_version: str | None
    model_versions: dict[str, str]
    policy_version: str
    mode: str = "decide"


@dataclass(frozen=True)
class RequestKey:
    """A caller's idempotency key: its answer is kept until ``expires_at``.

    ``caller`` is the API key's id ("" without authentication): two callers may use the same
    ``request_id`` without meeting.
    """

    caller: str
    request_id: str
    expires_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.caller, str) or len(self.caller) > _ID_LEN:
            raise ValueError(f"request key: caller must be a string of at most {_ID_LEN}")
        if not isinstance(self.request_id, str) or not _REQUEST_ID.match(self.request_id):
            raise ValueError("request_id: 1 to 64 characters of A-Z a-z 0-9 _ . : -")


@dataclass(frozen=True)
class StoredRequest:
    """What a request id was first used for, and the answer given then."""

    customer_id: str
    decision_id: str
    mode: str
    answer: str


@dataclass(frozen=True)
class CommitResult:
    """``ok`` False: the contact would break the policy (``reason``) and nothing was written."""

    ok: bool
    reason: str | None = None


class DuplicateDecisionError(ValueError):
    """A decision with this id is already stored (it was kept; nothing was written)."""


class DuplicateRequestError(ValueError):
    """The request id was stored by another call meanwhile (nothing was written): read the
    first answer with :meth:`StateStore.find_request`."""


# -- the store -----------------------------------------------------------------------------


class StateStore:
    """Contacts, decisions and feedback in SQLite or PostgreSQL (any SQLAlchemy URL of both).

    Args:
        url: ``sqlite:///path/state.db`` or ``postgresql+psycopg://user@host/db``
            (``postgresql://`` is read as psycopg 3).
        table_prefix: prefix of the three tables (``<prefix>decisions``, ``<prefix>contacts``,
            ``<prefix>feedback``); letters, digits and ``_``.
        timeout_ms: the longest a call waits for a lock or a statement (SQLite's busy timeout;
            PostgreSQL's connect, statement and lock timeouts); default 30 s (batch jobs).
            The service passes its request-path deadline.
    """

    def __init__(
        self, url: str, *, table_prefix: str = "jml_", timeout_ms: float | None = None
    ) -> None:
        if not _PREFIX.match(table_prefix):
            raise ValueError(
                f"table_prefix {table_prefix!r}: letters, digits and _ only, at most 30, "
                "not starting with a digit"
            )
        self.prefix = table_prefix
        self.engine = _create_engine(url, timeout_ms)
        self.breaker: CircuitBreaker | None = None
        self._sqlite = self.engine.dialect.name == "sqlite"
        meta = sa.MetaData()
        p = table_prefix
        self.decisions = sa.Table(
            f"{p}decisions",
            meta,
            sa.Column("decision_id", sa.String(64), primary_key=True),
            sa.Column("decided_at_us", sa.BigInteger, nullable=False),
            sa.Column("customer_id", sa.String(_ID_LEN), nullable=False),
            sa.Column("chosen_action", sa.String(_ID_LEN), nullable=False),
            sa.Column("propensity", sa.Float, nullable=False),
            sa.Column("channel", sa.String(_CHANNEL_LEN)),
            sa.Column("contacted", sa.Boolean, nullable=False),
            sa.Column("holdout", sa.Boolean, nullable=False),
            sa.Column("explored", sa.Boolean, nullable=False),
            sa.Column("fallback_reason", sa.Text),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("candidates", sa.Text, nullable=False),
            sa.Column("features", sa.Text),
            sa.Column("feature_version", sa.String(_ID_LEN)),
            sa.Column("model_versions", sa.Text, nullable=False),
            sa.Column("policy_version", sa.String(_ID_LEN), nullable=False),
            sa.Column("mode", sa.String(16), nullable=False, server_default=MODES[0]),
            sa.Index(f"{p}decisions_time", "decided_at_us", "decision_id"),
        )
        self.contacts = sa.Table(
            f"{p}contacts",
            meta,
            sa.Column("decision_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.String(_ID_LEN), nullable=False),
            sa.Column("action_id", sa.String(_ID_LEN), nullable=False),
            sa.Column("channel", sa.String(_CHANNEL_LEN), nullable=False),
            sa.Column("sent_at_us", sa.BigInteger, nullable=False),
            sa.Index(f"{p}contacts_customer_time", "customer_id", "sent_at_us"),
        )
        self.feedback_table = sa.Table(
            f"{p}feedback",
            meta,
            sa.Column("decision_id", sa.String(64), primary_key=True),
            sa.Column("outcome", sa.String(16), primary_key=True),
            sa.Column("at_us", sa.BigInteger, nullable=False),
            sa.Column("recorded_at_us", sa.BigInteger, nullable=False),
            sa.Column("details", sa.Text),
        )
        # Idempotency keys: the primary key lets one call only store a (caller, request id),
        # in the transaction of its decision and contact.
        self.requests = sa.Table(
            f"{p}requests",
            meta,
            sa.Column("caller", sa.String(_ID_LEN), primary_key=True),
            sa.Column("request_id", sa.String(64), primary_key=True),
            sa.Column("customer_id", sa.String(_ID_LEN), nullable=False),
            sa.Column("decision_id", sa.String(64), nullable=False),
            sa.Column("mode", sa.String(16), nullable=False),
            sa.Column("created_at_us", sa.BigInteger, nullable=False),
            sa.Column("expires_at_us", sa.BigInteger, nullable=False),
            sa.Column("answer", sa.Text, nullable=False),
            sa.Index(f"{p}requests_expiry", "expires_at_us"),
        )
        self._meta = meta
        self._prepare()
        self._next_purge = 0.0
        try:
            with self._transaction(f"schema:{p}") as conn:
                meta.create_all(conn)
                self._migrate(conn)
        except Exception:
            self.engine.dispose()
            raise
        self._checkpointer: _Checkpointer | None = None
        if self._sqlite:
            self._checkpointer = _Checkpointer(self.engine, _SQLITE_CHECKPOINT_SECONDS)
            self._checkpointer.start()

    def _migrate(self, conn: sa.Connection) -> None:
        """Adds the columns later versions introduced to tables an earlier version created."""
        columns = {c["name"] for c in sa.inspect(conn).get_columns(self.decisions.name)}
        if "mode" not in columns:
            table = conn.dialect.identifier_preparer.quote(self.decisions.name)
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD COLUMN mode VARCHAR(16) NOT NULL DEFAULT '{MODES[0]}'"
            )

    def _prepare(self) -> None:
        """Statements built once, so SQLAlchemy's compiled cache serves the hot path."""
        c, d, f = self.contacts, self.decisions, self.feedback_table
        positive, ignored_at = _outcome_flags(f)
        self._q_history = (
            sa.select(c.c.action_id, c.c.channel, c.c.sent_at_us, positive, ignored_at)
            .select_from(
                c.outerjoin(
                    f,
                    sa.and_(
                        f.c.decision_id == c.c.decision_id,
                        f.c.at_us <= sa.bindparam("now", type_=sa.BigInteger),
                    ),
                )
            )
            .where(c.c.customer_id == sa.bindparam("customer_id"))
            .group_by(c.c.decision_id, c.c.action_id, c.c.channel, c.c.sent_at_us)
        )
        self._q_exists = sa.select(d.c.decision_id).where(
            d.c.decision_id == sa.bindparam("decision_id")
        )
        self._q_decision = sa.select(d).where(d.c.decision_id == sa.bindparam("decision_id"))
        self._q_feedback = (
            sa.select(f.c.outcome, f.c.at_us)
            .where(f.c.decision_id == sa.bindparam("decision_id"))
            .order_by(f.c.at_us, f.c.outcome)
        )
        self._ins_decision = d.insert()
        self._ins_contact = c.insert()
        self._ins_feedback = (
            _dialect_insert(self.engine, f)
            .on_conflict_do_nothing(index_elements=["decision_id", "outcome"])
            .returning(f.c.decision_id)
        )
        recent = sa.select(c.c.customer_id, c.c.action_id, c.c.channel, c.c.sent_at_us).where(
            c.c.sent_at_us > sa.bindparam("since", type_=sa.BigInteger)
        )
        by_ids = c.c.customer_id.in_(sa.bindparam("ids", expanding=True))
        self._q_recent = {False: recent, True: recent.where(by_ids)}
        self._q_runs = {False: self._runs_query(False), True: self._runs_query(True)}
        self._lock = sa.select(
            sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger))
        )
        r = self.requests
        same_key = sa.and_(
            r.c.caller == sa.bindparam("caller"), r.c.request_id == sa.bindparam("request_id")
        )
        self._q_request = sa.select(r.c.customer_id, r.c.decision_id, r.c.mode, r.c.answer).where(
            same_key, r.c.expires_at_us > sa.bindparam("now", type_=sa.BigInteger)
        )
        self._del_request = r.delete().where(
            same_key, r.c.expires_at_us <= sa.bindparam("now", type_=sa.BigInteger)
        )
        self._purge_requests = r.delete().where(
            r.c.expires_at_us <= sa.bindparam("now", type_=sa.BigInteger)
        )
        self._ins_request = r.insert()

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def _transaction(self, lock: str | None) -> Iterator[sa.Connection]:
        """A write transaction; on PostgreSQL under the advisory lock of ``lock`` (if any).

        SQLite takes its single write lock at ``BEGIN IMMEDIATE``, so reads inside the
        transaction already see every earlier commit and no other writer can interleave.
        """
        breaker = self.breaker
        if breaker is not None:
            breaker.check()
        try:
            with self.engine.connect() as conn:
                if self._sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                elif lock is not None:
                    conn.execute(self._lock, {"key": self._lock_key(lock)})
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        except STORE_ERRORS as exc:
            if breaker is not None and not isinstance(exc, StoreUnavailableError):
                breaker.trip(exc)
            raise

    def _lock_key(self, name: str) -> int:
        digest = hashlib.sha256(f"{self.prefix}\x00{name}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _history(self, conn: sa.Connection, customer_id: str, now_us: int) -> list[_Contact]:
        rows = conn.execute(self._q_history, {"customer_id": customer_id, "now": now_us})
        return [(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    # -- the real-time path ----------------------------------------------------------------

    def blocked(
        self,
        customer_id: str,
        candidates: Sequence[Candidate],
        policy: ContactPolicy,
        now: datetime,
    ) -> dict[str, str]:
        """Which candidates the contact policy blocks at ``now``, each with the reason.

        A read-only pre-check (no lock): :meth:`commit` checks again under the lock.
        """
        now_us = _to_us(now, "now")
        _check_customer(customer_id)
        if not candidates or not _active(policy):
            return {}
        with self.engine.connect() as conn:
            history = self._history(conn, customer_id, now_us)
        return blocked_reasons(history, candidates, policy, now_us)

    def settle(
        self,
        customer_id: str,
        candidates: Sequence[Candidate],
        policy: ContactPolicy,
        now: datetime,
        choose: Callable[[dict[str, str]], tuple[DecisionRecord, Candidate | None] | None],
        request: RequestKey | None = None,
        answer: Callable[[DecisionRecord], str] | None = None,
    ) -> DecisionRecord | None:
        """Decides and logs in one transaction under the customer's lock.

        Reads the customer's contacts once, gives ``choose`` the candidates the policy blocks
        at ``now`` (with the reasons), and writes the record and contact it returns (nothing
        if it returns None, and then returns None). No other decision for the customer can
        interleave, so the contact cannot break the policy; a separate read (:meth:`blocked`)
        before the write would cost a second connection and history query (0.2-0.3 ms a
        decision on SQLite). A record in ``preview`` mode is logged without a contact.

        With ``request``, the request id is stored in the same transaction with the text
        ``answer`` gives for the written record: a concurrent call with the same key cannot
        also write (the key is the table's primary key), it gets DuplicateRequestError.

        Raises:
            DuplicateDecisionError: the decision id is already stored (nothing is written).
            DuplicateRequestError: the request key is already stored (nothing is written).
            ValueError: ``choose`` returned an invalid record, a record for another customer
                or time, or a contact that is not its chosen action, that was blocked, or of
                a preview.
        """
        now_us = _to_us(now, "now")
        _check_customer(customer_id)
        with self._transaction(customer_id) as conn:
            if request is not None and self._request_row(conn, request) is not None:
                # a retry of a call already settled (under this customer's lock): no choice
                raise DuplicateRequestError(f"request id {request.request_id} is already stored")
            blocked: dict[str, str] = {}
            if candidates and _active(policy):
                history = self._history(conn, customer_id, now_us)
                blocked = blocked_reasons(history, candidates, policy, now_us)
            chosen = choose(blocked)
            if chosen is None:
                return None
            record, contact = chosen
            if record.customer_id != customer_id or record.decided_at != now:
                raise ValueError(
                    f"decision {record.decision_id}: recorded for another customer or time"
                )
            if contact is not None and contact.action_id in blocked:
                raise ValueError(
                    f"decision {record.decision_id}: {contact.action_id} is blocked by the "
                    f"contact policy ({blocked[contact.action_id]})"
                )
            row = _decision_row(record, now_us, contact)
            try:
                conn.execute(self._ins_decision, row)
            except sa.exc.IntegrityError:
                raise DuplicateDecisionError(
                    f"decision {record.decision_id} is already stored"
                ) from None
            if contact is not None:
                conn.execute(
                    self._ins_contact,
                    {
                        "decision_id": record.decision_id,
                        "customer_id": record.customer_id,
                        "action_id": contact.action_id,
                        "channel": contact.channel,
                        "sent_at_us": now_us,
                    },
                )
            if request is not None:
                self._store_request(conn, request, record, "" if answer is None else answer(record))
        return record

    def _store_request(
        self, conn: sa.Connection, request: RequestKey, record: DecisionRecord, answer: str
    ) -> None:
        wall_us = _to_us(datetime.now(UTC), "now")
        key = {"caller": request.caller, "request_id": request.request_id}
        clock = time.monotonic()
        if clock >= self._next_purge:
            self._next_purge = clock + _PURGE_SECONDS
            conn.execute(self._purge_requests, {"now": wall_us})
        else:  # an expired use of this key gives way to the new one
            conn.execute(self._del_request, {**key, "now": wall_us})
        try:
            conn.execute(
                self._ins_request,
                {
                    **key,
                    "customer_id": record.customer_id,
                    "decision_id": record.decision_id,
                    "mode": record.mode,
                    "created_at_us": wall_us,
                    "expires_at_us": _to_us(request.expires_at, "expires_at"),
                    "answer": answer,
                },
            )
        except sa.exc.IntegrityError:
            raise DuplicateRequestError(
                f"request id {request.request_id} is already stored"
            ) from None

    def find_request(self, request: RequestKey) -> StoredRequest | None:
        """The unexpired first use of a request key, or None."""
        if self.breaker is not None:
            self.breaker.check()  # a store known to be down is not waited for
        with self.engine.connect() as conn:
            return self._request_row(conn, request)

    def _request_row(self, conn: sa.Connection, request: RequestKey) -> StoredRequest | None:
        wall_us = _to_us(datetime.now(UTC), "now")
        params = {"caller": request.caller, "request_id": request.request_id, "now": wall_us}
        row = conn.execute(self._q_request, params).first()
        if row is None:
            return None
        return StoredRequest(row[0], row[1], row[2], row[3])

    def commit(
        self,
        record: DecisionRecord,
        contact: Candidate | None,
        policy: ContactPolicy,
        request: RequestKey | None = None,
        answer: Callable[[DecisionRecord], str] | None = None,
    ) -> CommitResult:
        """Logs a decision, and its contact if any, in one transaction under the customer's lock.

        With a contact, the policy is checked at ``record.decided_at`` under the lock: if the
        contact would break it nothing is written and the result says why. (A decision the
        engine ranks uses :meth:`settle`; this logs one already made, e.g. a fallback.)

        ``request`` and ``answer``: as for :meth:`settle`.

        Raises:
            DuplicateDecisionError: the decision id is already stored (the first is kept).
            DuplicateRequestError: the request key is already stored (the first is kept).
            ValueError: an invalid record (naive time, malformed id, not JSON-able).
        """
        _to_us(record.decided_at, "decided_at")  # a naive time is refused before the lock
        refused: list[str] = []

        def keep(blocked: dict[str, str]) -> tuple[DecisionRecord, Candidate | None] | None:
            if contact is not None and contact.action_id in blocked:
                refused.append(blocked[contact.action_id])
                return None
            return record, contact

        candidates = [contact] if contact is not None else []
        self.settle(
            record.customer_id, candidates, policy, record.decided_at, keep, request, answer
        )
        if refused:
            logger.debug(
                "contact refused for customer %s: %s", hashed_id(record.customer_id), refused[0]
            )
            return CommitResult(False, refused[0])
        return CommitResult(True)

    def record_feedback(
        self, decision_id: str, outcome: str, at: datetime, details: dict[str, Any] | None = None
    ) -> FeedbackStatus:
        """Stores an outcome of a decision once: a repeat of (decision, outcome) is a duplicate.

        Returns ``unknown_decision`` (and stores nothing) when no such decision is logged.

        Raises:
            ValueError: ``outcome`` is not in :data:`OUTCOMES`, or ``at`` is naive.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}")
        at_us = _to_us(at, "at")
        text = None if details is None else _dumps(details)
        if not isinstance(decision_id, str) or not _DECISION_ID.match(decision_id):
            return "unknown_decision"
        row = {
            "decision_id": decision_id,
            "outcome": outcome,
            "at_us": at_us,
            "recorded_at_us": _to_us(datetime.now(UTC), "now"),
            "details": text,
        }
        # Decisions are never deleted: once seen, the insert-if-absent decides the status.
        with self._transaction(None) as conn:
            if conn.execute(self._q_exists, {"decision_id": decision_id}).first() is None:
                return "unknown_decision"
            created = conn.execute(self._ins_feedback, row).first() is not None
        return "created" if created else "duplicate"

    # -- reading the log -------------------------------------------------------------------

    def decision(self, decision_id: str) -> DecisionRecord | None:
        """The logged decision with this id, or None."""
        if not isinstance(decision_id, str) or not _DECISION_ID.match(decision_id):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(self._q_decision, {"decision_id": decision_id}).mappings().first()
        if row is None:
            return None
        return DecisionRecord(
            decision_id=row["decision_id"],
            decided_at=_from_us(row["decided_at_us"]),
            customer_id=row["customer_id"],
            request=json.loads(row["request"]),
            chosen_action=row["chosen_action"],
            propensity=row["propensity"],
            channel=row["channel"],
            holdout=bool(row["holdout"]),
            explored=bool(row["explored"]),
            fallback_reason=row["fallback_reason"],
            candidates=json.loads(row["candidates"]),
            features=None if row["features"] is None else json.loads(row["features"]),
            feature_version=row["feature_version"],
            model_versions=json.loads(row["model_versions"]),
            policy_version=row["policy_version"],
            mode=row["mode"],
        )

    def feedback(self, decision_id: str) -> list[tuple[str, datetime]]:
        """The outcomes stored for a decision, oldest first."""
        if not isinstance(decision_id, str) or not _DECISION_ID.match(decision_id):
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(self._q_feedback, {"decision_id": decision_id}).all()
        return [(outcome, _from_us(at)) for outcome, at in rows]

    def iter_decisions(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        chunk_rows: int = 50_000,
        include_previews: bool = False,
    ) -> Iterator[pd.DataFrame]:
        """The decision log in ``[start, end)``, oldest first, in frames of ``chunk_rows``.

        Previews (``mode`` ``preview``: nothing was sent) are left out unless
        ``include_previews``: they are not actions of the logging policy, so off-policy
        evaluation and uplift training, which read the log through here, must not see them.

        Columns: the record's scalar fields (``decided_at`` as UTC timestamps), ``contacted``,
        the JSON text of ``request``, ``candidates``, ``features`` and ``model_versions``, and
        one ``<outcome>_at`` column per outcome of :data:`OUTCOMES` (NaT when not received).
        Pages by (decision time, id), so a long read never holds a transaction open.
        """
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        d, f = self.decisions, self.feedback_table
        outcome_cols = [
            sa.select(f.c.at_us)
            .where(f.c.decision_id == d.c.decision_id, f.c.outcome == outcome)
            .scalar_subquery()
            .label(f"{outcome}_at")
            for outcome in OUTCOMES
        ]
        base = sa.select(*d.c, *outcome_cols).order_by(d.c.decided_at_us, d.c.decision_id)
        if not include_previews:
            base = base.where(d.c.mode != "preview")
        if start is not None:
            base = base.where(d.c.decided_at_us >= _to_us(start, "start"))
        if end is not None:
            base = base.where(d.c.decided_at_us < _to_us(end, "end"))
        first = base.limit(sa.bindparam("n"))
        after = base.where(
            sa.or_(
                d.c.decided_at_us > sa.bindparam("last_us"),
                sa.and_(
                    d.c.decided_at_us == sa.bindparam("last_us"),
                    d.c.decision_id > sa.bindparam("last_id"),
                ),
            )
        ).limit(sa.bindparam("n"))
        names = [c.name for c in d.c] + [c.name for c in outcome_cols]
        last: tuple[int, str] | None = None
        while True:
            with self.engine.connect() as conn:
                if last is None:
                    rows = conn.execute(first, {"n": chunk_rows}).all()
                else:
                    params = {"n": chunk_rows, "last_us": last[0], "last_id": last[1]}
                    rows = conn.execute(after, params).all()
            if not rows:
                return
            yield _decision_frame(rows, names)
            if len(rows) < chunk_rows:
                return
            last = (rows[-1][1], rows[-1][0])

    # -- the batch path --------------------------------------------------------------------

    def contact_counts(
        self,
        policy: ContactPolicy,
        now: datetime,
        customer_ids: Sequence[str] | None = None,
        candidates: Sequence[Candidate] | None = None,
    ) -> pd.DataFrame:
        """The contact policy's state for many customers at once (two queries in all).

        Lists of more than 1,000 customers are not sent to the database: the two queries read
        every customer's recent contacts and suppression runs, and the frame keeps the listed.

        One row per customer with history that matters at ``now`` (or per given customer id,
        in the given order). Columns:

        * ``contacts__<channel>__<window>d``: contacts counted by each cap;
        * ``blocked_channel__<channel>`` / ``reason_channel__<channel>``: a cap or a
          suppression blocks the channel (``any``: an ``any`` cap blocks every channel);
        * ``blocked__<action>`` / ``reason__<action>``: for each candidate (default: every
          action in the recent history) what :meth:`blocked` says, reason for reason.

        A customer without a row has no history that blocks anything (only a cap of 0 would).
        """
        now_us = _to_us(now, "now")
        wanted = None if customer_ids is None else list(dict.fromkeys(customer_ids))
        in_sql = wanted is not None and len(wanted) <= _IN_LIST_LIMIT
        params: dict[str, Any] = {"ids": wanted} if in_sql else {}
        spans = [_days_us(cap.window_days) for cap in policy.caps]
        if policy.cooldown_hours > 0:
            spans.append(_hours_us(policy.cooldown_hours))
        recent = pd.DataFrame([], columns=["customer_id", "action_id", "channel", "sent_at_us"])
        runs = pd.DataFrame([], columns=["customer_id", "channel", "streak", "last_ignored_us"])
        with self.engine.connect() as conn:
            if spans:
                q = self._q_recent[in_sql]
                rows = conn.execute(q, {**params, "since": now_us - max(spans)}).all()
                recent = pd.DataFrame(rows, columns=recent.columns)
            if _suppression_active(policy):
                run_params = {
                    **params,
                    "now": now_us,
                    "min_run": policy.suppress_after_ignored,
                    "since": now_us - _days_us(policy.suppress_days),
                }
                rows = conn.execute(self._q_runs[in_sql], run_params).all()
                runs = pd.DataFrame(rows, columns=runs.columns)
        if wanted is not None and not in_sql:
            keep = set(wanted)
            recent = recent[recent["customer_id"].isin(keep)]
            runs = runs[runs["customer_id"].isin(keep)]
        return _policy_frame(policy, now_us, recent, runs, wanted, candidates)

    def _runs_query(self, by_ids: bool) -> sa.Select[Any]:
        """Per customer and channel: the run of ignored contacts since the last positive one,
        for the runs long and recent enough to suppress (feedback received by ``now``)."""
        c, f = self.contacts, self.feedback_table
        fb = (
            sa.select(f.c.decision_id, *_outcome_flags(f))
            .where(f.c.at_us <= sa.bindparam("now", type_=sa.BigInteger))
            .group_by(f.c.decision_id)
            .cte("fb")
        )
        cf_q = sa.select(
            c.c.customer_id, c.c.channel, c.c.sent_at_us, fb.c.positive, fb.c.ignored_at
        ).join_from(c, fb, fb.c.decision_id == c.c.decision_id)
        if by_ids:
            cf_q = cf_q.where(c.c.customer_id.in_(sa.bindparam("ids", expanding=True)))
        cf = cf_q.cte("cf")
        lp = (
            sa.select(cf.c.customer_id, cf.c.channel, sa.func.max(cf.c.sent_at_us).label("last"))
            .where(cf.c.positive == 1)
            .group_by(cf.c.customer_id, cf.c.channel)
            .cte("lp")
        )
        return (
            sa.select(
                cf.c.customer_id,
                cf.c.channel,
                sa.func.count().label("streak"),
                sa.func.max(cf.c.ignored_at).label("last_ignored"),
            )
            .select_from(
                cf.outerjoin(
                    lp, sa.and_(lp.c.customer_id == cf.c.customer_id, lp.c.channel == cf.c.channel)
                )
            )
            .where(
                cf.c.positive == 0,
                cf.c.ignored_at.is_not(None),
                sa.or_(lp.c.last.is_(None), cf.c.sent_at_us > lp.c.last),
            )
            .group_by(cf.c.customer_id, cf.c.channel)
            .having(
                sa.func.count() >= sa.bindparam("min_run", type_=sa.Integer),
                sa.func.max(cf.c.ignored_at) > sa.bindparam("since", type_=sa.BigInteger),
            )
        )

    # -- health ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises when the store cannot be read (readiness check)."""
        with self.engine.connect() as conn:
            conn.execute(sa.select(self.decisions.c.decision_id).limit(1)).all()

    def guard(self, probe_seconds: float = 0.5) -> CircuitBreaker:
        """Puts the write transactions behind a circuit breaker (the service's request path):
        after a store error they fail at once until a background write probe succeeds."""
        if self.breaker is None:
            self.breaker = CircuitBreaker("state store", self._probe_write, probe_seconds)
        return self.breaker

    def _probe_write(self) -> None:
        """A write that changes nothing, on fresh connections: an SQLite connection opened
        while the file was read-only stays read-only, so the pool is emptied first."""
        self.engine.dispose()
        with self.engine.connect() as conn:
            if self._sqlite:
                _restart_wal(conn)
            else:
                conn.execute(sa.select(self.decisions.c.decision_id).limit(1)).all()

    @property
    def checkpoint_error(self) -> str | None:
        """The last background checkpoint's failure, or None (SQLite only)."""
        return None if self._checkpointer is None else self._checkpointer.error

    def close(self) -> None:
        """Stops the background checkpoints and closes the store's connections."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self.breaker is not None:
            self.breaker.stop()
        self.engine.dispose()


class _Checkpointer(threading.Thread):
    """Copies SQLite's write-ahead log into the database in the background, and restarts it.

    A checkpoint syncs the database file to disk (10-20 ms here); left to SQLite's automatic
    checkpoints, about one commit in a hundred would pay for it on the request path.

    The log only starts over at the first write after a checkpoint has copied all of it, and
    under steady writes a passive checkpoint never does (new commits land while it syncs). The
    log then grew to SQLite's automatic checkpoint (``wal_autocheckpoint``, 25,000 pages), which
    ran inside a request's commit every ~2,700 decisions: 60-80 ms on this machine's disk, the
    calls over 50 ms of the serving benchmark (found with ``strace``: the request thread's one
    ``fdatasync``, on the database file). So each round copies the bulk beside the writers,
    then holds them off (``BEGIN IMMEDIATE`` on a second connection) while it copies the few
    frames written meanwhile, and makes the first write itself, rewriting the database
    header's ``user_version`` (unused by the store) with its own value: the log restarts here,
    and its header sync happens here too. Writers wait for one small copy: the slowest
    commit of 8,000 sequential decisions waited 16-23 ms, against 60-80 ms before.
    """

    def __init__(self, engine: sa.Engine, interval: float):
        super().__init__(name="state-store-checkpoint", daemon=True)
        self._engine = engine
        self._interval = interval
        self._stopped = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self.checkpoint()
            except Exception as exc:  # the next round tries again; SQLite's net remains
                if self.error is None:  # once a streak, not every second
                    logger.warning("state store checkpoint failed: %s", exc, exc_info=True)
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            else:
                if self.error is not None:
                    logger.warning("state store checkpoints work again")
                self.error = None

    def checkpoint(self) -> str:
        """One round: ``empty``, ``copied`` (part of the log) or ``restarted`` (all of it, and
        the log started over by this thread)."""
        with self._engine.connect() as conn, self._engine.connect() as holder:
            if _wal_checkpoint(conn)[1] <= 0:  # the bulk of the log, beside the writers
                return "empty"
            holder.exec_driver_sql("BEGIN IMMEDIATE")  # writers wait from here
            try:
                busy, logged, copied = _wal_checkpoint(conn)
            finally:
                holder.rollback()
            if busy or copied != logged:
                return "copied"
            _restart_wal(holder)
        return "restarted"

    def stop(self) -> None:
        self._stopped.set()
        self.join(timeout=5)


def _wal_checkpoint(conn: sa.Connection) -> tuple[int, int, int]:
    """A passive checkpoint: (busy, frames in the log, frames copied to the database)."""
    busy, logged, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
    return int(busy), int(logged), int(copied)


def _restart_wal(conn: sa.Connection) -> None:
    """The first write after a complete checkpoint: SQLite starts the log over and syncs its
    new header here instead of in the next decision's commit."""
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
        conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


# -- the policy, evaluated -----------------------------------------------------------------

_Contact = tuple[str, str, int, bool, int | None]
"""One stored contact as of a time: action, channel, sent (us), positive outcome, last
"ignored" outcome (us) or None."""


def blocked_reasons(
    history: Sequence[_Contact],
    candidates: Sequence[Candidate],
    policy: ContactPolicy,
    now_us: int,
) -> dict[str, str]:
    """Candidates blocked by the policy at ``now_us`` given one customer's contacts."""
    counts = []
    for cap in policy.caps:
        start = now_us - _days_us(cap.window_days)
        counts.append(
            sum(1 for h in history if h[2] > start and cap.channel in (ANY_CHANNEL, h[1]))
        )
    last_sent: dict[str, int] = {}
    if policy.cooldown_hours > 0:
        start = now_us - _hours_us(policy.cooldown_hours)
        for h in history:
            if h[2] > start and h[2] > last_sent.get(h[0], start):
                last_sent[h[0]] = h[2]
    suppression: dict[str, tuple[int, int] | None] = {}
    out: dict[str, str] = {}
    for cand in candidates:
        reason = None
        for cap, n in zip(policy.caps, counts, strict=True):
            if n >= cap.max_contacts and cap.channel in (ANY_CHANNEL, cand.channel):
                reason = cap_reason(cap, n, now_us)
                break
        if reason is None and cand.action_id in last_sent:
            reason = cooldown_reason(cand.action_id, last_sent[cand.action_id], now_us, policy)
        if reason is None:
            if cand.channel not in suppression:
                suppression[cand.channel] = _suppressed(history, cand.channel, policy, now_us)
            run = suppression[cand.channel]
            if run is not None:
                reason = suppression_reason(cand.channel, run[0], run[1])
        if reason is not None:
            out[cand.action_id] = reason
    return out


def _suppressed(
    history: Sequence[_Contact], channel: str, policy: ContactPolicy, now_us: int
) -> tuple[int, int] | None:
    """(ignored contacts in the run, suppressed until) or None."""
    if not _suppression_active(policy):
        return None
    mine = [h for h in history if h[1] == channel]
    last_positive = max((h[2] for h in mine if h[3]), default=None)
    run = [
        h[4]
        for h in mine
        if not h[3] and h[4] is not None and (last_positive is None or h[2] > last_positive)
    ]
    if len(run) < policy.suppress_after_ignored:
        return None
    last_ignored = max(run)
    if last_ignored <= now_us - _days_us(policy.suppress_days):
        return None
    return len(run), last_ignored + _days_us(policy.suppress_days)


def cap_reason(cap: ChannelCap, count: int, now_us: int) -> str:
    """E.g. ``email cap 1 per 7 days reached (1 contact since 2026-01-01T09:00:00+00:00)``."""
    since = _iso(now_us - _days_us(cap.window_days))
    what = "any-channel" if cap.channel == ANY_CHANNEL else cap.channel
    days = "day" if cap.window_days == 1 else "days"
    plural = "" if count == 1 else "s"
    return (
        f"{what} cap {cap.max_contacts} per {cap.window_days:g} {days} reached "
        f"({count} contact{plural} since {since})"
    )


def cooldown_reason(action_id: str, sent_us: int, now_us: int, policy: ContactPolicy) -> str:
    """E.g. ``cooldown: retention_call sent 3 h ago (24 h)``."""
    hours = (now_us - sent_us) / _US_PER_HOUR
    when = f"{_num(hours)} h ago" if hours >= 0 else f"{_num(-hours)} h after this decision"
    return f"cooldown: {action_id} sent {when} ({policy.cooldown_hours:g} h)"


def suppression_reason(channel: str, ignored: int, until_us: int) -> str:
    """E.g. ``email suppressed after 3 ignored actions until 2026-02-01T09:00:00+00:00``."""
    return f"{channel} suppressed after {ignored} ignored actions until {_iso(until_us)}"


def _active(policy: ContactPolicy) -> bool:
    return bool(policy.caps) or policy.cooldown_hours > 0 or _suppression_active(policy)


def _suppression_active(policy: ContactPolicy) -> bool:
    return policy.suppress_after_ignored > 0 and policy.suppress_days > 0


def _policy_frame(
    policy: ContactPolicy,
    now_us: int,
    recent: pd.DataFrame,
    suppressed: pd.DataFrame,
    wanted: list[str] | None,
    candidates: Sequence[Candidate] | None,
) -> pd.DataFrame:
    """The batch form of :func:`blocked_reasons`: the same rules over arrays, and the same
    reason texts for the blocked cells."""
    if wanted is not None:
        customers = wanted
    else:
        seen = set(recent["customer_id"]) | set(suppressed["customer_id"])
        customers = sorted(seen)
    index = pd.Index(customers, dtype=object)
    n = len(index)
    if candidates is None:
        firsts = recent.drop_duplicates("action_id").sort_values("action_id")
        cands = [
            Candidate(a, ch) for a, ch in zip(firsts["action_id"], firsts["channel"], strict=True)
        ]
    else:
        cands = list({cand.action_id: cand for cand in candidates}.values())
    channels = list(
        dict.fromkeys(
            [ANY_CHANNEL]
            + [cap.channel for cap in policy.caps if cap.channel != ANY_CHANNEL]
            + [cand.channel for cand in cands]
            + sorted(set(recent["channel"]) | set(suppressed["channel"]))
        )
    )
    row = index.get_indexer(pd.Index(recent["customer_id"]))
    sent = recent["sent_at_us"].to_numpy(dtype=np.int64)
    chan = recent["channel"].to_numpy(dtype=object)
    act = recent["action_id"].to_numpy(dtype=object)
    out: dict[str, Any] = {"customer_id": customers}

    counts: list[np.ndarray] = []
    for cap in policy.caps:
        mask = sent > now_us - _days_us(cap.window_days)
        if cap.channel != ANY_CHANNEL:
            mask &= chan == cap.channel
        counts.append(np.bincount(row[mask], minlength=n))
        out[f"contacts__{cap.channel}__{cap.window_days:g}d"] = counts[-1]

    def first_cap(channel: str) -> np.ndarray:
        first = np.full(n, -1)
        for i in reversed(range(len(policy.caps))):
            cap = policy.caps[i]
            applies = cap.channel == ANY_CHANNEL or (
                channel != ANY_CHANNEL and cap.channel == channel
            )
            if applies:
                first[counts[i] >= cap.max_contacts] = i
        return first

    sup_run: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for ch, group in suppressed.groupby("channel"):
        streak = np.zeros(n, dtype=np.int64)
        last = np.zeros(n, dtype=np.int64)
        at = index.get_indexer(pd.Index(group["customer_id"]))
        streak[at] = group["streak"].to_numpy(dtype=np.int64)
        last[at] = group["last_ignored_us"].to_numpy(dtype=np.int64)
        sup_run[str(ch)] = (streak, last)
    sup_days = _days_us(policy.suppress_days)

    def reasons(
        channel: str, first: np.ndarray, action: str, cooled: np.ndarray | None
    ) -> np.ndarray:
        text = np.full(n, None, dtype=object)
        run = sup_run.get(channel)
        if run is not None:
            for i in np.flatnonzero(run[0] > 0):
                text[i] = suppression_reason(channel, int(run[0][i]), int(run[1][i]) + sup_days)
        if cooled is not None:
            for i in np.flatnonzero(cooled > np.iinfo(np.int64).min):
                text[i] = cooldown_reason(action, int(cooled[i]), now_us, policy)
        for i in np.flatnonzero(first >= 0):
            cap = policy.caps[first[i]]
            text[i] = cap_reason(cap, int(counts[first[i]][i]), now_us)
        return text

    firsts_by_channel = {ch: first_cap(ch) for ch in channels}
    for ch in channels:
        text = reasons(ch, firsts_by_channel[ch], "", None)
        out[f"blocked_channel__{ch}"] = pd.notna(text)
        out[f"reason_channel__{ch}"] = text
    cooldown_start = now_us - _hours_us(policy.cooldown_hours)
    for cand in cands:
        action = cand.action_id
        cooled = None
        if policy.cooldown_hours > 0:
            cooled = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
            mask = (act == action) & (sent > cooldown_start)
            np.maximum.at(cooled, row[mask], sent[mask])
        text = reasons(cand.channel, firsts_by_channel[cand.channel], action, cooled)
        out[f"blocked__{action}"] = pd.notna(text)
        out[f"reason__{action}"] = text
    return pd.DataFrame(out)


# -- rows, JSON and time -------------------------------------------------------------------


def _decision_row(
    record: DecisionRecord, decided_us: int, contact: Candidate | None
) -> dict[str, Any]:
    """The decisions row of a record (validated; JSON columns encoded)."""
    if not isinstance(record.decision_id, str) or not _DECISION_ID.match(record.decision_id):
        raise ValueError(
            f"decision_id {record.decision_id!r}: 1 to 64 characters of A-Z a-z 0-9 _ -"
        )
    if contact is not None and contact.action_id != record.chosen_action:
        raise ValueError(
            f"decision {record.decision_id}: the contact ({contact.action_id}) is not the "
            f"chosen action ({record.chosen_action})"
        )
    if record.mode not in MODES:
        raise ValueError(f"decision {record.decision_id}: mode must be one of {', '.join(MODES)}")
    if contact is not None and record.mode == "preview":
        raise ValueError(f"decision {record.decision_id}: a preview records no contact")
    contacted = contact is not None
    _check_customer(record.customer_id)
    if not record.chosen_action or len(record.chosen_action) > _ID_LEN:
        raise ValueError(f"decision {record.decision_id}: chosen_action must be 1-128 characters")
    propensity = float(record.propensity)
    if not (math.isfinite(propensity) and 0.0 <= propensity <= 1.0):
        raise ValueError(f"decision {record.decision_id}: propensity must be in [0, 1]")
    return {
        "decision_id": record.decision_id,
        "decided_at_us": decided_us,
        "customer_id": record.customer_id,
        "chosen_action": record.chosen_action,
        "propensity": propensity,
        "channel": record.channel,
        "contacted": contacted,
        "holdout": bool(record.holdout),
        "explored": bool(record.explored),
        "fallback_reason": record.fallback_reason,
        "request": _dumps(record.request),
        "candidates": _dumps(record.candidates),
        "features": None if record.features is None else _dumps(record.features),
        "feature_version": record.feature_version,
        "model_versions": _dumps(record.model_versions),
        "policy_version": record.policy_version,
        "mode": record.mode,
    }


def _decision_frame(rows: Sequence[Any], names: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=names)
    frame.insert(1, "decided_at", pd.to_datetime(frame.pop("decided_at_us"), unit="us", utc=True))
    for outcome in OUTCOMES:
        col = f"{outcome}_at"
        values = pd.array(frame[col].tolist(), dtype="Int64")
        frame[col] = pd.to_datetime(values, unit="us", utc=True)
    for col in ("contacted", "holdout", "explored"):
        frame[col] = frame[col].astype(bool)
    return frame


def _check_customer(customer_id: str) -> None:
    if not isinstance(customer_id, str) or not customer_id or len(customer_id) > _ID_LEN:
        raise ValueError(f"customer_id must be a string of 1 to {_ID_LEN} characters")


def hashed_id(customer_id: str) -> str:
    """What logs show instead of a customer id."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:12]


def _dumps(value: Any) -> str:
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_default
        )
    except ValueError:  # NaN or infinity somewhere: stored as null (valid JSON)
        return json.dumps(
            _finite(value), separators=(",", ":"), ensure_ascii=False, default=_default
        )


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _finite(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _to_us(t: datetime, what: str) -> int:
    if not isinstance(t, datetime):
        raise TypeError(f"{what} must be a datetime, got {type(t).__name__}")
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware (UTC), got the naive {t.isoformat()}")
    return (t - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _iso(us: int) -> str:
    return _from_us(us).isoformat(timespec="seconds")


def _days_us(days: float) -> int:
    return round(days * _US_PER_DAY)


def _hours_us(hours: float) -> int:
    return round(hours * _US_PER_HOUR)


def _num(x: float) -> str:
    return f"{round(x, 1):g}"


# -- engines -------------------------------------------------------------------------------


def _create_engine(url: str, timeout_ms: float | None = None) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    wait_ms = int(timeout_ms if timeout_ms is not None else _SQLITE_BUSY_MS)
    if backend == "postgresql":
        # hide_parameters: an error's text never carries a row's values (customer ids)
        connect_args: dict[str, Any] = {"connect_timeout": max(1, math.ceil(wait_ms / 1000))}
        if timeout_ms is None:  # batch jobs: the server's timeouts and a pre-ping suffice
            return sa.create_engine(
                parsed,
                pool_pre_ping=True,
                hide_parameters=True,
                pool_timeout=max(wait_ms / 1000, 0.001),
                connect_args=connect_args,
            )
        connect_args["options"] = f"-c statement_timeout={wait_ms} -c lock_timeout={wait_ms}"
        engine = sa.create_engine(
            parsed,
            hide_parameters=True,
            pool_timeout=max(wait_ms / 1000, 0.001),
            connect_args=connect_args,
        )
        _bound_postgres_calls(engine, 2 * wait_ms / 1000)
        return engine
    if backend != "sqlite":
        raise ValueError(f"state store: unsupported database {backend!r} (SQLite or PostgreSQL)")
    database = parsed.database or ""
    if database in ("", ":memory:") or parsed.query.get("mode") == "memory":
        raise ValueError(
            "state store: SQLite needs a file (sqlite:///path/state.db) that every worker opens"
        )
    if not database.startswith("file:"):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        parsed,
        pool_size=8,
        max_overflow=32,
        hide_parameters=True,
        pool_timeout=max(wait_ms / 1000, 0.001),
        connect_args={"timeout": wait_ms / 1000},
    )
    event.listen(engine, "connect", lambda conn, record: _sqlite_pragmas(conn, record, wait_ms))
    return engine


def _bound_postgres_calls(engine: sa.Engine, seconds: float) -> None:
    """Bounds every use of the engine's PostgreSQL connections by the client's own clock.

    PostgreSQL's statement and lock timeouts are enforced by the server, so a server that
    hangs (paused, overloaded, a network that drops packets without a reset) enforces
    nothing, and psycopg waits on its socket without a limit; libpq's ``connect_timeout``
    is whole seconds, at least 2. Here a connection is opened within ``seconds``, and one
    checked out of the pool (its liveness ping, every statement, the commit and the
    rollback on return) is closed by the watchdog once it has been held ``seconds``: the
    call waiting on it fails with an OperationalError, which the store's breaker takes as
    the store being down. ``seconds`` is twice the statement timeout, so a call that waits
    for a lock up to that timeout and then writes is not cut.
    """

    @event.listens_for(engine, "do_connect")
    def connect(dialect: Any, _rec: Any, cargs: Any, cparams: Any) -> Any:
        return _connect_within(lambda: dialect.connect(*cargs, **cparams), seconds)

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, rec: Any, _proxy: Any) -> None:
        _WATCHDOG.arm(id(rec), dbapi_connection.fileno(), seconds)
        try:  # the pre-ping, under the watchdog (SQLAlchemy's own runs before this event)
            dbapi_connection.execute("SELECT 1")
            if not dbapi_connection.autocommit:
                dbapi_connection.rollback()
        except Exception as exc:
            _WATCHDOG.disarm(id(rec))
            raise sa.exc.DisconnectionError(f"{type(exc).__name__}: {exc}") from exc

    def disarm(_dbapi_connection: Any, rec: Any, *_: Any) -> None:
        _WATCHDOG.disarm(id(rec))

    for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
        event.listen(engine, name, disarm)


def _connect_within(connect: Callable[[], Any], seconds: float) -> Any:
    """``connect()`` run in a helper thread and given up after ``seconds`` (a connection
    that arrives later is closed)."""
    box: dict[str, Any] = {}
    lock = threading.Lock()

    def run() -> None:
        try:
            conn = connect()
        except BaseException as exc:
            box["error"] = exc
            return
        with lock:
            if box.get("abandoned"):
                conn.close()
            else:
                box["conn"] = conn

    thread = threading.Thread(target=run, name="state-store-connect", daemon=True)
    thread.start()
    thread.join(seconds)
    with lock:
        if "conn" in box:
            return box["conn"]
        if "error" in box:
            raise box["error"]
        box["abandoned"] = True
    import psycopg

    raise psycopg.errors.ConnectionTimeout(f"no connection within {seconds * 1000:.0f} ms")


class _Watchdog:
    """Closes the sockets of connections held past their deadline (one thread a process)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, int, float]] = {}  # key -> (deadline, fd, seconds)
        self._thread: threading.Thread | None = None

    def arm(self, key: int, fd: int, seconds: float) -> None:
        with self._cond:
            self._armed[key] = (time.monotonic() + seconds, fd, seconds)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="state-store-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def disarm(self, key: int) -> None:
        with self._cond:
            self._armed.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._armed:
                    self._cond.wait()
                    continue
                key, (deadline, fd, seconds) = min(self._armed.items(), key=lambda kv: kv[1][0])
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                del self._armed[key]
                try:  # a shutdown wakes the thread waiting on the socket with an EOF
                    with socket.socket(fileno=os.dup(fd)) as sock:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed
                    continue
            logger.warning(
                "state store: a call held its connection over %.0f ms, the connection was "
                "closed (the database does not answer)",
                seconds * 1000,
            )


_WATCHDOG = _Watchdog()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, busy_ms: int = _SQLITE_BUSY_MS) -> None:
    """Transactions are begun explicitly (``BEGIN IMMEDIATE`` for writes); WAL lets readers
    run beside the writer; ``synchronous=NORMAL`` is durable across process crashes (WAL);
    checkpoints run in the background (:class:`_Checkpointer`), SQLite's own only as a net."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA wal_autocheckpoint = {_SQLITE_AUTOCHECKPOINT_PAGES}")
    finally:
        cursor.close()


def _outcome_flags(f: sa.Table) -> tuple[sa.Label[Any], sa.Label[Any]]:
    """Per contact (grouped by decision): a positive outcome (1/0), the "ignored" time."""
    is_positive = sa.or_(*(f.c.outcome == o for o in POSITIVE_OUTCOMES))
    return (
        sa.func.max(sa.case((is_positive, 1), else_=0)).label("positive"),
        sa.func.max(sa.case((f.c.outcome == IGNORED, f.c.at_us), else_=None)).label("ignored_at"),
    )


def _dialect_insert(engine: sa.Engine, table: sa.Table) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
