"""Business metrics in the process's Prometheus registry, and client errors logged at INFO
(issue 19)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pydantic
import pytest
from prometheus_client import REGISTRY

from serving.runtime import Runtime, _NoRequestDataInLogs
from serving.schemas import FeedbackRequest, NextBestActionRequest
from tests.serving.conftest import ServingWorkspace, serving_settings


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def total(name: str) -> float:
    """The sum of a metric's samples over every label set."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    )


def test_decisions_feedback_and_stage_latencies_are_counted(
    serving_ws: ServingWorkspace, tmp_path: Path
) -> None:
    runtime = Runtime(serving_settings(serving_ws, tmp_path, holdout={"share": 0.0, "salt": "x"}))
    try:
        stages = {s: sample("journeyml_stage_seconds_count", stage=s) for s in
                  ("features", "scores", "policy", "decision")}  # fmt: skip
        before = total("journeyml_decisions_total")
        body = runtime.next_best_action(
            NextBestActionRequest(customer_id=serving_ws.customers[9])
        ).body
        labels = {
            "action": body["action"],
            "channel": body["channel"] or "none",
            "fallback_reason": "none",
            "holdout": "false",
        }
        assert total("journeyml_decisions_total") == before + 1
        assert sample("journeyml_decisions_total", **labels) >= 1
        for stage, count in stages.items():
            assert sample("journeyml_stage_seconds_count", stage=stage) == count + 1, stage
        fb = FeedbackRequest(decision_id=body["decision_id"], outcome="clicked")
        created = sample("journeyml_feedback_total", outcome="clicked", status="created")
        runtime.feedback(fb)
        runtime.feedback(fb)
        assert sample("journeyml_feedback_total", outcome="clicked", status="created") == (
            created + 1
        )
        assert sample("journeyml_feedback_total", outcome="clicked", status="duplicate") >= 1
    finally:
        runtime.close()


@pytest.mark.parametrize("server_error", [False, True])
def test_client_errors_are_logged_at_info_server_errors_at_error(server_error: bool) -> None:
    try:
        if server_error:
            raise RuntimeError("a bug")
        NextBestActionRequest.model_validate({"customer_id": "not valid!"})
    except (pydantic.ValidationError, RuntimeError):
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "bentoml._internal.server.http_app", logging.ERROR, __file__, 1,
        "Exception on %s [%s]", ("/v1/next-best-action", "POST"), exc_info,
    )  # fmt: skip
    assert _NoRequestDataInLogs().filter(record)
    assert record.levelno == (logging.ERROR if server_error else logging.INFO)
    assert "not valid!" not in record.getMessage()
