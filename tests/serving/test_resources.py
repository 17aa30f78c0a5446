"""Bounded resources: failed model downloads are removed, each server instance gets its own
Prometheus folder (issue 19)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import serving.cli as cli
from journeyml.config import CONFIG_DIR
from serving.models import ModelSet
from tests.serving.conftest import ServingWorkspace, serving_settings
from training.bundle import MANIFEST_TAG
from training.tracking import use_tracking_uri


def test_a_champion_that_fails_verification_leaves_no_download(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    settings = serving_settings(serving_ws, tmp_path)
    real = use_tracking_uri(settings.resolved_tracking_uri())

    class Tampered:
        """The registry, except that every version's manifest checksum is wrong."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def get_model_version_by_alias(self, name: str, alias: str) -> Any:
            mv = real.get_model_version_by_alias(name, alias)
            mv._tags = {**(mv.tags or {}), MANIFEST_TAG: "0" * 64}
            return mv

    models = ModelSet(settings, client=Tampered())  # type: ignore[arg-type]
    root = models._download_root
    for _ in range(3):  # the refresh retries a failed champion every round
        models.refresh()
    assert set(models.errors) >= {"churn", "conversion"} and not models.ready()
    assert list(root.iterdir()) == []
    models.stop()
    assert not root.exists()


def test_each_server_instance_gets_its_own_prometheus_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []

    class StartedError(Exception):
        pass

    def execve(path: str, args: list[str], env: dict[str, str]) -> None:
        seen.append(env)
        raise StartedError

    monkeypatch.setattr(os, "execve", execve)
    for port in (3101, 3102):
        with pytest.raises(StartedError):
            cli.serve(
                data_dir=tmp_path, config=CONFIG_DIR / "serving.yaml", host="127.0.0.1",
                port=port, workers=1, detach=False, stop=False,
            )  # fmt: skip
    homes = [Path(env["BENTOML_HOME"]) for env in seen]
    assert homes[0] != homes[1]
    assert all(h.is_relative_to(tmp_path.resolve()) for h in homes)
