"""The decision engine on a trained, promoted, materialised workspace: the output contract,
fallbacks that never raise, contact caps under concurrency, hot model swaps, and parity of
the real-time decision with the batch path."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.engine import NO_ACTION, DecisionContext, holdout_flag
from serving.features import FeatureStoreDownError, OnlineFeatures
from serving.runtime import Runtime, decision_body
from tests.serving.conftest import ServingWorkspace, serving_settings
from training.tracking import CHAMPION, use_tracking_uri


@pytest.fixture
def runtime(serving_ws: ServingWorkspace, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(serving_settings(serving_ws, tmp_path))
    yield rt
    rt.close()


def check_contract(body: dict[str, object], ids: set[str]) -> None:
    assert body["action"] == NO_ACTION or body["action"] in ids
    assert isinstance(body["propensity"], float) and 0.0 < body["propensity"] <= 1.0
    scores = body["scores"]
    if scores is not None:
        assert isinstance(scores, dict)
        for key in ("churn_risk", "conversion_propensity"):
            assert math.isfinite(scores[key]) and 0.0 <= scores[key] <= 1.0
        assert scores["risk_band"] in ("high", "medium", "low")
        assert all(0.0 <= s["probability"] <= 1.0 for s in scores["next_steps"])
    assert body["reason_codes"]["action"]  # type: ignore[index]


def test_a_decision_has_scores_reasons_and_a_logged_record(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    cid = serving_ws.customers[0]
    d = runtime.engine.decide(cid, DecisionContext(channel="web"))
    body = decision_body(d)
    check_contract(body, set(runtime.actions.ids))
    assert d.scores is not None and d.fallback_reason is None and not d.cold_start
    assert d.scores.reasons and all(r.text and "(" not in r.text for r in d.scores.reasons)
    assert len(d.scores.next_steps) == 3
    assert set(d.model_versions) == {"churn", "conversion", "next_step", "uplift"}
    record = runtime.state.decision(d.decision_id)
    assert record is not None and record.chosen_action == d.action
    assert record.propensity == d.propensity and record.policy_version == runtime.actions.version
    assert {c["action"] for c in record.candidates} == set(runtime.actions.ids)
    removed = {o.action for o in d.removed}
    for c in record.candidates:  # every removed action says which rule removed it
        assert (c["removed_by"] is not None) == (c["action"] in removed)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    picks=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
    channel=st.sampled_from([None, "web", "app", "email", "store"]),
    unknown=st.booleans(),
)
def test_output_contract_for_any_customer_and_context(
    runtime: Runtime,
    serving_ws: ServingWorkspace,
    picks: list[int],
    channel: str | None,
    unknown: bool,
) -> None:
    ids = set(runtime.actions.ids)
    seen: set[str] = set()
    for p in picks:
        cid = f"never-seen-{p}" if unknown else serving_ws.customers[p % len(serving_ws.customers)]
        d = runtime.engine.decide(cid, DecisionContext(channel=channel))
        check_contract(decision_body(d), ids)
        assert d.decision_id not in seen
        seen.add(d.decision_id)
        assert d.cold_start == unknown
        if unknown:
            assert d.scores is None and d.fallback_reason is None


def test_store_failures_and_model_failures_fall_back_without_raising(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = serving_ws.customers[1]
    features = runtime.engine.features
    assert isinstance(features, OnlineFeatures)

    real_read = features._read

    def slow(*args: object) -> object:  # answers, but after the 250 ms deadline
        time.sleep(0.6)
        return real_read(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(features, "_read", slow)
    d = runtime.engine.decide(cid)
    assert d.fallback_reason == "feature_store_timeout"
    assert d.action == runtime.actions.default_action or d.action == NO_ACTION

    def down(*args: object) -> object:
        raise FeatureStoreDownError("connection refused")

    monkeypatch.setattr(features, "_read", down)
    assert runtime.engine.decide(cid).fallback_reason == "feature_store_unavailable"
    monkeypatch.undo()

    churn = runtime.models.models["churn"].bundle

    def broken(role: str, x: np.ndarray, **kwargs: object) -> np.ndarray:
        raise RuntimeError("corrupt model")

    monkeypatch.setattr(churn, "_booster_predict", broken)  # every LightGBM call of the model
    d = runtime.engine.decide(cid)
    assert d.fallback_reason == "model_error" and d.scores is None
    assert runtime.state.decision(d.decision_id) is not None  # fallbacks are logged too


def test_the_one_query_sqlite_read_equals_feasts_read(
    runtime: Runtime, serving_ws: ServingWorkspace
) -> None:
    features = runtime.engine.features
    assert isinstance(features, OnlineFeatures)
    views, provider, tables = features._state
    assert tables is not None  # the embedded store takes the one-query path
    ids = [*serving_ws.customers[::15], "never-seen"]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fast = features.read(ids, now)
    features._state = (views, provider, None)  # Feast's provider.online_read, view by view
    try:
        slow = features.read(ids, now)
    finally:
        features._state = (views, provider, tables)
    assert [r.found for r in fast] == [r.found for r in slow] == [True] * (len(ids) - 1) + [False]
    for a, b in zip(fast, slow, strict=True):
        assert a.values == b.values
        assert (a.age_seconds, a.stale, a.snapshot_at) == (b.age_seconds, b.stale, b.snapshot_at)


def test_fifty_concurrent_calls_for_one_customer_never_break_a_cap(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    rt = Runtime(serving_settings(serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"}))
    try:
        # a customer the policy would contact (the batch path writes nothing), on the clock
        # the real-time path decides on (the log's end: the test log ends in the past)
        now = rt.now()
        assert rt.engine.features is not None
        ids = serving_ws.customers[:100]
        frame = pd.DataFrame([r.values for r in rt.engine.features.read(ids, now)], index=ids)
        batch = rt.engine.decide_frame(frame, now)
        contacted = batch.index[batch["action"] != NO_ACTION]
        assert len(contacted), "no customer would be contacted: the test would prove nothing"
        cid = str(contacted[0])
        with ThreadPoolExecutor(16) as pool:
            decisions = list(pool.map(lambda _: rt.engine.decide(cid), range(50)))
        sent: dict[str, int] = {}
        for d in decisions:
            if d.channel is not None:
                sent[d.channel] = sent.get(d.channel, 0) + 1
        for cap in rt.actions.contact_policy.caps:
            count = sum(sent.values()) if cap.channel == "any" else sent.get(cap.channel, 0)
            assert count <= cap.max, (cap, sent)
        assert len({d.decision_id for d in decisions}) == 50
        assert sum(sent.values()) >= 1
    finally:
        rt.close()


def test_holdout_is_deterministic_and_close_to_its_share() -> None:
    ids = [f"C{i}" for i in range(20_000)]
    flags = [holdout_flag(c, 0.05, "salt") for c in ids]
    assert flags == [holdout_flag(c, 0.05, "salt") for c in ids]
    assert abs(sum(flags) / len(ids) - 0.05) < 0.006
    assert not any(holdout_flag(c, 0.0, "salt") for c in ids[:100])


def test_holdout_customers_get_the_control_action_flagged(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    rt = Runtime(serving_settings(serving_ws, tmp_path, holdout={"share": 1.0, "salt": "x"}))
    try:
        d = rt.engine.decide(serving_ws.customers[2])
        assert d.holdout and d.action == NO_ACTION and d.propensity == 1.0
        assert d.ranked  # what would have been chosen is still ranked and logged
    finally:
        rt.close()


def test_epsilon_exploration_records_the_probability_of_the_chosen_action(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    epsilon = 0.5
    rt = Runtime(
        serving_settings(
            serving_ws,
            tmp_path,
            holdout={"share": 0.0, "salt": "x"},
            exploration={"method": "epsilon", "epsilon": epsilon},
        )
    )
    rt.engine.rng = random.Random(3)
    explored, expected_explored = 0, 0.0
    try:
        for cid in serving_ws.customers[:200]:
            d = rt.engine.decide(cid)
            k = len(d.ranked)
            if k == 1:  # nothing to explore: "no action" alone
                assert d.propensity == 1.0 and not d.explored
                continue
            # Written out by hand: epsilon-greedy picks the best with 1 - eps + eps/k and any
            # other candidate with eps/k; these are the logged propensities OPE divides by.
            if d.explored:
                assert d.action != d.ranked[0].action
                assert d.propensity == pytest.approx(epsilon / k)
            else:
                assert d.action == d.ranked[0].action
                assert d.propensity == pytest.approx(1 - epsilon + epsilon / k)
            explored += d.explored
            expected_explored += epsilon * (k - 1) / k
            record = rt.state.decision(d.decision_id)
            assert record is not None and record.explored == d.explored
            assert record.propensity == d.propensity
    finally:
        rt.close()
    # Exploration really happens, at its configured rate (binomial, 200 draws: 4 sd ~ 28).
    assert explored > 0
    assert abs(explored - expected_explored) < 4 * (200 * 0.25) ** 0.5


def test_batch_path_chooses_what_the_real_time_path_chooses(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    rt = Runtime(serving_settings(serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"}))
    try:
        now = datetime.now(UTC)
        ids = serving_ws.customers[:80]
        assert rt.engine.features is not None
        rows = rt.engine.features.read(ids, now)
        frame = pd.DataFrame([r.values for r in rows], index=ids)
        batch = rt.engine.decide_frame(frame, now, DecisionContext(channel="web", at=now))
        for cid in ids:  # each customer once: no contact history in play
            d = rt.engine.decide(cid, DecisionContext(channel="web", at=now))
            assert d.scores is not None
            assert batch.loc[cid, "churn_risk"] == pytest.approx(d.scores.churn_risk, abs=1e-9)
            assert batch.loc[cid, "action"] == d.action, cid
    finally:
        rt.close()


def test_a_moved_alias_is_served_without_restart_or_failed_calls(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    rt = Runtime(serving_settings(serving_ws, tmp_path))
    client = use_tracking_uri(serving_ws.tracking_uri)
    name = rt.settings.models.registered_name("churn")
    before = rt.models.models["churn"].version
    source = client.get_model_version(name, before).source
    new = client.create_model_version(
        name, source, tags=client.get_model_version(name, before).tags
    )
    failures: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                d = rt.engine.decide(serving_ws.customers[3])
                assert d.fallback_reason is None
            except BaseException as exc:
                failures.append(exc)

    # while no alias moves, a refresh is one query on the registry, not four MLflow lookups
    assert rt.models.refresh() == []
    real_client = rt.models.client
    rt.models.client = lambda: pytest.fail("asked MLflow although no alias moved")  # type: ignore[method-assign]
    assert rt.models.refresh() == []
    rt.models.client = real_client  # type: ignore[method-assign]
    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        client.set_registered_model_alias(name, CHAMPION, new.version)
        assert rt.models.refresh() == ["churn"]
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        client.set_registered_model_alias(name, CHAMPION, before)
        rt.close()
    assert not failures
    assert rt.models.models["churn"].version == str(new.version)


def test_a_new_customer_gets_the_welcome_path_and_is_told_why(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = runtime.engine.settings
    ids = (f"brand-new-{i}" for i in range(1000))
    fresh = [c for c in ids if not holdout_flag(c, settings.holdout.share, settings.holdout.salt)]
    assert runtime.actions.welcome == ["onboarding_help"]  # the simulator's catalog
    d = runtime.engine.decide(fresh[0], DecisionContext(channel="app"))
    assert d.cold_start and d.scores is None and d.fallback_reason is None
    assert d.action == "onboarding_help", (d.why, [(o.action, o.reason) for o in d.removed])
    assert d.why.startswith("new customer, no history yet: onboarding_help, the welcome path")
    assert "tenure_days <= 45" in d.why and "conversions_total <= 1" in d.why
    # the other actions are not offered to a customer nobody knows yet
    others = {o.action for o in d.removed}
    assert others == set(runtime.actions.ids) - {"onboarding_help"}
    # a welcome action whose rules fail: the reason says none was eligible, and which rule
    monkeypatch.setitem(runtime.engine.new_customer, "tenure_days", 400.0)
    d = runtime.engine.decide(fresh[1], DecisionContext(channel="app"))
    assert d.action == NO_ACTION and d.cold_start
    assert d.why.startswith("new customer, no history yet: no welcome action is eligible")
    assert "onboarding_help: applicability rule" in d.why
    assert "positive expected value" not in d.why
