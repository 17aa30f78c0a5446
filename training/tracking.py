"""MLflow tracking and registry plumbing: where runs go, how a model version is logged.

Nothing here runs at import: the tracking URI is set by :func:`use_tracking`, which the
``train`` and ``promote`` commands call with the configured (or embedded) location.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from journeyml.config import REPO_ROOT
from training.bundle import MANIFEST_TAG, sha256_file, write_bundle
from training.config import TrackingSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class TrackingTarget:
    """Resolved MLflow locations."""

    tracking_uri: str
    artifact_location: str
    experiment: str


def resolve_tracking(settings: TrackingSettings, data_dir: str | Path) -> TrackingTarget:
    """The configured MLflow locations, or the embedded ones under ``<data>/mlflow``.

    Embedded: ``sqlite:///<data>/mlflow/mlflow.db`` and ``<data>/mlflow/artifacts`` (no server).
    """
    root = Path(data_dir).resolve() / "mlflow"
    uri = settings.tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    artifacts = settings.artifact_location or (root / "artifacts").as_uri()
    return TrackingTarget(uri, artifacts, settings.experiment)


def use_tracking(target: TrackingTarget) -> MlflowClient:
    """Points MLflow's tracking and registry at ``target`` and returns a client for it.

    Also quiets MLflow's console chatter (download progress bars, per-version INFO lines,
    the pip-version warning of its environment capture) unless debug logging is on: the
    commands print their own summary.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow import MlflowClient

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)

    if target.tracking_uri.startswith("sqlite:///"):
        Path(target.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(
            parents=True, exist_ok=True
        )
    if target.artifact_location.startswith("file://"):
        Path(target.artifact_location.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.tracking_uri)
    return MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)


def use_tracking_uri(uri: str) -> MlflowClient:
    """A client for the tracking and registry at ``uri`` (serving only reads the registry)."""
    return use_tracking(TrackingTarget(uri, "", ""))


def ensure_experiment(client: MlflowClient, target: TrackingTarget) -> str:
    """The experiment id, creating the experiment with the artifact location if needed."""
    exp = client.get_experiment_by_name(target.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    return str(
        client.create_experiment(target.experiment, artifact_location=target.artifact_location)
    )


def git_commit() -> tuple[str, bool]:
    """(commit, dirty) of the repository the code runs from; ("unknown", False) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def current_version(client: MlflowClient, name: str, alias: str) -> Any | None:
    """The model version behind ``name@alias``, or None when the alias (or model) is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class LoggedVersion:
    """A model logged, registered and aliased ``challenger``."""

    run_id: str
    model_uri: str
    registered_name: str
    version: str
    manifest_sha256: str


def log_and_register(
    client: MlflowClient,
    registered_name: str,
    booster: Any,
    input_example: pd.DataFrame,
    output_example: np.ndarray,
    manifest: dict[str, Any],
    model_texts: dict[str, str],
    vocabularies: dict[str, list[str]],
    calibrator: dict[str, Any],
    scorer: dict[str, Any] | None = None,
) -> LoggedVersion:
    """Logs the LightGBM model with its bundle to the active run and registers a challenger.

    The bundle (text models, JSON encoders and calibrator, manifest with sha256 of each)
    goes into the logged model's ``extra_files/``, so the registered version holds
    everything serving needs. MLflow's own ``model.lgb`` is the same Booster in LightGBM's
    text format. A baseline (``booster`` None, its ``scorer`` JSON given) has no MLflow
    flavour without a pickle: its bundle is logged as the run's artifacts under the
    registered name and the version points at that folder.
    """
    if booster is None:
        return _register_bundle_folder(
            client, registered_name, manifest, vocabularies, calibrator, scorer or {}
        )
    import lightgbm
    import mlflow
    from mlflow.models import infer_signature

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        manifest_path = write_bundle(tmp, manifest, model_texts, vocabularies, calibrator)
        files = sorted(str(p) for p in Path(tmp).iterdir())
        digest = sha256_file(manifest_path)
        signature = infer_signature(input_example, output_example)
        info = mlflow.lightgbm.log_model(
            booster,
            name=registered_name,
            signature=signature,
            input_example=input_example,
            extra_files=files,
            pip_requirements=[f"lightgbm=={lightgbm.__version__}"],
            metadata={"journeyml_bundle": "extra_files/manifest.json", MANIFEST_TAG: digest},
        )
    mlflow.log_dict(manifest, "bundle_manifest.json")
    mlflow.set_tag(MANIFEST_TAG, digest)
    version = mlflow.register_model(
        info.model_uri, registered_name, tags={MANIFEST_TAG: digest, "run_id": run.info.run_id}
    )
    client.set_registered_model_alias(registered_name, CHALLENGER, version.version)
    logger.info("registered %s version %s as %s", registered_name, version.version, CHALLENGER)
    return LoggedVersion(
        run.info.run_id, info.model_uri, registered_name, str(version.version), digest
    )


def _register_bundle_folder(
    client: MlflowClient,
    registered_name: str,
    manifest: dict[str, Any],
    vocabularies: dict[str, list[str]],
    calibrator: dict[str, Any],
    scorer: dict[str, Any],
) -> LoggedVersion:
    """A JSON-only bundle (a baseline) logged as run artifacts and registered as challenger."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_and_register needs an active MLflow run")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        manifest_path = write_bundle(tmp, manifest, {}, vocabularies, calibrator, scorer)
        digest = sha256_file(manifest_path)
        mlflow.log_artifacts(tmp, registered_name)
    mlflow.log_dict(manifest, "bundle_manifest.json")
    mlflow.set_tag(MANIFEST_TAG, digest)
    if current_registered(client, registered_name) is None:
        client.create_registered_model(registered_name)
    version = client.create_model_version(
        registered_name,
        source=f"{run.info.artifact_uri}/{registered_name}",
        run_id=run.info.run_id,
        tags={MANIFEST_TAG: digest, "run_id": run.info.run_id, "baseline": scorer["kind"]},
    )
    client.set_registered_model_alias(registered_name, CHALLENGER, version.version)
    logger.info(
        "registered the %s baseline as %s version %s (%s)",
        scorer["kind"],
        registered_name,
        version.version,
        CHALLENGER,
    )
    return LoggedVersion(
        run.info.run_id,
        f"models:/{registered_name}/{version.version}",
        registered_name,
        str(version.version),
        digest,
    )


def current_registered(client: MlflowClient, name: str) -> Any | None:
    """The registered model ``name``, or None when it was never registered."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        return None
