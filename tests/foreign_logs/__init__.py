"""Event logs that the simulator did not make: test and benchmark fixtures of their own.

Each generator writes a log with its own column names and vocabulary (CSV, optionally Parquet)
and a ``truth/`` folder, deterministically from its seed, and returns a :class:`ForeignLog`
describing what it wrote (paths, the ``--map`` column mapping, parameters, truth files):

- :func:`generate_purchase_log` — a date-only order log from a known BG/NBD process
  (:mod:`tests.foreign_logs.bgnbd` holds the model's likelihood, fit and probabilities);
- :func:`generate_clickstream` — app and web sessions with second-order journeys, a ramping
  user base, weekday seasonality and injected incidents (:mod:`tests.foreign_logs.incidents`);
- :func:`generate_subscription_log` — accounts with invoices, failed charges, plan changes,
  cancellations driven by observable behaviour, and reactivations.

Benchmarks import them as ``tests.foreign_logs`` with the repository root on ``sys.path``.
"""

from tests.foreign_logs.base import ForeignLog
from tests.foreign_logs.clickstream import generate_clickstream
from tests.foreign_logs.purchase import generate_purchase_log
from tests.foreign_logs.subscription import generate_subscription_log

__all__ = [
    "ForeignLog",
    "generate_clickstream",
    "generate_purchase_log",
    "generate_subscription_log",
]
