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
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def unwritable(*paths: Path) -> Iterator[None]:
    """Makes files truly unwritable for the block, for every process, root included.

    The suite runs as root in CI, where ``chmod`` changes nothing (and for any user it
    changes only later opens, not the descriptors a server already holds): the files get
    the immutable attribute (``chattr +i``), after which every write, through a descriptor
    opened before too, fails with EPERM as on a file system remounted read-only. Without
    root (CAP_LINUX_IMMUTABLE) or ``chattr`` the test skips, or fails under CI. The files
    are made writable again on the way out, even when the block fails.

    SQLite's shared-memory file (``-shm``) must not be passed: it is mapped in memory, and
    writing to an immutable mapping kills the process (SIGBUS) instead of failing a call.
    """
    targets = [p for p in paths if p.exists()]
    chattr = shutil.which("chattr")
    require(chattr is not None and os.geteuid() == 0, "root and chattr (an unwritable file)")
    assert chattr is not None
    done = subprocess.run(
        [chattr, "+i", *map(str, targets)], capture_output=True, text=True, check=False
    )
    require(done.returncode == 0, f"chattr +i in {targets[0].parent}: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, targets)], check=True)
