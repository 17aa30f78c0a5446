"""Feature build: the Spark engine (``local[2]``) against DuckDB on the same lake.

Usage::

    .venv/bin/python benchmarks/bench_spark_features.py --customers 8000

Simulates and ingests a lake (about 172 events per customer; cached, not timed, the same
cache as ``bench_features_vs_pandas.py``), then builds the snapshots with
``features.pipeline.build_snapshots`` (DuckDB) and ``features.spark.build_snapshots_spark``
(Spark ``local[2]``, shuffle partitions 4), one after the other, and prints for each the
seconds, events/s, customers/s, and for Spark the CPU-seconds per 1,000 customers (wall x 2
cores), the shuffle bytes written and read and the stages (from Spark's REST status API on
loopback), and the ratio Spark seconds / DuckDB seconds. Both write the same rows (checked
on row and customer counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_features_vs_pandas import DEFAULT_CACHE, prepare_lake  # noqa: E402
from features.catalog import build_catalog  # noqa: E402
from features.pipeline import build_snapshots  # noqa: E402
from features.settings import SparkSettings, load_feature_settings  # noqa: E402
from features.spark import build_snapshots_spark, spark_session  # noqa: E402
from journeyml.config import load_journey_map  # noqa: E402
from journeyml.events.schema import events_glob  # noqa: E402


def shuffle_totals(ui: str, app_id: str) -> dict[str, int]:
    """Shuffle bytes written and read over every stage (Spark's REST API on loopback)."""
    url = f"{ui}/api/v1/applications/{app_id}/stages?status=complete"
    with urllib.request.urlopen(url, timeout=300) as r:
        stages = json.load(r)
    return {
        "stages": len(stages),
        "shuffle_write_bytes": sum(int(s.get("shuffleWriteBytes", 0)) for s in stages),
        "shuffle_read_bytes": sum(int(s.get("shuffleReadBytes", 0)) for s in stages),
        "input_bytes": sum(int(s.get("inputBytes", 0)) for s in stages),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=8000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="keep the lake here")
    parser.add_argument("--partitions", type=int, default=4, help="spark.sql.shuffle.partitions")
    args = parser.parse_args()
    cache = args.cache or (DEFAULT_CACHE if DEFAULT_CACHE.exists() else None)
    root = (cache or Path("/tmp")) / f"lake_{args.customers}_{args.days}_{args.seed}"
    lake = prepare_lake(root, args.customers, args.days, args.seed)
    journey_map = load_journey_map()
    catalog = build_catalog(journey_map, load_feature_settings())
    work = root / "spark_bench"
    load = os.getloadavg()[0]

    started = time.perf_counter()
    duck = build_snapshots(lake, work / "duckdb", journey_map, catalog)
    duck_s = time.perf_counter() - started

    settings = SparkSettings(
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": str(args.partitions),
            "spark.driver.memory": "4g",
            "spark.ui.enabled": "true",
        },
        output_files=4,
    )
    started = time.perf_counter()
    spark = spark_session(settings)
    session_s = time.perf_counter() - started
    spark.sparkContext.setLogLevel("ERROR")
    started = time.perf_counter()
    report = build_snapshots_spark(
        spark, str(lake), str(work / "spark"), journey_map, catalog, output_files=4
    )
    spark_s = time.perf_counter() - started
    print(f"duckdb {duck_s:.1f} s, spark {spark_s:.1f} s (+{session_s:.1f} s session)", flush=True)
    shuffle = shuffle_totals(str(spark.sparkContext.uiWebUrl), spark.sparkContext.applicationId)
    spark.stop()
    assert (report.rows, report.customers) == (duck.rows, duck.customers), "row counts differ"
    con = duckdb.connect()
    row = con.execute("SELECT count(*) FROM read_parquet($g)", {"g": events_glob(lake)}).fetchone()
    con.close()
    events = int(row[0]) if row else 0
    print(f"lake: {args.customers:,} customers, {events:,} events, {duck.rows:,} snapshot rows")
    print(f"load average before: {load:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"duckdb: {duck_s:.1f} s ({duck.customers / duck_s:,.0f} customers/s)")
    print(
        f"spark local[2]: {spark_s:.1f} s + {session_s:.1f} s session start "
        f"({report.customers / spark_s:,.0f} customers/s, "
        f"{2 * spark_s / report.customers * 1000:.2f} core-s per 1,000 customers)"
    )
    print(
        f"spark shuffle: {shuffle['shuffle_write_bytes'] / 2**20:,.1f} MiB written, "
        f"{shuffle['shuffle_read_bytes'] / 2**20:,.1f} MiB read "
        f"({shuffle['shuffle_write_bytes'] / report.customers:,.0f} B per customer), "
        f"input {shuffle['input_bytes'] / 2**20:,.1f} MiB, {shuffle['stages']} stages"
    )
    print(f"ratio spark / duckdb: {spark_s / duck_s:.2f}")


if __name__ == "__main__":
    main()
