"""Model quality on logs the project did not make: our churn and conversion models against the
generator's truth and against BG/NBD, logistic regression and a Markov chain on the same rows.

Usage:
    .venv/bin/python benchmarks/bench_quality_foreign.py [--purchase-customers 20000]
        [--click-users 6000] [--accounts 4000] [--only purchase,clickstream,subscription]
        [--workdir /tmp/journeyml-bench-quality]

Each log comes from its generator in ``tests/foreign_logs``; then the product's own chain runs
with nothing hand-set: ``journeyml init`` writes the config from the log, ``events ingest``,
``features build``, and ``train_models`` as ``journeyml train`` runs it. Printed per log and
model, on the test period's rows (active customers at the test cutoffs, never trained on):
AUC and ECE of the model and of each baseline (logistic regression, random forest, the
recency-frequency grid and BG/NBD from the training run; a first-order Markov chain on the last
event type, fitted on the training rows here).

On the purchase log (a BG/NBD process), also at the last test cutoff, over every client with a
history then: the repurchase AUC of our conversion model, of BG/NBD fitted on those histories,
and of the best probabilities the history allows (BG/NBD with the generator's true parameters),
all against the realised purchases of the next horizon (the truth's own labels). Done-when of
the models issue: ours within 0.01 of the BG/NBD fit and at least 0.98 × the best.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from journeyml.cli import app
from tests.foreign_logs import (
    ForeignLog,
    generate_clickstream,
    generate_purchase_log,
    generate_subscription_log,
)
from tests.foreign_logs.bgnbd import BGNBDParams
from tests.foreign_logs.purchase import best_probabilities
from training.btyd import fit_bgnbd, p_purchase_within
from training.metrics import expected_calibration_error

BASELINES = ("logreg", "random_forest", "recency_frequency", "bgnbd")


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"journeyml {' '.join(args)}: {result.output} {result.exception!r}")
    return result.output


def build(kind: str, log: ForeignLog, root: Path) -> tuple[Path, Path]:
    """init, ingest and features build on the log; returns (config folder, data folder)."""
    cfg, data = root / "cfg", root / "data"
    run_cli("init", str(log.events_csv), *log.map_args(), "--out", str(cfg))
    c = ["--config-dir", str(cfg)]
    run_cli(*c, "events", "ingest", str(log.events_csv), "--out", str(data / "lake"))
    run_cli(*c, "features", "build", "--data-dir", str(data))
    return cfg, data


def markov_scores(x: pd.DataFrame, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> Any:
    """P(label | last event type), fitted on the training rows (Laplace-smoothed)."""
    state = x["last_event_1"].astype(str).fillna("none")
    table = pd.DataFrame({"s": state[train].to_numpy(), "y": y[train]}).groupby("s")["y"]
    rate = (table.sum() + y[train].mean()) / (table.count() + 1.0)
    return state[test].map(rate).fillna(y[train].mean()).to_numpy(dtype=np.float64)


def train(cfg: Path, data: Path) -> tuple[list[Any], dict[str, Any]]:
    """Churn and conversion as ``journeyml train`` fits them, plus the test rows."""
    os.environ["JOURNEYML_CONFIG_DIR"] = str(cfg)
    from features.settings import load_feature_settings
    from journeyml.config import load_journey_map
    from training.config import load_training_config
    from training.pipeline import prepare_data, read_model_features, train_models, with_calendar
    from training.tracking import resolve_tracking

    journey = load_journey_map(cfg / "journeys.yaml")
    settings = load_feature_settings(str(cfg / "features.yaml"))
    config = load_training_config()
    shutil.rmtree(data / "mlflow", ignore_errors=True)
    target = resolve_tracking(config.tracking, data)
    started = time.perf_counter()
    results = train_models(data, ["churn", "conversion"], journey, settings, config, target)
    seconds = time.perf_counter() - started
    prepared = prepare_data(data, journey, settings, config)
    spec, x = read_model_features(prepared, config.models.churn.feature_service, config, {})
    spec, x = with_calendar(spec, x, prepared.rows, config.features.calendar)
    return results, {
        "data": prepared,
        "x": x,
        "journey": journey,
        "config": config,
        "target": target,
        "seconds": seconds,
    }


def quality_table(results: list[Any], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    rows = ctx["data"].rows
    tr = (rows["split"] == "train").to_numpy()
    te = (rows["split"] == "test").to_numpy()
    out = []
    for r in results:
        if r.baseline:
            continue
        m = r.metrics
        y = rows[r.model].to_numpy(dtype=np.int64)
        line = {"model": r.model, "rows": int(te.sum()), "auc": m["auc"], "ece": m["ece"]}
        for b in BASELINES:
            if f"baseline_{b}_auc" in m:
                line[f"{b}_auc"] = m[f"baseline_{b}_auc"]
                line[f"{b}_ece"] = m[f"baseline_{b}_ece"]
        if "last_event_1" in ctx["x"].columns:
            p = markov_scores(ctx["x"], y, tr, te)
            line["markov_auc"] = float(roc_auc_score(y[te], p)) if len(set(y[te])) == 2 else np.nan
            line["markov_ece"] = expected_calibration_error(y[te], p)
        out.append(line)
    return out


def purchase_truth(log: ForeignLog, data: Path, results: list[Any], ctx: dict[str, Any]) -> dict:
    """At the last test cutoff: every client with a history, scored by our conversion model,
    by BG/NBD fitted on those histories and by the true-parameter BG/NBD."""
    from training.bundle import load_model_bundle
    from training.dataset import describe_service, entity_frame, read_features

    prepared = ctx["data"]
    horizon = ctx["journey"].horizons.conversion_days
    cutoff = pd.Timestamp(prepared.plan.test[-1])
    orders = pd.read_csv(log.events_csv)
    truth_params = BGNBDParams(**{k: log.params[k] for k in ("r", "alpha", "a", "b")})
    truth = best_probabilities(orders, cutoff.date(), horizon, truth_params)
    ids = truth["client"].astype(str)
    conversion = next(r for r in results if r.model == "conversion" and not r.baseline)
    bundle = load_model_bundle(f"models:/{conversion.registered_name}/{conversion.version}")
    spec = describe_service(prepared.store, bundle.feature_service)
    keys = pd.DataFrame({"customer_id": ids.to_numpy(), "cutoff": cutoff})
    frame = read_features(prepared.store, spec, entity_frame(keys), "duckdb")
    ours = bundle.predict_proba(frame.assign(event_timestamp=cutoff))
    x, t_x, big_t = (truth[c].to_numpy(dtype=np.float64) for c in ("x", "t_x", "T"))
    fitted = fit_bgnbd(x, t_x, big_t)
    fit_p = p_purchase_within(fitted, x, t_x, big_t, horizon)
    y = truth["purchased"].to_numpy(dtype=np.int64)
    labels = prepared.labels.frame
    active_ids = set(
        labels.loc[(labels["cutoff"] == cutoff) & labels["active"], "customer_id"].astype(str)
    )
    active = ids.isin(active_ids).to_numpy()
    out: dict[str, Any] = {"cutoff": cutoff.date().isoformat(), "horizon_days": horizon}
    for name, mask in (("all clients", np.ones_like(active)), ("active clients", active)):
        aucs = {
            k: float(roc_auc_score(y[mask], p[mask]))
            for k, p in (("ours", ours), ("bgnbd_fit", fit_p), ("best", truth["p_purchase"]))
        }
        eces = {
            k: expected_calibration_error(y[mask], np.asarray(p)[mask])
            for k, p in (("ours", ours), ("bgnbd_fit", fit_p), ("best", truth["p_purchase"]))
        }
        out[name] = {"rows": int(mask.sum()), "auc": aucs, "ece": eces}
    return out


def list_check(cfg: Path, data: Path, journey: Any) -> dict[str, Any]:
    """The default churn list (challenger alias, top 500): lapsed customers in it, judged from
    the lake itself (no activity event in the churn window before the list's feature date, or
    a churn event after the last activity), and distinct scores among its rows."""
    import subprocess
    import sys

    import duckdb

    # its own process: the training above left MLflow and Feast state in this one
    subprocess.run(
        [str(Path(sys.executable).parent / "journeyml"), "--config-dir", str(cfg), "lists",
         "churn-risk", "--data-dir", str(data), "--alias", "challenger", "--top", "500"],
        check=True, capture_output=True,
    )  # fmt: skip
    frame = pd.read_csv(data / "lists" / "churn_risk.csv")
    as_of = pd.to_datetime(frame["features_as_of"], utc=True).max()
    window = journey.churn.inactivity_days
    patterns = list(journey.churn.activity_events)
    churned = list(journey.churn.events or [])
    lake = str(data / "lake")
    events = duckdb.sql(
        f"SELECT customer_id, event_type, timestamp FROM read_parquet('{lake}/**/*.parquet')"
    ).df()
    events = events[pd.to_datetime(events["timestamp"], utc=True) < as_of]
    types = events["event_type"].astype(str)

    def matches(names: list[str]) -> Any:
        return types.map(lambda t: any(fnmatchcase(t, p) for p in names))

    is_churn = matches(churned) if churned else pd.Series(False, index=events.index)
    active_events = events[matches(patterns) & ~is_churn]
    last = active_events.groupby("customer_id")["timestamp"].max()
    ids = frame["customer_id"].astype(str)
    since = (as_of - pd.to_datetime(last.reindex(ids).to_numpy(), utc=True)).days
    lapsed = int((pd.isna(since) | (since >= window)).sum()) if window else 0
    if churned:
        ends = events[is_churn].groupby("customer_id")["timestamp"].max()
        after = pd.to_datetime(ends.reindex(ids).to_numpy(), utc=True) > pd.to_datetime(
            last.reindex(ids).to_numpy(), utc=True
        )
        lapsed += int(np.sum(after))
    return {
        "listed": len(frame),
        "status_not_active": int((frame["status"] != "active").sum()),
        "lapsed_by_the_lake": lapsed,
        "distinct_scores_top_500": int(frame["churn_risk"].head(500).nunique()),
    }


def fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--purchase-customers", type=int, default=20_000)
    parser.add_argument("--click-users", type=int, default=6_000)
    parser.add_argument("--accounts", type=int, default=4_000)
    parser.add_argument("--only", default="purchase,clickstream,subscription")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/journeyml-bench-quality"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    generators: dict[str, Callable[[Path], ForeignLog]] = {
        "purchase": lambda out: generate_purchase_log(
            out, n_customers=args.purchase_customers, seed=5
        ),
        "clickstream": lambda out: generate_clickstream(out, n_users=args.click_users, seed=5),
        "subscription": lambda out: generate_subscription_log(
            out, n_accounts=args.accounts, seed=5
        ),
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for kind in args.only.split(","):
        root = args.workdir / kind
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        log = generators[kind](root / "log")
        cfg, data = build(kind, log, root)
        results, ctx = train(cfg, data)
        print(
            f"\n== {kind}: {log.n_customers:,} customers, {log.n_events:,} events; "
            f"train {ctx['seconds']:.0f} s, total {time.perf_counter() - started:.0f} s"
        )
        for line in quality_table(results, ctx):
            print("  " + ", ".join(f"{k} {fmt(v)}" for k, v in line.items()))
        for r in results:
            if r.verdict:
                print(f"  {r.verdict}")
        listed = list_check(cfg, data, ctx["journey"])
        print("  churn list: " + ", ".join(f"{k} {v:,}" for k, v in listed.items()))
        if kind == "purchase":
            truth = purchase_truth(log, data, results, ctx)
            print(f"  truth at {truth['cutoff']} (horizon {truth['horizon_days']} days):")
            for who in ("all clients", "active clients"):
                t = truth[who]
                a, e = t["auc"], t["ece"]
                print(
                    f"    {who} ({t['rows']:,}): AUC ours {a['ours']:.4f}, BG/NBD fit "
                    f"{a['bgnbd_fit']:.4f}, best {a['best']:.4f}; ours - fit "
                    f"{a['ours'] - a['bgnbd_fit']:+.4f}, ours / best {a['ours'] / a['best']:.4f}; "
                    f"ECE ours {e['ours']:.4f}, fit {e['bgnbd_fit']:.4f}, best {e['best']:.4f}"
                )


if __name__ == "__main__":
    main()
