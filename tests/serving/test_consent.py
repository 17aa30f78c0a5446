"""Consent is one rule: a customer whose consent is unknown (no consent column, no customers row,
a null) gets the same answer from the real-time decision, the batch decision and the list, by
default no marketing action, counted in the list's summary."""

from __future__ import annotations

import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from serving.consent import (
    GIVEN,
    REFUSED,
    UNKNOWN,
    ConsentSettings,
    consent_of_customer,
    marketing_consent,
)
from serving.engine import DecisionContext
from serving.lists import ListFilters, churn_risk_list
from serving.runtime import Runtime
from tests.serving.conftest import ServingWorkspace, serving_settings

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
COLUMN = "marketing_opt_out"


# -- the rule ------------------------------------------------------------------------------------


def test_every_way_of_not_knowing_is_unknown() -> None:
    rule = ConsentSettings()
    values = ["false", "true", None, float("nan"), "unknown", "", "FALSE", "1", pd.NA]
    consent = marketing_consent(values, len(values), rule)
    assert consent.status.tolist() == [
        GIVEN, REFUSED, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, GIVEN, REFUSED, UNKNOWN,
    ]  # fmt: skip
    assert consent.contactable.tolist() == [s == GIVEN for s in consent.status]
    assert consent.counts() == {GIVEN: 2, REFUSED: 2, UNKNOWN: 5}
    no_column = marketing_consent(None, 3, rule)
    assert no_column.status.tolist() == [UNKNOWN] * 3 and not no_column.contactable.any()
    assert consent_of_customer({}, rule) == (UNKNOWN, False)  # no row, no column
    assert consent_of_customer({COLUMN: None}, rule) == (UNKNOWN, False)


def test_the_rule_is_configurable() -> None:
    lenient = ConsentSettings(unknown="contactable")
    consent = marketing_consent(["true", None], 2, lenient)
    assert consent.contactable.tolist() == [False, True]
    opt_in = ConsentSettings(column="email_consent", meaning="opt_in")
    assert marketing_consent(["true", "false"], 2, opt_in).status.tolist() == [GIVEN, REFUSED]
    assert marketing_consent(["x"], 1, ConsentSettings(column=None)).status.tolist() == [UNKNOWN]


# -- both decision paths -------------------------------------------------------------------------


@pytest.fixture()
def runtime(serving_ws: ServingWorkspace, tmp_path: Path) -> Iterator[Runtime]:
    rt = Runtime(
        serving_settings(
            serving_ws,
            tmp_path,
            deadline_ms=10_000,
            holdout={"share": 0.0, "salt": "x"},
            exploration={"epsilon": 0.0},
        )
    )
    yield rt
    rt.close()


HOWS = ["no customers table", "no consent column", "no row", "null"]


def _unknown(values: dict[str, Any], how: str) -> dict[str, Any]:
    values = dict(values)
    if how in ("no customers table", "no row"):
        values[COLUMN] = "unknown"  # what profile features read without a table or a row
    elif how == "null":
        values[COLUMN] = None
    return values  # no consent column: the catalog names none (see _without_column)


def _read(runtime: Runtime, ids: list[str], how: str) -> dict[str, dict[str, Any]]:
    assert runtime.engine.features is not None
    rows = runtime.engine.features.read(ids, NOW)
    return {cid: _unknown(r.values, how) for cid, r in zip(ids, rows, strict=True)}


def _without_column(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = runtime.engine.catalog
    none = catalog.consent.model_copy(update={"column": None})
    monkeypatch.setattr(runtime.engine, "catalog", catalog.model_copy(update={"consent": none}))


@pytest.mark.parametrize("how", HOWS)
def test_unknown_consent_gets_no_marketing_on_both_paths(
    runtime: Runtime, serving_ws: ServingWorkspace, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = runtime.engine
    if how == "no consent column":
        _without_column(runtime, monkeypatch)
    ids = serving_ws.customers[:60]
    rows = _read(runtime, ids, how)
    frame = pd.DataFrame([rows[c] for c in ids], index=ids)
    batch = engine.decide_frame(frame, NOW, DecisionContext(at=NOW))
    marketing = {a.id for a in engine.actions if a.marketing}
    assert marketing and marketing != set(engine.catalog.ids)
    assert (batch["consent"] == UNKNOWN).all()
    assert not batch["action"].isin(marketing).any()
    monkeypatch.setattr(
        engine,
        "read_features",
        lambda cid, now: types.SimpleNamespace(values=rows[cid], found=True),
    )
    for cid in ids:
        d = engine.decide(cid, DecisionContext(at=NOW))
        assert d.fallback_reason is None and d.action == batch.loc[cid, "action"], cid
        removed = {o.action: o for o in d.removed}
        for action in marketing:
            assert removed[action].removed_by == "eligibility"
            assert "consent unknown" in str(removed[action].reason)


def test_a_lenient_rule_lets_unknown_consent_through_on_both_paths(
    runtime: Runtime, serving_ws: ServingWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = runtime.engine
    lenient = engine.catalog.consent.model_copy(update={"unknown": "contactable"})
    monkeypatch.setattr(engine, "catalog", engine.catalog.model_copy(update={"consent": lenient}))
    ids = serving_ws.customers[:60]
    rows = _read(runtime, ids, "null")
    frame = pd.DataFrame([rows[c] for c in ids], index=ids)
    batch = engine.decide_frame(frame, NOW, DecisionContext(at=NOW))
    marketing = {a.id for a in engine.actions if a.marketing}
    assert batch["action"].isin(marketing).any()
    monkeypatch.setattr(
        engine,
        "read_features",
        lambda cid, now: types.SimpleNamespace(values=rows[cid], found=True),
    )
    for cid in ids:
        assert engine.decide(cid, DecisionContext(at=NOW)).action == batch.loc[cid, "action"]


# -- the list ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", HOWS)
def test_the_list_counts_unknown_consent_and_gives_it_no_marketing(
    runtime: Runtime,
    serving_ws: ServingWorkspace,
    tmp_path: Path,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if how == "no consent column":
        _without_column(runtime, monkeypatch)
    snaps = pd.read_parquet(serving_ws.sim.root / "features" / "journey_features")
    latest = snaps.sort_values("event_timestamp").groupby("customer_id").tail(1)
    refused = set(latest.loc[latest[COLUMN] == "true", "customer_id"])
    rng = np.random.default_rng(0)
    unknown = latest["customer_id"].isin(
        rng.choice(latest["customer_id"].to_numpy(), size=len(latest) // 3, replace=False)
    ) & ~latest["customer_id"].isin(refused)
    if how in ("no customers table", "no consent column"):
        unknown = pd.Series(True, index=latest.index)
        refused = set()
        if how == "no customers table":
            latest[COLUMN] = "unknown"
    else:
        latest.loc[unknown, COLUMN] = "unknown" if how == "no row" else None
    folder = tmp_path / "snapshots"
    folder.mkdir()
    latest.to_parquet(folder / "part.parquet", index=False)
    # Everyone, active or lapsed at NOW: consent is asked of every listed customer alike.
    everyone = ListFilters(population="all")
    summary = churn_risk_list(runtime.engine, folder, tmp_path / "out", now=NOW, filters=everyone)
    listed = pd.read_parquet(tmp_path / "out" / "churn_risk.parquet").set_index("customer_id")
    marketing = {a.id for a in runtime.engine.actions if a.marketing}
    in_doubt = set(latest.loc[unknown, "customer_id"])
    assert summary.consent_unknown == len(in_doubt) > 0
    assert summary.opted_out == len(refused) and not refused & set(listed.index)
    assert in_doubt <= set(listed.index)  # listed: their churn risk is worth knowing
    doubtful = listed.loc[sorted(in_doubt)]
    assert (doubtful["consent"] == UNKNOWN).all()
    assert not doubtful["recommended_action"].isin(marketing).any()
    assert (listed.drop(index=sorted(in_doubt))["consent"] == GIVEN).all()
    assert "not contactable" in summary.consent_rule
    if len(in_doubt) < len(latest):  # customers with a known yes still get marketing
        assert listed["recommended_action"].isin(marketing).any()
