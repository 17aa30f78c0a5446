"""Why the churn and conversion models miss the simulator's truth: the gap with the hidden state.

Usage::

    .venv/bin/python benchmarks/truth_gap.py [--customers 12500] [--days 365]
        [--workdir /tmp/journeyml-bench-training] [--rollouts 8]

The training issue asks for models within 0.03 AUC of the simulator's true probabilities.
Those probabilities are computed from the simulator's whole state, part of which (whether a
customer is still "alive", the journey stage, the persona, satisfaction, engagement) the event
log never shows. This diagnostic measures how much of the gap that hidden state explains:

1. it uses the world of ``bench_training.py`` (same seed and size; built there if missing);
2. it simulates the same world again, recording truth with the hidden state at every weekly
   cutoff for every active customer (truth runs on copies of the state with its own random
   streams, so the event log is the same; checked here);
3. it fits churn and conversion as ``journeyml train`` does (labels, time split, Feast feature
   service, calendar features, ``BinaryJourneyModel`` with ``configs/models.yaml``) on the
   journey features; on the journey features plus all the hidden state; plus each hidden
   variable alone; and, as the best an events-only model could do, a LightGBM fitted to the
   re-simulated true probabilities instead of 0/1 labels;
4. each is scored on the test period against the original truth (``auc_gap_to_truth``) and
   for calibration (ECE over the whole test period).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_training import build_world  # noqa: E402
from features.settings import load_feature_settings  # noqa: E402
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map  # noqa: E402
from training.bundle import encode_frame  # noqa: E402
from training.config import load_training_config  # noqa: E402
from training.metrics import expected_calibration_error  # noqa: E402
from training.models import fit_vocabularies, lightgbm_params  # noqa: E402
from training.pipeline import (  # noqa: E402
    binary_model,
    prepare_data,
    read_model_features,
    with_calendar,
)
from training.truth import compare_with_truth, load_truth  # noqa: E402

HIDDEN = ("alive", "stage", "persona", "satisfaction", "engagement")
CATEGORICAL_HIDDEN = ("stage", "persona")
LABELS = {"churn": "p_churn", "conversion": "p_convert"}


def simulate_hidden(root: Path, customers: int, days: int, rollouts: int) -> Path:
    """The same world with truth and hidden state at every weekly cutoff (cached)."""
    from journeyml.simulate.run import TruthOptions, simulate
    from journeyml.simulate.world import World

    out = root / "sim_hidden"
    if not (out / "truth" / "customers.parquet").is_file():  # cached
        simulate(
            World(),
            load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
            customers,
            days,
            seed=11,  # bench_training.build_world's seed
            out=out,
            truth=TruthOptions(
                every_days=7, warmup_days=28, last_cutoffs=10_000, sample=0, rollouts=rollouts
            ),
        )
    digest = (
        "SELECT COUNT(*), SUM(HASH(event_id, customer_id, timestamp, event_type)) "
        "FROM read_parquet('{}/**/*.parquet')"
    )
    same = [duckdb.sql(digest.format(p / "events")).fetchall()[0] for p in (root / "sim", out)]
    if same[0] != same[1]:
        raise SystemExit(f"the re-simulated event log differs from {root / 'sim'}: {same}")
    return out / "truth"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=12_500)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/journeyml-bench-training"))
    parser.add_argument("--rollouts", type=int, default=8)
    args = parser.parse_args()
    root: Path = args.workdir
    started = time.perf_counter()
    if not (root / "features").exists():
        build_world(root, args.customers, args.days)
    hidden_folder = simulate_hidden(root, args.customers, args.days, args.rollouts)

    journey, settings, config = (
        load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"),
        load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml")),
        load_training_config(),
    )
    data = prepare_data(root, journey, settings, config)
    rows = data.rows.reset_index(drop=True)
    truth = load_truth(root / "sim" / "truth")
    if truth is None:
        raise SystemExit(f"no truth under {root / 'sim'}")
    hidden_truth = load_truth(hidden_folder)
    if hidden_truth is None:
        raise SystemExit(f"no truth under {hidden_folder}")
    hidden = hidden_truth.customers.assign(alive=lambda f: f["alive"].astype(float))
    keys = rows[["customer_id", "cutoff"]].assign(customer_id=rows["customer_id"].astype(str))
    state = keys.merge(hidden, how="left", on=["customer_id", "cutoff"])
    if state["persona"].isna().any():
        raise SystemExit(f"{int(state['persona'].isna().sum())} rows have no hidden state")
    masks = {s: (rows["split"] == s).to_numpy() for s in ("train", "validation", "test")}
    tr, va, te = masks["train"], masks["validation"], masks["test"]
    print(
        f"{len(rows):,} labelled rows (train {tr.sum():,}, validation {va.sum():,}, "
        f"test {te.sum():,}); prepared in {time.perf_counter() - started:.0f} s\n"
    )
    print(f"{'model inputs':58s} {'model':10s} {'AUC':>6s} {'truth':>6s} {'gap':>7s} {'ECE':>6s}")
    cache: dict[str, pd.DataFrame] = {}
    for label, truth_column in LABELS.items():
        settings_ = getattr(config.models, label)
        spec, x = read_model_features(data, settings_.feature_service, config, cache)
        spec, x = with_calendar(spec, x, rows, config.features.calendar)
        x = x.reset_index(drop=True)
        x.columns = [str(c) for c in x.columns]
        y = rows[label].to_numpy(np.int64)
        features, categorical = list(spec.features), list(spec.categorical)

        def report(name: str, p: np.ndarray, y: np.ndarray = y, label: str = label) -> None:
            m = compare_with_truth(rows[te], p, y[te], truth, label)
            ece = expected_calibration_error(y[te], p)
            print(
                f"{name:58s} {label:10s} {m['auc_model_on_truth_rows']:6.3f} "
                f"{m['auc_truth']:6.3f} {m['auc_gap_to_truth']:7.3f} {ece:6.3f}",
                flush=True,
            )

        def fit(
            inputs: list[str],
            cats: list[str],
            frame: pd.DataFrame,
            model_settings: Any = settings_,
            y: np.ndarray = y,
        ) -> np.ndarray:
            model = binary_model(inputs, cats, model_settings, config)
            model.fit(frame[tr], y[tr], eval_set=(frame[va], y[va]))
            return np.asarray(model.predict_proba(frame[te]))

        report("journey features (as `journeyml train`)", fit(features, categorical, x))
        all_hidden = pd.concat([x, state[list(HIDDEN)].add_prefix("hidden_")], axis=1)
        report(
            "+ all hidden state",
            fit(
                features + [f"hidden_{h}" for h in HIDDEN],
                categorical + [f"hidden_{h}" for h in CATEGORICAL_HIDDEN],
                all_hidden,
            ),
        )
        for h in HIDDEN:
            cats = categorical + ([f"hidden_{h}"] if h in CATEGORICAL_HIDDEN else [])
            report(f"+ hidden {h} only", fit([*features, f"hidden_{h}"], cats, all_hidden))

        # the best an events-only model can do: regress the true probability itself
        vocab = fit_vocabularies(x[tr], categorical)
        encoded = encode_frame(x, features, vocab)
        target = state[truth_column].to_numpy(float)
        params = lightgbm_params("cross_entropy", config.seed, config.num_threads, {})
        train_set = lgb.Dataset(
            encoded[tr], target[tr], feature_name=features, categorical_feature=categorical
        )
        valid_set = lgb.Dataset(encoded[va], target[va], reference=train_set)
        booster = lgb.train(
            params,
            train_set,
            2000,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )
        report(
            f"journey features fitted to p_true ({args.rollouts} re-simulations)",
            np.asarray(booster.predict(encoded[te])),
        )
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
