"""The decision engine: one customer (or a frame of customers) in, one decision out.

Plain Python, no web framework: the BentoML service, the benchmarks and the marketer's batch
list all call it. The steps, in the order decisioning products run them:

1. **features**: the customer's online journey features (deadline-bound) and the request
   context (channel, event type, page, hour, weekday);
2. **scores**: churn risk, conversion propensity, the next steps (top-k), each action's uplift;
3. **rules**: every action's eligibility → applicability → suitability rules
   (``configs/actions.yaml``, :mod:`serving.rules`); the first failing rule removes the action;
4. **contact policy**: channel caps, cooldowns and suppressions (:mod:`serving.state`);
5. **arbitration**: expected incremental value (uplift × value × lever × context weight − cost)
   when the uplift model knows the action, else propensity × value × lever × context weight −
   cost; "no action" (priority 0) is always a candidate;
6. **exploration**: optional epsilon-greedy; the chosen action's probability is recorded;
7. **holdout**: a salted hash of the customer id puts a fixed share in the control group;
8. **decision record**: every decision (fallbacks included) with its candidates, scores, rule
   removals, propensity and model and policy versions, committed with the contact in one
   transaction so concurrent calls cannot break a cap.

Arbitration is written once over arrays (customers × actions): a real-time decision is the
one-row case of the batch path, so both choose the same action for the same features.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.catalog import FeatureSpec, Phrase
from features.reasons import CALENDAR_SPECS, choose_reasons, new_customer_values, say
from serving.actions import Action, ActionsCatalog
from serving.config import ServingSettings, TargetGroupSettings
from serving.consent import consent_of_customer, consent_of_frame, consent_reason
from serving.features import (
    CustomerFeatures,
    FeatureStoreDownError,
    FeatureTimeoutError,
    OnlineFeatures,
)
from serving.models import LoadedModel, ModelSet
from serving.rules import p_next_name
from serving.state import (
    STORE_ERRORS,
    Candidate,
    ChannelCap,
    ContactPolicy,
    DecisionRecord,
    DuplicateRequestError,
    RequestKey,
    StateStore,
)
from training.bundle import CALENDAR_FEATURES, ModelBundle, NextEventScorer, calendar_values

logger = logging.getLogger(__name__)

NO_ACTION = "none"


# -- request and answer ------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionContext:
    """What the caller knows about the moment of the decision."""

    channel: str | None = None
    event_type: str | None = None
    page: str | None = None
    at: datetime | None = None

    def env(self, now: datetime) -> dict[str, Any]:
        return {
            "context.channel": self.channel,
            "context.event_type": self.event_type,
            "context.page": self.page,
            "context.hour": now.hour,
            "context.weekday": now.weekday(),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "event_type": self.event_type,
            "page": self.page,
            "at": None if self.at is None else self.at.isoformat(),
        }


@dataclass(frozen=True)
class Reason:
    """One plain-language reason with the feature and its signed contribution (log-odds)."""

    feature: str
    text: str
    contribution: float


@dataclass(frozen=True)
class Scores:
    """The model scores of one customer."""

    churn_risk: float
    risk_band: str
    conversion_propensity: float
    next_steps: list[tuple[str, float]]
    uplift: dict[str, dict[str, float]]  # action -> outcome -> effect (probability points)
    reasons: list[Reason]
    conversion_reasons: list[Reason]
    # the next step after the customer's latest event (the next_event model): the top classes,
    # every class's probability, and the probability that the session ends unconverted
    next_event: list[tuple[str, float]] = field(default_factory=list)
    p_next: dict[str, float] = field(default_factory=dict)
    p_abandon: float | None = None


@dataclass
class CandidateOutcome:
    """An action as the engine saw it: its scores, and what removed it, if anything."""

    action: str
    channel: str | None
    priority: float | None = None
    basis: str | None = None  # "uplift" or "propensity"
    expected_value: float | None = None
    removed_by: str | None = None  # eligibility | applicability | suitability | contact_policy
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class Decision:
    """The engine's answer."""

    decision_id: str
    customer_id: str
    decided_at: datetime
    action: str
    channel: str | None
    propensity: float
    ranked: list[CandidateOutcome]
    removed: list[CandidateOutcome]
    scores: Scores | None
    why: str
    holdout: bool = False
    explored: bool = False
    cold_start: bool = False
    fallback_reason: str | None = None
    logged: bool = True
    model_versions: dict[str, str] = field(default_factory=dict)
    policy_version: str = ""
    mode: str = "decide"  # "preview": logged as a preview, no contact recorded
    request_id: str | None = None
    replayed: bool = False  # the answer first given to this request id


class RequestConflictError(ValueError):
    """A request id already used for another customer or mode (nothing was written)."""


def decision_json(d: Decision) -> str:
    """A decision as JSON text that :func:`decision_from_json` reads back unchanged (the
    answer kept for a request id)."""
    return json.dumps(asdict(d), default=_json_default, separators=(",", ":"))


def decision_from_json(text: str) -> Decision:
    """The decision :func:`decision_json` wrote."""
    raw = json.loads(text)
    scores = raw.pop("scores")
    if scores is not None:
        scores = Scores(
            **{
                **scores,
                "next_steps": [(str(k), float(p)) for k, p in scores["next_steps"]],
                "next_event": [(str(k), float(p)) for k, p in scores.get("next_event", [])],
                "p_next": {str(k): float(p) for k, p in scores.get("p_next", {}).items()},
                "reasons": [Reason(**r) for r in scores["reasons"]],
                "conversion_reasons": [Reason(**r) for r in scores["conversion_reasons"]],
            }
        )
    return Decision(
        **{
            **raw,
            "decided_at": datetime.fromisoformat(raw["decided_at"]),
            "ranked": [CandidateOutcome(**o) for o in raw["ranked"]],
            "removed": [CandidateOutcome(**o) for o in raw["removed"]],
            "scores": scores,
        }
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


# -- arbitration (shared by the real-time and the batch path) ------------------------------


@dataclass(frozen=True)
class ActionMatrix:
    """Per-customer × per-action inputs of arbitration."""

    p_convert: np.ndarray  # (n,)
    p_churn: np.ndarray  # (n,)
    effect_convert: np.ndarray | None  # (n, k) probability points, or None (no uplift model)
    effect_churn: np.ndarray | None
    weights: np.ndarray  # (n, k) context weights
    eligible: np.ndarray  # (n, k) passed every rule and the contact policy


def priorities(
    actions: Sequence[Action], m: ActionMatrix, uplift_known: Sequence[bool], mode: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Priority and expected value per customer and action (-inf where not eligible).

    ``mode``: ``uplift`` (expected incremental value), ``propensity``, or ``auto`` (uplift for
    the actions the uplift model knows, propensity for the others).
    """
    n, k = m.eligible.shape
    prio = np.full((n, k), -np.inf)
    value = np.zeros((n, k))
    bases = []
    for j, action in enumerate(actions):
        use_uplift = mode != "propensity" and uplift_known[j] and m.effect_convert is not None
        if mode == "uplift" and not use_uplift:
            bases.append("none")
            continue
        if use_uplift:
            assert m.effect_convert is not None and m.effect_churn is not None
            gain = (
                m.effect_convert[:, j] if action.objective == "convert" else -m.effect_churn[:, j]
            )
            bases.append("uplift")
        else:
            gain = m.p_convert if action.objective == "convert" else m.p_churn
            bases.append("propensity")
        v = gain * action.value * action.lever * m.weights[:, j]
        value[:, j] = v
        prio[:, j] = np.where(m.eligible[:, j], v - action.cost, -np.inf)
    return prio, value, bases


NET_PREFIX = "net__"
"""Column prefix of :meth:`DecisionEngine.decide_frame`'s per-action net values."""


def best_uplift(
    actions: Sequence[Action],
    effect_convert: np.ndarray | None,
    effect_churn: np.ndarray | None,
    known: Sequence[bool],
    eligible: np.ndarray,
) -> np.ndarray:
    """Per customer, the largest effect (probability points on the action's own objective:
    conversion gained, or churn avoided) among the eligible actions the uplift model knows;
    among every known action when none of them is eligible (what an action could do); NaN
    without an uplift model. The target group (:func:`target_groups`) reads it."""
    n = eligible.shape[0]
    if effect_convert is None or effect_churn is None or not any(known):
        return np.full(n, np.nan)
    gain = np.full(eligible.shape, np.nan)
    for j, action in enumerate(actions):
        if known[j]:
            gain[:, j] = (
                effect_convert[:, j] if action.objective == "convert" else -effect_churn[:, j]
            )
    usable = np.where(eligible, gain, np.nan)
    some = ~np.isnan(usable).all(axis=1)
    out = np.full(n, np.nan)
    with np.errstate(all="ignore"):
        out[some] = np.nanmax(usable[some], axis=1)
        out[~some] = np.nanmax(gain[~some], axis=1)
    return out


PERSUADABLE, SURE_THING, LOST_CAUSE, DO_NOT_DISTURB = (
    "persuadable",
    "sure thing",
    "lost cause",
    "do not disturb",
)
NO_UPLIFT_GROUP = "unknown (no uplift model)"


def target_groups(
    uplift: np.ndarray, risk: np.ndarray, settings: TargetGroupSettings
) -> np.ndarray:
    """The classic uplift quadrants from the best action's effect and the churn risk.

    * persuadable: an action gains at least ``persuadable_uplift`` (probability points);
    * do not disturb: every action the model knows loses at least ``-do_not_disturb_uplift``
      (contact would make things worse);
    * otherwise nothing changes much: a lost cause at churn risk ``lost_cause_risk`` or more,
      a sure thing below it.

    Without an uplift estimate (no uplift model, or no action it knows):
    :data:`NO_UPLIFT_GROUP`.
    """
    uplift = np.asarray(uplift, dtype=float)
    risk = np.asarray(risk, dtype=float)
    out = np.where(risk >= settings.lost_cause_risk, LOST_CAUSE, SURE_THING).astype(object)
    out[uplift >= settings.persuadable_uplift] = PERSUADABLE
    out[uplift <= settings.do_not_disturb_uplift] = DO_NOT_DISTURB
    out[np.isnan(uplift)] = NO_UPLIFT_GROUP
    return out


def contact_policy(catalog: ActionsCatalog) -> ContactPolicy:
    """The catalog's contact policy as the state store enforces it."""
    cp = catalog.contact_policy
    return ContactPolicy(
        caps=tuple(ChannelCap(c.channel, c.max, c.window_days) for c in cp.caps),
        cooldown_hours=cp.cooldown_hours,
        suppress_after_ignored=cp.suppress_after_ignored,
        suppress_days=cp.suppress_days,
    )


def context_weight(action: Action, context: Mapping[str, str | None]) -> float:
    """The product of the action's weights for the request's context values (1 if none)."""
    weight = 1.0
    for key, table in action.context_weights.items():
        value = context.get(key)
        if value is not None:
            weight *= float(table.get(value, 1.0))
    return weight


def holdout_flag(customer_id: str, share: float, salt: str) -> bool:
    """Deterministic: the same customer is always in or out of the control group."""
    if share <= 0.0:
        return False
    digest = hashlib.sha256(f"{salt}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < share


def hashed_id(customer_id: str) -> str:
    """What logs show instead of a customer id."""
    return hashlib.sha256(customer_id.encode()).hexdigest()[:12]


# -- the engine ----------------------------------------------------------------------------


class DecisionEngine:
    """Scores and decides for customers; see the module docstring for the steps."""

    def __init__(
        self,
        settings: ServingSettings,
        catalog: ActionsCatalog,
        models: ModelSet,
        features: OnlineFeatures | None,
        state: StateStore,
        descriptions: Mapping[str, str],
        rng: random.Random | None = None,
        clock: Callable[[], datetime] | None = None,
        specs: Mapping[str, FeatureSpec] | None = None,
    ):
        self.settings = settings
        # "now" when a request gives no time: the data's clock (journeyml.clock) on a log that
        # ends in the past, else the wall clock
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.catalog = catalog
        self.models = models
        self.features = features
        self.state = state
        self.descriptions = {**descriptions, **CALENDAR_FEATURES}
        # how reasons say each feature (features.reasons.say): the catalog's, else a plain one
        self.specs: dict[str, FeatureSpec] = {
            **{n: generic_spec(n, d) for n, d in self.descriptions.items()},
            **CALENDAR_SPECS,
            **(specs or {}),
        }
        self.new_customer = new_customer_values(specs or {})
        self._welcome = [a for a in catalog.welcome if a in catalog.ids]
        self.rng = rng or random.SystemRandom()
        self.actions: list[Action] = list(catalog.actions)
        self._stages = [catalog.rule_stages(a) for a in self.actions]
        self._candidates = [Candidate(a.id, a.channel) for a in self.actions]
        self._marketing = np.array([a.marketing for a in self.actions], dtype=bool)
        self.policy = contact_policy(catalog)
        # every p_next['...'] a rule of the catalog reads (missing unless the model has it)
        self.p_next_names = sorted(
            {n for stage in self._stages for _, rule in stage for n in rule.names
             if n.startswith("p_next[")}
        )  # fmt: skip
        self.observe_stage: Callable[[str, float], None] | None = None  # (stage, seconds)
        # customers -> the sequence features of each one's latest event (set by the runtime
        # from the freshest events it has: the lake plus the events received online)
        self.sequence_rows: (
            Callable[[Sequence[str], Mapping[str, Any]], dict[str, dict[str, Any]]] | None
        ) = None

    def _stage(self, name: str, since: float) -> None:
        if self.observe_stage is not None:
            self.observe_stage(name, time.perf_counter() - since)

    # -- scores ----------------------------------------------------------------------------

    def _model_row(
        self,
        loaded: LoadedModel,
        values: Mapping[str, Any],
        now: datetime,
        rows: dict[Hashable, np.ndarray],
    ) -> np.ndarray:
        """The model's input row; models that encode alike (the churn and conversion models
        read the same feature service) share one encoding per decision through ``rows``."""
        bundle = loaded.bundle
        key = bundle.encoding_key
        if key not in rows:
            cal = bundle.calendar_features
            row = {**values, **calendar_values(cal, now)} if cal else values
            rows[key] = bundle.encode_rows([row])
        return rows[key]

    def _reasons(
        self, loaded: LoadedModel, x: np.ndarray, contributions: np.ndarray,
        values: Mapping[str, Any], outcome: str,
    ) -> list[Reason]:  # fmt: skip
        names = loaded.bundle.features
        contrib = contributions[:1, : len(names)]
        out = []
        families = [self.spec(n).family for n in names]
        for j in choose_reasons(contrib, families, self.settings.reasons_top_k)[0]:
            if j < 0:
                break
            name = names[j]
            value = values[name] if name in values else x[0, j]
            text = say(self.spec(name), value, values)
            out.append(Reason(name, text, float(contrib[0, j])))
        return out

    def spec(self, name: str) -> FeatureSpec:
        """How reasons say the feature ``name``."""
        return self.specs.get(name) or generic_spec(name, name.replace("_", " "))

    def next_event_inputs(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The sequence features of each customer's latest event, for the loaded next_event
        model (empty without the model or a source of events; a failure is logged, never
        raised: the decision goes on without the next step)."""
        loaded = self.models.models.get("next_event")
        if loaded is None or self.sequence_rows is None or not customer_ids:
            return {}
        try:
            return self.sequence_rows(customer_ids, loaded.bundle.manifest["sequence"])
        except Exception:
            logger.exception("next step inputs unavailable")
            return {}

    def next_event_scores(
        self, values: Mapping[str, Any], sequence: Mapping[str, Any] | None
    ) -> tuple[list[tuple[str, float]], dict[str, float], float | None]:
        """``(top classes, every class's probability, p_abandon)`` of one customer."""
        loaded = self.models.models.get("next_event")
        if loaded is None or sequence is None:
            return [], {}, None
        scorer = NextEventScorer(loaded.bundle)
        proba, p_ab = scorer.predict([{**values, **sequence}])
        probs = proba[0]
        top = np.argsort(-probs, kind="stable")[: self.settings.next_steps_top_k]
        classes = scorer.classes
        return (
            [(classes[i], float(probs[i])) for i in top],
            {c: float(p) for c, p in zip(classes, probs, strict=True)},
            None if p_ab is None else float(p_ab[0]),
        )

    def score(
        self, values: Mapping[str, Any], now: datetime, sequence: Mapping[str, Any] | None = None
    ) -> Scores:
        """Every model's score for one customer's features (raises if a required model fails);
        ``sequence``: the sequence features of the customer's latest event, for next_event."""
        models = self.models.models
        churn, conversion = models["churn"], models["conversion"]
        rows: dict[Hashable, np.ndarray] = {}
        xc = self._model_row(churn, values, now, rows)
        p_churn, c_churn = churn.bundle.predict_proba_explained(xc)
        xv = self._model_row(conversion, values, now, rows)
        p_conv, c_conv = conversion.bundle.predict_proba_explained(xv)
        risk, conv = float(p_churn[0]), float(p_conv[0])
        steps: list[tuple[str, float]] = []
        if "next_step" in models:
            ns = models["next_step"]
            probs = ns.bundle.predict_proba_matrix(self._model_row(ns, values, now, rows))[0]
            top = np.argsort(-probs)[: self.settings.next_steps_top_k]
            steps = [(ns.bundle.classes[i], float(probs[i])) for i in top]
        uplift: dict[str, dict[str, float]] = {}
        if "uplift" in models:
            up = models["uplift"]
            effects = up.bundle.predict_effects_matrix(self._model_row(up, values, now, rows))
            for j, action in enumerate(up.bundle.actions):
                uplift[action] = {o: float(e[0, j]) for o, e in effects.items()}
        next_event, p_next, p_abandon = self.next_event_scores(values, sequence)
        return Scores(
            churn_risk=risk,
            risk_band=self.settings.risk_band(risk),
            conversion_propensity=conv,
            next_steps=steps,
            uplift=uplift,
            reasons=self._reasons(churn, xc, c_churn, values, "churn risk"),
            conversion_reasons=self._reasons(
                conversion, xv, c_conv, values, "conversion propensity"
            ),
            next_event=next_event,
            p_next=p_next,
            p_abandon=p_abandon,
        )

    # -- one decision ----------------------------------------------------------------------

    def read_features(self, customer_id: str, now: datetime) -> CustomerFeatures:
        if self.features is None:
            raise FeatureStoreDownError("no online store configured")
        return self.features.read([customer_id], now, self.settings.deadline_ms)[0]

    def decide(
        self,
        customer_id: str,
        context: DecisionContext | None = None,
        *,
        mode: str = "decide",
        request: RequestKey | None = None,
    ) -> Decision:
        """Decides for one customer. Never raises for a store or model failure: the answer
        then carries the default action and a ``fallback_reason``.

        The decision time is ``context.at`` (default: the service's clock) but never later
        than the wall clock: a caller's clock a little ahead (the request bounds allow
        minutes of skew) cannot record a contact in the future, where it would escape the
        caps' windows of the decisions made now.

        Args:
            mode: ``decide`` (the contact is recorded) or ``preview`` (logged as a preview,
                no contact: caps and cooldowns do not count it).
            request: the caller's idempotency key: a call with a key already stored gets the
                first answer (``replayed``), and nothing is written.

        Raises:
            RequestConflictError: the request key was used for another customer or mode.
        """
        context = context or DecisionContext()
        if context.at is None:
            now = self.clock().astimezone(UTC)
        else:  # never after the wall clock
            now = min(context.at.astimezone(UTC), datetime.now(UTC))
        if mode not in ("decide", "preview"):
            raise ValueError(f"mode {mode!r}: decide or preview")
        if request is not None:
            replay = self._replay(customer_id, mode, request, missing_ok=True)
            if replay is not None:
                return replay
        started = time.perf_counter()
        versions = self.models.versions()
        fallback: str | None = None
        cold_start = False
        scores: Scores | None = None
        values: dict[str, Any] = {}
        since = time.perf_counter()
        try:
            feats = self.read_features(customer_id, now)
            values = feats.values
            cold_start = not feats.found
        except FeatureTimeoutError as exc:
            logger.warning("online features late: %s", exc)
            fallback = "feature_store_timeout"
        except FeatureStoreDownError as exc:  # the store's own errors only; a bug propagates
            logger.warning("online features unavailable: %s", exc)
            fallback = "feature_store_unavailable"
        self._stage("features", since)
        if fallback is None and not cold_start:
            missing = [r for r in self.settings.models.required if r not in self.models.models]
            if missing:
                fallback = f"model_unavailable:{missing[0]}"
            else:
                since = time.perf_counter()
                try:
                    sequence = self.next_event_inputs([customer_id]).get(customer_id)
                    scores = self.score(values, now, sequence)
                except Exception:
                    logger.exception("scoring failed, answering with the default action")
                    fallback = "model_error"
                self._stage("scores", since)
        try:
            if fallback is not None:
                decision = self._fallback(
                    customer_id, context, now, fallback, versions, mode, request
                )
            else:
                decision = self._decide(
                    customer_id, context, now, values, scores, versions, cold_start, mode,
                    request,
                )  # fmt: skip
        except DuplicateRequestError:  # a concurrent call with the key was stored first
            assert request is not None
            replay = self._replay(customer_id, mode, request, missing_ok=False)
            assert replay is not None  # missing_ok=False: found or raised
            decision = replay
        logger.debug(
            "decision %s for %s: %s in %.2f ms",
            decision.decision_id,
            hashed_id(customer_id),
            decision.action,
            (time.perf_counter() - started) * 1000,
        )
        return decision

    def _replay(
        self, customer_id: str, mode: str, request: RequestKey, *, missing_ok: bool
    ) -> Decision | None:
        """The answer first given to ``request``, or None when the key is not stored."""
        try:
            stored = self.state.find_request(request)
        except STORE_ERRORS as exc:  # the store is down: the decision itself will fall back
            if not missing_ok:
                raise
            logger.warning("request ids unreadable, state store unavailable: %s", _first_line(exc))
            return None
        if stored is None:
            if missing_ok:
                return None
            raise RequestConflictError("request_id: in use by a call that has not finished")
        if stored.customer_id != customer_id:
            raise RequestConflictError("request_id: already used for another customer_id")
        if stored.mode != mode:
            raise RequestConflictError(f"request_id: already used with mode {stored.mode!r}")
        return replace(decision_from_json(stored.answer), replayed=True)

    def _env(
        self, values: Mapping[str, Any], scores: Scores | None, ctx: DecisionContext, now: datetime
    ) -> dict[str, Any]:
        env: dict[str, Any] = dict(values)
        for name in self.descriptions:
            env.setdefault(name, None)
        env.update(calendar_values(list(CALENDAR_FEATURES), now))
        env.update(ctx.env(now))
        env.update(
            churn_risk=None,
            conversion_propensity=None,
            next_step=None,
            next_step_probability=None,
            uplift_convert=None,
            uplift_churn=None,
            p_abandon=None,
        )
        for name in self.p_next_names:
            env[name] = None
        if scores is not None:
            env.update(
                churn_risk=scores.churn_risk,
                conversion_propensity=scores.conversion_propensity,
                next_step=scores.next_steps[0][0] if scores.next_steps else None,
                next_step_probability=scores.next_steps[0][1] if scores.next_steps else None,
                p_abandon=scores.p_abandon,
            )
            for cls, p in scores.p_next.items():
                env[p_next_name(cls)] = p
        return env

    def _decide(
        self,
        customer_id: str,
        ctx: DecisionContext,
        now: datetime,
        values: Mapping[str, Any],
        scores: Scores | None,
        versions: dict[str, str],
        cold_start: bool = False,
        mode: str = "decide",
        request: RequestKey | None = None,
    ) -> Decision:
        welcome = cold_start and bool(self._welcome)
        # a customer without history: the rules read what a new customer's features read
        if cold_start:  # an unknown customer's online read has no values (or only nulls)
            known = {k: v for k, v in values.items() if v is not None}
            env = self._env({**self.new_customer, **known}, scores, ctx, now)
        else:
            env = self._env(values, scores, ctx, now)
        k = len(self.actions)
        outcomes = [CandidateOutcome(a.id, a.channel) for a in self.actions]
        eligible = np.ones(k, dtype=bool)
        status, contactable = consent_of_customer(env, self.catalog.consent)
        for j, stages in enumerate(self._stages):
            if self._marketing[j] and not contactable:  # consent first: it is eligibility
                eligible[j] = False
                outcomes[j].removed_by = "eligibility"
                outcomes[j].reason = consent_reason(status, self.catalog.consent)
                continue
            action_env = env
            if scores is not None and self.actions[j].id in scores.uplift:
                effects = scores.uplift[self.actions[j].id]
                action_env = {
                    **env,
                    "uplift_convert": effects.get("convert"),
                    "uplift_churn": effects.get("churn"),
                }
            for stage, rule in stages:
                if not rule.evaluate(action_env):
                    eligible[j] = False
                    outcomes[j].removed_by = stage
                    outcomes[j].reason = rule.explain(action_env)
                    break
            if welcome and eligible[j] and self.actions[j].id not in self._welcome:
                eligible[j] = False
                outcomes[j].removed_by = "eligibility"
                outcomes[j].reason = "a customer without history gets the welcome path"
        live = [self._candidates[j] for j in range(k) if eligible[j]]
        holdout = holdout_flag(customer_id, self.settings.holdout.share, self.settings.holdout.salt)
        decision_id = uuid.uuid4().hex
        picked: dict[str, Any] = {}

        def choose(blocked: dict[str, str]) -> tuple[DecisionRecord, Candidate | None]:
            """Ranks and picks once the contact history is read (under the customer's lock)."""
            try:
                ranked = self._rank(outcomes, eligible, scores, ctx, blocked)
                if welcome:  # the welcome path's order, not the prior's values
                    order = {a: i for i, a in enumerate(self._welcome)}
                    ranked = [
                        *sorted(
                            (o for o in ranked if o.action in order), key=lambda o: order[o.action]
                        ),
                        _no_action(),
                    ]
                chosen, propensity, explored = self._choose(ranked)
                if holdout:
                    chosen = next(o for o in ranked if o.action == NO_ACTION)
                    propensity = 1.0
                record = self._record(
                    decision_id, customer_id, ctx, now, chosen, propensity, holdout, explored,
                    None, outcomes, values, versions, scores, mode,
                )  # fmt: skip
            except Exception as exc:  # the engine's own error, not the store's: raised
                picked["error"] = exc
                raise
            picked["decision"] = Decision(
                decision_id=decision_id,
                customer_id=customer_id,
                decided_at=now,
                action=chosen.action,
                channel=chosen.channel,
                propensity=propensity,
                ranked=ranked,
                removed=[o for j, o in enumerate(outcomes) if not eligible[j]],
                scores=scores,
                why=self._welcome_text(chosen, outcomes, ranked)
                if cold_start and not holdout and not explored
                else why_text(chosen, ranked, holdout, explored),
                holdout=holdout,
                explored=explored,
                cold_start=cold_start,
                model_versions=versions,
                policy_version=self.catalog.version,
                mode=mode,
                request_id=None if request is None else request.request_id,
            )
            contact = None
            if chosen.action != NO_ACTION and mode != "preview":
                contact = Candidate(chosen.action, chosen.channel or "")
            return record, contact

        since = time.perf_counter()
        try:
            self.state.settle(
                customer_id, live, self.policy, now, choose, request,
                lambda _: decision_json(picked["decision"]),
            )  # fmt: skip
            self._stage("policy", since)
        except DuplicateRequestError:
            raise
        except STORE_ERRORS as exc:
            if picked.get("error") is exc:
                raise
            logger.warning("state store unavailable: %s", _first_line(exc))
            return self._fallback(
                customer_id, ctx, now, "state_store_unavailable", versions, mode, request
            )
        decision: Decision = picked["decision"]
        return decision

    def _welcome_text(
        self,
        chosen: CandidateOutcome,
        outcomes: list[CandidateOutcome],
        ranked: list[CandidateOutcome],
    ) -> str:
        """Why a customer without history got the welcome path, or not."""
        new = "new customer, no history yet"
        if not self._welcome:  # no path: arbitration on the prior, as for anyone
            return f"{new}, no welcome path in the catalog; {why_text(chosen, ranked)}"
        if chosen.action != NO_ACTION:
            rules = [r.text for _, r in self.catalog.rule_stages(chosen.action)]
            passed = f"its rules passed: {'; '.join(rules)}" if rules else "it has no rules"
            return f"{new}: {chosen.action}, the welcome path; {passed}"
        stops = "; ".join(
            f"{o.action}: {o.removed_by} rule {o.reason}" if o.reason else
            f"{o.action}: {o.removed_by}"
            for o in outcomes
            if o.action in self._welcome and o.removed_by
        )  # fmt: skip
        return f"{new}: no welcome action is eligible{f' ({stops})' if stops else ''}"

    def _rank(
        self,
        outcomes: list[CandidateOutcome],
        eligible: np.ndarray,
        scores: Scores | None,
        ctx: DecisionContext,
        blocked: Mapping[str, str],
    ) -> list[CandidateOutcome]:
        """Removes what the contact policy blocks, prices the rest and ranks them, "no action"
        included (``eligible`` and ``outcomes`` are updated with every removal)."""
        for j, a in enumerate(self.actions):
            if eligible[j] and a.id in blocked:
                eligible[j] = False
                outcomes[j].removed_by = "contact_policy"
                outcomes[j].reason = blocked[a.id]
        matrix = self._matrix(scores, ctx, eligible[None, :])
        known = self._uplift_known(scores)
        prio, value, bases = priorities(self.actions, matrix, known, self._mode(scores))
        for j in range(len(self.actions)):
            outcomes[j].basis = bases[j]
            outcomes[j].expected_value = float(value[0, j])
            if eligible[j] and math.isfinite(prio[0, j]):
                outcomes[j].priority = float(prio[0, j])
            elif eligible[j]:
                eligible[j] = False
                outcomes[j].removed_by = "arbitration"
                outcomes[j].reason = "no uplift estimate for this action"
        return sorted(
            [o for j, o in enumerate(outcomes) if eligible[j]] + [_no_action()],
            key=lambda o: (-(o.priority or 0.0), o.action != NO_ACTION),
        )

    def _mode(self, scores: Scores | None) -> str:
        mode = self.settings.arbitration
        if mode == "auto":
            return "auto" if scores is not None and scores.uplift else "propensity"
        return mode

    def _uplift_known(self, scores: Scores | None) -> list[bool]:
        return [scores is not None and a.id in scores.uplift for a in self.actions]

    def _matrix(
        self, scores: Scores | None, ctx: DecisionContext, eligible: np.ndarray
    ) -> ActionMatrix:
        k = len(self.actions)
        if scores is None:  # cold start: no model scores, a prior propensity
            p = self.settings.cold_start_propensity
            pc, pr = np.array([p]), np.array([p])
        else:
            pc, pr = np.array([scores.conversion_propensity]), np.array([scores.churn_risk])
        ec = er = None
        if scores is not None and scores.uplift:
            ec = np.array([[scores.uplift.get(a.id, {}).get("convert", 0.0) for a in self.actions]])
            er = np.array([[scores.uplift.get(a.id, {}).get("churn", 0.0) for a in self.actions]])
        ctx_values = {"channel": ctx.channel, "event_type": ctx.event_type, "page": ctx.page}
        weights = np.array([[context_weight(a, ctx_values) for a in self.actions]])
        return ActionMatrix(pc, pr, ec, er, weights.reshape(1, k), eligible)

    def _choose(self, ranked: list[CandidateOutcome]) -> tuple[CandidateOutcome, float, bool]:
        best = ranked[0]
        ex = self.settings.exploration
        if ex.method != "epsilon" or ex.epsilon <= 0 or len(ranked) == 1:
            return best, 1.0, False
        share = ex.epsilon / len(ranked)
        if self.rng.random() < ex.epsilon:
            pick = ranked[self.rng.randrange(len(ranked))]
            return pick, share + (1.0 - ex.epsilon if pick is best else 0.0), pick is not best
        return best, 1.0 - ex.epsilon + share, False

    def _record(
        self,
        decision_id: str,
        customer_id: str,
        ctx: DecisionContext,
        now: datetime,
        chosen: CandidateOutcome,
        propensity: float,
        holdout: bool,
        explored: bool,
        fallback: str | None,
        outcomes: list[CandidateOutcome],
        values: Mapping[str, Any],
        versions: dict[str, str],
        scores: Scores | None,
        mode: str = "decide",
    ) -> DecisionRecord:
        candidates = [o.as_dict() for o in outcomes]
        if scores is not None:
            for c in candidates:
                c["uplift"] = scores.uplift.get(c["action"])
        request = ctx.as_dict()
        if scores is not None:
            request["scores"] = {
                "churn_risk": scores.churn_risk,
                "conversion_propensity": scores.conversion_propensity,
                "next_steps": scores.next_steps,
            }
        return DecisionRecord(
            decision_id=decision_id,
            decided_at=now,
            customer_id=customer_id,
            request=request,
            chosen_action=chosen.action,
            propensity=propensity,
            channel=chosen.channel,
            holdout=holdout,
            explored=explored,
            fallback_reason=fallback,
            candidates=candidates,
            features=dict(values) or None,  # made JSON by the state store (NaN → null)
            feature_version=None,
            model_versions=versions,
            policy_version=self.catalog.version,
            mode=mode,
        )

    def _fallback(
        self,
        customer_id: str,
        ctx: DecisionContext,
        now: datetime,
        reason: str,
        versions: dict[str, str],
        mode: str = "decide",
        request: RequestKey | None = None,
    ) -> Decision:
        """The configured default action, flagged; logged when the state store answers.

        The default gives way to no action when the contact policy blocks it (a preview
        checks the policy too, and records no contact)."""
        default = self.catalog.default_action
        action = self.catalog.action(default) if default != NO_ACTION else None
        if action is not None and action.marketing:
            # no features were read, so consent is unknown: the consent rule decides
            _, contactable = consent_of_customer({}, self.catalog.consent)
            if not contactable:
                default, action = NO_ACTION, None
        chosen = CandidateOutcome(default, action.channel if action else None, 0.0, "default")
        none = CandidateOutcome(NO_ACTION, None, 0.0, "default")
        decision_id = uuid.uuid4().hex

        def decision_of(chosen: CandidateOutcome, logged: bool) -> Decision:
            return Decision(
                decision_id=decision_id,
                customer_id=customer_id,
                decided_at=now,
                action=chosen.action,
                channel=chosen.channel,
                propensity=1.0,
                ranked=[chosen],
                removed=[],
                scores=None,
                why=f"default action ({reason.replace('_', ' ')})",
                fallback_reason=reason,
                logged=logged,
                model_versions=versions,
                policy_version=self.catalog.version,
                mode=mode,
                request_id=None if request is None else request.request_id,
            )

        contact = Candidate(action.id, action.channel) if action is not None else None
        picked = {"chosen": chosen}

        def choose(blocked: dict[str, str]) -> tuple[DecisionRecord, Candidate | None]:
            pick = none if contact is not None and contact.action_id in blocked else chosen
            picked["chosen"] = pick
            record = self._record(
                decision_id, customer_id, ctx, now, pick, 1.0, False, False, reason, [], {},
                versions, None, mode,
            )  # fmt: skip
            send = contact if pick is chosen and mode != "preview" else None
            return record, send

        try:
            self.state.settle(
                customer_id, [contact] if contact is not None else [], self.policy, now, choose,
                request, lambda _: decision_json(decision_of(picked["chosen"], True)),
            )  # fmt: skip
        except DuplicateRequestError:
            raise
        except STORE_ERRORS as exc:
            logger.warning("decision not logged, state store unavailable: %s", _first_line(exc))
            # cannot check the contact policy: send nothing
            return decision_of(none if contact is not None else chosen, False)
        return decision_of(picked["chosen"], True)

    # -- batch -----------------------------------------------------------------------------

    def decide_frame(
        self,
        frame: pd.DataFrame,
        now: datetime,
        context: DecisionContext | None = None,
        reasons: int = 0,
    ) -> pd.DataFrame:
        """The batch path: decisions for a frame of customers' features (no state writes).

        The same scores, rules (vectorised) and arbitration as :meth:`decide`; the contact
        policy comes from the caller (``blocked`` columns ``blocked__<action>``). Returns one
        row per customer: scores, the chosen action, its priority and the runner-up; with
        ``reasons``, also that many churn reasons in plain words (``reason_1``, ...), as
        :meth:`decide` gives them.
        """
        context = context or DecisionContext()
        models = self.models.models
        n, k = len(frame), len(self.actions)
        encoded: dict[Hashable, np.ndarray] = {}  # models that encode alike share one matrix

        def matrix(bundle: ModelBundle) -> np.ndarray:
            if bundle.encoding_key not in encoded:
                encoded[bundle.encoding_key] = bundle.encode(frame, as_of=now)
            return encoded[bundle.encoding_key]

        churn_bundle = models["churn"].bundle
        churn, contributions = churn_bundle.predict_proba_explained(matrix(churn_bundle))
        conv = models["conversion"].bundle.predict_proba_matrix(matrix(models["conversion"].bundle))
        out = pd.DataFrame({"churn_risk": churn, "conversion_propensity": conv}, index=frame.index)
        if reasons:
            texts = reason_texts(
                contributions, [self.spec(n) for n in churn_bundle.features], frame, reasons
            )
            for r, column in enumerate(texts, start=1):
                out[f"reason_{r}"] = column
        ec = er = None
        known = [False] * k
        if "uplift" in models:
            up = models["uplift"].bundle
            effects = up.predict_effects_matrix(matrix(up))
            col = {a: j for j, a in enumerate(up.actions)}
            ec, er = np.zeros((n, k)), np.zeros((n, k))
            for j, a in enumerate(self.actions):
                if a.id in col:
                    ec[:, j] = effects["convert"][:, col[a.id]]
                    er[:, j] = effects["churn"][:, col[a.id]]
                    known[j] = True
        steps: dict[str, Any] = {"next_step": None, "next_step_probability": np.nan}
        if "next_step" in models:
            ns = models["next_step"].bundle
            probs = ns.predict_proba_matrix(matrix(ns))
            top = probs.argmax(axis=1)
            steps = {
                "next_step": np.asarray(ns.classes, dtype=object)[top],
                "next_step_probability": probs[np.arange(n), top],
            }
        out["next_step"] = steps["next_step"]
        out["next_step_probability"] = steps["next_step_probability"]
        env = frame.assign(
            churn_risk=churn,
            conversion_propensity=conv,
            uplift_convert=np.nan,
            uplift_churn=np.nan,
            # the next step after an event is a real-time score: a list has none (rules on it
            # fail closed there)
            p_abandon=np.nan,
            **dict.fromkeys(self.p_next_names, np.nan),
            **steps,
            **calendar_values(list(CALENDAR_FEATURES), pd.Series([now] * n, index=frame.index)),
            **{name: value for name, value in context.env(now).items()},
        )
        eligible = np.ones((n, k), dtype=bool)
        consent = consent_of_frame(frame, self.catalog.consent)
        out["consent"] = consent.status
        eligible[:, self._marketing] &= consent.contactable[:, None]
        for j, stages in enumerate(self._stages):
            a_env = env
            if ec is not None and known[j]:
                assert er is not None
                a_env = env.assign(uplift_convert=ec[:, j], uplift_churn=er[:, j])
            for _, rule in stages:
                eligible[:, j] &= rule.evaluate_frame(a_env)
            blocked = f"blocked__{self.actions[j].id}"
            if blocked in frame.columns:
                eligible[:, j] &= ~frame[blocked].fillna(False).to_numpy(dtype=bool)
        ctx_values = {
            "channel": context.channel,
            "event_type": context.event_type,
            "page": context.page,
        }
        weights = np.tile([context_weight(a, ctx_values) for a in self.actions], (n, 1))
        mode = self.settings.arbitration
        if mode == "auto":
            mode = "auto" if ec is not None else "propensity"
        prio, value, bases = priorities(
            self.actions, ActionMatrix(conv, churn, ec, er, weights, eligible), known, mode
        )
        out.attrs["bases"] = bases  # per action: uplift or propensity (the reasons' words)
        out["uplift"] = best_uplift(self.actions, ec, er, known, eligible)
        for j, a in enumerate(self.actions):  # every eligible action's net value (capacity)
            out[f"{NET_PREFIX}{a.id}"] = np.where(np.isfinite(prio[:, j]), prio[:, j], np.nan)
        with_none = np.hstack([np.zeros((n, 1)), prio])
        # ties go to the earlier action in the catalog, "no action" loses ties (as in decide)
        order = np.argsort(-with_none[:, 1:], axis=1, kind="stable")
        best_action = order[:, 0]
        best_prio = prio[np.arange(n), best_action]
        choose = best_prio > 0.0
        ids = np.array([a.id for a in self.actions], dtype=object)
        out["action"] = np.where(choose, ids[best_action], NO_ACTION)
        out["priority"] = np.where(choose, best_prio, 0.0)
        out["expected_value"] = np.where(choose, value[np.arange(n), best_action], 0.0)
        return out


def _first_line(exc: BaseException) -> str:
    """An error's first line: drivers append the statement after it (never its parameters:
    the state store's engine hides them)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _no_action() -> CandidateOutcome:
    """The "no action" candidate every ranking ends with (priority 0)."""
    return CandidateOutcome(NO_ACTION, None, 0.0, "none", 0.0)


def _priced(o: CandidateOutcome) -> str:
    """An action with its arbitration figures: net value (expected value less cost)."""
    net = o.priority or 0.0
    gross = o.expected_value or 0.0
    what = "expected incremental value" if o.basis == "uplift" else "expected value"
    return f"{o.action} {net:.2f} ({gross:.2f} {what} − {gross - net:.2f} cost)"


def why_texts(actions: Sequence[Action], decided: pd.DataFrame, holdout: np.ndarray) -> list[str]:
    """:func:`why_text` for every row of :meth:`DecisionEngine.decide_frame`'s answer (the
    batch list's ``action_reason``), from its per-action net values."""
    bases = decided.attrs.get("bases") or ["propensity"] * len(actions)
    nets = np.column_stack([decided[f"{NET_PREFIX}{a.id}"].to_numpy(dtype=float) for a in actions])
    chosen_ids = decided["action"].to_numpy(dtype=object)
    costs = [a.cost for a in actions]
    out = []
    for i in range(len(decided)):
        row = nets[i]
        ranked = [
            CandidateOutcome(a.id, a.channel, float(row[j]), bases[j], float(row[j]) + costs[j])
            for j, a in enumerate(actions)
            if not np.isnan(row[j])
        ]
        ranked.sort(key=lambda o: -(o.priority or 0.0))  # stable: catalog order on ties
        chosen = next((o for o in ranked if o.action == chosen_ids[i]), _no_action())
        out.append(why_text(chosen, [*ranked, _no_action()], bool(holdout[i])))
    return out


def why_text(
    chosen: CandidateOutcome,
    ranked: Sequence[CandidateOutcome],
    holdout: bool = False,
    explored: bool = False,
) -> str:
    """Why the engine chose ``chosen``, in the words of its arbitration criterion and with its
    figures: the expected value net of cost (``priority``), which ranks the candidates; the
    endpoint and the batch list write it with this one function."""
    if holdout:
        return "control group (holdout): no action, to measure the policy's lift"
    actions = [o for o in ranked if o.action != NO_ACTION]
    others = [o for o in actions if o is not chosen][:2]
    rest = "; ".join(_priced(o) for o in others)
    if explored:
        best = actions[0] if actions else None
        was = f"; the best was {_priced(best)}" if best is not None and best is not chosen else ""
        return f"{chosen.action} chosen by exploration, to keep learning{was}"
    if chosen.action == NO_ACTION:
        if not actions:  # the decision's removed candidates say which rule removed each
            return (
                "no action: no action is eligible for this customer (its rules or the contact "
                "policy removed every one)"
            )
        return (
            "no action: every eligible action is expected to bring less than it costs; "
            f"best {_priced(actions[0])}"
        )
    lead = f"{_priced(chosen)}: the highest expected value net of cost"
    return f"{lead}; next: {rest}" if rest else f"{lead}, the only eligible action"


def reason_texts(
    contributions: np.ndarray, specs: Sequence[FeatureSpec], frame: pd.DataFrame, k: int = 3
) -> list[list[str | None]]:
    """The ``k`` features that raise the score most, per row, at most one per family, in plain
    words (None past the positive ones): :meth:`DecisionEngine._reasons` over a frame, for the
    batch path (the same :func:`features.reasons.choose_reasons` and
    :func:`features.reasons.say`)."""
    contrib = contributions[:, : len(specs)]
    n = len(contrib)
    k = min(k, contrib.shape[1])
    top = choose_reasons(contrib, [s.family for s in specs], k)
    columns = {
        int(j): frame[specs[j].name].to_numpy(dtype=object)
        for j in np.unique(top[top >= 0])
        if specs[j].name in frame.columns
    }
    tenure = frame["tenure_days"].to_numpy(dtype=object) if "tenure_days" in frame else None
    out: list[list[str | None]] = []
    for r in range(k):
        texts: list[str | None] = [None] * n
        for i in np.flatnonzero(top[:, r] >= 0):
            j = int(top[i, r])
            column = columns.get(j)
            value = column[i] if column is not None else None
            row = {"tenure_days": tenure[i]} if tenure is not None else None
            texts[i] = say(specs[j], value, row)
        out.append(texts)
    return out


def generic_spec(name: str, description: str) -> FeatureSpec:
    """A feature the catalog does not describe: its own family, its value after its words."""
    return FeatureSpec(name, description, "float64", "", "", family=name, phrase=Phrase("value"))
