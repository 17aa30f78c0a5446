"""Feature build: ``build_snapshots`` (DuckDB SQL) against plain pandas on the same lake.

Usage::

    .venv/bin/python benchmarks/bench_features_vs_pandas.py --customers 58500

Simulates a year of journeys (about 172 events per customer: 58,500 customers give about 10.1M
events) and ingests them into a lake (not timed; kept under ``--cache``, default
``/tmp/jml_bench`` when that folder exists). Then, each in a fresh child process so peak RSS
belongs to one implementation, one after the other on the same lake:

1. ``build_snapshots`` with the default weekly cadence, exactly what ``journeyml features
   build`` runs: read the lake, compute, write zstd Parquet;
2. ``benchmarks/pandas_features.py`` on the same lake and the same snapshot times: read the
   lake, compute, write zstd Parquet.

Checks that sampled customers' rows agree on every feature and prints seconds, events/s, peak
RSS, the machine's load average around each run (the machine is shared) and the speed-up
(pandas seconds / SQL seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.pandas_features import compute_pandas_features, read_lake  # noqa: E402
from features.catalog import FeatureCatalog, build_catalog  # noqa: E402
from features.pipeline import build_snapshots  # noqa: E402
from features.settings import load_feature_settings  # noqa: E402
from journeyml.config import SIMULATOR_CONFIG_DIR, JourneyMap, load_journey_map  # noqa: E402

DEFAULT_CACHE = Path("/tmp/jml_bench")
INGEST_NOW = datetime(2027, 1, 1, tzinfo=UTC)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def prepare_lake(root: Path, customers: int, days: int, seed: int) -> Path:
    """Simulates and ingests a lake under ``root`` unless a finished one is there already."""
    from journeyml.events.ingest import ingest_events
    from journeyml.simulate.run import TruthOptions, simulate
    from journeyml.simulate.world import World

    lake = root / "lake"
    if (root / "READY").exists():
        return lake
    journey_map = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    simulate(
        World(),
        journey_map,
        customers,
        days,
        seed=seed,
        out=root / "sim",
        truth=TruthOptions(last_cutoffs=0),
    )
    ingest_events(
        root / "sim" / "events",
        lake,
        customers=root / "sim" / "customers.parquet",
        mode="replace",
        now=INGEST_NOW,
    )
    (root / "READY").touch()
    return lake


def load_setup() -> tuple[JourneyMap, FeatureCatalog]:
    journey_map = load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml")
    return journey_map, build_catalog(
        journey_map, load_feature_settings(str(SIMULATOR_CONFIG_DIR / "features.yaml"))
    )


def run_sql(lake: Path, out: Path) -> dict[str, object]:
    journey_map, catalog = load_setup()
    started = time.perf_counter()
    report = build_snapshots(lake, out, journey_map, catalog)
    seconds = time.perf_counter() - started
    cutoffs = pq.read_table(out, columns=["event_timestamp"]).column(0).unique()
    return {
        "seconds": seconds,
        "rows": report.rows,
        "customers": report.customers,
        "snapshots": report.snapshots,
        "features": report.features,
        "cutoffs": sorted(c.isoformat() for c in cutoffs.to_pylist()),
        "peak_rss_mib": peak_rss_mib(),
    }


def run_pandas(lake: Path, out: Path, cutoffs: list[str]) -> dict[str, object]:
    journey_map, catalog = load_setup()
    stamps = [pd.Timestamp(c) for c in cutoffs]
    started = time.perf_counter()
    events, customers = read_lake(lake)
    read_s = time.perf_counter() - started
    frame = compute_pandas_features(events, customers, stamps, journey_map, catalog)
    compute_s = time.perf_counter() - started - read_s
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "part-0.parquet", compression="zstd", row_group_size=100_000)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "read_seconds": read_s,
        "compute_seconds": compute_s,
        "write_seconds": seconds - read_s - compute_s,
        "rows": len(frame),
        "peak_rss_mib": peak_rss_mib(),
    }


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def child(kind: str, lake: Path, out: Path, extra: Path | None) -> dict[str, object]:
    """Runs one implementation in a fresh interpreter and returns its JSON report."""
    cmd = [sys.executable, __file__, "--child", kind, "--lake", str(lake), "--out", str(out)]
    if extra is not None:
        cmd += ["--cutoffs-file", str(extra)]
    before = load()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    report["load_before"], report["load_after"] = before, load()
    return report


def compare_sample(
    sql_dir: Path, pandas_dir: Path, catalog: FeatureCatalog, n_customers: int, seed: int = 0
) -> int:
    """Asserts that every feature agrees on all rows of ``n_customers`` sampled customers."""
    ids = pq.read_table(sql_dir, columns=["customer_id"]).column(0).unique().to_pylist()
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(ids, size=min(n_customers, len(ids)), replace=False).tolist())
    keys = ["customer_id", "event_timestamp"]

    def read(path: Path) -> pd.DataFrame:
        table = ds.dataset(path).to_table(filter=ds.field("customer_id").isin(pick))
        frame = table.to_pandas()
        frame["event_timestamp"] = frame["event_timestamp"].astype("datetime64[us, UTC]")
        return frame.sort_values(keys).reset_index(drop=True)

    sql, ref = read(sql_dir), read(pandas_dir)
    pd.testing.assert_frame_equal(sql[keys], ref[keys])
    for spec in catalog.features:
        a, b = sql[spec.name], ref[spec.name]
        if spec.dtype == "float64":
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=spec.name)
        else:
            assert (a.astype(str) == b.astype(str)).all(), spec.name
    return len(sql)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=58_500)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=None, help="keep the lake here")
    parser.add_argument("--sample-customers", type=int, default=500)
    parser.add_argument(
        "--work", type=Path, default=None, help="keep both outputs here; reuse a finished SQL run"
    )
    parser.add_argument("--child", choices=["sql", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cutoffs-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "sql":
        print(json.dumps(run_sql(args.lake, args.out)))
        return
    if args.child == "pandas":
        cutoffs = json.loads(args.cutoffs_file.read_text())
        print(json.dumps(run_pandas(args.lake, args.out, cutoffs)))
        return

    cache = args.cache or (DEFAULT_CACHE if DEFAULT_CACHE.is_dir() else None)
    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = cache or work
        root = base / f"c{args.customers}_d{args.days}_s{args.seed}"
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load()}", flush=True)
        lake = prepare_lake(root, args.customers, args.days, args.seed)
        n_events = pq.ParquetDataset(lake / "events").read(columns=["event_id"]).num_rows
        print(f"lake {lake}: {n_events:,} events (ready in {time.perf_counter() - started:.0f} s)")

        sql_json = work / "sql.json"
        if args.work is not None and sql_json.exists():
            sql = json.loads(sql_json.read_text())
            print("(SQL result reused from an earlier run in --work)")
        else:
            sql = child("sql", lake, work / "sql" / "journey_features", None)
            sql_json.write_text(json.dumps(sql))
        print(
            f"journeyml build_snapshots: {sql['rows']:,} rows ({sql['customers']:,} customers x "
            f"{sql['snapshots']} snapshots, {sql['features']} features) in "
            f"{sql['seconds']:.1f} s ({n_events / sql['seconds']:,.0f} events/s), "
            f"peak RSS {sql['peak_rss_mib']:,.0f} MiB; "
            f"{sql.get('load_before')} before, {sql.get('load_after')} after",
            flush=True,
        )
        cutoffs_file = work / "cutoffs.json"
        cutoffs_file.write_text(json.dumps(sql["cutoffs"]))
        pandas = child("pandas", lake, work / "pandas", cutoffs_file)
        print(
            f"pandas reference: {pandas['rows']:,} rows in {pandas['seconds']:.1f} s "
            f"(read {pandas['read_seconds']:.1f}, compute {pandas['compute_seconds']:.1f}, "
            f"write {pandas['write_seconds']:.1f}; {n_events / pandas['seconds']:,.0f} "
            f"events/s), peak RSS {pandas['peak_rss_mib']:,.0f} MiB; "
            f"{pandas['load_before']} before, {pandas['load_after']} after",
            flush=True,
        )
        _, catalog = load_setup()
        checked = compare_sample(
            work / "sql" / "journey_features", work / "pandas", catalog, args.sample_customers
        )
        assert pandas["rows"] == sql["rows"], "the two implementations cover different rows"
        print(
            f"every feature agrees on {checked:,} rows of {args.sample_customers} sampled "
            f"customers; speed-up (pandas s / SQL s): {pandas['seconds'] / sql['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
