"""The learned policy's share of the oracle's gain, next to the best single action's and the
hidden-state ceiling's, on the simulator's world.

Usage::

    .venv/bin/python benchmarks/policy_share.py [--customers 3000] [--days 365]
        [--seeds 0 1000] [--features journey|observation] [--no-ceiling]

Per seed ``s`` (see :func:`evaluation.policy_sim.true_policy_values`): the logging policy runs
on seed ``s`` and its decision log is what the learned policy learns from (the product's
journey features at each decision's day, logged propensities, the net value in the 14 days
after); the **hidden-state ceiling** is the same learner also given the simulator's hidden
persona and state; the oracle's per-persona choices come from runs on seed ``s``; every value
is a whole run on seed ``s + 1`` with the policy deciding every week.

The share is :func:`evaluation.policy_sim.share_of_oracle_gain`. The bar is 80 % of the
oracle's gain, or 95 % of the ceiling's share where the ceiling is below 80 %, and at least
5 points above the best single action. Results and the command: ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluation.policy_learn import LearnerSettings  # noqa: E402
from evaluation.policy_sim import CEILING, share_target, true_policy_values  # noqa: E402
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map  # noqa: E402
from journeyml.simulate.world import load_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1000])
    parser.add_argument("--features", choices=["journey", "observation"], default="journey")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    world = load_world()
    journey = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    settings = LearnerSettings(features=args.features, num_threads=args.threads)
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        values = true_policy_values(
            world, journey, args.customers, args.days, seed=seed, learner=settings,
            ceiling=not args.no_ceiling,
        )  # fmt: skip
        table = values.values.set_index("policy")
        share = table["captured_share"]
        best = next(p for p in table.index if str(p).startswith("best single action"))
        ceiling = float(share[CEILING]) if CEILING in share.index else None
        bar = share_target(ceiling)
        learned = float(share["learned policy"])
        result = {
            "seed": seed,
            "customers": args.customers,
            "days": args.days,
            "features": args.features,
            "learned": learned,
            "best_single_action": float(share[best]),
            "best_single_policy": str(best),
            "ceiling": ceiling,
            "logging_policy": float(share["logging policy"]),
            "bar": bar,
            "meets_bar": learned >= bar,
            "points_above_best_single": 100 * (learned - float(share[best])),
            "seconds": round(time.perf_counter() - started, 1),
            "net_values": {str(k): float(v) for k, v in table["net_value"].items()},
        }
        results.append(result)
        print(table[["net_value", "incremental", "captured_share"]].to_string())
        print(json.dumps({k: v for k, v in result.items() if k != "net_values"}, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
