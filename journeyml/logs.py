"""Logging set-up for the command line (library modules only ever call ``logging.getLogger``)."""

from __future__ import annotations

import logging

from rich.logging import RichHandler


def configure_logging(verbose: bool = False) -> None:
    """Sends log records to stderr through rich; INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(rich_tracebacks=False, show_path=False)],
        force=True,
    )
    # Feast logs every registry refresh at INFO; keep its warnings.
    for noisy in ("urllib3", "botocore", "alembic", "numexpr", "feast", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
