"""``journeyml init`` on logs the simulator did not make: the profile, the inferred values and
the config set they make (loaded by the project's own models), the flags, and the chain
init -> events ingest -> features build on a clickstream."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from evaluation.monitor import load_monitor_settings
from features.pipeline import plan_snapshots
from features.settings import load_feature_settings
from journeyml.cli import app
from journeyml.config import load_journey_map
from journeyml.events.config import load_events_config
from journeyml.infer import nice_days, place_event, words
from journeyml.profile import ProfileError, profile_log
from serving.actions import load_decision_catalogs
from serving.config import load_serving_settings
from tests.foreign_logs import (
    ForeignLog,
    generate_clickstream,
    generate_purchase_log,
    generate_subscription_log,
)
from training.config import load_training_config
from training.labels import plan_splits


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ForeignLog]:
    root = tmp_path_factory.mktemp("init_logs")
    return {
        "purchase": generate_purchase_log(root / "purchase", n_customers=400, seed=1),
        "clickstream": generate_clickstream(root / "clicks", seed=1),
        "subscription": generate_subscription_log(root / "subs", n_accounts=150, seed=1),
    }


@pytest.fixture(scope="module")
def inits(logs: dict[str, ForeignLog], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for kind, log in logs.items():
        folder = tmp_path_factory.mktemp(f"init_{kind}") / "cfg"
        run("init", str(log.events_csv), *log.map_args(), "--out", str(folder))
        out[kind] = folder
    return out


@pytest.mark.parametrize(
    ("name", "stage"),
    [
        ("order", "purchase"), ("order_placed", "purchase"), ("invoicePaid", "purchase"),
        ("checkout-start", "purchase"), ("add_item", "consideration"), ("sign_up", "consideration"),
        ("product_view", "consideration"), ("sign_in", "retention"), ("usage", "retention"),
        ("support_ticket", "retention"), ("review_posted", "advocacy"), ("home", "awareness"),
        ("payment_error", None), ("charge_failed", None), ("cancel", None),
        ("plan_downgrade", None), ("logout", None), ("zorblax", None),
    ],
)  # fmt: skip
def test_events_are_placed_by_the_words_of_their_names(name: str, stage: str | None) -> None:
    assert place_event(name) == stage


def test_words_and_rounding() -> None:
    assert words("orderPlaced") == {"order", "placed"} == words("order-placed")
    assert [nice_days(d) for d in (3, 10, 25, 90, 91, 298, 385)] == [7, 14, 28, 90, 90, 300, 390]


def test_every_written_config_loads_with_the_project_models(inits: dict[str, Path]) -> None:
    for folder in inits.values():
        journeys = load_journey_map(folder / "journeys.yaml")
        settings = load_feature_settings(str(folder / "features.yaml"))
        load_training_config(folder / "models.yaml")
        load_monitor_settings(folder / "monitoring.yaml")
        load_events_config(folder / "events.yaml")
        catalog, actions = load_decision_catalogs(
            folder / "actions.yaml", folder / "features.yaml", folder / "journeys.yaml"
        )
        assert actions.ids and len(journeys.stages) >= 2
        assert load_serving_settings(folder / "serving.yaml").segment_column in catalog.names
        assert {f"n_{e}_30d" for e in settings.count_event_types or []} <= set(catalog.names)


def test_purchase_log_churns_after_months_not_sixty_days(
    logs: dict[str, ForeignLog], inits: dict[str, Path]
) -> None:
    folder = inits["purchase"]
    profile = json.loads((folder / "profile.json").read_text())
    assert profile["date_only"] is True and profile["value_column"] == "amount"
    journeys = load_journey_map(folder / "journeys.yaml")
    assert journeys.churn.inactivity_days is not None and journeys.churn.inactivity_days >= 150
    assert journeys.conversions == ["order"] and journeys.churn.events == []
    assert journeys.horizons.conversion_days == 90  # fits the 540-day log with room to train
    assert load_events_config(folder / "events.yaml").column_map == logs["purchase"].column_map
    summary = json.loads((folder / "init.json").read_text())
    assert summary["segment_columns"] == ["shop"]
    assert summary["split_cutoffs"]["train"] >= 10


def test_clickstream_gets_enough_training_cutoffs(inits: dict[str, Path]) -> None:
    folder = inits["clickstream"]
    journeys = load_journey_map(folder / "journeys.yaml")
    settings = load_feature_settings(str(folder / "features.yaml"))
    training = load_training_config(folder / "models.yaml")
    profile = json.loads((folder / "profile.json").read_text())
    assert profile["date_only"] is False and profile["segment_columns"] == ["platform"]
    # the same planners training uses, on the log's span
    first = datetime.fromisoformat(profile["first_event"])
    last = datetime.fromisoformat(profile["last_event"])
    snaps = plan_snapshots(
        first, last, settings.snapshots.cadence_days, settings.snapshots.warmup_days
    )
    horizon = max(journeys.horizons.churn_days, journeys.horizons.next_step_days)
    labelled = [t for t in snaps.cutoffs if t + timedelta(days=horizon) <= last]
    split = plan_splits(labelled, training.split, horizon)
    assert len(split.train) >= 15 and len(split.validation) >= 3 and len(split.test) >= 3
    assert journeys.conversions == ["order_placed"]
    assert journeys.stage_of("payment_error") is None and journeys.stage_of("logout") is None
    assert [(r.events, r.to) for r in journeys.regressions] == [
        (["payment_error"], "consideration")
    ]
    assert journeys.stage_of("cart") == "consideration" and journeys.stage_of("home") == "awareness"
    assert 14 <= (journeys.churn.inactivity_days or 0) <= 42
    monitoring = load_monitor_settings(folder / "monitoring.yaml")
    assert monitoring.segments == ["platform"] and monitoring.journey_step_hours == 2.0
    dimensions = {d.column: set(d.values) for d in settings.dimensions}
    assert dimensions["platform"] == {"ios", "android", "web"} and len(dimensions["page"]) == 7
    assert {r.name for r in monitoring.rates} == {"support"}
    summary = json.loads((folder / "init.json").read_text())
    assert summary["unplaced_events"] == ["logout"]


def test_subscription_log_churns_on_cancellations(inits: dict[str, Path]) -> None:
    journeys = load_journey_map(inits["subscription"] / "journeys.yaml")
    assert journeys.churn.events == ["cancel"]
    assert journeys.conversions == ["invoice_paid"]
    assert (
        journeys.stage_of("charge_failed") is None and journeys.stage_of("sign_in") == "retention"
    )
    monitoring = load_monitor_settings(inits["subscription"] / "monitoring.yaml")
    assert {r.name: r.events for r in monitoring.rates} == {"cancellations": ["cancel"]}
    assert monitoring.segments == ["tier"] and monitoring.journey_step_hours == 24.0


def test_flags_set_every_value(logs: dict[str, ForeignLog], tmp_path: Path) -> None:
    log = logs["clickstream"]
    out = tmp_path / "cfg"
    text = run(
        "init", str(log.events_csv), *log.map_args(), "--out", str(out),
        "--conversion", "payment", "--churn-event", "logout", "--inactivity-days", "45",
        "--horizon-days", "21", "--next-step-days", "3", "--cadence-days", "2",
        "--warmup-days", "10", "--test-days", "20", "--validation-days", "15",
        "--segment", "page", "--stage", "logout=retention", "--regression", "cart=awareness",
    )  # fmt: skip
    assert "What init inferred" in text
    journeys = load_journey_map(out / "journeys.yaml")
    assert journeys.conversions == ["payment"] and journeys.churn.events == ["logout"]
    assert journeys.churn.inactivity_days == 45 and journeys.stage_of("logout") == "retention"
    assert [(r.events, r.to) for r in journeys.regressions] == [(["cart"], "awareness")]
    assert (journeys.horizons.churn_days, journeys.horizons.next_step_days) == (21, 3)
    settings = load_feature_settings(str(out / "features.yaml"))
    assert (settings.snapshots.cadence_days, settings.snapshots.warmup_days) == (2, 10)
    split = load_training_config(out / "models.yaml").split
    assert (split.test_days, split.validation_days) == (20, 15)
    assert json.loads((out / "init.json").read_text())["segment_columns"] == ["page"]


def test_bad_input_is_refused_and_nothing_is_lost(
    logs: dict[str, ForeignLog], tmp_path: Path
) -> None:
    log = logs["clickstream"]
    out = tmp_path / "cfg"
    run("init", str(log.events_csv), *log.map_args(), "--out", str(out))
    before = (out / "journeys.yaml").read_text()
    text = run("init", str(log.events_csv), *log.map_args(), "--out", str(out), code=2)
    assert "--force" in text
    text = run("init", str(log.events_csv), "--out", str(tmp_path / "x"), code=2)
    assert "customer_id" in text and "--map" in text
    text = run(
        "init", str(log.events_csv), *log.map_args(), "--out", str(out), "--force",
        "--conversion", "checkout", code=2,
    )  # fmt: skip
    assert "'checkout' is not an event type" in text
    assert (out / "journeys.yaml").read_text() == before
    with pytest.raises(ProfileError, match="does not have"):
        profile_log(log.events_csv, {"userid": "customer_id"})


def test_parquet_log_profiles_like_its_csv(tmp_path: Path) -> None:
    log = generate_purchase_log(tmp_path, n_customers=200, seed=4, parquet=True)
    assert log.events_parquet is not None
    a = profile_log(log.events_csv, log.column_map)
    b = profile_log(log.events_parquet, log.column_map)
    assert (a.rows, a.customers, a.date_only, a.return_gap_days) == (
        b.rows, b.customers, b.date_only, b.return_gap_days,
    )  # fmt: skip
    assert [e.name for e in a.event_types] == [e.name for e in b.event_types] == ["order"]


def test_numeric_and_text_columns_become_measures_and_dimensions(tmp_path: Path) -> None:
    rows = ["who,day,what,basket_size,device,ref"]
    for i in range(60):
        device = "tablet" if i % 3 else "phone"
        rows.append(f"c{i % 7},2024-03-{1 + i % 28:02d},visit,{i % 5 + 1},{device},r{i}")
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cfg"
    maps = ["--map", "who=customer_id", "--map", "day=timestamp", "--map", "what=event_type"]
    run("init", str(log), *maps, "--out", str(out), "--conversion", "visit")
    settings = load_feature_settings(str(out / "features.yaml"))
    assert [m.column for m in settings.measures] == ["basket_size"]
    assert [(d.column, sorted(d.values)) for d in settings.dimensions] == [
        ("device", ["phone", "tablet"])
    ]  # ref has a value per row: no dimension


def test_help_documents_the_inference() -> None:
    text = " ".join(run("init", "--help").split())
    for phrase in ("90 %", "returning", "purge", "--inactivity-days", "--conversion", "words"):
        assert phrase in text


@pytest.mark.slow
def test_init_then_ingest_and_features_on_a_clickstream(
    logs: dict[str, ForeignLog], inits: dict[str, Path], tmp_path: Path
) -> None:
    log, folder = logs["clickstream"], inits["clickstream"]
    config = ["--config-dir", str(folder)]
    # the column map comes from the config set's events.yaml: no --map needed any more
    run(*config, "events", "ingest", str(log.events_csv), "--out", str(tmp_path / "lake"))
    run(*config, "features", "build", "--data-dir", str(tmp_path))
    snapshots = tmp_path / "features" / "journey_features"
    con = duckdb.connect()
    ((rows, cutoffs, errors),) = con.execute(
        "SELECT count(*), count(DISTINCT event_timestamp), sum(n_payment_error_30d) "
        f"FROM read_parquet('{snapshots}/**/*.parquet')"
    ).fetchall()
    con.close()
    assert rows > 0 and errors > 0
    columns = {
        r[0]
        for r in duckdb.sql(
            f"DESCRIBE SELECT * FROM read_parquet('{snapshots}/**/*.parquet')"
        ).fetchall()
    }
    assert any(c.startswith("platform_") for c in columns), sorted(columns)
    settings = load_feature_settings(str(folder / "features.yaml"))
    assert cutoffs >= (log.days - settings.snapshots.warmup_days) // settings.snapshots.cadence_days
