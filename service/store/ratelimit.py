"""The deployment-wide rate limits' rows (GCRA): permits taken, rows created, 429 pauses."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

_TAKE = text(
    """
    WITH now AS (SELECT clock_timestamp() AS t),
    taken AS (
        UPDATE rate_limits r
        SET tat = greatest(r.tat, now.t) + :n * make_interval(secs => :interval)
        FROM now
        WHERE r.name = :name
          AND (r.paused_until IS NULL OR r.paused_until <= now.t)
          AND greatest(r.tat, now.t) - now.t <= make_interval(secs => :horizon)
        RETURNING extract(epoch FROM greatest(r.tat, now.t) - now.t
                          - :n * make_interval(secs => :interval)) AS first_in
    )
    SELECT (SELECT first_in FROM taken) AS first_in,
           extract(epoch FROM (SELECT t FROM now)) AS db_now,
           (SELECT extract(epoch FROM greatest(r.tat, r.paused_until, now.t) - now.t)
              FROM rate_limits r, now WHERE r.name = :name) AS wait
    """
)

_CREATE = text("INSERT INTO rate_limits (name) VALUES (:name) ON CONFLICT (name) DO NOTHING")

_PAUSE = text(
    """
    INSERT INTO rate_limits (name, paused_until)
    VALUES (:name, clock_timestamp() + make_interval(secs => :seconds))
    ON CONFLICT (name) DO UPDATE
    SET paused_until = greatest(rate_limits.paused_until, excluded.paused_until)
    """
)


@dataclass(frozen=True, slots=True)
class Taken:
    """What one try to take permits found, in seconds on the database's clock.

    `first_in`: how long after `db_now` the first granted permit starts, or None if none was
    granted; `wait`: how far the booked-ahead slots (or a pause) reach past `db_now`, or None
    if the limit's row does not exist yet.
    """

    first_in: float | None
    db_now: float
    wait: float | None


async def take_permits(
    conn: AsyncConnection, name: str, n: int, interval: float, horizon: float
) -> Taken:
    """Book `n` permits `interval` seconds apart if at most `horizon` seconds are booked ahead."""
    row = (
        await conn.execute(_TAKE, {"name": name, "n": n, "interval": interval, "horizon": horizon})
    ).one()
    return Taken(
        first_in=None if row.first_in is None else float(row.first_in),
        db_now=float(row.db_now),
        wait=None if row.wait is None else float(row.wait),
    )


async def create_limit(conn: AsyncConnection, name: str) -> None:
    """Create the limit's row (the first call of the deployment); nothing if it exists."""
    await conn.execute(_CREATE, {"name": name})


async def pause_limit(conn: AsyncConnection, name: str, seconds: float) -> None:
    """Refuse every permit of the limit for `seconds` from now (or longer, if already paused)."""
    await conn.execute(_PAUSE, {"name": name, "seconds": seconds})
