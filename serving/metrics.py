"""Business metrics of the service in ``/metrics``: decisions, feedback and stage latencies.

Plain ``prometheus_client`` metrics (BentoML serves the process's registry at ``/metrics``, in
multiprocess mode when it runs several workers). Every label has a bounded set of values: the
catalog's actions and channels, the fallback reasons, the feedback outcomes, the stages.
Created once per process, on first use (never at import).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ServingMetrics:
    decisions: Counter
    feedback: Counter
    stage_seconds: Histogram


@functools.cache
def serving_metrics() -> ServingMetrics:
    """The process's metrics (created on the first call)."""
    return ServingMetrics(
        decisions=Counter(
            "journeyml_decisions",
            "Next-best-action decisions by chosen action, channel, fallback reason and holdout",
            ["action", "channel", "fallback_reason", "holdout"],
        ),
        feedback=Counter(
            "journeyml_feedback", "Feedback received, by outcome and status", ["outcome", "status"]
        ),
        stage_seconds=Histogram(
            "journeyml_stage_seconds",
            "Time spent in each stage of a request (features, scores, policy, decision)",
            ["stage"],
            buckets=STAGE_BUCKETS,
        ),
    )


def observe_stage(stage: str, seconds: float) -> None:
    serving_metrics().stage_seconds.labels(stage=stage).observe(seconds)


def count_decision(action: str, channel: str | None, fallback: str | None, holdout: bool) -> None:
    serving_metrics().decisions.labels(
        action=action,
        channel=channel or "none",
        fallback_reason=fallback or "none",
        holdout=str(holdout).lower(),
    ).inc()


def count_feedback(outcome: str, status: str) -> None:
    serving_metrics().feedback.labels(outcome=outcome, status=status).inc()
