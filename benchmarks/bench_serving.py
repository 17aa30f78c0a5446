"""Serving: `/v1/next-best-action` on BentoML against a lean Starlette path doing the same work.

Usage::

    .venv/bin/python benchmarks/bench_serving.py [--customers 3000] [--seconds 15] [--rounds 3]
        [--workdir /tmp/journeyml-bench-serving] [--online sqlite|redis]

Builds once (kept in --workdir) a simulated workspace like ``make demo``: events, features in
the online store, all four models trained and promoted to ``champion``. Then, for each server
in turn — ``bentoml serve serving.service:JourneyML`` and ``benchmarks/lean_server.py``
(same API-key check, request model and :class:`serving.runtime.Runtime`: Feast online read,
all four models, rules, contact policy, decision record) — it measures, with a separate
load-generator process:

1. saturation throughput (closed loop, 8 connections);
2. latency at half of that throughput (open loop: scheduled starts, queueing counts);
3. 5,000 sequential calls: the slowest call and how many took over 50 ms.

The servers alternate for ``--rounds`` rounds (this machine is shared, its load drifts) and
each is reported by its round with the median saturation throughput.

Targets (serving issue): BentoML ≥ 0.5× the lean path's throughput, p99 ≤ 10 ms at half of
saturation, no request over 50 ms in 5,000 sequential calls.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import encode_requests, run_load  # noqa: E402
from journeyml.config import SIMULATOR_CONFIG_DIR  # noqa: E402
from serving.auth import generate_key, hash_key  # noqa: E402

BIN = Path(sys.executable).parent


def simulator_env() -> dict[str, str]:
    """The environment of every command on the benchmark's simulated workspace.

    The workspace is a simulated world, so it is built and served with the simulator's config set
    (its feature catalog names the simulator's profile columns that its actions read), as
    ``make demo`` does.
    """
    return {**os.environ, "JOURNEYML_CONFIG_DIR": str(SIMULATOR_CONFIG_DIR)}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, env=simulator_env(), stdout=subprocess.DEVNULL)


def build_workspace(work: Path, customers: int, online: str) -> Path:
    data = work / f"data-{customers}-{online}-simulator"
    if (data / "ready").exists():
        return data
    jml = str(BIN / "journeyml")
    sh(
        jml,
        "simulate",
        "--customers",
        str(customers),
        "--days",
        "365",
        "--seed",
        "7",
        "--out",
        str(data / "sim"),
    )
    sh(
        jml,
        "events",
        "ingest",
        str(data / "sim" / "events"),
        "--customers",
        str(data / "sim" / "customers.parquet"),
        "--out",
        str(data / "lake"),
        "--mode",
        "replace",
    )
    sh(jml, "features", "build", "--data-dir", str(data))
    sh(jml, "features", "materialize", "--data-dir", str(data))
    sh(jml, "train", "--model", "all", "--data-dir", str(data))
    # the benchmark measures serving, not the gates: every model serves its first version
    from training.tracking import CHAMPION, use_tracking_uri

    client = use_tracking_uri(f"sqlite:///{data.resolve() / 'mlflow' / 'mlflow.db'}")
    for name in ("churn", "conversion", "next_step", "uplift"):
        client.set_registered_model_alias(name, CHAMPION, "1")
    (data / "ready").touch()
    return data


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serving_config(data: Path, prefix: str) -> Path:
    """A serving config for one run: the workspace's models and features, fresh state stores."""
    state = data / "serving" / f"{prefix}-{int(time.time())}"
    state.mkdir(parents=True, exist_ok=True)
    config = state / "serving.yaml"
    config.write_text(
        "data_dir: " + json.dumps(str(data.resolve())) + "\n"
        "actions: " + json.dumps(str(SIMULATOR_CONFIG_DIR / "actions.yaml")) + "\n"
        f"state_url: sqlite:///{state / 'state.db'}\n"
        f"event_store_url: sqlite:///{state / 'events.db'}\n"
        "holdout: {share: 0.05, salt: bench}\n",
        encoding="utf-8",
    )
    return config


def start(kind: str, data: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    if kind == "bentoml":
        cmd = [
            str(BIN / "bentoml"),
            "serve",
            "serving.service:JourneyML",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--working-dir",
            str(ROOT),
        ]
    else:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "lean_server.py"), str(port)]
    proc = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    probe = "/readyz" if kind == "bentoml" else "/v1/next-best-action"
    while time.time() < deadline:
        try:
            if kind == "bentoml":
                if httpx.get(f"http://127.0.0.1:{port}{probe}", timeout=2).status_code == 200:
                    return proc
            else:
                httpx.post(f"http://127.0.0.1:{port}{probe}", content=b"{}", timeout=2)
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} server exited with {proc.returncode}")
        time.sleep(1)
    proc.kill()
    raise RuntimeError(f"{kind} server not ready in 180 s")


def _child(args: tuple[Any, ...], queue: Any) -> None:
    result = run_load(*args)
    queue.put(result.summary())


def load(port: int, requests: list[bytes], mode: str, **kw: Any) -> dict[str, float]:
    """Runs the load generator in its own process and returns its summary."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (
        "127.0.0.1",
        port,
        requests,
        mode,
        kw.get("concurrency", 8),
        kw.get("seconds", 10.0),
        kw.get("rate", 100.0),
        kw.get("count", 1000),
    )
    proc = ctx.Process(target=_child, args=(args, queue))
    proc.start()
    summary: dict[str, float] = queue.get()
    proc.join()
    return summary


def measure(
    kind: str, data: Path, env: dict[str, str], ids: list[str], key: str, seconds: float
) -> dict[str, dict[str, float]]:
    port = free_port()
    proc = start(kind, data, port, env)
    try:
        bodies = [{"customer_id": c, "context": {"channel": "web"}} for c in ids]
        reqs = encode_requests(
            "127.0.0.1", port, "/v1/next-best-action", bodies, {"x-api-key": key}
        )
        load(port, reqs, "closed", concurrency=4, seconds=3)  # warm-up
        sat = load(port, reqs, "closed", concurrency=8, seconds=seconds)
        half = load(
            port, reqs, "open", concurrency=8, seconds=seconds, rate=max(sat["rps"] / 2, 1.0)
        )
        seq = load(port, reqs, "sequential", count=5000)
        return {"saturation": sat, "half_load": half, "sequential": seq}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/journeyml-bench-serving"))
    parser.add_argument("--online", choices=["sqlite"], default="sqlite")
    parser.add_argument("--gc-freeze", choices=["0", "1"], default="1")
    parser.add_argument("--only", choices=["bentoml", "lean"], default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per server")
    args = parser.parse_args()

    data = build_workspace(args.workdir, args.customers, args.online)
    import pandas as pd

    ids = sorted(
        pd.read_parquet(data / "features" / "journey_features", columns=["customer_id"])[
            "customer_id"
        ]
        .unique()
        .tolist()
    )
    key = generate_key()
    config = serving_config(data, "bench")
    env = {
        **simulator_env(),
        "JOURNEYML_SERVING_CONFIG": str(config),
        "JOURNEYML_DATA_DIR": str(data.resolve()),
        "JOURNEYML_API_KEYS": json.dumps(
            [{"id": "bench", "sha256": hash_key(key), "scopes": ["decide"]}]
        ),
        "JOURNEYML_GC_FREEZE": args.gc_freeze,
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONPATH": str(ROOT),
    }
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"lean": [], "bentoml": []}
    for _ in range(args.rounds):  # alternate, so both see the same drift in machine load
        for kind in ("lean", "bentoml"):
            if args.only and kind != args.only:
                continue
            runs[kind].append(measure(kind, data, env, ids, key, args.seconds))
            print(kind, json.dumps(runs[kind][-1]), flush=True)
    # per server, the round with the median saturation throughput
    results = {
        kind: sorted(rs, key=lambda r: r["saturation"]["rps"])[len(rs) // 2]
        for kind, rs in runs.items()
        if rs
    }
    if len(results) == 2:
        b, lean = results["bentoml"], results["lean"]
        ratio = b["saturation"]["rps"] / lean["saturation"]["rps"]
        print(
            f"\nthroughput: bentoml {b['saturation']['rps']:.0f}/s, lean "
            f"{lean['saturation']['rps']:.0f}/s: ratio {ratio:.2f} (target >= 0.5)"
        )
        print(
            f"p99 at half of saturation: bentoml {b['half_load']['p99_ms']:.2f} ms "
            f"(target <= 10), lean {lean['half_load']['p99_ms']:.2f} ms"
        )
        print(
            f"5,000 sequential calls: bentoml max {b['sequential']['max_ms']:.1f} ms, "
            f"{b['sequential']['over_50ms']:.0f} over 50 ms (target 0); lean max "
            f"{lean['sequential']['max_ms']:.1f} ms"
        )
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
