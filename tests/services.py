"""What a test needs from the machine (Redis, PostgreSQL, a program), checked in one place.

Outside CI a missing service skips the test that needs it (a laptop without PostgreSQL still
runs the rest). When ``CI`` is set the test fails instead: a CI run that silently skipped the
Redis, PostgreSQL or browser tests would pass without testing them (``.ci/run`` starts or
installs them first).
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest


def in_ci() -> bool:
    """True when the ``CI`` variable is set to anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(available: bool, what: str) -> None:
    """Skips (or, in CI, fails) the calling test when ``what`` is not available."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is missing, and CI is set: CI runs every test (see .ci/run)")
    pytest.skip(f"{what} is missing")


def skip_or_fail(reason: str) -> None:
    """``pytest.skip`` outside CI, ``pytest.fail`` when ``CI`` is set."""
    require(False, reason)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_redis() -> None:
    require(port_open("127.0.0.1", 6379), "Redis on 127.0.0.1:6379")


def require_postgres() -> None:
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432")


def require_binary(name: str) -> str:
    """The program's path; skips (fails in CI) when it is not on PATH."""
    path = shutil.which(name)
    require(path is not None, f"the program {name!r}")
    assert path is not None
    return path
