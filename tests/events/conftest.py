"""Shared fixtures for the event contract tests: tiny literal logs written to tmp_path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from journeyml.events.config import EventsConfig

NOW = datetime(2025, 1, 1, tzinfo=UTC)

GOOD_CSV = """\
customer_id,timestamp,event_type,channel,value,plan
c1,2024-01-01T10:00:00Z,page_view,Web,,gold
c1,2024-01-02 10:00:00+02:00,purchase,EMAIL,19.99,gold
c2,2024-02-01,signup,web,,silver
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def write_text(tmp_path: Path) -> Callable[[str, str], Path]:
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[[str, pa.Table], Path]:
    def write(name: str, table: pa.Table) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return path

    return write


@pytest.fixture
def config() -> EventsConfig:
    return EventsConfig(memory_limit="512MB", threads=2)
