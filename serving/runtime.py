"""Everything the service holds, built once from the settings, and the handlers it calls.

:class:`Runtime` opens the feature store, loads the models by alias (refreshed in the
background), opens the state store and the online event store, and builds the decision engine
and the real-time feature updater. Its handlers take validated requests (:mod:`serving.schemas`)
and return JSON-ready dicts with an HTTP status, so the BentoML service stays IO only and the
tests can call the same handlers without a server.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from features.realtime import STORE_ERRORS as EVENT_STORE_ERRORS
from features.realtime import EventStore, EventTimeError, RealtimeUpdater
from features.sequence import SequenceSpec, latest_sequence_rows
from features.settings import load_feature_settings
from features.store import Workspace, open_store
from journeyml.clock import data_clock
from journeyml.config import load_journey_map
from journeyml.events.bounds import TimeBounds
from journeyml.events.config import load_events_config
from journeyml.events.schema import NORMALISED_EVENT_SCHEMA
from journeyml.events.staging import content_id_sql
from serving import metrics
from serving.actions import load_decision_catalogs
from serving.auth import KeyRing
from serving.breaker import CircuitBreaker, StoreUnavailableError
from serving.config import ServingSettings
from serving.engine import (
    Decision,
    DecisionContext,
    DecisionEngine,
    RequestConflictError,
    Scores,
    hashed_id,
)
from serving.features import STORE_ERRORS as ONLINE_ERRORS
from serving.features import (
    FeatureStoreDownError,
    FeatureTimeoutError,
    OnlineFeatures,
    set_sqlite_busy_timeout,
    with_deadline,
)
from serving.models import ModelSet
from serving.schemas import (
    EventsRequest,
    FeedbackRequest,
    NextBestActionRequest,
    ScoreRequest,
)
from serving.state import STORE_ERRORS as STATE_ERRORS
from serving.state import RequestKey, StateStore

logger = logging.getLogger(__name__)

EVENT_STORE_DOWN: tuple[type[BaseException], ...] = (*EVENT_STORE_ERRORS, StoreUnavailableError)
"""What the event store raises when it is down or its breaker is open."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class Runtime:
    """The long-lived objects of one server worker."""

    def __init__(self, settings: ServingSettings, start_models: bool = True):
        self.settings = settings
        self.journey_map = load_journey_map(settings.journeys)
        self.feature_settings = load_feature_settings(settings.features)
        self.catalog, self.actions = load_decision_catalogs(
            settings.actions, settings.features, settings.journeys
        )
        self.workspace = Workspace(settings.data_dir)
        # events, decision and feedback times: the event contract's window (400 outside it)
        self.bounds = TimeBounds.from_config(
            load_events_config(settings.events), self.workspace.lake
        )
        (self.workspace.root / "serving").mkdir(parents=True, exist_ok=True)
        self.keyring = load_keyring(settings)
        self.store = open_store(
            with_deadline(self.feature_settings.store, settings.deadline_ms), self.workspace
        )
        self.features: OnlineFeatures | None = None
        self.updater: RealtimeUpdater | None = None
        self._feature_error: str | None = None
        self._lock = threading.Lock()
        self.state = StateStore(settings.resolved_state_url(), timeout_ms=settings.state_timeout_ms)
        self.state.guard()
        # online events: a write with the state store's timeout, behind its own breaker
        self.event_store = EventStore(
            settings.resolved_event_store_url(), timeout_ms=settings.state_timeout_ms
        )
        self.event_store.breaker = CircuitBreaker("event store", self.event_store.ping)
        self.models = ModelSet(settings)
        self._connect_features()
        if start_models:
            self.models.start()
        self.clock = data_clock(self.workspace.lake)
        if self.clock.on_data_time:
            logger.warning("%s", self.clock.describe())
        self._tick = self.clock.ticking()
        self._latest_event: datetime | None = None  # the newest event received online
        self.engine = DecisionEngine(
            settings,
            self.actions,
            self.models,
            self.features,
            self.state,
            self.catalog.descriptions,
            clock=self.now,
            specs=self.catalog.specs,
        )
        self.engine.observe_stage = metrics.observe_stage
        self.engine.sequence_rows = self.sequence_rows

    def now(self) -> datetime:
        """The service's "now": the data's clock (see :mod:`journeyml.clock`). On a lake that
        ends in the past it starts at the lake's end; events received online move it forward
        (never past the wall clock), so a live service whose lake lags catches up at once."""
        now = self._tick()
        seen = self._latest_event
        return seen if seen is not None and seen > now else now

    def sequence_rows(
        self, customer_ids: Sequence[str], spec: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """The sequence features of each customer's latest event, from the freshest events
        (the lake and the events received online, so an event just received counts)."""
        if self.updater is None:
            return {}
        sequence = SequenceSpec(
            int(spec["last_k"]), int(spec["session_gap_minutes"]), tuple(spec["properties"])
        )
        history = self.updater.history(list(customer_ids))
        return latest_sequence_rows(history, self.journey_map, sequence)

    def next_steps_after(self, customer_ids: list[str]) -> list[dict[str, Any]]:
        """The next-step distribution and p_abandon of customers whose events just arrived
        (empty without a next_event model)."""
        if "next_event" not in self.models.models or self.features is None or not customer_ids:
            return []
        ids = customer_ids[: self.settings.limits.max_customers]
        sequences = self.engine.next_event_inputs(ids)
        read = self.features.read(ids, self.now(), self.settings.deadline_ms)
        out = []
        for cid, row in zip(ids, read, strict=True):
            top, _, p_abandon = self.engine.next_event_scores(row.values, sequences.get(cid))
            if top:
                out.append({"customer_id": cid, **next_event_body(top, p_abandon)})
        return out

    def _saw_events(self, table: pa.Table) -> None:
        if not self.clock.on_data_time or table.num_rows == 0:
            return
        newest = pc.max(table.column("timestamp")).as_py()
        if newest is None:
            return
        newest = min(newest, datetime.now(UTC))
        if self._latest_event is None or newest > self._latest_event:
            self._latest_event = newest

    def _connect_features(self) -> None:
        try:
            self.features = OnlineFeatures(self.store, self.catalog)
            set_sqlite_busy_timeout(self.store, self.settings.deadline_ms)
            self.updater = RealtimeUpdater(
                self.store,
                self.catalog,
                self.journey_map,
                self.event_store,
                self.workspace.lake,
                bounds=self.bounds,
                incremental=self.settings.event_state == "incremental",
            )
            self._feature_error = None
        except Exception as exc:  # the registry is not there yet: not ready
            self._feature_error = f"feature store not ready: {type(exc).__name__}: {exc}"
            logger.error("%s", self._feature_error)

    # -- health ----------------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        """Each component's state; ready while every required one is up. A store whose
        breaker is open is not called (its background probe is); one that is up gets one
        cheap call within its deadline."""
        if self.features is None:
            with self._lock:
                if self.features is None:
                    self._connect_features()
                    self.engine.features = self.features
        components = {
            "models": self._models_health(),
            "online_store": self._online_health(),
            "state_store": self._state_health(),
            "event_store": self._event_store_health(),
            "keys": self._keys_health(),
        }
        ready = all(c["ok"] for c in components.values() if c["required"])
        problems = {k: str(c["detail"]) for k, c in components.items() if not c["ok"]}
        problems.update(self.models.errors)
        return {
            "ready": ready,
            "components": components,
            "models": self.models.versions(),
            "problems": problems,
        }

    def _models_health(self) -> dict[str, Any]:
        missing = [r for r in self.settings.models.required if r not in self.models.models]
        detail: Any = self.models.versions()
        if missing:
            detail = f"not loaded: {', '.join(missing)}; " + "; ".join(
                f"{k}: {v}" for k, v in self.models.errors.items()
            )
        out = {"ok": not missing, "required": True, "detail": detail}
        fallbacks = self.models.fallbacks()
        if fallbacks:
            out["fallbacks"] = fallbacks
        return out

    def _online_health(self) -> dict[str, Any]:
        if self.features is None:
            return {"ok": False, "required": True, "detail": self._feature_error}
        try:
            self.features.read(["__journeyml_ready__"], deadline_ms=self.settings.deadline_ms)
        except FeatureStoreDownError as exc:
            return {"ok": False, "required": True, "detail": str(exc)}
        return {"ok": True, "required": True, "detail": "up"}

    def _state_health(self) -> dict[str, Any]:
        breaker = self.state.breaker
        try:
            if breaker is not None:
                breaker.check()
            self.state.ping()
        except STATE_ERRORS as exc:
            if breaker is not None and not breaker.is_open:
                breaker.trip(exc)
            return {"ok": False, "required": True, "detail": str(exc).splitlines()[0]}
        checkpoint = self.state.checkpoint_error
        detail = "up" if checkpoint is None else f"up; checkpoints failing: {checkpoint}"
        return {"ok": True, "required": True, "detail": detail}

    def _event_store_health(self) -> dict[str, Any]:
        """Not required: decisions go on while online events are refused (503)."""
        try:
            self.event_store._guarded(self.event_store.ping)
        except EVENT_STORE_DOWN as exc:
            return {"ok": False, "required": False, "detail": str(exc).splitlines()[0]}
        return {"ok": True, "required": False, "detail": "up"}

    def _keys_health(self) -> dict[str, Any]:
        if self.keyring is None:
            return {"ok": True, "required": False, "detail": "authentication off"}
        n = len(self.keyring)
        return {"ok": n > 0, "required": False, "detail": f"{n} key(s) loaded"}

    def close(self) -> None:
        self.models.stop()
        if self.features is not None:
            self.features.close()
        self.state.close()

    # -- handlers --------------------------------------------------------------------------

    def next_best_action(self, req: NextBestActionRequest, caller: str = "") -> Reply:
        """One decision; ``caller`` (the API key's id) scopes the request id."""
        ctx = req.context
        if ctx.at is not None:
            problem = self.bounds.problem(ctx.at, "context.at")
            if problem is not None:
                return Reply(400, {"error": problem})
        request = None
        if req.request_id is not None:
            keep = timedelta(hours=self.settings.request_ids.keep_hours)
            request = RequestKey(caller, req.request_id, datetime.now(UTC) + keep)
        started = time.perf_counter()
        try:
            decision = self.engine.decide(
                req.customer_id,
                DecisionContext(ctx.channel, ctx.event_type, ctx.page, ctx.at),
                mode=req.mode,
                request=request,
            )
        except RequestConflictError as exc:
            return Reply(409, {"error": str(exc)})
        metrics.observe_stage("decision", time.perf_counter() - started)
        metrics.count_decision(
            decision.action, decision.channel, decision.fallback_reason, decision.holdout
        )
        return Reply(200, decision_body(decision))

    def score(self, req: ScoreRequest) -> Reply:
        if len(req.customer_ids) > self.settings.limits.max_customers:
            return Reply(
                400,
                {"error": f"customer_ids: at most {self.settings.limits.max_customers} a call"},
            )
        now = self.now()
        results = []
        unique = list(dict.fromkeys(req.customer_ids))  # a repeated id is read once
        try:
            if self.features is None:
                raise FeatureStoreDownError("feature store not ready")
            read = self.features.read(unique, now, self.settings.deadline_ms)
            rows = [dict(zip(unique, read, strict=True))[c] for c in req.customer_ids]
        except (FeatureTimeoutError, FeatureStoreDownError) as exc:
            reason = (
                "feature_store_timeout"
                if isinstance(exc, FeatureTimeoutError)
                else ("feature_store_unavailable")
            )
            return Reply(
                200,
                {
                    "results": [
                        {"customer_id": c, "fallback_reason": reason} for c in req.customer_ids
                    ]
                },
            )
        sequences = self.engine.next_event_inputs(unique)
        for cid, row in zip(req.customer_ids, rows, strict=True):
            item: dict[str, Any] = {"customer_id": cid}
            if not row.found:
                item.update(known=False, fallback_reason="unknown_customer")
            else:
                try:
                    item.update(
                        known=True,
                        stale=row.stale,
                        **scores_body(self.engine.score(row.values, now, sequences.get(cid))),
                    )
                except Exception:
                    logger.exception("scoring failed for %s", hashed_id(cid))
                    item.update(known=True, fallback_reason="model_error")
            results.append(item)
        return Reply(200, {"results": results, "model_versions": self.models.versions()})

    def events(self, req: EventsRequest) -> Reply:
        if len(req.events) > self.settings.limits.max_events:
            return Reply(400, {"error": f"events: at most {self.settings.limits.max_events}"})
        if self.updater is None:
            return Reply(503, {"error": "feature store not ready"})
        table = normalise_events(req)
        started = time.perf_counter()
        try:
            report = self.updater.apply(table)
        except EventTimeError as exc:  # refused before anything was stored
            return Reply(400, {"error": str(exc)})
        except (*EVENT_STORE_ERRORS, *STATE_ERRORS, *ONLINE_ERRORS) as exc:
            logger.warning(
                "events not stored, a store is unavailable: %s", str(exc).splitlines()[0]
            )
            return Reply(503, {"error": "event or feature store unavailable, retry later"})
        self._saw_events(table)
        try:
            next_steps = self.next_steps_after(list(report.customers))
        except Exception:  # the events are stored; the next step is an extra
            logger.exception("next step after the events unavailable")
            next_steps = []
        return Reply(
            200,
            {
                "next_steps": next_steps,
                "received": report.received,
                "stored": report.stored,
                "duplicates": report.received - report.stored,
                "customers_updated": len(report.customers),
                "features_as_of": None if report.as_of is None else report.as_of.isoformat(),
                "milliseconds": round((time.perf_counter() - started) * 1000, 2),
            },
        )

    def feedback(self, req: FeedbackRequest) -> Reply:
        if req.at is not None:
            problem = self.bounds.problem(req.at, "at")
            if problem is not None:
                return Reply(400, {"error": problem})
        at = req.at or self.now()
        try:
            status = self.state.record_feedback(req.decision_id, req.outcome, at, req.details)
        except STATE_ERRORS as exc:
            reason = str(exc).splitlines()[0]
            logger.warning("feedback not stored: %s", reason)
            return Reply(503, {"error": f"state store unavailable, retry later ({reason})"})
        metrics.count_feedback(req.outcome, status)
        if status == "unknown_decision":
            return Reply(404, {"error": "unknown decision_id"})
        return Reply(
            200, {"decision_id": req.decision_id, "outcome": req.outcome, "status": status}
        )


def normalise_events(req: EventsRequest) -> pa.Table:
    """Incoming events in the normalised event schema; missing ids get the content hash the
    batch ingest gives them, so an event sent online and later in a file is stored once."""
    rows = [
        {
            "event_id": e.event_id,
            "customer_id": e.customer_id,
            "timestamp": e.timestamp.astimezone(UTC),
            "event_type": e.event_type,
            "channel": e.channel.lower() if e.channel else None,
            "value": e.value,
            "session_id": e.session_id,
            "properties": None
            if not e.properties
            else json.dumps(
                e.properties, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ),
        }
        for e in req.events
    ]
    table = pa.Table.from_pylist(
        rows, schema=NORMALISED_EVENT_SCHEMA.remove(0).insert(0, pa.field("event_id", pa.string()))
    )
    if all(r["event_id"] is not None for r in rows):  # nothing to hash: no SQL engine needed
        return table.cast(NORMALISED_EVENT_SCHEMA)
    con = duckdb.connect()
    con.register("incoming", table)
    cols = ", ".join(NORMALISED_EVENT_SCHEMA.names[1:])
    out = con.sql(
        f"SELECT COALESCE(event_id, {content_id_sql()}) AS event_id, {cols} FROM incoming"
    ).to_arrow_table()
    con.close()
    return out.cast(NORMALISED_EVENT_SCHEMA)


class _NoRequestDataInLogs(logging.Filter):
    """Server error logs keep the route and the error, never request data.

    BentoML logs a rejected request's exception with its traceback, and a pydantic
    ValidationError's text quotes the offending input (a customer id, a key): replace it with
    the field paths only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = getattr(getattr(exc, "error_code", None), "value", 500)
        if exc is not None and (type(exc).__name__ == "ValidationError" or status < 500):
            record.levelno, record.levelname = logging.INFO, "INFO"  # the client's error
        if exc is not None and type(exc).__name__ == "ValidationError":
            fields = ", ".join(
                ".".join(str(p) for p in e.get("loc", ()))
                for e in exc.errors()  # type: ignore[attr-defined]
            )
            record.msg = f"{record.getMessage()}: invalid request ({fields})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def load_keyring(settings: ServingSettings) -> KeyRing | None:
    """The API keys of the settings (environment and keys file), or None when auth is off."""
    if not settings.auth.enabled:
        return None
    default = Path(settings.data_dir) / "serving" / "api_keys.json"
    return KeyRing.load(settings.auth.keys_env, settings.auth.keys_file or default)


def freeze_heap() -> None:
    """Moves everything allocated at start-up out of the garbage collector's reach.

    A server process holds millions of long-lived objects after loading Feast, MLflow, pandas
    and the models; every full (generation 2) collection walks all of them and stalls the
    request that triggered it. ``gc.freeze()`` after start leaves only request garbage to
    collect. ``JOURNEYML_GC_FREEZE=0`` turns it off (to measure the difference).
    """
    if os.environ.get("JOURNEYML_GC_FREEZE", "1") == "1":
        gc.collect()
        gc.freeze()


def quiet_server_logs() -> None:
    """Installs the log filter on BentoML's request loggers (idempotent)."""
    for name in ("bentoml._internal.server.http_app", "bentoml.serve", "bentoml"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _NoRequestDataInLogs) for f in log.filters):
            log.addFilter(_NoRequestDataInLogs())


# -- response bodies -----------------------------------------------------------------------


def next_event_body(top: list[tuple[str, float]], p_abandon: float | None) -> dict[str, Any]:
    """The next step after the latest event: the top classes and p_abandon."""
    return {
        "next": [{"step": k, "probability": round(p, 6)} for k, p in top],
        "p_abandon": None if p_abandon is None else round(p_abandon, 6),
    }


def scores_body(s: Scores) -> dict[str, Any]:
    return {
        "churn_risk": round(s.churn_risk, 6),
        "risk_band": s.risk_band,
        "conversion_propensity": round(s.conversion_propensity, 6),
        "next_steps": [{"step": k, "probability": round(p, 6)} for k, p in s.next_steps],
        "next_event": next_event_body(s.next_event, s.p_abandon) if s.next_event else None,
        "reasons": [r.text for r in s.reasons],
        "conversion_reasons": [r.text for r in s.conversion_reasons],
    }


def decision_body(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "customer_id": d.customer_id,
        "decided_at": d.decided_at.isoformat(),
        "action": d.action,
        "channel": d.channel,
        "propensity": d.propensity,
        "ranked": [
            {
                "action": o.action,
                "channel": o.channel,
                "priority": None if o.priority is None else round(o.priority, 6),
                "expected_value": None if o.expected_value is None else round(o.expected_value, 6),
                "basis": o.basis,
            }
            for o in d.ranked
        ],
        "removed": [
            {"action": o.action, "by": o.removed_by, "reason": o.reason} for o in d.removed
        ],
        "scores": None if d.scores is None else scores_body(d.scores),
        "reason_codes": {
            "risk": [] if d.scores is None else [r.text for r in d.scores.reasons],
            "action": d.why,
        },
        "holdout": d.holdout,
        "explored": d.explored,
        "cold_start": d.cold_start,
        "fallback_reason": d.fallback_reason,
        "logged": d.logged,
        "model_versions": d.model_versions,
        "policy_version": d.policy_version,
        "mode": d.mode,
        "request_id": d.request_id,
        "replayed": d.replayed,
    }
