"""Reasons people read, over EVERY feature of the simulator's catalog and of the catalogs
``journeyml init`` writes for foreign logs: no scientific notation, no parenthesised
definitions, units beside every number, at most one reason per family."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from features.catalog import FAMILIES, FeatureCatalog, FeatureSpec, Phrase, build_catalog
from features.reasons import CALENDAR_SPECS, choose_reasons, say
from features.settings import load_feature_settings
from journeyml.cli import app
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from tests.foreign_logs import generate_clickstream, generate_purchase_log

SCIENTIFIC = re.compile(r"\d[eE][+-]?\d")
NUMBER = re.compile(r"\d")
# what a number must stand beside, by the way a feature is said
UNITS = {
    "count": r"\b(no|\d[\d,]*) [a-z]",  # "3 support contacts", "no complaint"
    "money": r"\bspent\b|nothing spent",
    "money_mean": r"\baverage order of\b|no order",
    "since": r"\bdays?\b|today|never|yet",
    "days": r"\bdays?\b|yet",
    "trend": r"%|about the same",
    "per": r"per session|no session",
    "rate": r"%|no answer",
    "share": r"%",
    "position": r"\bstep\b|no journey stage",
    "score": r"of 10|points|never",
    "times": r"\btimes\b|\bonce\b|never",
    "measure": r"\b(total|average) [a-z]",
    "month": r"^decided in [A-Z][a-z]+$|not known",
    # a category's value is its own word: "journey stage: 3"
    "category": r"^[a-z0-9 ]+: |fewer than \d+ [a-z]",
}
VALUES: list[object] = [
    0,
    1,
    2.5,
    45.4,
    12345.678,
    1.157e-11,
    3.554e5,
    -1,
    float("nan"),
    None,
    "none",
    "add_to_cart",
]


def catalog_of(config: Path) -> FeatureCatalog:
    return build_catalog(
        load_journey_map(config / "journeys.yaml"), load_feature_settings(config / "features.yaml")
    )


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, FeatureCatalog]:
    """The simulator's catalog and those init writes for a purchase log and a clickstream
    (which has dimensions and measures of its own)."""
    out = {"simulator": catalog_of(SIMULATOR_CONFIG_DIR)}
    root = tmp_path_factory.mktemp("reasons")
    for kind, log in (
        ("purchase", generate_purchase_log(root / "purchase", n_customers=60, seed=2)),
        ("clickstream", generate_clickstream(root / "clickstream", seed=2)),
    ):
        cfg = root / f"{kind}-cfg"
        result = CliRunner().invoke(
            app, ["init", str(log.events_csv), *log.map_args(), "--out", str(cfg)]
        )
        assert result.exit_code == 0, result.output
        out[kind] = catalog_of(cfg)
    return out


def test_every_feature_reads_as_plain_words_with_units(
    catalogs: dict[str, FeatureCatalog],
) -> None:
    checked = 0
    for name, catalog in catalogs.items():
        specs = [*catalog.features, *CALENDAR_SPECS.values()]
        assert len({s.phrase.kind for s in specs}) >= 10, name
        for spec in specs:
            assert spec.phrase.kind in UNITS, (name, spec.name, spec.phrase.kind)
            for value in VALUES:
                for tenure in (30.0, 20_000.0):
                    text = say(spec, value, {"tenure_days": tenure})
                    where = (name, spec.name, value, text)
                    assert text and text == text.strip(), where
                    assert not SCIENTIFIC.search(text), where
                    assert "(" not in text and ")" not in text, where
                    assert "_" not in text, where  # no internal names
                    assert "tenure" not in text and "when never" not in text, where
                    if NUMBER.search(text) and not text.endswith("not known"):
                        assert re.search(UNITS[spec.phrase.kind], text), where
                    checked += 1
    assert checked > 3000


NEVER_ACTIVE = "no activity yet"
NEVER_NPS = "never answered the NPS survey"


@pytest.mark.parametrize(
    ("spec", "value", "tenure", "want"),
    [
        (Phrase("since", "activity", never=NEVER_ACTIVE), 45.3, 400.0, "no activity for 45 days"),
        (Phrase("since", "activity", never=NEVER_ACTIVE), 401.0, 400.0, NEVER_ACTIVE),
        (Phrase("since", "complaint"), 1.2, 9.0, "last complaint 1 day ago"),
        (Phrase("trend", "spend", 30), 0.4, 9.0, "spend down 60 % on the 30 days before"),
        (Phrase("trend", "activity", 30), 2.5, 9.0, "activity up 150 % on the 30 days before"),
        (Phrase("count", "support contact", 90), 2.0, 9.0, "2 support contacts in the last 90 days"),  # noqa: E501
        (Phrase("count", "response to marketing", 30), 3, 9.0, "3 responses to marketing in the last 30 days"),  # noqa: E501
        (Phrase("count", "conversion", never="no conversion yet"), 0, 9.0, "no conversion yet"),
        (Phrase("money", "", 30), 12345.678, 9.0, "spent 12,346 in the last 30 days"),
        (Phrase("money_mean", "", 90), 45.456, 9.0, "average order of 45.46 in the last 90 days"),
        (Phrase("score", "NPS answer", never=NEVER_NPS), -1.0, 9.0, NEVER_NPS),
        (Phrase("category", "2nd latest", never="fewer than 2 activities"), "none", 9.0, "fewer than 2 activities"),  # noqa: E501
        (Phrase("position", "journey step"), 2, 9.0, "journey step 3"),
    ],
)  # fmt: skip
def test_reasons_say_the_value_in_words(
    spec: Phrase, value: object, tenure: float, want: str
) -> None:
    feature = FeatureSpec("f", "a feature", "float64", "v", "", phrase=spec)
    assert say(feature, value, {"tenure_days": tenure}) == want


def test_at_most_one_reason_per_family(catalogs: dict[str, FeatureCatalog]) -> None:
    rng = np.random.default_rng(0)
    for name, catalog in catalogs.items():
        families = [f.family for f in catalog.features]
        known = set(FAMILIES) | {d.column.replace("_", " ") for d in catalog.settings.dimensions}
        known |= {m.column.replace("_", " ") for m in catalog.settings.measures}
        assert set(families) <= known, (name, set(families) - known)
        contributions = rng.normal(0, 1, size=(500, len(families)))
        # the largest contributions all in one family: the reasons still name three families
        same = [j for j, f in enumerate(families) if f == "frequency"]
        contributions[:, same] += 10.0
        top = choose_reasons(contributions, families, 3)
        for i, row in enumerate(top):
            picked = [int(j) for j in row if j >= 0]
            assert len({families[j] for j in picked}) == len(picked) == 3, (name, i)
            assert families[picked[0]] == "frequency"
            values = [contributions[i, j] for j in picked]
            assert values == sorted(values, reverse=True) and values[-1] > 0
            # no feature of another family beats the ones chosen
            best_other = max(
                (contributions[i, j] for j, f in enumerate(families) if f not in
                 {families[p] for p in picked}),
                default=-np.inf,
            )  # fmt: skip
            assert best_other <= values[-1]
