"""Two replicas of the service on shared stores: two real ``journeyml serve`` processes on
their own ports, one Redis online store (the test's own ``redis-server``) and one PostgreSQL
state store (a database of the test's own, dropped at the end), as N replicas run behind a load
balancer (README, "Running several replicas").

Concurrent next-best-action calls for the same customers, spread over both replicas, must never
exceed a contact cap, and every decision answered must be logged exactly once; the same request
id sent to both replicas at once decides once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from serving.actions import load_actions
from serving.config import AuthSettings
from tests.reliability.conftest import RedisServer, Server, free_port, redis_workspace
from tests.services import require_postgres
from tests.serving.conftest import ServingWorkspace, serving_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CUSTOMERS = 8
CALLS_PER_CUSTOMER = 12  # per replica


@dataclass
class Replicas:
    servers: tuple[Server, Server]
    state: sa.Engine
    customers: list[str]
    caps: list[tuple[str, int]]


def _admin(sql: str) -> None:
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def replicas(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replicas]:
    require_postgres()
    tmp = tmp_path_factory.mktemp("replicas")
    database = f"jml_replicas_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {database}")
    red = RedisServer(free_port())
    servers: list[Server] = []
    state = sa.create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    try:
        red.start()
        ws, features_yaml, _, _ = redis_workspace(serving_ws, tmp / "ws", red.port)
        settings = serving_settings(
            serving_ws,
            tmp,
            data_dir=str(ws.root),
            features=str(features_yaml),
            state_url=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
            # a lock wait on a loaded 2-core machine is no fault here
            state_timeout_ms=10_000.0,
            deadline_ms=2_000.0,
            auth=AuthSettings(enabled=True, keys_env="JML_TEST_KEYS"),
            holdout={"share": 0.0, "salt": "x"},  # every customer may be contacted
        )
        servers = [Server(settings, ws.root), Server(settings, ws.root)]
        dirs = [tmp / "a", tmp / "b"]
        for d in dirs:
            d.mkdir()
        # start both at once (a cold start costs a minute or more here)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda pair: pair[0].start(pair[1]), zip(servers, dirs, strict=True)))
        assert servers[0].port != servers[1].port
        policy = load_actions(settings.actions).contact_policy
        caps = [(c.channel, c.max) for c in policy.caps]
        yield Replicas((servers[0], servers[1]), state, serving_ws.customers[:CUSTOMERS], caps)
    finally:
        for server in servers:
            server.stop()
        red.kill()
        state.dispose()
        _admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def _fire(calls: list[tuple[Server, dict[str, object]]]) -> list[httpx.Response]:
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda c: c[0].post("/v1/next-best-action", c[1], timeout=120), calls))


def test_concurrent_calls_on_two_replicas_keep_every_cap_and_log_each_decision_once(
    replicas: Replicas,
) -> None:
    a, b = replicas.servers
    customers = replicas.customers[:CUSTOMERS]  # the other test has the others
    calls: list[tuple[Server, dict[str, object]]] = [
        (server, {"customer_id": cid})
        for _ in range(CALLS_PER_CUSTOMER)
        for cid in customers
        for server in (a, b)
    ]
    responses = _fire(calls)
    codes = Counter(r.status_code for r in responses)
    assert codes[200] == len(calls), codes
    ids = [r.json()["decision_id"] for r in responses]
    assert len(set(ids)) == len(ids)
    with replicas.state.connect() as conn:
        logged = conn.execute(
            sa.text(
                "SELECT decision_id, customer_id FROM jml_decisions WHERE customer_id = ANY(:ids)"
            ),
            {"ids": customers},
        ).all()
        contacts = conn.execute(
            sa.text(
                "SELECT customer_id, channel, COUNT(*) FROM jml_contacts "
                "WHERE customer_id = ANY(:ids) GROUP BY customer_id, channel"
            ),
            {"ids": customers},
        ).all()
    # every answered decision logged, once, and nothing else
    assert Counter(d for d, _ in logged) == Counter(ids)
    per_customer: Counter[str] = Counter()
    for customer, channel, n in contacts:
        per_customer[customer] += n
        for cap_channel, cap in replicas.caps:
            if cap_channel == channel:
                assert n <= cap, f"{channel}: {n} contacts for one customer, cap {cap}"
    for cap_channel, cap in replicas.caps:
        if cap_channel == "any":
            assert max(per_customer.values()) <= cap
    # the caps did bind: far more decisions than contacts, and some customer at a cap
    assert 0 < sum(per_customer.values()) < len(calls) / 4
    any_cap = min(cap for ch, cap in replicas.caps if ch in ("any", "email", "app", "phone"))
    assert max(per_customer.values()) >= any_cap


def test_one_request_id_sent_to_both_replicas_decides_once(replicas: Replicas) -> None:
    a, b = replicas.servers
    keys = [(cid, f"dup-{uuid.uuid4().hex[:12]}") for cid in replicas.customers[CUSTOMERS:]]
    calls: list[tuple[Server, dict[str, object]]] = [
        (server, {"customer_id": cid, "request_id": key})
        for cid, key in keys
        for server in (a, b, a, b)
    ]
    responses = _fire(calls)
    by_key: dict[str, set[str]] = {}
    for (_, body), r in zip(calls, responses, strict=True):
        # a retry while the first call holds the key is told so (409); any other answer is
        # the first call's
        assert r.status_code in (200, 409), r.text
        if r.status_code == 200:
            by_key.setdefault(str(body["request_id"]), set()).add(r.json()["decision_id"])
    assert set(by_key) == {k for _, k in keys}
    assert all(len(d) == 1 for d in by_key.values()), by_key
    with replicas.state.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT r.request_id, COUNT(d.decision_id) FROM jml_requests AS r "
                "JOIN jml_decisions AS d ON d.decision_id = r.decision_id "
                "WHERE r.request_id = ANY(:keys) GROUP BY r.request_id"
            ),
            {"keys": [k for _, k in keys]},
        ).all()
    assert dict(stored) == {k: 1 for _, k in keys}
