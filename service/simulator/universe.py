"""A seeded, realistic universe of Paxos events, for the simulator and the webhook sender.

Pure and deterministic: the same arguments give the same events, byte for byte. Events come
in stories, the way Paxos's guides describe them (an identity asked for documents and then
approved, a transfer pending and then completed, ...), so projections built from them can be
checked against the story. Each event is shaped exactly like Get Event's `Event`; the
`is_test` flag and the subject are kept beside it, because Paxos's Event does not carry them.

Times are integers of nanoseconds since the epoch, because Paxos's `created_at` has
nanoseconds and Python's `datetime` stops at microseconds.
"""

from __future__ import annotations

import bisect
import random
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

# Paxos's transfer kinds: one list, the domain's (it also bounds the metric labels).
from service.domain.notification import INTERNAL_TRANSFER_KINDS, TRANSFER_KINDS

NS = 1_000_000_000
DAY_NS = 86_400 * NS

IDENTITY_STATUS_TYPES = ("identity.approved", "identity.denied", "identity.disabled")
IDENTITY_TYPES = (
    "identity.documents_required",
    *IDENTITY_STATUS_TYPES,
    "identity.kyc_refresh.started",
    "identity.kyc_refresh.completed",
    "identity.kyc_refresh.expired",
    "identity.control.created",
    "identity.control.deleted",
)
ORCHESTRATION_TYPES = (
    "orchestration.processing",
    "orchestration.completed",
    "orchestration.failed",
)
TRANSFER_TYPES = (
    *(f"transfer.{k}.{s}" for k in TRANSFER_KINDS for s in ("pending", "completed", "failed")),
    *(f"transfer.{k}.completed" for k in INTERNAL_TRANSFER_KINDS),
)
ALL_TYPES = (*IDENTITY_TYPES, *ORCHESTRATION_TYPES, *TRANSFER_TYPES)

OBJECT_TYPES = {
    **dict.fromkeys(IDENTITY_STATUS_TYPES, "identity_summary_status_change"),
    "identity.documents_required": "identity_documents_required",
    **dict.fromkeys(
        ("identity.kyc_refresh.started", "identity.kyc_refresh.completed"),
        "identity_kyc_refresh",
    ),
    "identity.kyc_refresh.expired": "identity_kyc_refresh",
    "identity.control.created": "identity_control",
    "identity.control.deleted": "identity_control",
    **dict.fromkeys(ORCHESTRATION_TYPES, "orchestration_status_change"),
    **dict.fromkeys(TRANSFER_TYPES, "transfer_status_change"),
}
# One of Paxos's own examples names the documents object this way; consumers must accept both.
ALT_DOCUMENTS_OBJECT_TYPE = "identity_required_documents"

# Paxos's pages list two different sets of document kinds: use both.
DOCUMENT_KINDS = (
    "TAX_IDENTIFICATION",
    "PROOF_OF_RESIDENCY",
    "PROOF_OF_FUNDS",
    "DRIVERS_LICENSE",
    "PASSPORT",
    "NATIONAL_ID",
    "UTILITY_BILL",
    "BANK_STATEMENT",
    "GOVERNMENT_ID",
    "PROOF_OF_ADDRESS",
)
CONTROL_TYPES = ("SELL_ONLY", "CLOSED", "FROZEN", "DORMANT")
CONTROL_REASONS = (
    "CLIENT_REQUEST",
    "SANCTIONS_SCREENING",
    "FRAUD_REVIEW",
    "ACCOUNT_DORMANCY",
    "KYC_REFRESH_OVERDUE",
    "LAW_ENFORCEMENT_REQUEST",
)
CRYPTO_NETWORKS = ("ETHEREUM", "BITCOIN", "SOLANA", "BASE", "POLYGON", "LITECOIN")
_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

DEFAULT_END = datetime(2025, 1, 8, tzinfo=UTC)
DEFAULT_START = DEFAULT_END - timedelta(days=7)


class SimEvent(msgspec.Struct, frozen=True):
    """One Paxos event, with what the simulator knows about it beyond Get Event's body."""

    id: str
    type: str
    object_type: str
    object: dict[str, Any]
    created_at: str
    undelivered_webhooks: int
    # Not part of Paxos's Event: Get Event and List Events filter on it instead.
    is_test: bool
    created_at_ns: int
    # The identity, transfer or orchestration the event is about (its own id for test events).
    subject_id: str

    def event_body(self) -> dict[str, Any]:
        """The event as Get Event and List Events return it."""
        return {
            "id": self.id,
            "type": self.type,
            "object_type": self.object_type,
            "object": self.object,
            "created_at": self.created_at,
            "undelivered_webhooks": self.undelivered_webhooks,
        }

    def notification(self) -> dict[str, Any]:
        """The thin webhook body Paxos POSTs for this event."""
        return {
            "id": self.id,
            "type": self.type,
            "source": "com.paxos",
            "time": self.created_at,
            "object": "event",
            "is_test": self.is_test,
        }


def sort_key(event: SimEvent) -> tuple[int, str]:
    """Paxos orders by `created_at`; the id breaks ties so that paging is stable."""
    return (event.created_at_ns, event.id)


class Universe:
    """Every event a simulated Paxos account has, in `(created_at, id)` order."""

    def __init__(self, events: Iterable[SimEvent] = ()) -> None:
        self._events: list[SimEvent] = sorted(events, key=sort_key)
        self._keys = [sort_key(e) for e in self._events]
        self._by_id = {e.id: e for e in self._events}
        if len(self._by_id) != len(self._events):
            raise ValueError("event ids must be unique")

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[SimEvent]:
        return iter(self._events)

    @property
    def events(self) -> list[SimEvent]:
        """All events, oldest first (a copy)."""
        return list(self._events)

    def get(self, event_id: str) -> SimEvent | None:
        """The event with this id, test or not."""
        return self._by_id.get(event_id)

    def add(self, event: SimEvent) -> None:
        """Add one event, keeping the order (a running simulator may learn new events)."""
        if event.id in self._by_id:
            raise ValueError(f"event {event.id} already exists")
        key = sort_key(event)
        at = bisect.bisect_left(self._keys, key)
        self._keys.insert(at, key)
        self._events.insert(at, event)
        self._by_id[event.id] = event

    def between(
        self,
        lo: tuple[int, str] | None = None,
        hi: tuple[int, str] | None = None,
        *,
        descending: bool = False,
    ) -> Iterator[SimEvent]:
        """Events whose `(created_at_ns, id)` lies strictly between `lo` and `hi`, lazily."""
        first = 0 if lo is None else bisect.bisect_right(self._keys, lo)
        stop = len(self._keys) if hi is None else bisect.bisect_left(self._keys, hi)
        indexes = range(stop - 1, first - 1, -1) if descending else range(first, stop)
        return (self._events[i] for i in indexes)

    def notifications(self, *, include_test: bool = True) -> list[dict[str, Any]]:
        """The webhook bodies of every event, oldest first."""
        return [e.notification() for e in self._events if include_test or not e.is_test]


# -- time ------------------------------------------------------------------------------------

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time; `ValueError` when it is not one."""
    match = _RFC3339.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    offset = timedelta(0)
    if not zulu:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        if sign == "-":
            offset = -offset
    # datetime validates the calendar (no 31 February); seconds stay whole here.
    whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC) - offset
    return int(whole.timestamp()) * NS + int((fraction or "").ljust(9, "0"))


def format_rfc3339_ns(ns: int) -> str:
    """A UTC RFC 3339 time with 0, 3, 6 or 9 fractional digits, as Paxos's gateway writes it."""
    seconds, nanos = divmod(ns, NS)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no place on Paxos's timeline")
    whole = moment.replace(microsecond=0)
    return int(whole.timestamp()) * NS + moment.microsecond * 1_000


def _date(ns: int) -> str:
    # KYC refresh dates are whole seconds in Paxos's examples.
    return format_rfc3339_ns(ns - ns % NS)


# -- generation ------------------------------------------------------------------------------


@dataclass
class _Step:
    type: str
    object: dict[str, Any]
    object_type: str = ""


@dataclass
class _Story:
    """The events of one subject, generated one after another from a start time."""

    subject_id: str
    now: int
    end: int
    mean_gap: float
    rng: random.Random
    steps: list[tuple[int, _Step]] = field(default_factory=list)

    def then(self, step: _Step) -> bool:
        """Append `step` after a pause; False (and nothing appended) once past the window."""
        if self.steps:
            self.now += 1 + int(self.rng.expovariate(1.0 / self.mean_gap))
        if self.now >= self.end:
            return False
        self.steps.append((self.now, step))
        return True


# Records an identity status change (old status tracked by the story); False past the window.
_Change = Callable[[str, str], bool]


class _Generator:
    def __init__(self, rng: random.Random, start: int, end: int, real_count: int) -> None:
        self.rng = rng
        self.start = start
        self.end = end
        # Stories of a short window still get several steps in it.
        self.mean_gap = float(min(3600 * NS, max(1, (end - start) // 40)))
        self.profiles = [self.uuid() for _ in range(max(3, real_count // 25))]
        self.rules = [self.uuid() for _ in range(5)]

    def uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex(self, digits: int) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def story(self, subject_id: str) -> _Story:
        start = self.start + self.rng.randrange(max(1, self.end - self.start))
        return _Story(subject_id, start, self.end, self.mean_gap, self.rng)

    # Identities --------------------------------------------------------------------------

    def identity(self) -> _Story:
        rng = self.rng
        identity_id = self.uuid()
        story = self.story(identity_id)
        # An identity is PENDING when created; a few hit an ERROR in verification first.
        status = "ERROR" if rng.random() < 0.05 else "PENDING"

        def change(event_type: str, new: str) -> bool:
            nonlocal status
            ok = story.then(
                _Step(
                    event_type,
                    {
                        "id": self.uuid(),
                        "identity_id": identity_id,
                        "old_summary_status": status,
                        "new_summary_status": new,
                    },
                )
            )
            if ok:
                status = new
            return ok

        def documents() -> bool:
            kinds = rng.sample(DOCUMENT_KINDS, rng.randint(1, 3))
            object_type = (
                ALT_DOCUMENTS_OBJECT_TYPE if rng.random() < 0.1 else "identity_documents_required"
            )
            return story.then(
                _Step(
                    "identity.documents_required",
                    {"id": self.uuid(), "identity_id": identity_id, "required_documents": kinds},
                    object_type,
                )
            )

        if rng.random() < 0.7 and not documents():
            return story
        if rng.random() < 0.2:
            if not change("identity.denied", "DENIED"):
                return story
            # Some denied identities send more documents and are approved later.
            if rng.random() >= 0.3 or not documents():
                return story
        if not change("identity.approved", "APPROVED"):
            return story
        for _ in range(rng.choices((0, 1, 2), (60, 30, 10))[0]):
            # Nothing more happens to an identity that ended disabled.
            if not self._life_event(story, identity_id, change) or status != "APPROVED":
                return story
        return story

    def _life_event(self, story: _Story, identity_id: str, change: _Change) -> bool:
        """One thing that happens to an approved identity: a control, a KYC refresh, ..."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.4:
            control = {
                "id": self.uuid(),
                "identity_id": identity_id,
                "control_id": self.uuid(),
                "control_type": rng.choice(CONTROL_TYPES),
                "set_by": rng.choice(("PAXOS", "CLIENT")),
                "is_overridable": rng.random() < 0.5,
                "reason_code": rng.choice(CONTROL_REASONS),
            }
            if not story.then(_Step("identity.control.created", control)):
                return False
            if rng.random() < 0.5:
                lifted = {**control, "id": self.uuid()}
                return story.then(_Step("identity.control.deleted", lifted))
            return True
        if roll < 0.85:
            return self._kyc_refresh(story, identity_id, change)
        # Disabled outright (an offboarding); some come back.
        if not change("identity.disabled", "DISABLED"):
            return False
        if rng.random() < 0.3:
            return change("identity.approved", "APPROVED")
        return True

    def _kyc_refresh(self, story: _Story, identity_id: str, change: _Change) -> bool:
        rng = self.rng

        def refresh(event_type: str, last: int | None, upcoming: int | None) -> bool:
            body: dict[str, Any] = {"id": self.uuid(), "identity_id": identity_id}
            # Both dates are optional in Paxos's schema; leave them out now and then.
            if last is not None and rng.random() < 0.9:
                body["last_kyc_refresh_date"] = _date(last)
            if upcoming is not None and rng.random() < 0.9:
                body["next_kyc_refresh_date"] = _date(upcoming)
            return story.then(_Step(event_type, body))

        last = story.now - 365 * DAY_NS - rng.randrange(30 * DAY_NS)
        due = story.now + 30 * DAY_NS
        while True:
            if not refresh("identity.kyc_refresh.started", last, due):
                return False
            if rng.random() < 0.7:
                return refresh(
                    "identity.kyc_refresh.completed", story.now, story.now + 365 * DAY_NS
                )
            if not refresh("identity.kyc_refresh.expired", last, due):
                return False
            # An expired refresh either starts again or ends the identity.
            if rng.random() < 0.4:
                due = story.now + 30 * DAY_NS
                continue
            return change("identity.disabled", "DISABLED")

    # Transfers and orchestrations ---------------------------------------------------------

    def transfer(self) -> _Story:
        rng = self.rng
        transfer_id = self.uuid()
        story = self.story(transfer_id)
        internal = rng.random() < 2 / (len(TRANSFER_KINDS) + 2)
        kind = rng.choice(INTERNAL_TRANSFER_KINDS if internal else TRANSFER_KINDS)
        base: dict[str, Any] = {
            "id": transfer_id,
            "type": kind.upper(),
            "status": "PENDING",
            "profile_id": rng.choice(self.profiles),
        }
        if rng.random() < 0.8:
            base["ref_id"] = f"{kind.replace('_', '-')}-{self.hex(12)}"
        crypto = kind.startswith("crypto_")
        deposit = kind.endswith("_deposit")
        if crypto:
            base["crypto_network"] = rng.choice(CRYPTO_NETWORKS)
        elif rng.random() < 0.3:
            base["memo"] = f"INV-{rng.randrange(10**6):06d}"

        def on_chain(body: dict[str, Any]) -> dict[str, Any]:
            network = body["crypto_network"]
            if network == "SOLANA":
                tx_hash = "".join(rng.choice(_BASE58) for _ in range(88))
            elif network in ("BITCOIN", "LITECOIN"):
                tx_hash = self.hex(64)
            else:
                tx_hash = "0x" + self.hex(64)
            return {**body, "crypto_tx_hash": tx_hash, "crypto_tx_index": str(rng.randrange(4))}

        if internal:
            story.then(_Step(f"transfer.{kind}.completed", {**base, "status": "COMPLETED"}))
            return story
        # A deposit is seen on chain before Paxos reports it; a withdrawal gets its hash later.
        pending = on_chain(base) if crypto and deposit else base
        if not story.then(_Step(f"transfer.{kind}.pending", pending)):
            return story
        if rng.random() < 0.85:
            done = on_chain(base) if crypto else base
            story.then(_Step(f"transfer.{kind}.completed", {**done, "status": "COMPLETED"}))
        else:
            story.then(_Step(f"transfer.{kind}.failed", {**pending, "status": "FAILED"}))
        return story

    def orchestration(self) -> _Story:
        rng = self.rng
        orchestration_id = self.uuid()
        story = self.story(orchestration_id)
        base: dict[str, Any] = {
            "id": orchestration_id,
            "ref_id": f"orchestration-{self.hex(12)}",
            "status": "PROCESSING",
        }
        # Ad-hoc orchestrations have no rule.
        if rng.random() < 0.6:
            base["orchestration_rule_id"] = rng.choice(self.rules)
        if not story.then(_Step("orchestration.processing", base)):
            return story
        final = "completed" if rng.random() < 0.85 else "failed"
        story.then(_Step(f"orchestration.{final}", {**base, "status": final.upper()}))
        return story

    # Test events -----------------------------------------------------------------------------

    def test_step(self, event_type: str) -> _Step:
        """What the Dashboard's Test button sends: one event of a type, made-up ids."""
        rng = self.rng
        object_type = OBJECT_TYPES[event_type]
        body: dict[str, Any] = {"id": self.uuid()}
        if event_type.startswith("identity."):
            body["identity_id"] = self.uuid()
        if object_type == "identity_summary_status_change":
            body["old_summary_status"] = "PENDING"
            body["new_summary_status"] = event_type.split(".")[1].upper()
        elif object_type == "identity_documents_required":
            body["required_documents"] = rng.sample(DOCUMENT_KINDS, 2)
        elif object_type == "identity_kyc_refresh":
            body["next_kyc_refresh_date"] = _date(self.start + 30 * DAY_NS)
        elif object_type == "identity_control":
            body.update(
                control_id=self.uuid(),
                control_type=rng.choice(CONTROL_TYPES),
                set_by="CLIENT",
                is_overridable=True,
                reason_code="CLIENT_REQUEST",
            )
        elif object_type == "orchestration_status_change":
            body.update(ref_id=f"test-{self.hex(8)}", status=event_type.split(".")[1].upper())
        else:
            kind, status = event_type.split(".")[1:]
            body.update(
                type=kind.upper(), status=status.upper(), profile_id=rng.choice(self.profiles)
            )
        return _Step(event_type, body, object_type)


def generate_universe(
    events: int = 200,
    *,
    start: datetime = DEFAULT_START,
    end: datetime = DEFAULT_END,
    test_ratio: float = 0.0,
    tie_ratio: float = 0.05,
    seed: int = 0,
) -> Universe:
    """`events` Paxos events created in `[start, end)`, `test_ratio` of them test events.

    About `tie_ratio` of the events share their exact `created_at` with the event before them
    (never within one subject's story, whose order must stay certain): paging must survive it.
    """
    if events < 0:
        raise ValueError("events must be >= 0")
    if not 0.0 <= test_ratio <= 1.0 or not 0.0 <= tie_ratio <= 1.0:
        raise ValueError("test_ratio and tie_ratio must be between 0 and 1")
    start_ns, end_ns = to_ns(start), to_ns(end)
    if end_ns <= start_ns:
        raise ValueError("end must be after start")
    # Seeded for reproducible universes, not for secrets.
    rng = random.Random(seed)  # noqa: S311
    test_count = round(events * test_ratio)
    real_count = events - test_count
    gen = _Generator(rng, start_ns, end_ns, real_count)

    drafts: list[tuple[int, _Step, str, bool]] = []
    real = 0
    while real < real_count:
        roll = rng.random()
        story = (
            gen.identity()
            if roll < 0.45
            else gen.transfer()
            if roll < 0.85
            else gen.orchestration()
        )
        # A story cut short by the count is still a true story, only unfinished.
        for at, step in story.steps[: real_count - real]:
            drafts.append((at, step, story.subject_id, False))
            real += 1
    for _ in range(test_count):
        step = gen.test_step(rng.choice(ALL_TYPES))
        at = start_ns + rng.randrange(end_ns - start_ns)
        drafts.append((at, step, step.object["id"], True))

    built = [
        SimEvent(
            id=gen.uuid(),
            type=step.type,
            object_type=step.object_type or OBJECT_TYPES[step.type],
            object=step.object,
            created_at="",
            # Most events reached every webhook; a few had failed deliveries.
            undelivered_webhooks=0 if rng.random() < 0.9 else rng.randint(1, 3),
            is_test=is_test,
            created_at_ns=at,
            subject_id=subject,
        )
        for at, step, subject, is_test in drafts
    ]
    built.sort(key=sort_key)
    return Universe(_with_ties(built, rng, tie_ratio))


def _with_ties(events: list[SimEvent], rng: random.Random, tie_ratio: float) -> list[SimEvent]:
    """Give some events the exact `created_at` of their predecessor, then format the times."""
    out: list[SimEvent] = []
    group_subjects: set[str] = set()
    for event in events:
        at = event.created_at_ns
        if out and event.subject_id not in group_subjects and rng.random() < tie_ratio:
            at = out[-1].created_at_ns
        if not out or at != out[-1].created_at_ns:
            group_subjects = set()
        group_subjects.add(event.subject_id)
        out.append(
            msgspec.structs.replace(event, created_at_ns=at, created_at=format_rfc3339_ns(at))
        )
    # Moving a time back may put an event before its tie partner's id: restore the order.
    out.sort(key=sort_key)
    return out


__all__ = [
    "ALL_TYPES",
    "IDENTITY_TYPES",
    "ORCHESTRATION_TYPES",
    "TRANSFER_TYPES",
    "SimEvent",
    "Universe",
    "format_rfc3339_ns",
    "generate_universe",
    "parse_rfc3339_ns",
    "sort_key",
    "to_ns",
]
