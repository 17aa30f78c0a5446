"""The state store: contact-policy semantics (caps, "any" caps, cooldown, suppression, window
edges), the decision log, feedback, batch counts — on SQLite and on PostgreSQL — and a
stateful property test against an in-memory model."""

from __future__ import annotations

import itertools
import logging
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

import serving.state as state_module
from serving.state import (
    OUTCOMES,
    Candidate,
    ChannelCap,
    ContactPolicy,
    DecisionRecord,
    DuplicateDecisionError,
    StateStore,
    cap_reason,
    cooldown_reason,
    hashed_id,
    suppression_reason,
)
from tests.services import skip_or_fail

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
US = timedelta(microseconds=1)
NO_POLICY = ContactPolicy((), 0.0, 0, 0.0)

EMAIL_1 = Candidate("winback_email", "email")
EMAIL_2 = Candidate("newsletter", "email")
SMS = Candidate("sms_offer", "sms")
CALL = Candidate("retention_call", "phone")
CALL_2 = Candidate("service_call", "phone")
PUSH = Candidate("push_nudge", "push")
ALL = [EMAIL_1, EMAIL_2, SMS, CALL, CALL_2, PUSH]


def postgres_available(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def drop_tables(store: StateStore) -> None:
    for table in (store.requests, store.feedback_table, store.contacts, store.decisions):
        table.drop(store.engine, checkfirst=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A factory of stores on one backend; each test gets its own tables."""
    if request.param == "postgres" and not postgres_available():
        skip_or_fail("PostgreSQL is not running on 127.0.0.1:5432")
    url = f"sqlite:///{tmp_path / 'state' / 'state.db'}"
    if request.param == "postgres":
        url = PG_URL
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    opened: list[StateStore] = []

    def factory() -> StateStore:
        opened.append(StateStore(url, table_prefix=prefix))
        return opened[-1]

    yield factory
    if opened and request.param == "postgres":
        drop_tables(opened[0])
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Any) -> StateStore:
    s: StateStore = open_store()
    return s


def record(
    decision_id: str,
    at: datetime,
    customer_id: str = "cust-1",
    action: str = "none",
    channel: str | None = None,
    **update: Any,
) -> DecisionRecord:
    values: dict[str, Any] = {
        "decision_id": decision_id,
        "decided_at": at,
        "customer_id": customer_id,
        "request": {"channel": "web", "event_type": "page_view", "page": "/cancel", "at": None},
        "chosen_action": action,
        "propensity": 0.9,
        "channel": channel,
        "holdout": False,
        "explored": False,
        "fallback_reason": None,
        "candidates": [
            {"action": c.action_id, "channel": c.channel, "priority": 0.5, "removed_by": None}
            for c in ALL
        ],
        "features": {"days_since_last_event": 3.5, "plan": "premium"},
        "feature_version": None,
        "model_versions": {"churn": "4", "conversion": "2"},
        "policy_version": "actions-v3",
    }
    values.update(update)
    return DecisionRecord(**values)


def send(
    store: StateStore,
    decision_id: str,
    at: datetime,
    contact: Candidate,
    policy: ContactPolicy = NO_POLICY,
    customer_id: str = "cust-1",
) -> bool:
    rec = record(decision_id, at, customer_id, contact.action_id, contact.channel)
    return store.commit(rec, contact, policy).ok


def count_rows(store: StateStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# -- caps ----------------------------------------------------------------------------------


def test_a_cap_counts_the_window_and_frees_the_channel_at_its_edge(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("email", 1, 7),), 0.0, 0, 0.0)
    assert send(store, "d1", T0, EMAIL_1, policy)
    now = T0 + H
    reason = "email cap 1 per 7 days reached (1 contact since 2026-02-23T10:00:00+00:00)"
    assert store.blocked("cust-1", ALL, policy, now) == {
        "winback_email": reason,
        "newsletter": reason,
    }
    edge = T0 + 7 * D
    assert set(store.blocked("cust-1", ALL, policy, edge - US)) == {"winback_email", "newsletter"}
    assert store.blocked("cust-1", ALL, policy, edge) == {}  # a contact exactly 7 days old
    refused = store.commit(record("d2", edge - US, action="newsletter"), EMAIL_2, policy)
    assert not refused.ok and refused.reason is not None
    assert refused.reason.startswith("email cap 1 per 7 days reached (1 contact since")
    assert send(store, "d3", edge, EMAIL_2, policy)
    assert store.blocked("other-customer", ALL, policy, now) == {}


def test_an_any_cap_counts_every_channel(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("email", 5, 7), ChannelCap("any", 2, 1)), 0.0, 0, 0.0)
    assert send(store, "d1", T0, EMAIL_1, policy)
    assert store.blocked("cust-1", ALL, policy, T0 + H) == {}
    assert send(store, "d2", T0 + H, SMS, policy)
    got = store.blocked("cust-1", ALL, policy, T0 + 2 * H)
    reason = "any-channel cap 2 per 1 day reached (2 contacts since 2026-03-01T11:00:00+00:00)"
    assert got == {c.action_id: reason for c in ALL}
    assert not store.commit(record("d3", T0 + 2 * H, action="push_nudge"), PUSH, policy).ok
    assert store.blocked("cust-1", ALL, policy, T0 + D) == {}  # the first left the window


def test_the_first_cap_reached_in_policy_order_is_the_reason(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("any", 1, 3), ChannelCap("email", 1, 7)), 0.0, 0, 0.0)
    assert send(store, "d1", T0, EMAIL_1, policy)
    got = store.blocked("cust-1", [EMAIL_2, SMS], policy, T0 + D)
    assert got["newsletter"].startswith("any-channel cap 1 per 3 days")
    assert got["sms_offer"].startswith("any-channel cap 1 per 3 days")
    got = store.blocked("cust-1", [EMAIL_2, SMS], policy, T0 + 3 * D)
    assert got == {"newsletter": got["newsletter"]}
    assert got["newsletter"].startswith("email cap 1 per 7 days")


def test_a_cap_of_zero_blocks_the_channel_without_history(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("sms", 0, 30),), 0.0, 0, 0.0)
    assert set(store.blocked("new-customer", ALL, policy, T0)) == {"sms_offer"}
    assert not store.commit(record("d1", T0, action="sms_offer"), SMS, policy).ok


# -- cooldown ------------------------------------------------------------------------------


def test_the_cooldown_blocks_the_same_action_only(store: StateStore) -> None:
    policy = ContactPolicy((), 24.0, 0, 0.0)
    assert send(store, "d1", T0, CALL, policy)
    assert store.blocked("cust-1", ALL, policy, T0 + 3 * H) == {
        "retention_call": "cooldown: retention_call sent 3 h ago (24 h)"
    }
    assert "retention_call" in store.blocked("cust-1", ALL, policy, T0 + 24 * H - US)
    assert store.blocked("cust-1", ALL, policy, T0 + 24 * H) == {}
    assert send(store, "d2", T0 + 3 * H, CALL_2, policy)  # another action on the channel
    assert not store.commit(record("d3", T0 + 5 * H, action=CALL.action_id), CALL, policy).ok


def test_contacts_stamped_after_the_decision_time_count(store: StateStore) -> None:
    """A worker whose clock runs behind must not slip a contact in before a later one."""
    policy = ContactPolicy((ChannelCap("phone", 1, 7),), 24.0, 0, 0.0)
    assert send(store, "d1", T0 + 2 * H, CALL, policy)
    got = store.blocked("cust-1", [CALL, CALL_2], policy, T0)
    assert got["service_call"].startswith("phone cap 1 per 7 days reached (1 contact since")
    no_caps = ContactPolicy((), 24.0, 0, 0.0)
    assert store.blocked("cust-1", [CALL], no_caps, T0) == {
        "retention_call": "cooldown: retention_call sent 2 h after this decision (24 h)"
    }
    assert not store.commit(record("d2", T0, action="service_call"), CALL_2, policy).ok


# -- suppression ---------------------------------------------------------------------------

SUPPRESS = ContactPolicy((), 0.0, 3, 30.0)


def ignore_three_emails(store: StateStore) -> None:
    for i in range(3):
        assert send(store, f"e{i}", T0 + 2 * i * D, EMAIL_1)
        at = T0 + (2 * i + 1) * D
        assert store.record_feedback(f"e{i}", "ignored", at) == "created"


def test_consecutive_ignored_contacts_suppress_the_channel(store: StateStore) -> None:
    ignore_three_emails(store)
    last_ignored = T0 + 5 * D
    until = last_ignored + 30 * D
    reason = f"email suppressed after 3 ignored actions until {until.isoformat()}"
    assert store.blocked("cust-1", ALL, SUPPRESS, last_ignored) == {
        "winback_email": reason,
        "newsletter": reason,
    }
    # feedback counts from the time it was received ("by decision time")
    assert store.blocked("cust-1", ALL, SUPPRESS, last_ignored - US) == {}
    assert "newsletter" in store.blocked("cust-1", ALL, SUPPRESS, until - US)
    assert store.blocked("cust-1", ALL, SUPPRESS, until) == {}
    assert not store.commit(record("x", until - H, action="newsletter"), EMAIL_2, SUPPRESS).ok
    assert send(store, "y", until - H, SMS, SUPPRESS)  # other channels are not suppressed


def test_a_positive_outcome_breaks_the_run(store: StateStore) -> None:
    ignore_three_emails(store)
    now = T0 + 10 * D
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, now)
    # a click on the newest contact: no ignored contact after a positive one
    assert store.record_feedback("e2", "clicked", now) == "created"
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, now) == {}
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, now - US)  # not yet received
    for i in range(3, 5):
        assert send(store, f"e{i}", now + i * D, EMAIL_1)
        assert store.record_feedback(f"e{i}", "ignored", now + i * D + H) == "created"
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, now + 6 * D) == {}  # 2 since the click
    assert send(store, "e5", now + 6 * D, EMAIL_1)
    assert store.record_feedback("e5", "ignored", now + 7 * D) == "created"
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, now + 7 * D) == {
        "winback_email": suppression_reason("email", 3, _us(now + 37 * D))
    }


def test_a_positive_outcome_on_the_same_contact_wins(store: StateStore) -> None:
    ignore_three_emails(store)
    assert store.record_feedback("e1", "converted", T0 + 6 * D) == "created"
    # e0 ignored, e1 converted (positive wins), e2 ignored: the run since e1 is 1
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, T0 + 6 * D) == {}


def test_ignored_decisions_without_a_contact_do_not_suppress(store: StateStore) -> None:
    for i in range(4):
        assert store.commit(record(f"n{i}", T0 + i * D), None, SUPPRESS).ok
        assert store.record_feedback(f"n{i}", "ignored", T0 + i * D + H) == "created"
    assert store.blocked("cust-1", ALL, SUPPRESS, T0 + 5 * D) == {}


def test_declines_and_complaints_neither_extend_nor_break_the_run(store: StateStore) -> None:
    ignore_three_emails(store)
    assert send(store, "e3", T0 + 6 * D, EMAIL_2)
    assert store.record_feedback("e3", "declined", T0 + 6 * D + H) == "created"
    assert store.blocked("cust-1", [EMAIL_1], SUPPRESS, T0 + 7 * D)


# -- commit --------------------------------------------------------------------------------


def test_a_refused_commit_writes_nothing(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("email", 1, 7),), 0.0, 0, 0.0)
    assert send(store, "d1", T0, EMAIL_1, policy)
    before = store.blocked("cust-1", [EMAIL_2], policy, T0 + D)["newsletter"]
    result = store.commit(record("d2", T0 + D, action="newsletter"), EMAIL_2, policy)
    assert result == state_module.CommitResult(False, before)
    assert store.decision("d2") is None
    assert count_rows(store, store.contacts) == 1
    assert count_rows(store, store.decisions) == 1


def test_settle_reads_the_history_once_and_writes_what_was_chosen(store: StateStore) -> None:
    """The real-time path: the policy's verdict on every candidate, then the record and its
    contact written in the same transaction; a blocked or mismatched pick writes nothing."""
    policy = ContactPolicy((ChannelCap("email", 1, 7),), 0.0, 0, 0.0)
    assert send(store, "d1", T0, EMAIL_1, policy)
    seen: list[dict[str, str]] = []

    def pick(action: Candidate | None, decision_id: str = "d2") -> Any:
        def choose(blocked: dict[str, str]) -> tuple[DecisionRecord, Candidate | None]:
            seen.append(blocked)
            chosen = action.action_id if action else "none"
            channel = action.channel if action else None
            return record(decision_id, T0 + D, action=chosen, channel=channel), action

        return choose

    assert store.settle("cust-1", ALL, policy, T0 + D, pick(SMS)) == store.decision("d2")
    assert seen[-1] == store.blocked("cust-1", ALL, policy, T0 + D) and "newsletter" in seen[-1]
    assert count_rows(store, store.contacts) == 2
    with pytest.raises(ValueError, match="blocked by the contact policy"):
        store.settle("cust-1", ALL, policy, T0 + D, pick(EMAIL_2, "d3"))
    with pytest.raises(ValueError, match="another customer or time"):
        store.settle("cust-2", ALL, policy, T0 + D, pick(None, "d4"))
    with pytest.raises(DuplicateDecisionError):
        store.settle("cust-1", [], policy, T0 + D, pick(None, "d2"))
    assert seen[-1] == {}  # no candidates: no history read
    assert store.decision("d3") is None and store.decision("d4") is None
    assert count_rows(store, store.contacts) == 2 and count_rows(store, store.decisions) == 2


def test_the_checkpointer_starts_the_log_over_under_steady_writes(tmp_path: Path) -> None:
    """A round copies the whole log and restarts it itself, even with a commit landing while
    it copies the bulk, so SQLite's own checkpoint never runs inside a request's commit."""
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    assert store._checkpointer is not None
    store._checkpointer.stop()
    checkpointer = state_module._Checkpointer(store.engine, 1.0)
    original = state_module._wal_checkpoint
    calls = 0

    def checkpoint_with_a_commit_beside(conn: Any) -> tuple[int, int, int]:
        nonlocal calls
        calls += 1
        result = original(conn)
        if calls == 1:  # a decision commits while the bulk is copied
            assert store.commit(record("beside", T0), None, NO_POLICY).ok
        return result

    try:
        for i in range(200):
            assert store.commit(record(f"d{i}", T0 + i * US), None, NO_POLICY).ok
        state_module._wal_checkpoint = checkpoint_with_a_commit_beside
        assert checkpointer.checkpoint() == "restarted"
        state_module._wal_checkpoint = original
        assert store.commit(record("after", T0 + D), None, NO_POLICY).ok
        with store.engine.connect() as conn:
            logged = original(conn)[1]
        assert logged < 20  # the log holds the last commit only: it started over
        assert store.decision("beside") is not None and store.decision("after") is not None
        assert checkpointer.checkpoint() == "restarted"
    finally:
        state_module._wal_checkpoint = original
        store.close()


def test_no_contact_logs_only_the_decision(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("any", 0, 7),), 24.0, 1, 30.0)
    held_out = record("d1", T0, holdout=True, propensity=1.0)
    assert store.commit(held_out, None, policy).ok  # nothing to check: no contact
    assert store.decision("d1") == held_out
    assert count_rows(store, store.contacts) == 0
    assert store.blocked("cust-1", ALL, NO_POLICY, T0 + H) == {}


def test_a_duplicate_decision_id_fails_and_keeps_the_first(store: StateStore) -> None:
    first = record("dup-1", T0, action=EMAIL_1.action_id, channel="email")
    assert store.commit(first, EMAIL_1, NO_POLICY).ok
    second = record("dup-1", T0 + H, "cust-2", SMS.action_id, "sms", propensity=0.1)
    with pytest.raises(DuplicateDecisionError, match="dup-1"):
        store.commit(second, SMS, NO_POLICY)
    with pytest.raises(DuplicateDecisionError):
        store.commit(second, None, NO_POLICY)
    assert store.decision("dup-1") == first
    assert count_rows(store, store.contacts) == 1
    cap = ContactPolicy((ChannelCap("sms", 1, 7),), 0.0, 0, 0.0)
    assert store.blocked("cust-2", [SMS], cap, T0 + 2 * H) == {}


def test_the_record_round_trips(store: StateStore) -> None:
    rec = record(
        "round-trip_1",
        T0 + timedelta(microseconds=7),
        action=EMAIL_1.action_id,
        channel="email",
        explored=True,
        propensity=0.025,
        fallback_reason=None,
        features=None,
        feature_version="journey_features@2026-03-01",
        request={"channel": "app", "nested": {"é": [1, 2.5, None]}},
    )
    assert store.commit(rec, EMAIL_1, NO_POLICY).ok
    assert store.decision("round-trip_1") == rec
    assert store.decision("absent") is None
    assert store.decision("not a valid id") is None


def test_non_finite_values_are_stored_as_null(store: StateStore) -> None:
    rec = record("nan-1", T0, features={"x": float("nan"), "y": 1.0, "z": [float("inf")]})
    assert store.commit(rec, None, NO_POLICY).ok
    got = store.decision("nan-1")
    assert got is not None and got.features == {"x": None, "y": 1.0, "z": [None]}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"decided_at": datetime(2026, 3, 2, 9)}, "timezone-aware"),
        ({"decision_id": ""}, "decision_id"),
        ({"decision_id": "x" * 65}, "decision_id"),
        ({"decision_id": "has space"}, "decision_id"),
        ({"decision_id": "ünïcode"}, "decision_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"propensity": 1.5}, "propensity"),
        ({"propensity": float("nan")}, "propensity"),
    ],
)
def test_invalid_records_are_refused(
    store: StateStore, update: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.commit(replace(record("ok-id", T0), **update), None, NO_POLICY)
    assert count_rows(store, store.decisions) == 0


def test_the_contact_must_be_the_chosen_action(store: StateStore) -> None:
    with pytest.raises(ValueError, match="not the chosen action"):
        store.commit(record("d1", T0, action="newsletter"), EMAIL_1, NO_POLICY)


def test_naive_times_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.blocked("cust-1", ALL, SUPPRESS, datetime(2026, 3, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.contact_counts(SUPPRESS, datetime(2026, 3, 2))
    with pytest.raises(ValueError, match="timezone-aware"):
        list(store.iter_decisions(start=datetime(2026, 3, 2)))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ChannelCap("email", -1, 7),
        lambda: ChannelCap("email", 1, 0),
        lambda: ChannelCap("", 1, 7),
        lambda: ContactPolicy((), -1.0, 0, 0.0),
        lambda: ContactPolicy((), 0.0, -1, 0.0),
        lambda: ContactPolicy((), 0.0, 0, float("inf")),
        lambda: Candidate("", "email"),
        lambda: Candidate("x", "any"),
    ],
)
def test_invalid_policies_and_candidates_are_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


# -- feedback ------------------------------------------------------------------------------


def test_feedback_is_idempotent_per_outcome(store: StateStore) -> None:
    assert store.commit(record("d1", T0, action="winback_email"), EMAIL_1, NO_POLICY).ok
    assert store.record_feedback("d1", "clicked", T0 + H, {"link": "offer"}) == "created"
    assert store.record_feedback("d1", "clicked", T0 + 2 * H) == "duplicate"
    assert store.record_feedback("d1", "converted", T0 + 3 * H) == "created"
    assert store.feedback("d1") == [("clicked", T0 + H), ("converted", T0 + 3 * H)]
    assert store.feedback("unknown") == []


def test_feedback_for_an_unknown_decision_stores_nothing(store: StateStore) -> None:
    assert store.record_feedback("never-logged", "accepted", T0) == "unknown_decision"
    assert store.record_feedback("bad id!", "accepted", T0) == "unknown_decision"
    assert count_rows(store, store.feedback_table) == 0


def test_feedback_outcomes_and_times_are_validated(store: StateStore) -> None:
    assert store.commit(record("d1", T0), None, NO_POLICY).ok
    with pytest.raises(ValueError, match="accepted, ignored, clicked, converted, declined"):
        store.record_feedback("d1", "opened", T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.record_feedback("d1", "accepted", datetime(2026, 3, 2))
    assert count_rows(store, store.feedback_table) == 0


# -- reading the log -----------------------------------------------------------------------


def test_iter_decisions_pages_in_chunks(store: StateStore) -> None:
    ids = []
    for i in range(25):
        at = T0 + (i // 3) * H  # three decisions share each timestamp
        ids.append(f"d{i:02d}")
        assert store.commit(record(ids[-1], at, f"c{i}", propensity=0.5), None, NO_POLICY).ok
    assert store.record_feedback("d04", "converted", T0 + 9 * H) == "created"
    chunks = list(store.iter_decisions(chunk_rows=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    frame = pd.concat(chunks, ignore_index=True)
    assert frame["decision_id"].tolist() == ids
    assert frame["decided_at"].is_monotonic_increasing
    assert str(frame["decided_at"].dt.tz) == "UTC"
    assert frame.loc[4, "converted_at"] == pd.Timestamp(T0 + 9 * H)
    assert frame["converted_at"].isna().sum() == 24
    assert {f"{o}_at" for o in OUTCOMES} <= set(frame.columns)
    assert frame.loc[0, "request"].startswith("{")
    window = pd.concat(store.iter_decisions(T0 + 2 * H, T0 + 4 * H, chunk_rows=4))
    assert window["decision_id"].tolist() == ids[6:12]
    assert list(store.iter_decisions(T0 + 100 * H)) == []
    assert len(list(store.iter_decisions(chunk_rows=25))) == 1


# -- batch counts --------------------------------------------------------------------------


def random_population(store: StateStore, rng: random.Random, customers: int) -> datetime:
    """Customers with random contacts and feedback over 40 days; returns the end."""
    channels = [EMAIL_1, EMAIL_2, SMS, CALL, CALL_2, PUSH]
    n = 0
    for c in range(customers):
        for _ in range(rng.choice([0, 1, 2, 3, 4, 6])):
            n += 1
            cand = rng.choice(channels)
            at = T0 + timedelta(hours=rng.randrange(0, 40 * 24))
            assert send(store, f"p{n}", at, cand, customer_id=f"cust-{c:03d}")
            for outcome in rng.sample(["ignored", "ignored", "clicked", "declined"], k=2):
                if rng.random() < 0.6:
                    late = at + timedelta(hours=rng.randrange(1, 72))
                    store.record_feedback(f"p{n}", outcome, late)
    return T0 + 40 * D


BATCH_POLICY = ContactPolicy(
    (ChannelCap("email", 2, 14), ChannelCap("any", 4, 30), ChannelCap("phone", 1, 7)),
    48.0,
    2,
    10.0,
)


def test_contact_counts_equals_blocked_for_every_customer(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(11)
    end = random_population(store, rng, 90)
    for now in (end - 3 * D, end):
        frame = store.contact_counts(BATCH_POLICY, now, candidates=ALL)
        assert frame["customer_id"].is_unique
        rows = {r["customer_id"]: r for r in frame.to_dict("records")}
        blocked_somewhere = 0
        for c in range(90):
            cid = f"cust-{c:03d}"
            want = store.blocked(cid, ALL, BATCH_POLICY, now)
            blocked_somewhere += bool(want)
            if cid not in rows:
                assert want == {}
                continue
            got = {a.action_id: rows[cid][f"reason__{a.action_id}"] for a in ALL}
            assert {a: r for a, r in got.items() if r is not None} == want
            assert {a for a in got if rows[cid][f"blocked__{a}"]} == set(want)
        assert blocked_somewhere > 10  # the population exercises the policy
    # every requested customer gets a row, in order; the long-list path filters in pandas
    wanted = ["cust-005", "nobody", "cust-001", "cust-005"]
    small = store.contact_counts(BATCH_POLICY, end, wanted, candidates=ALL)
    monkeypatch.setattr(state_module, "_IN_LIST_LIMIT", 1)
    large = store.contact_counts(BATCH_POLICY, end, wanted, candidates=ALL)
    assert small["customer_id"].tolist() == ["cust-005", "nobody", "cust-001"]
    assert small.equals(large)
    assert not small.loc[1, [c for c in small.columns if c.startswith("blocked")]].any()


def test_contact_counts_reports_counts_and_channels(store: StateStore) -> None:
    policy = ContactPolicy((ChannelCap("email", 1, 7), ChannelCap("any", 2, 30)), 24.0, 0, 0.0)
    assert send(store, "a", T0, EMAIL_1, policy, "c1")
    assert send(store, "b", T0 + 8 * D, SMS, policy, "c1")
    assert send(store, "c", T0 + 8 * D, CALL, policy, "c2")
    now = T0 + 8 * D + H
    frame = store.contact_counts(policy, now).set_index("customer_id")
    assert frame.loc["c1", "contacts__email__7d"] == 0
    assert frame.loc["c1", "contacts__any__30d"] == 2
    assert frame.loc["c2", "contacts__any__30d"] == 1
    assert frame.loc["c1", "blocked_channel__any"]
    assert frame.loc["c1", "reason_channel__email"] == cap_reason(policy.caps[1], 2, _us(now))
    assert not frame.loc["c2", "blocked_channel__phone"]
    # default candidates: the actions in the recent history
    assert frame.loc["c2", "reason__retention_call"] == cooldown_reason(
        "retention_call", _us(T0 + 8 * D), _us(now), policy
    )
    assert frame.loc["c1", "reason__retention_call"] == cap_reason(policy.caps[1], 2, _us(now))
    assert not frame.loc["c2", "blocked__winback_email"]
    assert frame.loc["c2", "reason__winback_email"] is None


# -- health and logs -----------------------------------------------------------------------


def test_ping_raises_when_the_store_is_unusable(store: StateStore) -> None:
    store.ping()
    drop_tables(store)
    with pytest.raises(sa.exc.DBAPIError):
        store.ping()


def test_unreachable_and_unsupported_stores_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(sa.exc.OperationalError):
        StateStore("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    with pytest.raises(ValueError, match="needs a file"):
        StateStore("sqlite://")
    with pytest.raises(ValueError, match="unsupported"):
        StateStore("mysql://root@127.0.0.1/x")
    with pytest.raises(ValueError, match="table_prefix"):
        StateStore(f"sqlite:///{tmp_path / 's.db'}", table_prefix="x; drop table")


def test_customer_ids_never_reach_the_logs(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    policy = ContactPolicy((ChannelCap("email", 1, 7),), 0.0, 0, 0.0)
    cid = "customer-4711@example.com"
    caplog.set_level(logging.DEBUG, logger="serving.state")
    assert send(store, "d1", T0, EMAIL_1, policy, cid)
    assert not send(store, "d2", T0 + H, EMAIL_2, policy, cid)
    assert hashed_id(cid) in caplog.text
    assert cid not in caplog.text


# -- the stateful property test ------------------------------------------------------------

ACTIONS = [
    Candidate("e1", "email"),
    Candidate("e2", "email"),
    Candidate("s1", "sms"),
    Candidate("p1", "push"),
]
CUSTOMERS = ["c1", "c2"]
POSITIVE = {"accepted", "clicked", "converted"}
HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US

policies = st.builds(
    ContactPolicy,
    caps=st.lists(
        st.builds(
            ChannelCap,
            st.sampled_from(["email", "sms", "push", "any"]),
            st.integers(0, 3),
            st.sampled_from([0.5, 1.0, 2.0, 7.0]),
        ),
        max_size=3,
    ).map(tuple),
    cooldown_hours=st.sampled_from([0.0, 1.0, 24.0]),
    suppress_after_ignored=st.integers(0, 3),
    suppress_days=st.sampled_from([0.0, 1.0, 10.0]),
)


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // US


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


class ContactPolicyMachine(RuleBasedStateMachine):
    """Decisions, commits (also back-dated), feedback and time in any order: the store agrees
    with a plain in-memory model, and the stored contacts never exceed a cap in any window."""

    decisions = Bundle("decisions")

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="state-machine-")
        self.store = StateStore(f"sqlite:///{self.dir}/state.db")
        self.policy = NO_POLICY
        self.now = _us(T0)
        self.sent: list[tuple[str, str, str, int, str]] = []  # customer, action, channel, us, id
        self.outcomes: dict[tuple[str, str], int] = {}  # (decision, outcome) -> at
        self.logged: set[str] = set()
        self.n = 0

    @initialize(policy=policies)
    def choose_policy(self, policy: ContactPolicy) -> None:
        self.policy = policy

    # the model, written from the rules' wording
    def expected(self, customer: str, t: int) -> dict[str, str]:
        mine = [s for s in self.sent if s[0] == customer]
        out: dict[str, str] = {}
        for cand in ACTIONS:
            reason = None
            for cap in self.policy.caps:
                if cap.channel not in ("any", cand.channel):
                    continue
                start = t - round(cap.window_days * DAY_US)
                n = sum(1 for s in mine if cap.channel in ("any", s[2]) and s[3] > start)
                if n >= cap.max_contacts:
                    reason = cap_reason(cap, n, t)
                    break
            cooldown = round(self.policy.cooldown_hours * HOUR_US)
            recent = [s[3] for s in mine if s[1] == cand.action_id and s[3] > t - cooldown]
            if reason is None and cooldown > 0 and recent:
                reason = cooldown_reason(cand.action_id, max(recent), t, self.policy)
            if reason is None:
                reason = self.suppression(mine, cand.channel, t)
            if reason is not None:
                out[cand.action_id] = reason
        return out

    def suppression(self, mine: list[Any], channel: str, t: int) -> str | None:
        p = self.policy
        if p.suppress_after_ignored == 0 or p.suppress_days == 0:
            return None

        def known(decision: str, outcomes: set[str]) -> list[int]:
            return [
                at
                for (d, o), at in self.outcomes.items()
                if d == decision and o in outcomes and at <= t
            ]

        on_channel = [s for s in mine if s[2] == channel]
        positives = [s[3] for s in on_channel if known(s[4], POSITIVE)]
        run = [
            known(s[4], {"ignored"})[0]
            for s in on_channel
            if not known(s[4], POSITIVE)
            and known(s[4], {"ignored"})
            and (not positives or s[3] > max(positives))
        ]
        until = max(run, default=0) + round(p.suppress_days * DAY_US)
        if len(run) >= p.suppress_after_ignored and until > t:
            return suppression_reason(channel, len(run), until)
        return None

    @rule(hours=st.sampled_from([0.0, 0.5, 1.0, 6.0, 12.0, 24.0, 47.0, 168.0]))
    def advance(self, hours: float) -> None:
        self.now += round(hours * HOUR_US)

    @rule(
        target=decisions,
        customer=st.sampled_from(CUSTOMERS),
        index=st.integers(0, len(ACTIONS) - 1),
        back_hours=st.sampled_from([0.0, 0.0, 0.0, 1.0, 30.0]),
    )
    def decide(self, customer: str, index: int, back_hours: float) -> str:
        t = self.now - round(back_hours * HOUR_US)
        want = self.expected(customer, t)
        assert self.store.blocked(customer, ACTIONS, self.policy, _dt(t)) == want
        cand = ACTIONS[index]
        self.n += 1
        decision_id = f"m{self.n}"
        rec = record(decision_id, _dt(t), customer, cand.action_id, cand.channel)
        result = self.store.commit(rec, cand, self.policy)
        assert result.ok == (cand.action_id not in want)
        assert result.reason == want.get(cand.action_id)
        if result.ok:
            self.sent.append((customer, cand.action_id, cand.channel, t, decision_id))
            self.logged.add(decision_id)
        return decision_id

    @rule(target=decisions, customer=st.sampled_from(CUSTOMERS))
    def decide_nothing(self, customer: str) -> str:
        self.n += 1
        decision_id = f"m{self.n}"
        assert self.store.commit(record(decision_id, _dt(self.now), customer), None, self.policy).ok
        self.logged.add(decision_id)
        return decision_id

    @rule(
        decision=decisions,
        outcome=st.sampled_from(["ignored", "ignored", "clicked", "declined", "converted"]),
        delay_hours=st.sampled_from([0.0, 1.0, 30.0]),
    )
    def feedback(self, decision: str, outcome: str, delay_hours: float) -> None:
        at = self.now + round(delay_hours * HOUR_US)
        status = self.store.record_feedback(decision, outcome, _dt(at))
        if decision not in self.logged:  # its contact was refused: nothing was logged
            assert status == "unknown_decision"
        elif (decision, outcome) in self.outcomes:
            assert status == "duplicate"
        else:
            assert status == "created"
            self.outcomes[(decision, outcome)] = at

    @rule()
    def feedback_for_nothing(self) -> None:
        assert self.store.record_feedback("nope", "clicked", _dt(self.now)) == "unknown_decision"

    @rule()
    def batch_agrees(self) -> None:
        frame = self.store.contact_counts(self.policy, _dt(self.now), CUSTOMERS, ACTIONS)
        for row in frame.to_dict("records"):
            got = {a.action_id: row[f"reason__{a.action_id}"] for a in ACTIONS}
            want = self.expected(row["customer_id"], self.now)
            assert {a: r for a, r in got.items() if r is not None} == want

    @invariant()
    def caps_hold_in_every_window(self) -> None:
        c = self.store.contacts
        with self.store.engine.connect() as conn:
            stored = conn.execute(
                sa.select(c.c.customer_id, c.c.action_id, c.c.channel, c.c.sent_at_us)
            ).all()
        assert sorted(stored) == sorted(s[:4] for s in self.sent)
        for customer in CUSTOMERS:
            for cap in self.policy.caps:
                times = sorted(
                    s[3] for s in stored if s[0] == customer and cap.channel in ("any", s[2])
                )
                width = round(cap.window_days * DAY_US)
                for end in times:  # the fullest windows end at a contact
                    assert sum(1 for x in times if end - width < x <= end) <= cap.max_contacts
            cooldown = round(self.policy.cooldown_hours * HOUR_US)
            for action in {s[1] for s in stored if s[0] == customer}:
                times = sorted(s[3] for s in stored if s[0] == customer and s[1] == action)
                assert all(b - a >= cooldown for a, b in itertools.pairwise(times))

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)


ContactPolicyMachine.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_contact_policy_machine = ContactPolicyMachine.TestCase
