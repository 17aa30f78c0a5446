"""A date-only purchase log drawn from a BG/NBD process (Fader, Hardie & Lee 2005), as a test
fixture of a log the simulator did not make: customers are acquired in the first weeks (a
cohort, like CDNOW's), buy as a Poisson process with a gamma-distributed rate while alive and
drop out after each purchase with a beta-distributed probability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from journeyml.config import JourneyMap
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA

START = datetime(2024, 1, 1, tzinfo=UTC)
CDNOW = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
"""The paper's estimates on CDNOW, with time in weeks."""


def order_map(inactivity_days: int = 120, horizon_days: int = 90) -> JourneyMap:
    """A journey map of a log with one event type, ``order``."""
    return JourneyMap.model_validate(
        {
            "stages": ["prospect", "customer"],
            "stage_events": {"customer": ["order"]},
            "conversions": ["order"],
            "churn": {
                "inactivity_days": inactivity_days,
                "events": [],
                "activity_events": ["order"],
            },
            "horizons": {
                "churn_days": horizon_days,
                "conversion_days": horizon_days,
                "next_step_days": horizon_days,
            },
            "treatments": {"patterns": []},
        }
    )


def bgnbd_orders(
    customers: int,
    days: int,
    seed: int,
    params: dict[str, float] = CDNOW,
    acquisition_days: int = 84,
) -> pa.Table:
    """Orders of ``customers`` over ``days`` days, one row per order, dates without a time."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(params["r"], 1.0 / params["alpha"], customers) / 7.0  # per day
    p = rng.beta(params["a"], params["b"], customers)
    birth = rng.integers(0, acquisition_days, customers).astype(float)
    ids: list[str] = []
    ts: list[datetime] = []
    for c in range(customers):
        t = birth[c]
        day = int(t)
        ids.append(f"K{c:06d}")
        ts.append(START + timedelta(days=day))
        while True:  # repeat purchases; after each one the customer may drop out
            t += rng.exponential(1.0 / max(lam[c], 1e-12))
            if t >= days:
                break
            ids.append(f"K{c:06d}")
            ts.append(START + timedelta(days=int(t)))
            if rng.random() < p[c]:
                break
    n = len(ids)
    values = np.round(rng.lognormal(3.0, 0.5, n), 2)
    return pa.Table.from_pydict(
        {
            "event_id": [f"o{i}" for i in range(n)],
            "customer_id": ids,
            "timestamp": ts,
            "event_type": ["order"] * n,
            "channel": ["web"] * n,
            "value": values.tolist(),
            "session_id": [None] * n,
            "properties": [None] * n,
        },
        schema=NORMALISED_EVENT_SCHEMA,
    )
