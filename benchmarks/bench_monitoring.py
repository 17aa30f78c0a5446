"""Backtest of journey monitoring on generated clickstreams (issue 18's acceptance figures).

For each seed, the foreign clickstream generator (tests/foreign_logs/clickstream.py: 600 users,
182 days, a user base that ramps up, weekday seasonality) writes two logs: one with its four
injected incidents (a checkout step failing back to the cart on android, a payment outage on
every platform, a basket loop on ios, a web outage that loses most web sessions) and one with
none. Each is ingested with its own column map, given the config ``journeyml init`` writes for it
(journey map and monitoring settings, edited in nothing) and replayed by ``journeyml monitor
backtest`` (evaluation.monitor_backtest.backtest).

Printed per seed: each incident's detection delay in days (from its start; "-" when missed),
the false alerts per month on the incident-free log and on the days no incident covers. Targets
(issue 18): every incident with at least 20 affected customers detected within 3 days of its
start; at most 1 false alert per month on the incident-free logs.

    .venv/bin/python benchmarks/bench_monitoring.py --seeds 1 2 3 [--work DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from evaluation.monitor import load_monitor_settings  # noqa: E402
from evaluation.monitor_backtest import backtest, load_known_incidents  # noqa: E402
from journeyml.cli import app  # noqa: E402
from journeyml.config import load_journey_map  # noqa: E402
from tests.foreign_logs import generate_clickstream  # noqa: E402


def _invoke(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise RuntimeError(f"journeyml {' '.join(args[:2])} failed: {result.output}")


def run_seed(
    seed: int, work: Path, config: Path | None, journeys: Path | None
) -> dict[str, object]:
    out: dict[str, object] = {"seed": seed}
    for kind in ("incidents", "clean"):
        folder = work / f"seed{seed}-{kind}"
        log = generate_clickstream(
            folder / "log", n_users=600, seed=seed, incidents=() if kind == "clean" else None
        )
        lake, init = folder / "lake", folder / "config"
        if not (lake / "manifest.json").is_file():
            _invoke(["events", "ingest", str(log.events_csv), *log.map_args(), "--out", str(lake)])
        # the config a user gets from `journeyml init` on this very log, edited in nothing
        _invoke(["init", str(log.events_csv), *log.map_args(), "--out", str(init), "--force"])
        settings = load_monitor_settings(config or init / "monitoring.yaml")
        journey = load_journey_map(journeys or init / "journeys.yaml")
        known = load_known_incidents(log.truth["incidents"], log.start)
        scored = backtest(lake, settings, known, journey)
        # what the log holds of each incident by the target: its changed sessions in its first
        # four days (the start day and the three after it)
        affected = pd.read_csv(log.truth["affected"])
        early = {
            k.name: int(
                (
                    (affected["incident"] == k.name)
                    & (affected["day"] >= (k.start - log.start).days)
                    & (affected["day"] < (k.start - log.start).days + 4)
                ).sum()
            )
            for k in known
        }
        out[kind] = {
            "summary": scored.summary,
            "incidents": [
                {
                    "name": r["name"],
                    "affected_customers": r["affected_customers"],
                    "delay_days": r["delay_days"],
                    "sessions_first_4_days": early.get(r["name"], 0),
                }
                for r in scored.incidents.to_dict(orient="records")
            ],
            "false_alerts": [
                {"start": str(r["start"]), "kpis": r["kpis"], "segments": r["segments"]}
                for r in scored.false_alerts.to_dict(orient="records")
            ],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--work", type=Path, default=None, help="Keep logs and lakes here.")
    parser.add_argument(
        "--config", type=Path, default=None, help="Monitoring settings (default: init's)."
    )
    parser.add_argument(
        "--journeys", type=Path, default=None, help="A journey map (default: init's)."
    )
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        results = [run_seed(seed, work, args.config, args.journeys) for seed in args.seeds]
    delays: list[int | None] = []
    small: list[int | None] = []
    false_clean = months_clean = 0.0
    for r in results:
        inc = r["incidents"]
        clean = r["clean"]
        assert isinstance(inc, dict) and isinstance(clean, dict)
        cells = []
        for i in inc["incidents"]:
            d = i["delay_days"]
            d = None if d is None or d != d else int(d)
            (delays if (i["affected_customers"] or 0) >= 20 else small).append(d)
            cells.append(
                f"{i['name']}={'-' if d is None else d} "
                f"({i['affected_customers']}; {i['sessions_first_4_days']})"
            )
        s_inc, s_clean = inc["summary"], clean["summary"]
        false_clean += s_clean["false_alerts"]
        months_clean += s_clean["monitored_months"]
        print(
            f"seed {r['seed']}: delays in days (affected customers; changed sessions in the "
            f"first 4 days) {', '.join(cells)}; "
            f"false alerts/month {s_inc['false_alerts_per_month']} with incidents, "
            f"{s_clean['false_alerts_per_month']} incident-free"
        )
    within = sum(d is not None and d <= 3 for d in delays)
    print(
        f"incidents with >= 20 affected customers: {within} of {len(delays)} detected within "
        f"3 days (missed: {sum(d is None for d in delays)}); incident-free logs: "
        f"{false_clean:.0f} false alerts over {months_clean:.1f} months = "
        f"{false_clean / max(months_clean, 1e-9):.2f} a month"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
