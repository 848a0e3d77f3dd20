"""How a job's page names its parts and values (never the raw keys of its progress)."""

from __future__ import annotations

from typing import Any

from service.store.projections.registry import PROJECTIONS

_LABELS = {
    # A backfill (service/reconciling/reconciler.py: backfill_job)
    "pass_id": "Reconciliation pass",
    "pages": "Pages listed",
    "found": "Events listed",
    "missing": "Missed webhooks (added)",
    "known": "Already stored",
    "reached": "Listed back to",
    # A rebuild's parts are projections; each reports these (service/projections/jobs.py)
    "phase": "phase",
    "done": "done",
    "total": "total",
    "resumed_from": "resumed from event",
    # Parameters
    "name": "Projection",
    "since": "Since",
    "until": "Until",
    "types": "Types",
    "include_test": "Test events",
}


def job_label(key: str) -> str:
    """The label of a job's progress part, parameter or detail."""
    if key in PROJECTIONS:
        return f"Projection {key}"
    return _LABELS.get(key, key.replace("_", " ").capitalize())


def job_value(value: Any) -> str:
    """A progress or parameter value as read: lists joined, booleans as words, none as —."""
    if value is None or value == []:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
