"""Bounded resources: failed model downloads are removed, each server instance gets its own
Prometheus folder (issue 19)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import serving.cli as cli
import training.bundle as bundle_module
from journeyml.config import CONFIG_DIR
from serving.models import ModelSet
from tests.serving.conftest import ServingWorkspace, serving_settings
from training.bundle import MANIFEST_TAG
from training.tracking import use_tracking_uri


def test_a_champion_that_fails_verification_is_not_downloaded_again_until_it_moves(
    serving_ws: ServingWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = serving_settings(serving_ws, tmp_path)
    real = use_tracking_uri(settings.resolved_tracking_uri())
    tampered = {"on": True}

    class Tampered:
        """The registry, except that every version's manifest checksum is wrong while on."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def get_model_version_by_alias(self, name: str, alias: str) -> Any:
            mv = real.get_model_version_by_alias(name, alias)
            if tampered["on"]:
                mv._tags = {**(mv.tags or {}), MANIFEST_TAG: "0" * 64}
            return mv

    downloads: list[str] = []

    def counted(uri: str, **kwargs: Any) -> Any:
        downloads.append(uri)
        return bundle_module.load_model_bundle(uri, **kwargs)

    models = ModelSet(settings, client=Tampered())  # type: ignore[arg-type]
    monkeypatch.setattr("serving.models.load_model_bundle", counted)
    root = models._download_root
    for _ in range(3):  # a refresh round every refresh_seconds
        models.refresh()
    assert set(models.errors) >= {"churn", "conversion"} and not models.ready()
    assert "failed verification" not in str(models.errors)  # the error is the bundle's own
    assert "does not match" in models.errors["churn"]
    roles = len({u.split("/")[1] for u in downloads})
    assert len(downloads) == roles, downloads  # once per model, not once per round
    assert list(root.iterdir()) == []
    tampered["on"] = False  # the registry's checksum moves (as when the alias moves)
    models.refresh()
    assert models.ready() and "churn" not in models.errors
    assert len(downloads) > roles
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
