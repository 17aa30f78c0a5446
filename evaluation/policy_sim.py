"""True policy values: each policy run inside the simulator, on the same world and seed.

A policy's true value is the net value per customer of a whole simulated run in which it
decides every marketing action (revenue minus action costs, ``Outcomes.value``). The
policies compared are: no action, uniformly random, each single action for everyone (the best
one is reported as "best single action"), the world's logging policy, and an **oracle** that
knows each customer's latent persona, the thing that determines action effects in this world,
and sends each persona the action that is best for it. The oracle's per-persona choice is made
on one seed and its value measured on another, like any other policy, so it is not scored on
its own luck.

With ``learner`` settings, a **learned policy** joins them: learned on the choosing seed from
the logging policy's decision log alone (observable features, logged propensities and the net
value that followed; see :mod:`evaluation.policy_learn`), never from the latent truth, and
scored on the evaluation seed like the others.

With ``ceiling``, the **hidden-state ceiling** joins them: the same learner given the simulator's
hidden persona and state besides what the log shows, the most the log's decisions allow a
learner of this kind to reach (as ``benchmarks/truth_gap.py`` does for the scores).

Incremental values are over no action on the evaluation seed; a policy's *captured share* is
:func:`share_of_oracle_gain`, the one definition every report uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from evaluation.policy_learn import LearnerSettings, learn_policy
from journeyml.config import JourneyMap
from journeyml.simulate.engine import NONE
from journeyml.simulate.policy import (
    Array,
    Observation,
    fixed_policy,
    logging_policy,
    random_policy,
    sample_from,
)
from journeyml.simulate.run import simulate
from journeyml.simulate.world import World

logger = logging.getLogger(__name__)


CEILING = "hidden-state ceiling"


class PersonaPolicy:
    """The same action for every customer of a persona (where allowed): the oracle's form."""

    def __init__(self, by_persona: dict[int, int]):
        self.by_persona = by_persona

    def probabilities(self, obs: Observation) -> Array:
        p = np.zeros((len(obs), obs.eligible.shape[1] + 1))
        chosen = np.array([self.by_persona.get(int(q), NONE) for q in obs.latent.persona])
        rows = np.arange(len(obs))
        allowed = np.ones(len(obs), dtype=bool)
        has_action = chosen != NONE
        allowed[has_action] = obs.eligible[rows[has_action], chosen[has_action]]
        p[rows[allowed], (chosen + 1)[allowed]] = 1.0
        p[rows[~allowed], 0] = 1.0
        return p

    def __call__(self, obs: Observation, u: Array) -> tuple[Array, Array]:
        return sample_from(self.probabilities(obs), u)


@dataclass(frozen=True)
class PolicyValues:
    """True values of the compared policies (``values``) and the oracle's choices."""

    values: pd.DataFrame  # policy, net_value, incremental, captured_share, conversion, churn
    oracle_choices: dict[str, str]  # persona -> action
    customers: int
    days: int
    seed: int


def _run(
    world: World, journey: JourneyMap, policy: object, customers: int, days: int, seed: int,
    start: date,
) -> tuple[dict[str, float], pd.DataFrame]:  # fmt: skip
    _, outcomes = simulate(
        world, journey, customers, days, seed=seed, start=start, out=None, truth=None,
        policy=policy,  # type: ignore[arg-type]
    )  # fmt: skip
    names = [p.name for p in world.personas]
    frame = outcomes.frame(names)
    frame["net"] = frame["revenue"] - frame["action_cost"]
    return outcomes.value(), frame


def true_policy_values(
    world: World,
    journey: JourneyMap,
    customers: int,
    days: int,
    seed: int = 0,
    start: date = date(2025, 1, 1),
    learner: LearnerSettings | None = None,
    ceiling: bool = False,
) -> PolicyValues:
    """Runs every compared policy in the simulator and returns their true values.

    The oracle's persona choices and the learned policy (row "learned policy", only with
    ``learner``) come from runs on ``seed``; every reported value comes from runs on
    ``seed + 1``.
    """
    action_ids = [a.id for a in world.actions]
    names = [p.name for p in world.personas]
    fixed = {"none": NONE, **{a: i for i, a in enumerate(action_ids)}}
    # the oracle's choices, on the choosing seed
    per_persona = {}
    for label, index in fixed.items():
        _, frame = _run(world, journey, fixed_policy(index), customers, days, seed, start)
        per_persona[label] = frame.groupby("persona")["net"].mean()
    table = pd.DataFrame(per_persona)  # persona x action
    best = table.idxmax(axis=1)
    choices = {str(p): str(a) for p, a in best.items()}
    oracle = PersonaPolicy({names.index(p): fixed[a] for p, a in choices.items()})
    # every policy's value, on the evaluation seed
    evaluation = seed + 1
    policies: dict[str, object] = {f"always {a}" if a != "none" else "no action": fixed_policy(i)
                                   for a, i in fixed.items()}  # fmt: skip
    policies["random"] = random_policy()
    policies["logging policy"] = logging_policy(world)
    policies["oracle (true effects)"] = oracle
    if learner is not None:
        policies["learned policy"] = learn_policy(
            world, journey, logging_policy(world), customers, days, seed, start, learner
        )
        if ceiling:  # the same learner, also given the hidden persona and state
            policies[CEILING] = learn_policy(
                world, journey, logging_policy(world), customers, days, seed, start,
                learner.model_copy(update={"hidden": True}),
            )  # fmt: skip
    rows = []
    for label, policy in policies.items():
        value, _ = _run(world, journey, policy, customers, days, evaluation, start)
        rows.append(
            {
                "policy": label,
                "net_value": value["net_value_per_customer"],
                "conversion_rate": value["conversion_rate"],
                "churn_rate": value["churn_rate"],
                "actions_per_customer": value["actions_per_customer"],
            }
        )
        logger.info("true value of %s: %.3f", label, value["net_value_per_customer"])
    values = pd.DataFrame(rows)
    none = float(values.loc[values["policy"] == "no action", "net_value"].iloc[0])
    values["incremental"] = values["net_value"] - none
    singles = values[values["policy"].str.startswith("always ")]
    best_row = dict(singles.iloc[int(np.argmax(singles["net_value"].to_numpy()))])
    best_row["policy"] = f"best single action ({str(best_row['policy']).removeprefix('always ')})"
    values = pd.concat([values, pd.DataFrame([best_row])], ignore_index=True)
    oracle_value = float(
        values.loc[values["policy"] == "oracle (true effects)", "net_value"].iloc[0]
    )
    values["captured_share"] = [
        share_of_oracle_gain(float(v), none, oracle_value) for v in values["net_value"]
    ]
    return PolicyValues(values, choices, customers, days, seed)


def share_of_oracle_gain(value: float, no_action: float, oracle: float) -> float:
    """THE share of the oracle's gain, the one every report uses: a policy's true net value
    per customer over a whole simulated run, minus no action's, divided by the oracle's
    minus no action's (NaN when the oracle gains nothing)."""
    gain = oracle - no_action
    return (value - no_action) / gain if gain > 0 else float("nan")


def share_target(ceiling_share: float | None, target: float = 0.8) -> float:
    """The bar for the learned policy: ``target`` of the oracle's gain, or 95 % of the
    hidden-state ceiling's share when the ceiling is below ``target``."""
    if ceiling_share is None or not np.isfinite(ceiling_share) or ceiling_share >= target:
        return target
    return 0.95 * ceiling_share
