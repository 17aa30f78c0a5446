"""The fault suite's fixtures: its own Redis server on a free loopback port, a workspace whose
online store is that Redis, and a real ``journeyml serve`` process on it.

Nothing here touches the machine's shared Redis or PostgreSQL: the suite starts, pauses and
kills only the processes it started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis
import yaml

from features.catalog import build_catalog
from features.online import load_latest_snapshot
from features.settings import FeatureSettings, OnlineStoreSettings, StoreSettings
from features.store import Workspace, apply_definitions, open_store
from journeyml.config import SIMULATOR_CONFIG_DIR, load_journey_map
from serving.auth import generate_key, hash_key
from serving.config import AuthSettings, ServingSettings
from tests.services import require_binary
from tests.serving.conftest import ServingWorkspace, serving_settings, serving_ws

__all__ = ["serving_ws"]

KEY = generate_key()
KEYS = json.dumps(
    [
        {
            "id": "all",
            "sha256": hash_key(KEY),
            "scopes": ["decide", "score", "write-events", "feedback"],
        }
    ]
)
H = {"x-api-key": KEY}
START_SECONDS = 300  # a cold BentoML start on the shared 2-core machine took 60-90 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """A ``redis-server`` of the test's own, without persistence."""

    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require_binary("redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Server:
    """A real ``journeyml serve`` process (BentoML, one worker) and the settings it runs on."""

    settings: ServingSettings
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, tmp: Path) -> None:
        config = tmp / "serving.yaml"
        config.write_text(yaml.safe_dump(self.settings.model_dump(mode="json")), encoding="utf-8")
        self.log = tmp / "server.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "journeyml"), "serve", "--config",
                 str(config), "--data-dir", str(self.data_dir), "--port", str(self.port)],
                env={**os.environ, "JML_TEST_KEYS": KEYS, "JOURNEYML_ACCESS_LOG": "0"},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.wait_ready(START_SECONDS)

    def wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready within {seconds} s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log else ""

    def worker(self) -> psutil.Process:
        """The BentoML worker process that serves the requests."""
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if "_bentoml_impl.worker.service" in " ".join(child.cmdline()):
                return child
        raise AssertionError("no BentoML worker process")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def post(self, route: str, body: Any, timeout: float = 30) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", json=body, headers=H, timeout=timeout)


@dataclass
class FaultRig:
    """The server under test, its Redis, and the workspace's customers."""

    server: Server
    redis: RedisServer
    customers: list[str]
    state_db: Path
    workspace: Workspace
    catalog: Any
    store_settings: StoreSettings


def redis_workspace(
    sw: ServingWorkspace, root: Path, port: int
) -> tuple[Workspace, Path, Any, StoreSettings]:
    """A workspace sharing the test workspace's lake and snapshots, with its own Feast registry
    and this Redis as its online store (loaded with the latest snapshot)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("lake", "features"):
        (root / name).symlink_to(sw.sim.root / name)
    store_settings = StoreSettings(
        project=f"rel{uuid.uuid4().hex[:8]}",
        online=OnlineStoreSettings(type="redis", connection_string=f"127.0.0.1:{port}"),
    )
    features = FeatureSettings.model_validate(
        {**sw.sim.settings.model_dump(), "store": store_settings.model_dump()}
    )
    features_yaml = root / "features.yaml"
    features_yaml.write_text(yaml.safe_dump(features.model_dump(mode="json")), encoding="utf-8")
    ws = Workspace(root)
    catalog = build_catalog(load_journey_map(SIMULATOR_CONFIG_DIR / "journeys.yaml"), features)
    store = open_store(store_settings, ws)
    apply_definitions(store, catalog, ws)
    load_latest_snapshot(store, catalog, ws.snapshots)
    return ws, features_yaml, catalog, store_settings


@pytest.fixture(scope="module")
def rig(
    serving_ws: ServingWorkspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultRig]:
    """One server for the module (a start costs a minute here), on its own Redis."""
    tmp = tmp_path_factory.mktemp("reliability")
    red = RedisServer(free_port())
    red.start()
    server: Server | None = None
    try:
        ws, features_yaml, catalog, store_settings = redis_workspace(
            serving_ws, tmp / "ws", red.port
        )
        settings = serving_settings(
            serving_ws,
            tmp,
            data_dir=str(ws.root),
            features=str(features_yaml),
            auth=AuthSettings(enabled=True, keys_env="JML_TEST_KEYS"),
            holdout={"share": 0.0, "salt": "x"},
            deadline_ms=50.0,
            limits={"max_body_bytes": 65536, "max_customers": 100, "max_events": 200,
                    "body_timeout_seconds": 1.0},
        )  # fmt: skip
        server = Server(settings, ws.root)
        server.start(tmp)
        yield FaultRig(
            server, red, serving_ws.customers, tmp / "state.db", ws, catalog, store_settings
        )
    finally:
        if server is not None:
            server.stop()
        red.kill()
        shutil.rmtree(tmp / "ws" / "serving", ignore_errors=True)
