"""The whole chain on each foreign log, from ``journeyml init`` with no hand-edited config.

init -> events ingest -> features build -> features materialize -> train -> promote ->
lists churn-risk -> analyze -> monitor -> report, all through the CLI with ``--config-dir``
pointing at the folder init wrote. Each log ends more than a year before the wall clock, so
every age a reason or a report shows must be counted from the log's own end: no age longer
than the log's span, no number in scientific notation.

A small log may leave a model that does not pass its gates (a recency baseline beats the
purchase log's churn model; the clickstream's conversion model misses the AUC floor); promote
then refuses it (exit 1, naming the gate), nothing is forced in, and the list, which needs a
churn and a conversion model, is written with the challenger alias and says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from journeyml.cli import app
from tests.foreign_logs import (
    ForeignLog,
    generate_clickstream,
    generate_purchase_log,
    generate_subscription_log,
)

GENERATORS: dict[str, Callable[[Path], ForeignLog]] = {
    "purchase": lambda out: generate_purchase_log(out, n_customers=400, seed=1),
    "clickstream": lambda out: generate_clickstream(out, seed=1),
    "subscription": lambda out: generate_subscription_log(out, n_accounts=150, seed=1),
}
AGE = re.compile(r"(\d[\d,]*(?:\.\d+)?) days?\b")
SCIENTIFIC = re.compile(r"\d\.\d+e[+-]\d\d")


def run(*args: str, codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in codes, (args, result.output)
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


def ages(texts: list[str]) -> list[float]:
    return [float(m.replace(",", "")) for t in texts for m in AGE.findall(t)]


def visible_text(html: str) -> str:
    """The report's words: scripts, styles and embedded images left out."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    html = re.sub(r"data:[a-z/+]+;base64,[A-Za-z0-9+/=]+", " ", html)
    return re.sub(r"<[^>]+>", " ", html)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_the_whole_chain_runs_from_init_on_a_foreign_log(kind: str, tmp_path: Path) -> None:
    log = GENERATORS[kind](tmp_path / "log")
    cfg, data = tmp_path / "cfg", tmp_path / "data"
    span = log.days + 1
    run("init", str(log.events_csv), *log.map_args(), "--out", str(cfg))
    c, d = ["--config-dir", str(cfg)], ["--data-dir", str(data)]
    run(*c, "events", "ingest", str(log.events_csv), "--out", str(data / "lake"))
    run(*c, "features", "build", *d)
    run(*c, "features", "materialize", *d)
    _, trained = run(*c, "train", *d)
    assert "churn" in trained
    code, promoted = run(*c, "promote", *d, codes=(0, 1))
    alias = []
    if code == 1:  # a gate refused a model: it says which and why, and nothing is forced in
        assert "champion stays none" in promoted and " not " in promoted
        listed_code, refused = run(*c, "lists", "churn-risk", *d, codes=(0, 2))
        if listed_code == 2:  # the list names what it lacks and how to list anyway
            assert "train and promote first" in refused and "--alias challenger" in refused
            alias = ["--alias", "challenger"]

    _, listed = run(*c, "lists", "churn-risk", *d, *alias)
    assert "ages are counted from the end of the log" in listed
    assert f"Models (alias {alias[1] if alias else 'champion'}" in listed  # what it serves
    frame = pd.read_csv(data / "lists" / "churn_risk.csv")
    assert len(frame) > 0  # ranked by what the best action gains (holdout: withheld)
    assert frame.loc[~frame["holdout"], "incremental_value"].is_monotonic_decreasing
    reasons = [str(t) for i in (1, 2, 3) for t in frame[f"reason_{i}"].dropna()]
    assert reasons and max(ages(reasons), default=0) <= span
    assert not any(SCIENTIFIC.search(t) for t in reasons)

    run(*c, "analyze", *d)
    run(*c, "monitor", *d)
    _, reported = run(*c, "report", *d)
    pages = sorted((data / "reports").glob("*.html"))
    assert {p.name for p in pages} >= {"model.html", "journey.html"}, reported
    for page in pages:
        text = visible_text(page.read_text(encoding="utf-8"))
        assert max(ages([text]), default=0) <= span, page.name
        assert not SCIENTIFIC.search(text), (page.name, SCIENTIFIC.search(text))
