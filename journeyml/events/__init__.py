"""The journey event contract: validation and ingestion of event logs.

Modules:

- :mod:`journeyml.events.schema`: canonical column names and the normalised store layout.
- :mod:`journeyml.events.config`: ``configs/events.yaml`` (column maps, tolerances).
- :mod:`journeyml.events.ingest`: :func:`~journeyml.events.ingest.validate_events` and
  :func:`~journeyml.events.ingest.ingest_events`.
- :mod:`journeyml.events.lake`: the reader API later stages use (``read_events_sql``,
  ``open_events``, ``load_manifest``).
- :mod:`journeyml.events.problems`: :class:`~journeyml.events.problems.EventLogError`.

This package imports nothing heavy itself, so ``journeyml --help`` stays fast.
"""
