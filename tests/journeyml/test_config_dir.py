"""One config folder per event log: ``--config-dir`` / ``$JOURNEYML_CONFIG_DIR`` choose where every
command reads its configuration files; a file the folder lacks comes from the shipped
``configs/``; a command's own per-file option overrides both."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from journeyml.cli import app
from journeyml.config import CONFIG_DIR, CONFIG_DIR_ENV, config_dir, config_path

BAD_MONITORING = "period_days: 1\nsteps: []\nthresold: 3\n"  # misspelt key


@pytest.fixture(autouse=True)
def _no_config_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)


def flat(text: str) -> str:
    """Output without the line breaks and spaces rich adds to wrap long paths."""
    return "".join(text.split())


def folder(tmp_path: Path, **files: str) -> Path:
    target = tmp_path / "configs_for_my_log"
    target.mkdir()
    for name, text in files.items():
        (target / f"{name}.yaml").write_text(text, encoding="utf-8")
    return target


def test_without_a_folder_the_shipped_configs_are_read() -> None:
    assert config_dir() == CONFIG_DIR
    assert config_path("actions.yaml") == CONFIG_DIR / "actions.yaml"


def test_the_folder_wins_and_missing_files_come_from_the_shipped_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = folder(tmp_path, monitoring="period_days: 1\n")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(mine))
    assert config_path("monitoring.yaml") == mine / "monitoring.yaml"
    assert config_path("models.yaml") == CONFIG_DIR / "models.yaml"


def test_loaders_and_serving_defaults_follow_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluation.monitor import load_monitor_settings
    from serving.config import load_serving_settings

    shipped = (CONFIG_DIR / "actions.yaml").read_text(encoding="utf-8")
    mine = folder(tmp_path, monitoring="period_days: 3\nsteps: []\n", actions=shipped)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(mine))
    assert load_monitor_settings().period_days == 3
    settings = load_serving_settings()
    assert Path(settings.actions) == mine / "actions.yaml"
    assert Path(settings.journeys) == CONFIG_DIR / "journeys.yaml"


def test_a_pinned_file_in_serving_yaml_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serving.config import load_serving_settings

    pinned = tmp_path / "pinned_actions.yaml"
    pinned.write_text((CONFIG_DIR / "actions.yaml").read_text(encoding="utf-8"))
    serving = yaml.safe_load((CONFIG_DIR / "serving.yaml").read_text(encoding="utf-8"))
    mine = folder(tmp_path, serving=yaml.safe_dump({**serving, "actions": str(pinned)}))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(mine))
    assert Path(load_serving_settings().actions) == pinned


@pytest.mark.parametrize("how", ["option", "environment"])
def test_every_command_reads_the_chosen_folder(tmp_path: Path, how: str) -> None:
    mine = folder(tmp_path, monitoring=BAD_MONITORING, journeys="stages: [only]\n")
    args = ["--config-dir", str(mine)] if how == "option" else []
    env = {CONFIG_DIR_ENV: str(mine)} if how == "environment" else {}
    runner = CliRunner()
    data = tmp_path / "data"
    for command in (["monitor"], ["analyze"], ["features", "build"], ["train"]):
        result = runner.invoke(app, [*args, *command, "--data-dir", str(data)], env=env)
        assert result.exit_code == 2, (command, result.output)
        assert f"{mine}/" in flat(result.output), (command, result.output)
    assert os.environ.get(CONFIG_DIR_ENV) is None  # the option does not outlive its command


def test_a_per_file_option_overrides_the_folder(tmp_path: Path) -> None:
    mine = folder(tmp_path, monitoring=BAD_MONITORING)
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        [
            "--config-dir",
            str(mine),
            "monitor",
            "--data-dir",
            str(data),
            "--config",
            str(CONFIG_DIR / "monitoring.yaml"),
        ],
    )
    assert result.exit_code == 2
    assert "noeventlake" in flat(result.output) and str(mine) not in flat(result.output)


def test_a_config_dir_that_is_not_a_folder_is_an_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--config-dir", str(tmp_path / "nope"), "monitor"])
    assert result.exit_code == 2
    assert "is not a folder" in result.output
