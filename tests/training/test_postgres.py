"""MLflow on PostgreSQL (the production tracking backend): train, register and promote against
the local server, in a schema of its own that the test drops afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from journeyml.config import JourneyMap
from tests.features.helpers import postgres_available
from tests.services import skip_or_fail
from tests.training.conftest import SimWorkspace, small_config
from training.config import GateSettings, TrackingSettings
from training.pipeline import train_models
from training.registry import promote_challenger
from training.tracking import CHAMPION, resolve_tracking, use_tracking

pytestmark = pytest.mark.postgres

SERVER = "postgres@127.0.0.1:5432/test"


@pytest.fixture
def schema() -> Iterator[str]:
    if not postgres_available():
        skip_or_fail("PostgreSQL is not running on 127.0.0.1:5432")
    import psycopg

    name = f"mlflow_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"postgresql://{SERVER}", autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(f"postgresql://{SERVER}", autocommit=True) as con:
            con.execute(f'DROP SCHEMA "{name}" CASCADE')


def test_train_register_and_promote_on_postgresql(
    schema: str, sim_ws: SimWorkspace, journey_map: JourneyMap, tmp_path: Path
) -> None:
    base = small_config(tmp_path)
    config = base.model_copy(
        update={
            "tracking": TrackingSettings(
                tracking_uri=f"postgresql+psycopg://{SERVER}?options=-csearch_path%3D{schema}",
                artifact_location=(tmp_path / "artifacts").as_uri(),
                experiment=base.tracking.experiment,
            )
        }
    )
    target = resolve_tracking(config.tracking, sim_ws.root)
    (result,) = train_models(
        sim_ws.root, ["churn"], journey_map, sim_ws.settings, config, target, sim_ws.truth
    )
    client = use_tracking(target)
    run = client.get_run(result.run_id)
    assert run.data.metrics["auc"] == pytest.approx(result.metrics["auc"])
    name = config.registered_name("churn")
    decision = promote_challenger(client, "churn", name, GateSettings(metric="auc"))
    assert decision.promote, decision.reasons
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == result.version
    # the tables live in the test's schema, not in the shared public schema
    import psycopg

    with psycopg.connect(f"postgresql://{SERVER}") as con:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        }
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables
