"""Batch churn-risk list: 1M customers through the decision engine, against raw LightGBM.

Usage::

    .venv/bin/python benchmarks/bench_lists.py [--customers 1000000] [--chunk-rows 100000]
        [--workdir /tmp/journeyml-bench-lists]

Builds once (kept in --workdir) a simulated workspace like ``make demo`` (3,000 customers, all
four models trained and set as champions), then a feature snapshot of ``--customers``
customers drawn with replacement from the workspace's real snapshot rows (new ids, one
snapshot time; the rows are real journey features, so the trees take realistic paths). It
then measures, in one run:

1. the list: :func:`serving.lists.churn_risk_list` (read the latest snapshot rows in chunks,
   all four models, reasons, rules, contact policy, holdout, sort, CSV + Parquet) — the work
   of ``journeyml lists churn-risk`` after its start-up, which is reported apart;
2. the reference: the churn model's raw ``Booster.predict`` on the same rows, already
   encoded in memory (LightGBM's own threads) — the floor any list must stand on.

Target (issue 6): 1M customers in at most 2 minutes on this 2-core machine. The ratio printed
is the list's customers per second over the raw predict's rows per second.

With ``--capacity NAME=N`` (repeatable) the list is made a second time within those volume
limits (:mod:`serving.capacity`: one MILP over every listed customer) and the extra time is
printed against the unconstrained list's. ``--solver-only`` skips the workspace and times the
assignment alone on ``--customers`` rows of synthetic net values (five actions on three
channels, a limited action and a limited channel), against the unconstrained best choice
(one argmax per row) on the same rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serving import build_workspace, simulator_env  # noqa: E402
from journeyml.config import SIMULATOR_CONFIG_DIR  # noqa: E402


def synthetic_snapshot(source: Path, target: Path, customers: int, at: datetime) -> None:
    """``customers`` rows drawn with replacement from the source snapshot rows, new ids."""
    if (target / "ready").exists() and (target / "customers").read_text() == str(customers):
        return
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = str(source / "**" / "*.parquet")
    con.execute(f"CREATE TABLE src AS SELECT * FROM read_parquet('{glob}')")
    n = con.execute("SELECT count(*) FROM src").fetchone()[0]  # type: ignore[index]
    con.execute(
        f"""COPY (
            SELECT * REPLACE (printf('B%08d', i) AS customer_id, $at AS event_timestamp)
            FROM (SELECT i, (hash(i) % {n}) AS pick FROM range({customers}) t(i)) p
            JOIN (SELECT *, row_number() OVER () - 1 AS rn FROM src) s ON s.rn = p.pick
        ) TO '{target / "part-0.parquet"}' (FORMAT parquet)""",
        {"at": at},
    )
    con.close()
    (target / "customers").write_text(str(customers))
    (target / "ready").touch()


def bench_solver(customers: int) -> None:
    """The capacity assignment alone on synthetic net values, against the unconstrained
    best choice on the same rows."""
    import numpy as np

    from serving.capacity import Capacity, assign, best_choice

    rng = np.random.default_rng(0)
    ids = ["call", "discount", "content", "upsell", "onboarding"]
    channels = ["phone", "email", "email", "email", "app"]
    values = np.column_stack(
        [
            rng.normal(-2.0, 6.0, customers),  # costly, large when it works
            rng.normal(-0.5, 2.0, customers),
            rng.normal(0.3, 0.6, customers),
            rng.normal(0.1, 0.8, customers),
            rng.normal(-0.2, 1.0, customers),
        ]
    )
    values[rng.random(values.shape) < 0.4] = np.nan  # not eligible
    t0 = time.perf_counter()
    best = best_choice(values)
    ref_s = time.perf_counter() - t0
    wanted = {c: int(sum(channels[j] == c for j in best[best >= 0])) for c in set(channels)}
    capacity = Capacity({"call": customers // 500}, {"email": wanted["email"] // 2})
    t0 = time.perf_counter()
    result = assign(values, channels, ids, capacity)
    solve_s = time.perf_counter() - t0
    print(
        f"capacity assignment, {customers:,} customers x {len(ids)} actions, limits "
        f"{capacity.as_dict()}: {solve_s:.2f} s; unconstrained best choice {ref_s:.3f} s; "
        f"ratio {solve_s / max(ref_s, 1e-9):.0f}x; value {result.value:,.1f} of "
        f"{result.unconstrained:,.1f} without limits (given up {result.given_up:,.1f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/journeyml-bench-lists"))
    parser.add_argument("--capacity", action="append", default=[], metavar="NAME=N")
    parser.add_argument("--solver-only", action="store_true")
    args = parser.parse_args()
    if args.solver_only:
        bench_solver(args.customers)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    data = build_workspace(args.workdir, 3000, "sqlite")
    # the simulated workspace is read with the simulator's config set, as it was built
    os.environ.update(JOURNEYML_CONFIG_DIR=simulator_env()["JOURNEYML_CONFIG_DIR"])
    at = datetime(2026, 1, 1, tzinfo=UTC)
    snapshots = args.workdir / f"snapshots-{args.customers}"
    synthetic_snapshot(data / "features" / "journey_features", snapshots, args.customers, at)

    started = time.perf_counter()
    from serving.config import load_serving_settings
    from serving.lists import batch_engine, churn_risk_list, latest_snapshot_chunks

    settings = load_serving_settings(ROOT / "configs" / "serving.yaml", data).model_copy(
        update={"actions": str(SIMULATOR_CONFIG_DIR / "actions.yaml")}  # simulated workspace
    )
    engine = batch_engine(settings)
    startup = time.perf_counter() - started
    print(f"start-up (imports, catalogs, four models from MLflow): {startup:.1f} s")

    out = args.workdir / "out"
    t0 = time.perf_counter()
    summary = churn_risk_list(engine, snapshots, out, now=at, chunk_rows=args.chunk_rows)
    list_s = time.perf_counter() - t0
    print(
        f"list: {summary.customers_read:,} customers read, {summary.listed:,} listed "
        f"({summary.opted_out:,} opted out) in {list_s:.1f} s "
        f"= {summary.customers_read / list_s:,.0f} customers/s"
    )

    # the reference: the churn model's raw predict on the same rows, encoded in memory
    churn = engine.models.models["churn"].bundle
    chunks = [churn.encode(c, as_of=at) for c in latest_snapshot_chunks(snapshots, None, 200_000)]
    booster = churn.boosters["model"]
    t0 = time.perf_counter()
    rows = 0
    for x in chunks:
        booster.predict(x)
        rows += len(x)
    raw_s = time.perf_counter() - t0
    print(
        f"raw LightGBM churn predict: {rows:,} rows in {raw_s:.1f} s = {rows / raw_s:,.0f} rows/s"
    )
    ratio = (summary.customers_read / list_s) / (rows / raw_s)
    print(
        f"ratio list / raw predict throughput: {ratio:.3f} "
        f"(the list runs four models, reasons, rules and policy per customer)"
    )
    if args.capacity:
        from serving.capacity import parse_capacity

        limits = parse_capacity(args.capacity, engine.actions)
        t0 = time.perf_counter()
        capped = churn_risk_list(
            engine, snapshots, out, now=at, chunk_rows=args.chunk_rows, capacity=limits
        )
        capped_s = time.perf_counter() - t0
        cap = capped.capacity
        print(
            f"list within {limits.as_dict()}: {capped_s:.1f} s against {list_s:.1f} s without "
            f"(ratio {capped_s / list_s:.2f}); used {cap['used']}; value "
            f"{cap['value_within_limits']:,.1f} of {cap['value_without_limits']:,.1f} "
            f"(given up {cap['value_given_up']:,.1f})"
        )
    n = summary.customers_read
    total = startup + list_s * 1_000_000 / n
    verdict = "met" if total <= 120 else "NOT met"
    what = "measured" if n == 1_000_000 else f"projected from {n:,} customers"
    print(f"target 1M customers <= 120 s: start-up + list = {total:.1f} s ({what}): {verdict}")
    engine.state.close()


if __name__ == "__main__":
    main()
