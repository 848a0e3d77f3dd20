"""An exported event's own fields held against the sealed journal rows it carries (part of
`verify-export`, docs/audit.md "Verifying an export offline", step 6).

The seals protect the rows' bodies, not the columns beside them; but the columns the intake
and the fetcher copied from those bodies must still say what the bodies say, so an export
whose `type` or `time` was edited (its body left alone) fails, naming the line. Each field
must be what one of the sealed rows says: both bodies' `id` is the `event_id`; `type` is the
full event's (once fetched), else the notification's; `source` and `object` the
notification's (without one: `com.paxos`, `event`); `time` the notification's `time` or the
full event's `created_at` (an event found by List Events keeps the listing's time when its
webhook comes later), less than 1 µs apart (the database keeps microseconds); `is_test` the
notification's (absent: false) or, once fetched, whether a `test_confirmation` row is
there; and `confirmed_is_test` is true exactly when that row is exported. Not checked: what
the service derives by its own rules (`identity_id`) and its bookkeeping (`status`, `via`,
`deliveries`, receipt and fetch times).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def instant_ns(value: Any) -> int | None:
    """An RFC 3339 time as nanoseconds since the epoch (digits past the ninth dropped), or
    None if it is not one."""
    found = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        return None
    y, mo, d, h, mi, s, fraction, zulu, sign, oh, om = found.groups()
    try:
        offset = timedelta(0) if zulu else timedelta(hours=int(oh), minutes=int(om))
        moment = datetime(
            int(y), int(mo), int(d), int(h), int(mi), int(s),
            tzinfo=timezone(-offset if sign == "-" else offset),
        )  # fmt: skip
    except ValueError:
        return None
    whole = (moment - _EPOCH) // timedelta(seconds=1)
    return whole * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


def _same_time(a: Any, b: Any) -> bool:
    x, y = instant_ns(a), instant_ns(b)
    return x is not None and y is not None and abs(x - y) < 1000


def _same_id(said: Any, event_id: Any) -> bool:
    """The same UUID, whatever its letters' case or hyphens."""
    return (
        isinstance(said, str)
        and isinstance(event_id, str)
        and said.lower().replace("-", "") == event_id.replace("-", "")
    )


def field_problems(record: dict[str, Any]) -> list[str]:
    """What in `record` (an export's event line) disagrees with its journal rows' bodies."""
    found: list[str] = []
    event_id = record.get("event_id")

    def body(kind: str) -> dict[str, Any] | None:
        row = record.get(kind)
        if not isinstance(row, dict) or not isinstance(row.get("body"), str):
            return None
        try:
            parsed = json.loads(row["body"])
        except ValueError:
            found.append(f"its {kind} body is not JSON")
            return None
        if not isinstance(parsed, dict):
            found.append(f"its {kind} body is not a JSON object")
            return None
        return parsed

    def differs(field: str, exported: Any, kind: str, said: Any) -> None:
        found.append(f"its {field} {exported!r} is not what its {kind} row says ({said!r})")

    note, full = body("notification"), body("event")
    if note is not None and not _same_id(note.get("id"), event_id):
        differs("event_id", event_id, "notification", note.get("id"))
    if full is not None and not _same_id(full.get("id"), event_id):
        differs("event_id", event_id, "event", full.get("id"))
    # The type: the full event's once fetched (the fetcher and the listing store only an
    # event of the record's type), else the notification's.
    if full is not None and record.get("type") != full.get("type"):
        differs("type", record.get("type"), "event", full.get("type"))
    elif full is None and note is not None and record.get("type") != note.get("type"):
        differs("type", record.get("type"), "notification", note.get("type"))
    # The intake accepts only these; an event found by List Events has them too.
    for field, value in (("source", "com.paxos"), ("object", "event")):
        said = note.get(field) if note is not None else value
        if record.get(field) != said:
            differs(field, record.get(field), "notification" if note else "listing", said)
    # The time: the notification's, or (an event found by List Events first, whose webhook
    # came later) the full event's created_at.
    times = [note.get("time")] if note is not None else []
    times += [full.get("created_at")] if full is not None else []
    if times and not any(_same_time(record.get("time"), t) for t in times):
        said = ", ".join(map(repr, times))
        found.append(f"its time {record.get('time')!r} is none of its rows' times ({said})")
    # is_test: the notification's (absent: false), or, once fetched, Paxos's word (a
    # test_confirmation row or none).
    confirmed = record.get("test_confirmation") is not None
    flags = {note.get("is_test", False)} if note is not None else set()
    flags |= {confirmed} if full is not None else set()
    is_test = record.get("is_test")
    if flags and not (isinstance(is_test, bool) and is_test in flags):
        found.append(f"its is_test {is_test!r} is none of its rows' ({sorted(flags)})")
    if (record.get("confirmed_is_test") is True) != confirmed:
        found.append(
            f"its confirmed_is_test {record.get('confirmed_is_test')!r} does not match its "
            f"{'' if confirmed else 'absent '}test_confirmation row"
        )
    return found
