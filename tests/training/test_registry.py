"""Gated promotion by alias: the gate as a pure function (parametrised table), and the real flow
through the CLI on MLflow: first promotion, a retrained challenger that must beat the champion
on the same test period (and gives the same metrics: reproducibility), rollback with --to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from journeyml.config import JourneyMap
from tests.training.conftest import Trained
from training.cli import app
from training.config import GateSettings
from training.pipeline import TrainedModel, train_models
from training.registry import decide_promotion
from training.tracking import CHALLENGER, CHAMPION, resolve_tracking, use_tracking

GATE = GateSettings(
    metric="auc", champion_margin=0.01, baseline_margin=0.0, floors={"auc": 0.7, "ece": 0.05}
)
GOOD = {"auc": 0.80, "ece": 0.02, "baseline_logreg_auc": 0.75, "baseline_rf_auc": 0.70}


@pytest.mark.parametrize(
    ("metrics", "champion", "compared", "promote", "reason"),
    [
        (GOOD, None, None, True, None),
        ({**GOOD, "auc": 0.69}, None, None, False, "floor auc ≥ 0.7 not met"),
        ({**GOOD, "ece": 0.06}, None, None, False, "floor ece ≤ 0.05 not met"),
        ({**GOOD, "baseline_logreg_auc": 0.81}, None, None, False, "does not beat baseline"),
        ({**GOOD, "baseline_bgnbd_auc": 0.805}, None, None, False, "does not beat baseline bgnbd"),
        (
            {**GOOD, "baseline_random_forest_auc": 0.81},
            None,
            None,
            False,
            "does not beat baseline random_forest",
        ),
        ({**GOOD, "champion_auc": 0.785}, "3", "3", True, None),
        ({**GOOD, "champion_auc": 0.795}, "3", "3", False, "does not beat champion v3"),
        ({**GOOD, "champion_auc": 0.70}, "3", "2", False, "but the champion is now v3"),
        (GOOD, "3", "3", False, "could not be scored"),
        ({"ece": 0.01}, None, None, False, "no 'auc' metric"),
    ],
)
def test_the_gate(
    metrics: dict[str, float],
    champion: str | None,
    compared: str | None,
    promote: bool,
    reason: str | None,
) -> None:
    decision = decide_promotion("churn", metrics, GATE, champion, compared)
    assert decision.promote is promote
    if reason:
        assert any(reason in r for r in decision.reasons), decision.reasons
    else:
        assert decision.reasons == []


@dataclass(frozen=True)
class Flow:
    config_path: Path
    client: MlflowClient
    first_promote: str
    retrained: TrainedModel
    second_promote: str
    second_exit: int


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def flow(
    trained: Trained, tmp_path_factory: pytest.TempPathFactory, journey_map: JourneyMap
) -> Flow:
    config = trained.config.model_copy(
        update={
            "gates": {
                **trained.config.gates,
                "churn": GateSettings(
                    metric="auc", champion_margin=0.002, floors={"auc": 0.6, "ece": 0.1}
                ),
            }
        }
    )
    path = tmp_path_factory.mktemp("cfg") / "models.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    data = str(trained.ws.root)
    code, first = cli("promote", "--model", "churn", "--config", str(path), "--data-dir", data)
    assert code == 0, first
    client = use_tracking(resolve_tracking(config.tracking, trained.ws.root))
    (retrained,) = train_models(
        trained.ws.root,
        ["churn"],
        journey_map,
        trained.ws.settings,
        config,
        resolve_tracking(config.tracking, trained.ws.root),
        trained.ws.truth,
    )
    code2, second = cli("promote", "--model", "churn", "--config", str(path), "--data-dir", data)
    return Flow(path, client, first, retrained, second, code2)


def test_first_promotion_needs_floors_and_baselines_only(trained: Trained, flow: Flow) -> None:
    name = trained.config.registered_name("churn")
    assert "champion none → v1" in flow.first_promote
    assert "no champion yet" in flow.first_promote
    assert "beats baseline logreg" in flow.first_promote
    assert str(flow.client.get_model_version_by_alias(name, CHAMPION).version) == "1"


def test_same_data_config_and_seed_give_the_same_metrics(trained: Trained, flow: Flow) -> None:
    first = trained.results["churn"]
    assert isinstance(first, TrainedModel)
    skip = {"fit_seconds", "log_seconds"}
    again = {
        k: v for k, v in flow.retrained.metrics.items() if k not in skip and "champion" not in k
    }
    assert again == {k: v for k, v in first.metrics.items() if k not in skip}


def test_the_champion_is_scored_on_the_challengers_test_period(flow: Flow) -> None:
    m = flow.retrained.metrics
    assert flow.retrained.version == "2"
    assert flow.retrained.champion_version == "1"
    # the same model, data and seed: the champion scores exactly what the challenger scores
    assert m["champion_auc"] == pytest.approx(m["auc"])
    assert m["champion_ece"] == pytest.approx(m["ece"])


def test_a_challenger_that_does_not_beat_the_champion_is_not_promoted(
    trained: Trained, flow: Flow
) -> None:
    name = trained.config.registered_name("churn")
    assert flow.second_exit == 1
    assert "champion stays v1" in flow.second_promote
    assert "does not beat champion v1" in flow.second_promote
    assert str(flow.client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    assert str(flow.client.get_model_version_by_alias(name, CHALLENGER).version) == "2"


def test_manual_promotion_and_rollback_move_the_alias(trained: Trained, flow: Flow) -> None:
    name = trained.config.registered_name("churn")
    data = str(trained.ws.root)
    base = ("--model", "churn", "--config", str(flow.config_path), "--data-dir", data)
    code, out = cli("promote", *base, "--to", "2")
    assert code == 0 and "champion v1 → v2" in out
    assert str(flow.client.get_model_version_by_alias(name, CHAMPION).version) == "2"
    code, out = cli("promote", *base, "--to", "1")
    assert code == 0 and "champion v2 → v1" in out
    assert str(flow.client.get_model_version_by_alias(name, CHAMPION).version) == "1"
    tags = flow.client.get_model_version(name, "1").tags
    assert tags["promoted_by"] == "manual" and tags["previous_champion"] == "2"
    code, out = cli("promote", *base, "--to", "9")
    assert code == 1 and "has no version 9" in out
    code, out = cli("promote", "--to", "1", "--config", str(flow.config_path))
    assert code == 2 and "single --model" in out


def test_only_unset_promotes_challengers_where_no_champion_exists(
    trained: Trained, flow: Flow
) -> None:
    data = str(trained.ws.root)
    churn = trained.config.registered_name("churn")
    conversion = trained.config.registered_name("conversion")
    before = str(flow.client.get_model_version_by_alias(churn, CHAMPION).version)
    args = ("--config", str(flow.config_path), "--data-dir", data)
    code, out = cli("promote", "--to", "challenger", "--only-unset", *args)
    assert code == 0, out
    assert "without the gates (by request)" in out
    # a model with a champion keeps it; one without gets its challenger
    assert str(flow.client.get_model_version_by_alias(churn, CHAMPION).version) == before
    assert (
        flow.client.get_model_version_by_alias(conversion, CHAMPION).version
        == flow.client.get_model_version_by_alias(conversion, CHALLENGER).version
    )
    code, out = cli("promote", "--to", "challenger", *args)  # without --only-unset: one model
    assert code == 2 and "single --model" in out


def test_promote_all_skips_models_never_trained_but_a_named_one_is_refused(
    trained: Trained, tmp_path: Path
) -> None:
    # A prefix under which nothing was registered: like the uplift model on a log without
    # marketing actions, which train leaves out.
    config = trained.config.model_copy(
        update={"registry": trained.config.registry.model_copy(update={"prefix": "never_"})}
    )
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    data = str(trained.ws.root)
    code, out = cli("promote", "--config", str(path), "--data-dir", data)
    assert code == 0, out
    assert out.count("not trained on this workspace, nothing to promote") == 5, out
    code, out = cli("promote", "--model", "uplift", "--config", str(path), "--data-dir", data)
    assert code == 1, out
    assert "never_uplift: champion stays none" in out
