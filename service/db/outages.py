"""The database being away: how to tell it from a bug, and a loop's spells without it.

`STORE_ERRORS` are the exceptions that may mean the database is away; `is_store_outage` says
whether one does (an HTTP answer is then 503, so the client retries) or is a bug (500).

The fetcher, the projector, the sealer and the job runner each poll the database; while it is
away each try fails the same way (`Outage`). One warning when a spell starts says so (a line
per try would bury the log), one line when it ends says it is over, and the pause between
tries doubles up to a cap, so a loop is back within the cap of the database's return without
hammering it meanwhile.
"""

from __future__ import annotations

import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from service.db.batching import describe

log = structlog.get_logger(__name__)

# What "the database is away" may look like: the driver's and SQLAlchemy's errors, a refused
# or cut connection, a connect that timed out. A loop retries on any of them (a bug in a
# statement only repeats, and is logged); an HTTP answer asks `is_store_outage` first.
STORE_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


def is_store_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database could not be reached (connection refused or lost, pool
    exhausted, a timeout) rather than a bug in a statement."""
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, PoolTimeout | OSError | TimeoutError)


class Outage:
    """Consecutive failed tries of one loop (`what`, as the log names it) to reach the
    database."""

    def __init__(self, what: str, *, first_s: float, cap_s: float) -> None:
        self._what = what
        self._first_s = first_s
        self._cap_s = cap_s
        self.failures = 0

    def failed(self, exc: BaseException) -> float:
        """Count a failed try; the pause before the next one (`first_s`, doubling to `cap_s`)."""
        self.failures += 1
        if self.failures == 1:
            log.warning(f"{self._what}: the database is unavailable", error=describe(exc))
        return float(min(self._cap_s, self._first_s * 2 ** (self.failures - 1)))

    def succeeded(self) -> None:
        """A try worked: a spell, if there was one, is over."""
        if self.failures:
            log.info(f"{self._what}: the database is back", failed_tries=self.failures)
            self.failures = 0
