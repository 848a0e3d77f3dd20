"""Push subscriptions: their rows, the outbox each one fills from the journal, claims of what
is due, the outcome of each delivery, and how far behind each one is.

How delivery is kept in order and at least once (DESIGN.md §7, "Ordered push without
head-of-line blocking"):

- *Fill* (`fill`): a subscription reads the journal in position order from its own cursor up
  to a horizon of the feed (`service/store/feed.py`: every position at or below it final, so
  nothing that commits later can land behind the cursor), and copies the `event` rows that
  match its types and test flag into its outbox with their ordering key; the cursor moves in
  the same statement, so deliveries follow the feed's order (GET /feed's positions). The
  subscription row's lock (FOR NO KEY UPDATE SKIP LOCKED) makes one filler at a time per
  subscription. The outbox holds at most `window` rows, so a receiver that is down makes the
  cursor wait rather than the outbox grow.
- *Claim* (`claim`): a short transaction leases the heads of keys (rows with no earlier row of
  their key left) that are due and not leased, up to the subscription's `max_in_flight` leases
  in all processes together (claims of one subscription are serialised by a transaction
  advisory lock, so the count of leases they read is exact), skipping rows another claim holds.
- *Outcome* (`record_outcomes`): a delivered row is deleted; a failed one gets its next attempt
  time and its lease back. A process that dies leaves leases that run out: what it had in
  flight is delivered again, nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain.stored import Event
from service.store.tables import EVENT_DETAIL

# NOTIFY'd by the admin routes when a subscription is created, changed or deleted, so that
# every process's delivery loop looks again at once (its 1 s poll would find it anyway).
SUBSCRIPTIONS_CHANNEL = "subscriptions_changed"
# Lag is counted up to this many journal rows past a subscription's cursor.
LAG_CAP = 100_000
# Outcomes of one delivery attempt (the `subscription_deliveries` rows and the metric's label).
OUTCOMES = ("delivered", "failed", "timeout", "connection_error", "refused", "gone")

Outcome = Literal["delivered", "failed", "timeout", "connection_error", "refused", "gone"]

# Whether journal row `r` (journal j, events e) matches subscription `s`: its types (exact, or
# a prefix such as `transfer.*`; none: every type), and test events only if it includes them.
_MATCHES = """
    (s.include_test OR NOT e.is_test)
    AND (cardinality(s.types) = 0 OR EXISTS (
        SELECT 1 FROM unnest(s.types) AS t(pattern)
        WHERE CASE WHEN right(t.pattern, 2) = '.*'
                   THEN starts_with(e.type, left(t.pattern, -1))
                   ELSE e.type = t.pattern END))
"""
# The ordering key: the identity, else the transfer or orchestration, else the event itself.
# (The full event's `object.id`: `events.object_id`.)
_KEY = """
    coalesce(
        'identity:' || e.identity_id,
        CASE WHEN starts_with(e.type, 'transfer.') OR starts_with(e.type, 'orchestration.')
             THEN split_part(e.type, '.', 1) || ':' || e.object_id END,
        'event:' || CAST(e.event_id AS text))
"""


# --- The admin side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    """A subscription as the admin API and the console show it (never its secret)."""

    name: str
    url: str
    types: list[str]
    include_test: bool
    state: str
    max_in_flight: int
    position: int  # the journal position its cursor has read to
    lag_events: int  # matching events not delivered yet (past the cursor: up to LAG_CAP)
    lag_seconds: float  # age of the oldest of them; 0 when none
    pending: int  # rows in the outbox (copied, not delivered yet)
    in_flight: int  # of which leased now
    last_error: str | None
    last_error_at: datetime | None
    deliveries: dict[str, int]  # attempts by outcome
    previous_secret_until: datetime | None  # the rotated-out secret signs until then
    created_at: datetime
    updated_at: datetime


_VIEW = text(
    f"""
    SELECT s.subscription_id, s.name, s.url, s.types, s.include_test, s.state, s.max_in_flight,
           s.cursor_position AS position, s.last_error, s.last_error_at,
           CASE WHEN s.previous_secret_until > now() THEN s.previous_secret_until END
               AS previous_secret_until,
           s.created_at, s.updated_at,
           o.pending, o.in_flight, b.behind,
           coalesce(extract(epoch FROM now() - least(o.oldest, b.oldest)), 0) AS lag_seconds,
           coalesce((SELECT jsonb_object_agg(d.outcome, d.count) FROM subscription_deliveries d
                     WHERE d.subscription_id = s.subscription_id), '{{}}'::jsonb) AS deliveries
    FROM subscriptions s
    CROSS JOIN LATERAL (
        SELECT count(*) AS pending, count(*) FILTER (WHERE o.lease_until > now()) AS in_flight,
               min(o.recorded_at) AS oldest
        FROM subscription_outbox o WHERE o.subscription_id = s.subscription_id
    ) o
    CROSS JOIN LATERAL (
        SELECT count(*) AS behind, min(x.recorded_at) AS oldest FROM (
            SELECT r.recorded_at
            FROM journal r JOIN events e ON e.event_id = r.event_id
            WHERE r.position > s.cursor_position AND r.kind = 'event' AND {_MATCHES}
            ORDER BY r.position
            LIMIT {LAG_CAP}
        ) x
    ) b
    WHERE (CAST(:name AS text) IS NULL OR s.name = :name)
    ORDER BY s.name
    """
)


def _view(row: Any) -> SubscriptionView:
    return SubscriptionView(
        name=row.name,
        url=row.url,
        types=list(row.types),
        include_test=row.include_test,
        state=row.state,
        max_in_flight=row.max_in_flight,
        position=int(row.position),
        lag_events=int(row.pending) + int(row.behind),
        lag_seconds=max(0.0, float(row.lag_seconds)),
        pending=int(row.pending),
        in_flight=int(row.in_flight),
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        deliveries={k: int(v) for k, v in sorted(row.deliveries.items())},
        previous_secret_until=row.previous_secret_until,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def list_subscriptions(conn: AsyncConnection) -> list[SubscriptionView]:
    """Every subscription with its lag and counts, by name."""
    return [_view(r) for r in (await conn.execute(_VIEW, {"name": None})).all()]


async def get_subscription(conn: AsyncConnection, name: str) -> SubscriptionView | None:
    """One subscription with its lag and counts, or None."""
    row = (await conn.execute(_VIEW, {"name": name})).one_or_none()
    return None if row is None else _view(row)


async def failing_subscriptions(conn: AsyncConnection) -> list[str]:
    """Names of the subscriptions that gave up retrying (`failing`), for /health/ready."""
    rows = await conn.execute(
        text("SELECT name FROM subscriptions WHERE state = 'failing' ORDER BY name")
    )
    return [r.name for r in rows]


async def notify_changed(conn: AsyncConnection) -> None:
    """Wake every process's delivery loop when the caller's transaction commits."""
    await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": SUBSCRIPTIONS_CHANNEL})


Start = Literal["now", "beginning"] | int  # an int: deliver every event after that position


async def create_subscription(
    conn: AsyncConnection,
    *,
    name: str,
    url: str,
    types: Sequence[str],
    include_test: bool,
    max_in_flight: int,
    secret: bytes,
    start: Start,
) -> bool:
    """Create a subscription; False if the name is taken (nothing is changed then)."""
    row = (
        await conn.execute(
            text(
                "INSERT INTO subscriptions (name, url, types, include_test, max_in_flight, secret) "
                "VALUES (:name, :url, CAST(:types AS text[]), :include_test, :max_in_flight, "
                ":secret) ON CONFLICT (name) DO NOTHING RETURNING subscription_id"
            ),
            {
                "name": name,
                "url": url,
                "types": list(types),
                "include_test": include_test,
                "max_in_flight": max_in_flight,
                "secret": secret,
            },
        )
    ).one_or_none()
    if row is None:
        return False
    if start == "now":  # the events whose positions come after the last one handed out
        position = await _last_position(conn)
    elif start == "beginning":
        position = 0
    else:
        position = start
    await conn.execute(
        text("UPDATE subscriptions SET cursor_position = :p WHERE subscription_id = :id"),
        {"id": row.subscription_id, "p": position},
    )
    return True


async def _last_position(conn: AsyncConnection) -> int:
    found = await conn.scalar(
        text(
            "SELECT pg_sequence_last_value("
            "CAST(pg_get_serial_sequence('journal', 'position') AS regclass))"
        )
    )
    return int(found or 0)


async def position_before(conn: AsyncConnection, since: datetime) -> int:
    """The position after which every event recorded at or after `since` lies (a replay or a
    start from a time). Reads the journal by position: an admin action, not a hot path."""
    found = await conn.scalar(
        text(
            "SELECT coalesce((SELECT min(position) - 1 FROM journal "
            "                 WHERE kind = 'event' AND recorded_at >= :since), "
            "                (SELECT max(position) FROM journal), 0)"
        ),
        {"since": since},
    )
    return int(found or 0)


async def replay(conn: AsyncConnection, name: str, after: int) -> bool:
    """Deliver again every matching event after position `after`; False if no such
    subscription. Rows still in the outbox stay (they are not copied twice)."""
    found = await conn.scalar(
        text("SELECT subscription_id FROM subscriptions WHERE name = :name FOR UPDATE"),
        {"name": name},
    )
    if found is None:
        return False
    await conn.execute(
        text(
            "UPDATE subscriptions SET cursor_position = :after, updated_at = now() "
            "WHERE subscription_id = :id"
        ),
        {"id": int(found), "after": after},
    )
    return True


async def update_subscription(
    conn: AsyncConnection,
    name: str,
    *,
    url: str | None = None,
    types: Sequence[str] | None = None,
    include_test: bool | None = None,
    max_in_flight: int | None = None,
    state: Literal["active", "paused"] | None = None,
) -> bool:
    """Change what is given; False if no such subscription. Resuming (`state="active"`) makes
    every waiting row due now and starts its retry horizon again."""
    row = (
        await conn.execute(
            text(
                """
                UPDATE subscriptions SET
                    url = coalesce(:url, url),
                    types = coalesce(CAST(:types AS text[]), types),
                    include_test = coalesce(:include_test, include_test),
                    max_in_flight = coalesce(:max_in_flight, max_in_flight),
                    state = coalesce(:state, state),
                    updated_at = now()
                WHERE name = :name
                RETURNING subscription_id
                """
            ),
            {
                "name": name,
                "url": url,
                "types": None if types is None else list(types),
                "include_test": include_test,
                "max_in_flight": max_in_flight,
                "state": state,
            },
        )
    ).one_or_none()
    if row is None:
        return False
    if state == "active":
        await conn.execute(
            text(
                "UPDATE subscription_outbox SET first_attempt_at = NULL, next_attempt_at = now() "
                "WHERE subscription_id = :id AND (lease_until IS NULL OR lease_until < now())"
            ),
            {"id": row.subscription_id},
        )
    return True


async def rotate_secret(
    conn: AsyncConnection, name: str, secret: bytes, grace_s: float
) -> datetime | None:
    """Make `secret` the signing secret; the current one goes on signing for `grace_s`.
    Returns until when, or None if no such subscription."""
    return await conn.scalar(  # type: ignore[no-any-return]
        text(
            """
            UPDATE subscriptions SET previous_secret = secret,
                previous_secret_until = now() + make_interval(secs => :grace_s),
                secret = :secret, updated_at = now()
            WHERE name = :name
            RETURNING previous_secret_until
            """
        ),
        {"name": name, "secret": secret, "grace_s": float(grace_s)},
    )


async def delete_subscription(conn: AsyncConnection, name: str) -> bool:
    """Delete a subscription, its outbox and its counts; False if there was none."""
    result = await conn.execute(
        text("DELETE FROM subscriptions WHERE name = :name RETURNING subscription_id"),
        {"name": name},
    )
    return result.one_or_none() is not None


# --- The delivery side ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A subscription as the delivery loop tracks it."""

    subscription_id: int
    name: str
    state: str


async def targets(conn: AsyncConnection) -> list[Target]:
    """Every subscription (paused and failing ones too: their outboxes still fill)."""
    rows = await conn.execute(
        text("SELECT subscription_id, name, state FROM subscriptions ORDER BY subscription_id")
    )
    return [Target(r.subscription_id, r.name, r.state) for r in rows]


@dataclass(frozen=True, slots=True)
class Filled:
    read: int  # journal rows the cursor moved past
    added: int  # of which copied into the outbox


_FILL = text(
    f"""
    WITH s AS MATERIALIZED (
        SELECT subscription_id, cursor_position, types, include_test
        FROM subscriptions WHERE subscription_id = :id
        -- One filler at a time. NO KEY UPDATE: the key-share locks that inserting outbox and
        -- count rows takes (their foreign keys) must not make a filler skip its turn.
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    room AS MATERIALIZED (
        SELECT least(:limit, greatest(0, :window - (
            SELECT count(*) FROM (
                SELECT 1 FROM subscription_outbox WHERE subscription_id = :id LIMIT :window
            ) w))) AS n
    ),
    r AS MATERIALIZED (
        -- Positions up to the horizon only: every one of them is final (committed or never
        -- to be), so no row can appear behind the cursor later. Every kind is read (the
        -- cursor moves past them); only `event` rows are copied.
        SELECT j.position, j.event_id, j.kind, j.recorded_at
        FROM journal j, s
        WHERE j.position > s.cursor_position AND j.position <= :through
        ORDER BY j.position
        LIMIT (SELECT n FROM room)
    ),
    added AS (
        INSERT INTO subscription_outbox (subscription_id, position, event_id, key, recorded_at)
        SELECT s.subscription_id, r.position, r.event_id, {_KEY}, r.recorded_at
        FROM r JOIN events e ON e.event_id = r.event_id CROSS JOIN s
        WHERE r.kind = 'event' AND {_MATCHES}
        ON CONFLICT DO NOTHING
        RETURNING 1
    ),
    got AS (SELECT count(*) AS n, max(position) AS last FROM r),
    moved AS (
        -- Past the last row read; past the horizon itself when fewer rows than asked were
        -- there (none is missing below it). Not at all when the outbox is full.
        UPDATE subscriptions u
        SET cursor_position = CASE WHEN got.n >= room.n THEN got.last
                                   ELSE greatest(u.cursor_position, :through) END
        FROM got, room, s
        -- Only by the filler that holds the row (`s`): without it nothing was read, and
        -- moving the cursor to the horizon would skip every row up to it.
        WHERE u.subscription_id = s.subscription_id AND room.n > 0
        RETURNING u.cursor_position
    )
    SELECT (SELECT count(*) FROM s) AS locked, (SELECT n FROM got) AS read,
           (SELECT count(*) FROM added) AS added
    """
)


async def fill(
    conn: AsyncConnection,
    subscription_id: int,
    through: int,
    *,
    limit: int = 1000,
    window: int = 10_000,
) -> Filled | None:
    """Copy the matching journal events after the cursor and up to position `through` (a feed
    horizon found before this call; at most `limit` rows read) into the outbox while it holds
    fewer than `window` rows. None when another filler holds the subscription."""
    row = (
        await conn.execute(
            _FILL,
            {"id": subscription_id, "through": through, "limit": limit, "window": window},
        )
    ).one()
    if not row.locked:
        return None
    return Filled(int(row.read), int(row.added))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and with what a subscription's deliveries go. `secrets`: the current one first,
    then the previous one while it is within its grace."""

    url: str
    secrets: tuple[bytes, ...] = ()
    max_in_flight: int = 16


@dataclass(frozen=True, slots=True)
class Claim:
    """One outbox row leased for delivery."""

    subscription_id: int
    position: int
    attempts: int  # including this one; fences the outcome
    first_attempt_at: datetime
    recorded_at: datetime
    event: Event


# Claims of one subscription are serialised (any process, any number): the leases counted
# below are then all there are, so `max_in_flight` holds for the deployment.
_CLAIM_LOCK = text(
    """
    SELECT s.state, s.url, s.secret, s.max_in_flight,
           CASE WHEN s.previous_secret_until > now() THEN s.previous_secret END AS previous
    FROM pg_advisory_xact_lock(hashtext('subscription claims'), CAST(:id AS integer)) l,
         subscriptions s
    WHERE s.subscription_id = :id
    """
)

_EVENT = (
    "e.event_id AS id, e.type, e.source, e.time, e.object, e.is_test, e.status, e.via, "
    "e.deliveries, e.first_received_at, e.last_received_at, e.fetched_at, e.attempts AS "
    "fetch_attempts, e.last_error, e.identity_id, e.object_type, e.undelivered_webhooks, "
    + EVENT_DETAIL.format(event_id="e.event_id")
    + " AS detail"
)

_CLAIM = text(
    f"""
    WITH busy AS (
        SELECT count(*) AS n FROM subscription_outbox
        WHERE subscription_id = :id AND lease_until > now()
    ),
    heads AS (
        SELECT o.position FROM subscription_outbox o
        WHERE o.subscription_id = :id AND o.next_attempt_at <= now()
          AND (o.lease_until IS NULL OR o.lease_until <= now())
          -- A key's head only: events sharing a key go one at a time, in position order.
          -- (A correlated subquery, so that it is always one probe of the key's index, even
          -- before the table's statistics say how many rows there are.)
          AND o.position = (
              SELECT min(p.position) FROM subscription_outbox p
              WHERE p.subscription_id = o.subscription_id AND p.key = o.key)
        ORDER BY o.position
        -- Up to `max_in_flight` leases in all; `ahead` more (heads leased before a slot is
        -- free) only while every lease is the claiming process's own (`own` of them), so
        -- that requests open in the deployment stay within `max_in_flight` (a process opens
        -- at most that many; another one claims nothing until the leases drop below it).
        LIMIT (SELECT greatest(0, least(:n, :max_in_flight - busy.n
                   + CASE WHEN busy.n <= :own THEN :ahead ELSE 0 END)) FROM busy)
        FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
        UPDATE subscription_outbox o
        SET lease_until = now() + make_interval(secs => :lease_s), attempts = o.attempts + 1,
            first_attempt_at = coalesce(o.first_attempt_at, now())
        WHERE o.subscription_id = :id
          AND o.position = ANY(ARRAY(SELECT position FROM heads))
        RETURNING o.position, o.event_id, o.attempts AS claim_attempts, o.first_attempt_at,
                  o.recorded_at
    )
    SELECT c.position, c.claim_attempts, c.first_attempt_at, c.recorded_at, {_EVENT}
    FROM claimed c JOIN events e ON e.event_id = c.event_id
    ORDER BY c.position
    """
)

_EVENT_FIELDS = Event.__struct_fields__


async def claim(
    conn: AsyncConnection,
    subscription_id: int,
    n: int,
    lease_s: float,
    *,
    ahead: int = 0,
    own: int = 0,
) -> tuple[Endpoint | None, list[Claim]]:
    """Lease up to `n` due key heads of an active subscription, in the caller's transaction
    (commit it at once). The endpoint is None when the subscription is gone or not active.
    Leases stop at `max_in_flight`, or `max_in_flight + ahead` while the caller, holding `own`
    unexpired leases, holds every lease there is."""
    sub = (await conn.execute(_CLAIM_LOCK, {"id": subscription_id})).one_or_none()
    if sub is None or sub.state != "active":
        return None, []
    secrets = (bytes(sub.secret),) + ((bytes(sub.previous),) if sub.previous else ())
    endpoint = Endpoint(sub.url, secrets, sub.max_in_flight)
    if n <= 0:
        return endpoint, []
    rows = await conn.execute(
        _CLAIM,
        {
            "id": subscription_id,
            "n": n,
            "max_in_flight": sub.max_in_flight,
            "lease_s": lease_s,
            "ahead": ahead,
            "own": own,
        },
    )
    claims = []
    for row in rows:
        fields = dict(row._mapping)
        fields["attempts"] = fields.pop("fetch_attempts")
        event = Event(**{name: fields[name] for name in _EVENT_FIELDS})
        claims.append(
            Claim(
                subscription_id,
                int(row.position),
                int(row.claim_attempts),
                row.first_attempt_at,
                row.recorded_at,
                event,
            )
        )
    return endpoint, claims


@dataclass(frozen=True, slots=True)
class Result:
    """How one delivery attempt went."""

    subscription_id: int
    position: int
    attempts: int  # the claim's: a result for an older attempt changes no row
    outcome: Outcome
    retry_in_s: float = 0.0  # when not delivered: the wait before the next attempt
    error: str | None = None
    give_up: bool = False  # past the retry horizon: the subscription becomes `failing`


# One statement (the writer keeps an autocommit connection): delivered rows leave the outbox,
# failed ones wait for their next attempt, the counts add up, and a subscription records its
# newest error, pauses on 410 Gone, or becomes `failing` past its retry horizon (only from
# `active`: an operator's pause stands).
_RECORD = text(
    """
    WITH r AS (
        SELECT * FROM unnest(
            CAST(:subscription_ids AS bigint[]), CAST(:positions AS bigint[]),
            CAST(:attempts AS integer[]), CAST(:outcomes AS text[]),
            CAST(:retry_in_s AS double precision[]), CAST(:errors AS text[]),
            CAST(:give_up AS boolean[]), CAST(:seq AS integer[])
        ) AS r(subscription_id, position, attempts, outcome, retry_in_s, error, give_up, seq)
    ),
    delivered AS (
        DELETE FROM subscription_outbox o USING r
        WHERE r.outcome = 'delivered' AND o.subscription_id = r.subscription_id
          AND o.position = r.position AND o.attempts = r.attempts
        RETURNING 1
    ),
    failed AS (
        UPDATE subscription_outbox o
        SET lease_until = NULL, last_error = r.error,
            next_attempt_at = now() + make_interval(secs => r.retry_in_s)
        FROM r
        WHERE r.outcome <> 'delivered' AND o.subscription_id = r.subscription_id
          AND o.position = r.position AND o.attempts = r.attempts
        RETURNING 1
    ),
    counted AS (
        INSERT INTO subscription_deliveries AS d (subscription_id, outcome, count)
        SELECT r.subscription_id, r.outcome, count(*) FROM r
        WHERE EXISTS (SELECT 1 FROM subscriptions s WHERE s.subscription_id = r.subscription_id)
        GROUP BY r.subscription_id, r.outcome
        ON CONFLICT (subscription_id, outcome) DO UPDATE SET count = d.count + excluded.count
        RETURNING 1
    ),
    errors AS (
        SELECT DISTINCT ON (subscription_id) subscription_id, error,
               bool_or(outcome = 'gone') OVER w AS gone, bool_or(give_up) OVER w AS give_up
        FROM r WHERE outcome <> 'delivered'
        WINDOW w AS (PARTITION BY subscription_id)
        ORDER BY subscription_id, seq DESC
    ),
    noted AS (
        UPDATE subscriptions s
        SET last_error = errors.error, last_error_at = now(), updated_at = now(),
            state = CASE WHEN s.state <> 'active' THEN s.state
                         WHEN errors.gone THEN 'paused'
                         WHEN errors.give_up THEN 'failing'
                         ELSE s.state END
        FROM errors
        WHERE s.subscription_id = errors.subscription_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM delivered), (SELECT count(*) FROM failed),
           (SELECT count(*) FROM counted), (SELECT count(*) FROM noted)
    """
)


async def record_outcomes(conn: AsyncConnection, results: Sequence[Result]) -> list[None]:
    """Write a batch of delivery results in one statement (a `GroupWriter`'s write)."""
    await conn.execute(
        _RECORD,
        {
            "subscription_ids": [r.subscription_id for r in results],
            "positions": [r.position for r in results],
            "attempts": [r.attempts for r in results],
            "outcomes": [r.outcome for r in results],
            "retry_in_s": [r.retry_in_s for r in results],
            "errors": [r.error for r in results],
            "give_up": [r.give_up for r in results],
            "seq": list(range(len(results))),
        },
    )
    return [None] * len(results)


async def release(conn: AsyncConnection, claims: Sequence[Claim]) -> None:
    """Give back leases of claims never sent (leased ahead, then the pump stopped or the
    subscription was paused): due again at once, their attempt not counted."""
    await conn.execute(
        text(
            "UPDATE subscription_outbox o SET lease_until = NULL, attempts = o.attempts - 1, "
            "first_attempt_at = CASE WHEN o.attempts = 1 THEN NULL ELSE o.first_attempt_at END "
            "FROM unnest(CAST(:positions AS bigint[]), CAST(:attempts AS integer[])) "
            "AS c(position, attempts) "
            "WHERE o.subscription_id = :id AND o.position = c.position "
            "AND o.attempts = c.attempts"
        ),
        {
            "id": claims[0].subscription_id if claims else 0,
            "positions": [c.position for c in claims],
            "attempts": [c.attempts for c in claims],
        },
    )


@dataclass(frozen=True, slots=True)
class Lag:
    name: str
    events: int
    seconds: float


async def lags(conn: AsyncConnection) -> list[Lag]:
    """Each subscription's lag (for the `paxos_subscription_lag_events` gauge)."""
    return [
        Lag(v.name, v.lag_events, v.lag_seconds)
        for v in (_view(r) for r in (await conn.execute(_VIEW, {"name": None})).all())
    ]
