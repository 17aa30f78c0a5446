"""Next step after every event: the per-event model against Markov-1 and Markov-2.

On a clickstream of the foreign-log generator (tests/foreign_logs/clickstream.py, its own
event and column names, mapped by ``journeyml init``) and on the simulator's log, the
per-event model (training/next_event.py) and the Markov baselines are fitted on the first
70 % of the anchors in time and scored on the last 30 % (the same rows for all). The
clickstream's truth is a second-order chain within sessions, so the report also gives the
session-aware Markov-2 (state: the last event and the previous one *in the session*), which
is that truth's own form, and the abandonment model's figures.

    uv run python -m benchmarks.bench_next_step --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.catalog import build_catalog
from features.sequence import SequenceSpec, infer_context_properties
from journeyml.config import load_journey_map
from training.metrics import multiclass_metrics
from training.models import BackoffMarkovBaseline
from training.next_event import (
    build_anchor_data,
    describe,
    fit_next_event,
    markov_state_frame,
    open_anchor_inputs,
    time_split,
)

ROOT = Path(__file__).resolve().parents[1]


def prepare_clickstream(folder: Path, seed: int, users: int, days: int) -> tuple[Path, Path]:
    """Generates a clickstream, runs ``journeyml init`` and ingests it; returns (cfg, lake)."""
    from tests.foreign_logs import generate_clickstream

    log = generate_clickstream(folder / "log", n_users=users, days=days, seed=seed)
    cfg, lake = folder / "cfg", folder / "lake"
    cli = [str(Path(sys.executable).parent / "journeyml")]
    subprocess.run(
        [*cli, "init", str(log.events_csv), *log.map_args(), "--out", str(cfg)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*cli, "--config-dir", str(cfg), "events", "ingest", str(log.events_csv),
         "--out", str(lake)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cfg, lake


def prepare_simulator(folder: Path, seed: int, customers: int, days: int) -> tuple[Path, Path]:
    """Simulates a world with the shipped simulator config and ingests it."""
    cfg = ROOT / "configs" / "simulator"
    cli = [str(Path(sys.executable).parent / "journeyml")]
    subprocess.run(
        [*cli, "--config-dir", str(cfg), "simulate", "--customers", str(customers),
         "--days", str(days), "--seed", str(seed), "--out", str(folder / "world"),
         "--truth-cutoffs", "0"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*cli, "--config-dir", str(cfg), "events", "ingest", str(folder / "world" / "events"),
         "--customers", str(folder / "world" / "customers.parquet"),
         "--out", str(folder / "lake")],
        check=True, capture_output=True,
    )  # fmt: skip
    return cfg, folder / "lake"


def evaluate(cfg: Path, lake: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from features.settings import load_feature_settings

    journey_map = load_journey_map(cfg / "journeys.yaml")
    settings = load_feature_settings(str(cfg / "features.yaml"))
    catalog = build_catalog(journey_map, settings)
    con = open_anchor_inputs(lake, journey_map, catalog)
    started = time.perf_counter()
    spec = SequenceSpec(last_k=args.last_k, properties=infer_context_properties(con))
    data = build_anchor_data(
        con, journey_map, catalog, spec, "next_step_v1", args.max_anchors, not args.no_journey
    )
    build_s = time.perf_counter() - started
    masks = time_split(data.rows, 0.3, 0.2, journey_map.horizons.next_step_days)
    started = time.perf_counter()
    fit = fit_next_event(
        data, masks, args.max_classes,
        {"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 40, "max_bin": 63,
         "lambda_l2": 1.0},
        500, 30, seed, 2,
    )  # fmt: skip
    fit_s = time.perf_counter() - started
    m = dict(fit.metrics)
    # the session-aware second-order chain (the clickstream's truth has this form)
    rows = data.rows
    states = markov_state_frame(rows)
    codes = fit.model.encode_labels(rows["next"].astype(str).to_numpy())
    te = masks["test"] & (codes >= 0)
    fit_rows = masks["train"] | masks["validation"]
    sess = BackoffMarkovBaseline(("seq_type_0", "seq_prev_in_session"), 2.0)
    sess.fit(states[fit_rows], codes[fit_rows], len(fit.model.classes_))
    m.update(
        {
            f"baseline_markov2_session_{k}": v
            for k, v in multiclass_metrics(codes[te], sess.predict_proba(states[te])).items()
        }
    )
    con.close()
    return {
        **describe(data, masks),
        "properties": list(spec.properties),
        "classes": fit.model.classes_,
        "metrics": m,
        "build_seconds": build_s,
        "fit_seconds": fit_s,
    }


def line(name: str, m: dict[str, float], prefix: str = "") -> str:
    return (
        f"  {name:<26} top1 {m[prefix + 'top1_accuracy']:.4f}  top3 "
        f"{m[prefix + 'top3_accuracy']:.4f}  log loss {m[prefix + 'log_loss']:.4f}"
    )


def report(title: str, r: dict[str, Any]) -> None:
    m = r["metrics"]
    print(
        f"{title}: {r['anchors']} anchors ({r['train_rows']} train, {r['validation_rows']} "
        f"validation, {r['test_rows']} test), {len(r['classes'])} classes, context "
        f"{r['properties']}; build {r['build_seconds']:.1f} s, fit {r['fit_seconds']:.1f} s"
    )
    print(line("per-event model", m))
    for b, name in (
        ("markov1", "Markov-1"),
        ("markov2", "Markov-2"),
        ("markov2_session", "Markov-2 (session-aware)"),
        ("prior", "class prior"),
    ):
        print(line(name, m, f"baseline_{b}_"))
    beat = (
        m["top3_accuracy"] > m["baseline_markov2_top3_accuracy"]
        and m["log_loss"] < m["baseline_markov2_log_loss"]
    )
    print(f"  beats Markov-2 on top-3 and log loss: {beat}")
    if "abandon_auc" in m:
        print(
            f"  abandonment: AUC {m['abandon_auc']:.3f}, ECE {m['abandon_ece']:.3f}, Brier "
            f"{m['abandon_brier']:.4f} (constant rate: {m['abandon_baseline_rate_brier']:.4f}),"
            f" rate {m['abandon_positive_rate']:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-clickstream", action="store_true")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--days", type=int, default=182)
    parser.add_argument("--last-k", type=int, default=3)
    parser.add_argument("--max-classes", type=int, default=16)
    parser.add_argument("--max-anchors", type=int, default=200_000)
    parser.add_argument("--no-journey", action="store_true", help="sequence inputs only")
    parser.add_argument("--simulator-customers", type=int, default=600, help="0: skip")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-next-step-") as tmp:
        for seed in [] if args.skip_clickstream else args.seeds:
            folder = Path(tmp) / f"clickstream-{seed}"
            cfg, lake = prepare_clickstream(folder, seed, args.users, args.days)
            r = evaluate(cfg, lake, args, seed)
            results[f"clickstream-{seed}"] = r
            report(f"clickstream seed {seed}", r)
        if args.simulator_customers:
            seed = args.seeds[0]
            folder = Path(tmp) / "simulator"
            cfg, lake = prepare_simulator(folder, seed, args.simulator_customers, args.days)
            r = evaluate(cfg, lake, args, seed)
            results["simulator"] = r
            report(f"simulator seed {seed}", r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    wins = [r["metrics"] for k, r in results.items() if k.startswith("clickstream")]
    beaten = sum(
        1
        for m in wins
        if m["top3_accuracy"] > m["baseline_markov2_top3_accuracy"]
        and m["log_loss"] < m["baseline_markov2_log_loss"]
    )
    gain = np.mean([m["top3_accuracy"] - m["baseline_markov2_top3_accuracy"] for m in wins])
    print(
        f"clickstream seeds where Markov-2 is beaten on both: {beaten} of {len(wins)}; "
        f"mean top-3 gain {gain:+.3f}"
    )


if __name__ == "__main__":
    main()
