"""What an event changed, said in a line a person reads ("summary status PENDING → APPROVED",
"control CLOSED added"), from the history's changes (service/domain/history.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from service.domain.history import Change

NONE = "—"


def _value(value: Any) -> str:
    if value is None:
        return NONE
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _control(control: dict[str, Any]) -> str:
    name = control.get("control_type") or control.get("control_id") or "?"
    reason = control.get("reason_code")
    return f"{name} ({reason})" if reason else str(name)


def describe(change: Change) -> str:
    """One change as a line: a field from → to, or a control added, removed or changed."""
    if change.field == "controls":
        if change.before is None:
            return f"control {_control(change.after)} added"
        if change.after is None:
            return f"control {_control(change.before)} removed"
        return f"control {_control(change.after)} changed"
    field = change.field.replace("_", " ").replace(".", " ")
    return f"{field} {_value(change.before)} → {_value(change.after)}"
