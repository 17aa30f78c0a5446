"""Online loading: journeyml's bulk loader against ``feast materialize`` on the same data.

Usage: .venv/bin/python benchmarks/bench_materialize.py [--customers 100000] [--stores sqlite,redis]

Writes one snapshot file (every catalog feature, deterministic random values), loads it into a
fresh store with Feast's own ``materialize`` and into another with ``load_latest_snapshot``,
checks that Feast's ``get_online_features`` returns the same values from both, and prints the
times and the speed-up. Redis must run on 127.0.0.1:6379 for the Redis half.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from features.catalog import FeatureCatalog, build_catalog
from features.online import load_latest_snapshot
from features.settings import FeatureSettings, OnlineStoreSettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import load_journey_map

AS_OF = datetime(2025, 12, 31, tzinfo=UTC)


def make_snapshot(catalog: FeatureCatalog, customers: int, path: Path) -> None:
    rng = np.random.default_rng(0)
    data: dict[str, object] = {
        "customer_id": [f"C{i:07d}" for i in range(customers)],
        "event_timestamp": pa.array([AS_OF] * customers, pa.timestamp("us", tz="UTC")),
    }
    words = ["none", "awareness", "purchase", "retention", "page_view", "login"]
    for spec in catalog.features:
        if spec.dtype == "int64":
            data[spec.name] = rng.poisson(3, customers).astype(np.int64)
        elif spec.dtype == "float64":
            data[spec.name] = np.round(rng.gamma(2.0, 10.0, customers), 3)
        else:
            data[spec.name] = rng.choice(words, customers)
    path.mkdir(parents=True)
    pq.write_table(pa.table(data), path / "part-0.parquet")


def run(kind: str, catalog: FeatureCatalog, source: Path, root: Path) -> None:
    stores = []
    for name in ("feast", "journeyml"):
        ws = Workspace(root / f"{kind}-{name}")
        ws.snapshots.parent.mkdir(parents=True)
        shutil.copytree(source, ws.snapshots)
        project = f"bench{uuid.uuid4().hex[:6]}"
        online = OnlineStoreSettings(type="redis") if kind == "redis" else OnlineStoreSettings()
        store = open_store(StoreSettings(project=project, online=online), ws)
        apply_definitions(store, catalog, ws)
        stores.append((store, ws))
    (feast_store, _), (fast_store, fast_ws) = stores
    started = time.perf_counter()
    feast_store.materialize(AS_OF - timedelta(days=1), AS_OF + timedelta(seconds=1))
    feast_seconds = time.perf_counter() - started
    report = load_latest_snapshot(fast_store, catalog, fast_ws.snapshots)
    ids = [{"customer_id": f"C{i:07d}"} for i in range(0, report.customers, 97)][:500]
    service = "churn_v1"
    expected = feast_store.get_online_features(
        features=feast_store.get_feature_service(service), entity_rows=ids
    ).to_df()
    got = fast_store.get_online_features(
        features=fast_store.get_feature_service(service), entity_rows=ids
    ).to_df()
    pd.testing.assert_frame_equal(expected, got)
    values = report.rows
    print(
        f"{kind:6s} {report.customers:,} customers x {len(catalog.features)} features "
        f"({values:,} values): feast materialize {feast_seconds:.1f} s "
        f"({values / feast_seconds:,.0f} values/s), journeyml {report.seconds:.1f} s "
        f"({report.rows_per_second:,.0f} values/s) -> "
        f"speed-up {feast_seconds / report.seconds:.1f}x "
        f"(reads identical on {len(ids)} customers)"
    )
    if kind == "redis":
        client = redis.Redis(host="127.0.0.1", port=6379)
        for store, _ in stores:
            for key in client.scan_iter(match=f"*{store.project}*", count=10_000):
                client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()
    catalog = build_catalog(load_journey_map(), FeatureSettings())
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        root = Path(tmp)
        make_snapshot(catalog, args.customers, root / "snapshot")
        for kind in args.stores.split(","):
            run(kind, catalog, root / "snapshot", root)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MiB")


if __name__ == "__main__":
    main()
