"""Online loading: journeyml's bulk loader against ``feast materialize`` on the same data.

Usage: .venv/bin/python benchmarks/bench_materialize.py [--customers 100000] [--stores sqlite,redis]

Writes one snapshot file (every catalog feature, deterministic random values), loads it into a
fresh store with Feast's own ``materialize`` and into another with ``load_latest_snapshot``,
checks that Feast's ``get_online_features`` returns the same values and event times from both
for a sample of customers, and prints wall time, CPU time, peak RSS and the speed-up. Each load
runs in its own child process, so CPU time and peak RSS are that loader's alone; for Redis the
server's CPU time during the load is shown too. The journeyml loader then loads the same
snapshot again into its now full store (the daily reload: every row is replaced, through the
carry-over and swap in SQLite and the compare-and-replace script in Redis), timed alone.
Redis must run on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from features.catalog import FeatureCatalog, build_catalog
from features.online import load_latest_snapshot
from features.realtime import read_online
from features.settings import FeatureSettings, OnlineStoreSettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map

AS_OF = datetime(2025, 12, 31, tzinfo=UTC)
SAMPLE = 500


def make_snapshot(catalog: FeatureCatalog, customers: int, path: Path) -> None:
    """One snapshot time, every customer, every catalog feature (seeded)."""
    rng = np.random.default_rng(0)
    data: dict[str, object] = {
        "customer_id": [f"C{i:07d}" for i in range(customers)],
        "event_timestamp": pa.array([AS_OF] * customers, pa.timestamp("us", tz="UTC")),
    }
    words = ["none", "awareness", "purchase", "retention", "page_view", "login", "ünïcødé"]
    for spec in catalog.features:
        if spec.dtype == "int64":
            data[spec.name] = rng.poisson(3, customers).astype(np.int64)
        elif spec.dtype == "float64":
            data[spec.name] = np.round(rng.gamma(2.0, 10.0, customers), 3)
        else:
            data[spec.name] = rng.choice(words, customers)
    path.mkdir(parents=True)
    pq.write_table(pa.table(data), path / "part-0.parquet")


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float
    peak_rss_mib: float
    server_cpu: float = 0.0


def _redis_cpu() -> float:
    info: dict[str, float] = redis.Redis(host="127.0.0.1", port=6379).info("cpu")  # type: ignore[assignment]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _child(job: Callable[[], object], out: multiprocessing.Queue) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    job()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.put((time.perf_counter() - started, time.process_time() - cpu, peak))


def timed(job: Callable[[], object], kind: str) -> Timing:
    """Runs a load in a forked child process: its wall, CPU and peak RSS alone."""
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    server = _redis_cpu() if kind == "redis" else 0.0
    child = context.Process(target=_child, args=(job, out))
    child.start()
    wall, cpu, peak = out.get()
    child.join()
    if child.exitcode:
        raise RuntimeError(f"load failed in the child process (exit {child.exitcode})")
    server = _redis_cpu() - server if kind == "redis" else 0.0
    return Timing(wall, cpu, peak, server)


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
    try:
        feast = timed(
            lambda: feast_store.materialize(AS_OF - timedelta(days=1), AS_OF + timedelta(1)), kind
        )
        fast = timed(lambda: load_latest_snapshot(fast_store, catalog, fast_ws.snapshots), kind)
        reload = timed(lambda: load_latest_snapshot(fast_store, catalog, fast_ws.snapshots), kind)
        customers = pq.read_metadata(source / "part-0.parquet").num_rows
        ids = [
            {"customer_id": f"C{i:07d}"} for i in range(0, customers, max(customers // SAMPLE, 1))
        ]
        features = [
            f"{v.name}:{f.name}" for v in feast_store.list_feature_views() for f in v.features
        ]
        frames = [
            store.get_online_features(features=features, entity_rows=ids).to_df()
            for store in (feast_store, fast_store)
        ]
        pd.testing.assert_frame_equal(frames[0], frames[1])
        # and the same event time per customer and view
        sample = [row["customer_id"] for row in ids]
        ages = [
            [r.age_seconds for r in read_online(store, catalog, sample, now=AS_OF)]
            for store in (feast_store, fast_store)
        ]
        assert ages[0] == ages[1], "event times differ"
    finally:
        if kind == "redis":
            client = redis.Redis(host="127.0.0.1", port=6379)
            for store, _ in stores:
                for key in client.scan_iter(match=f"*{store.project}", count=10_000):
                    client.delete(key)
    values = customers * len(catalog.features)
    print(
        f"\n{kind}: {customers:,} customers x {len(catalog.features)} features = {values:,} values"
    )
    print("  loader              wall s    values/s    CPU s   server CPU s   peak RSS MiB")
    rows = (("feast materialize", feast), ("journeyml", fast), ("journeyml reload", reload))
    for label, t in rows:
        server = f"{t.server_cpu:12.1f}" if kind == "redis" else f"{'-':>12s}"
        print(
            f"  {label:19s} {t.wall:7.1f} {values / t.wall:11,.0f} {t.cpu:8.1f} "
            f"{server}   {t.peak_rss_mib:12,.0f}"
        )
    print(
        f"  speed-up {feast.wall / fast.wall:.1f}x wall "
        f"({(feast.cpu + feast.server_cpu) / (fast.cpu + fast.server_cpu):.1f}x CPU incl. server); "
        f"online values and event times identical for {len(ids)} customers x {len(features)} "
        "features"
    )
    print(f"  reload into the full store: {feast.wall / reload.wall:.1f}x Feast's fresh load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()
    catalog = build_catalog(
        load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"), FeatureSettings()
    )
    with tempfile.TemporaryDirectory(prefix="bench_materialize_") as tmp:
        root = Path(tmp)
        make_snapshot(catalog, args.customers, root / "snapshot")
        for kind in args.stores.split(","):
            run(kind, catalog, root / "snapshot", root)


if __name__ == "__main__":
    main()
