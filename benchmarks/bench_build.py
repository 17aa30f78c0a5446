"""Feature build: journeyml's SQL pipeline (DuckDB) against the plain pandas reference.

Usage: .venv/bin/python benchmarks/bench_build.py [--customers 80000] [--days 365] [--keep DIR]

Simulates a journey log (about 125 events per customer and year: 80,000 customers give about
10M events), ingests it, then computes the same weekly snapshots with ``build_snapshots`` and
with ``benchmarks/reference_features.py`` on the same lake and cutoffs, checks a sample of
rows agree, and prints times, events/s, peak memory and the speed-up.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.reference_features import compute_reference_features
from features.catalog import build_catalog
from features.pipeline import build_snapshots
from features.settings import FeatureSettings
from journeyml.config import load_journey_map
from journeyml.events.ingest import ingest_events
from journeyml.simulate.run import TruthOptions, simulate
from journeyml.simulate.world import World


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=80_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--keep", type=Path, default=None, help="reuse or keep the lake here")
    args = parser.parse_args()
    journey_map = load_journey_map()
    catalog = build_catalog(journey_map, FeatureSettings())
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        root = args.keep or Path(tmp)
        lake = root / "lake"
        if not (lake / "manifest.json").exists():
            simulate(
                World(),
                journey_map,
                args.customers,
                args.days,
                seed=1,
                out=root / "sim",
                truth=TruthOptions(last_cutoffs=0),
            )
            ingest_events(
                root / "sim" / "events",
                lake,
                customers=root / "sim" / "customers.parquet",
                mode="replace",
                now=datetime(2030, 1, 1, tzinfo=UTC),
            )
        events = pd.read_parquet(lake / "events")
        n_events = len(events)
        del events

        started = time.perf_counter()
        report = build_snapshots(lake, root / "features", journey_map, catalog)
        sql_seconds = time.perf_counter() - started
        sql_peak = peak_mib()
        print(
            f"journeyml build: {n_events:,} events -> {report.rows:,} snapshot rows "
            f"({report.customers:,} customers x {report.snapshots} snapshots, "
            f"{report.features} features) in {sql_seconds:.1f} s "
            f"({n_events / sql_seconds:,.0f} events/s); peak RSS so far {sql_peak:,.0f} MiB",
            flush=True,
        )

        started = time.perf_counter()
        events = pd.read_parquet(lake / "events")[
            [
                "event_id",
                "customer_id",
                "timestamp",
                "event_type",
                "channel",
                "value",
                "session_id",
                "properties",
            ]
        ]
        customers = pd.read_parquet(lake / "customers.parquet")
        cutoffs = [*report_cutoffs(root / "features")]
        ref = compute_reference_features(events, customers, cutoffs, journey_map, catalog)
        pandas_seconds = time.perf_counter() - started
        print(
            f"pandas reference: {len(ref):,} rows in {pandas_seconds:.1f} s "
            f"({n_events / pandas_seconds:,.0f} events/s); peak RSS {peak_mib():,.0f} MiB",
            flush=True,
        )

        sql = pd.read_parquet(root / "features")
        sample = sql.sample(min(2000, len(sql)), random_state=0)
        sample["event_timestamp"] = sample["event_timestamp"].astype("datetime64[ns, UTC]")
        merged = sample.merge(ref, on=["customer_id", "event_timestamp"], suffixes=("", "_ref"))
        assert len(merged) == len(sample), "the two implementations cover different rows"
        for spec in catalog.features:
            a, b = merged[spec.name], merged[f"{spec.name}_ref"]
            if spec.dtype == "float64":
                np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=spec.name)
            else:
                assert (a.astype(str) == b.astype(str)).all(), spec.name
        print(
            f"values agree on {len(sample):,} sampled rows; "
            f"speed-up {pandas_seconds / sql_seconds:.1f}x"
        )


def report_cutoffs(snapshots: Path) -> list[pd.Timestamp]:
    times = pd.read_parquet(snapshots, columns=["event_timestamp"])["event_timestamp"]
    return sorted(times.unique())


if __name__ == "__main__":
    main()
