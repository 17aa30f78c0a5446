"""Gated promotion of a challenger to champion, and rollback, with MLflow registered-model aliases.

The gate (:func:`decide_promotion`) is a pure function of the challenger run's metrics, so it is
tested without a registry. It passes when the challenger

1. meets every absolute floor of ``configs/models.yaml`` (a maximum for lower-is-better
   metrics such as ``ece``),
2. beats each baseline of its own run on the primary metric by ``baseline_margin``, and
3. beats the current champion **scored on the challenger's test period** (training logs the
   champion's metrics on that period as ``champion_<metric>``) by ``champion_margin``.

If the champion alias has moved since the challenger was trained (say, a rollback), the
comparison is stale and the gate refuses until the challenger is retrained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from training.config import LOWER_IS_BETTER, GateSettings
from training.tracking import CHALLENGER, CHAMPION, current_version

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)


@dataclass
class Decision:
    """The outcome of a promotion request for one registered model."""

    model: str
    promote: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    challenger: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None


def _better(metric: str, value: float, reference: float, margin: float) -> bool:
    if metric in LOWER_IS_BETTER:
        return value <= reference - margin
    return value >= reference + margin


BASELINES = (
    "lightgbm",  # in the run of a baseline registered in its place
    "logreg",
    "random_forest",
    "recency_frequency",
    "bgnbd",
    "markov",
    "markov1",
    "markov2",
    "prior",
    "random",
)
"""The baselines a training run logs, as ``baseline_<name>_<metric>``."""


def baseline_values(metrics: dict[str, float], metric: str) -> dict[str, float]:
    """Each baseline's value of ``metric`` in a run's metrics, by baseline name.

    Matched by the known baseline names, so ``baseline_logreg_pr_auc`` is logreg's PR-AUC and
    never a baseline "logreg_pr" of the AUC.
    """
    return {
        base: metrics[key] for base in BASELINES if (key := f"baseline_{base}_{metric}") in metrics
    }


def decide_promotion(
    model: str,
    metrics: dict[str, float],
    gate: GateSettings,
    champion_version: str | None,
    compared_champion_version: str | None,
) -> Decision:
    """Whether a challenger with these run metrics may become champion, and why (not).

    Args:
        model: the model (for messages).
        metrics: the challenger run's metrics (its own, ``baseline_*`` and ``champion_*``).
        gate: floors and margins from the configuration.
        champion_version: the version the ``champion`` alias points to now (None: no champion).
        compared_champion_version: the champion version the run was compared with at training.
    """
    decision = Decision(model, promote=True)
    m = gate.metric
    value = metrics.get(m)
    if value is None:
        decision.promote = False
        decision.reasons.append(f"the challenger run has no {m!r} metric")
        return decision
    for name, floor in sorted(gate.floors.items()):
        got = metrics.get(name)
        word = "≤" if name in LOWER_IS_BETTER else "≥"
        if got is None:
            decision.promote = False
            decision.reasons.append(f"floor {name} {word} {floor:g}: metric not logged")
        elif not _better(name, got, floor, 0.0):
            decision.promote = False
            decision.reasons.append(f"floor {name} {word} {floor:g} not met ({got:.4f})")
        else:
            decision.checks.append(f"floor {name} {word} {floor:g} met ({got:.4f})")
    for metric in (m, *gate.also_beat_baselines_on):
        own = metrics.get(metric)
        for base, ref in sorted(baseline_values(metrics, metric).items()):
            if own is not None and _better(metric, own, ref, gate.baseline_margin):
                decision.checks.append(f"{metric} {own:.4f} beats baseline {base} ({ref:.4f})")
            else:
                decision.promote = False
                shown = "missing" if own is None else f"{own:.4f}"
                decision.reasons.append(
                    f"{metric} {shown} does not beat baseline {base} ({ref:.4f}) by "
                    f"{gate.baseline_margin:g}"
                )
    if champion_version is None:
        decision.checks.append("no champion yet")
        return decision
    if compared_champion_version != champion_version:
        decision.promote = False
        decision.reasons.append(
            f"the challenger was compared with champion "
            f"{'v' + compared_champion_version if compared_champion_version else 'none'}, "
            f"but the champion is now v{champion_version}: retrain (journeyml train) to "
            "compare on the same test period"
        )
        return decision
    champ = metrics.get(f"champion_{m}")
    if champ is None:
        decision.promote = False
        decision.reasons.append(
            f"champion v{champion_version} could not be scored on the challenger's test period"
        )
    elif _better(m, value, champ, gate.champion_margin):
        decision.checks.append(
            f"{m} {value:.4f} beats champion v{champion_version} ({champ:.4f}) by "
            f"≥ {gate.champion_margin:g} on the same test period"
        )
    else:
        decision.promote = False
        decision.reasons.append(
            f"{m} {value:.4f} does not beat champion v{champion_version} ({champ:.4f}) by "
            f"{gate.champion_margin:g} on the same test period"
        )
    return decision


def promote_challenger(
    client: MlflowClient, model: str, registered_name: str, gate: GateSettings
) -> Decision:
    """Moves ``champion`` to the ``challenger`` version if the gate passes; never otherwise."""
    challenger = current_version(client, registered_name, CHALLENGER)
    champion = current_version(client, registered_name, CHAMPION)
    champion_v = str(champion.version) if champion else None
    if challenger is None:
        return Decision(
            model,
            promote=False,
            reasons=[f"{registered_name} has no challenger: run `journeyml train` first"],
            champion_before=champion_v,
            champion_after=champion_v,
        )
    challenger_v = str(challenger.version)
    if champion_v == challenger_v:
        return Decision(
            model,
            promote=False,
            reasons=[f"v{challenger_v} is already the champion"],
            challenger=challenger_v,
            champion_before=champion_v,
            champion_after=champion_v,
        )
    run = client.get_run(challenger.run_id)
    compared = run.data.tags.get("champion_version_compared") or None
    decision = decide_promotion(model, dict(run.data.metrics), gate, champion_v, compared)
    decision.challenger = challenger_v
    decision.champion_before = champion_v
    decision.champion_after = champion_v
    if decision.promote:
        client.set_registered_model_alias(registered_name, CHAMPION, challenger_v)
        _stamp(client, registered_name, challenger_v, champion_v, "gate")
        decision.champion_after = challenger_v
        logger.info("%s: champion is now v%s", registered_name, challenger_v)
    return decision


def move_champion(client: MlflowClient, model: str, registered_name: str, version: str) -> Decision:
    """Points ``champion`` at an explicit version (rollback or manual promotion, no gate)."""
    from mlflow.exceptions import MlflowException

    champion = current_version(client, registered_name, CHAMPION)
    before = str(champion.version) if champion else None
    try:
        client.get_model_version(registered_name, str(version))
    except MlflowException:
        return Decision(
            model,
            promote=False,
            reasons=[f"{registered_name} has no version {version}"],
            champion_before=before,
            champion_after=before,
        )
    client.set_registered_model_alias(registered_name, CHAMPION, str(version))
    _stamp(client, registered_name, str(version), before, "manual")
    return Decision(
        model,
        promote=True,
        checks=[
            f"champion moved from {f'v{before}' if before else 'none'} to v{version} "
            "by request (--to)"
        ],
        challenger=str(version),
        champion_before=before,
        champion_after=str(version),
    )


def _stamp(client: MlflowClient, name: str, version: str, previous: str | None, how: str) -> None:
    client.set_model_version_tag(name, version, "promoted_at", datetime.now(UTC).isoformat())
    client.set_model_version_tag(name, version, "promoted_by", how)
    client.set_model_version_tag(name, version, "previous_champion", previous or "")
