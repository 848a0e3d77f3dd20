"""Group commit: items that arrive while one transaction commits share the next.

A caller `submit`s an item and awaits its outcome; a few writer tasks drain the queue, each
writing everything queued at that moment in one transaction, then answering every waiting
caller. Under no load a batch is a single item and adds no wait; under load the cost of a
commit (the fsync) is shared by the whole batch.

Nothing is answered before its commit, and a failed batch fails every waiter with
`CommitFailed`, never leaving one hanging. When the statement fails for a reason that is not
the connection's (`is_connection_error`), whether the error came through SQLAlchemy or from
the driver directly, the batch is split in halves and each half written again, down to single
items: one item Postgres refuses fails alone, its neighbours are stored, and the writer keeps
its connection. Only a connection error discards the connection and fails the whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg
import structlog
from asyncpg.exceptions._base import DataError as ArgumentError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")

WriteBatch = Callable[[AsyncConnection, Sequence[T]], Awaitable[Sequence[R]]]


# The longest a batch may take on a held connection: well past the intake's answer (503 after
# COMMIT_TIMEOUT_S, 10 s), far past any batch a working server takes.
HELD_WRITE_TIMEOUT_S = 30.0


class CommitFailed(Exception):
    """The batch holding this item did not commit; nothing of it was stored."""


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R] = field(repr=False)


class GroupWriter(Generic[T, R]):
    """Batches `submit`ted items into transactions written by `write`.

    `write(conn, items)` runs inside the transaction and returns one result per item, in
    order; it must not commit.

    With `single_statement=True`, `write` promises to do all its work in one statement, which
    Postgres runs as a transaction of its own: each writer task then keeps one connection in
    autocommit mode instead of checking one out and sending BEGIN and COMMIT per batch
    (measured: about a third of the server's CPU per batch), and `prepare` runs once on it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        write: WriteBatch[T, R],
        *,
        name: str,
        writers: int = 2,
        max_batch: int = 1000,
        single_statement: bool = False,
        prepare: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        held_timeout_s: float = HELD_WRITE_TIMEOUT_S,
    ) -> None:
        self._engine = engine
        self._held_timeout_s = held_timeout_s
        self._write_batch = write
        self._name = name
        self._writers = writers
        self._max_batch = max_batch
        self._single_statement = single_statement
        self._prepare = prepare
        self._queue: list[_Pending[T, R]] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def submit(self, item: T) -> R:
        """Write `item` durably and return its result; raise `CommitFailed` if it could not be."""
        if self._closing:
            raise CommitFailed("shutting down")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(item, future))
        self._wakeup.set()
        return await future

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self._name}-writer-{i}")
            for i in range(self._writers)
        ]

    async def stop(self) -> None:
        """Write what is queued, then stop the writer tasks."""
        self._closing = True
        while self._queue and self._tasks:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _run(self) -> None:
        held = _Held(self._engine, self._prepare) if self._single_statement else None
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                if self._queue:
                    self._wakeup.set()  # let an idle writer take the rest at once
                await self._commit(batch, held)
        finally:
            if held is not None:
                await held.release()

    async def _commit(
        self, batch: list[_Pending[T, R]], held: _Held | None = None, *, split: bool = False
    ) -> None:
        try:
            await self._write(batch, held)
        except asyncio.CancelledError:
            _fail(batch, "shutting down")
            raise
        except Exception as exc:  # noqa: BLE001
            # SQLAlchemy's errors and the driver's own (where `write` uses the driver
            # directly): whatever it is, every waiter gets its answer and this writer lives on
            # to write the next batch.
            if is_connection_error(exc):
                log.error("commit failed", writer=self._name, size=len(batch), error=describe(exc))
                _fail(batch, "the store is unavailable")
            elif len(batch) == 1:
                log.error("item refused by the store", writer=self._name, error=describe(exc))
                _fail(batch, "the store refused this item")
            else:
                # Not the connection's fault: one item may be the cause. Write each half again
                # (down to single items), so its neighbours are not lost with it; one bad item
                # in n costs about 2·log2(n) statements more.
                if not split:
                    log.warning(
                        "batch failed; writing it again in parts",
                        writer=self._name,
                        size=len(batch),
                        error=describe(exc),
                    )
                middle = len(batch) // 2
                await self._commit(batch[:middle], held, split=True)
                await self._commit(batch[middle:], held, split=True)

    async def _write(self, batch: list[_Pending[T, R]], held: _Held | None) -> None:
        items = [p.item for p in batch]
        if held is None:
            async with self._engine.begin() as conn:
                results = await self._write_batch(conn, items)
        else:
            conn = await held.connection()
            try:
                # A statement on a server that went silent (a frozen or cut-off primary)
                # would wait for TCP to give up, for minutes; the writer gives up sooner,
                # discards the connection, and the next batch connects afresh (passing the
                # silent host by: service.db.engine.connect).
                async with asyncio.timeout(self._held_timeout_s):
                    results = await self._write_batch(conn, items)
            except BaseException as exc:
                if isinstance(exc, Exception) and not is_connection_error(exc):
                    # The statement failed, the connection did not: keep it for the next one.
                    await held.recover()
                else:
                    # The next batch starts on a fresh connection; this one may be dead.
                    await held.release(broken=True)
                raise
        # Committed: now, and only now, answer.
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)


# SQLSTATE classes that say the connection (or the server behind it) failed, not one item of
# the statement: 08 connection exception, 53 insufficient resources (too many connections,
# disk full, out of memory), 57 operator intervention (shutdown, crash; also a statement
# cancelled or timed out, which no item is to blame for: the batch fails, and the connection is
# replaced rather than trusted), 58 system error, XX internal error.
_CONNECTION_CLASSES = ("08", "53", "57", "58", "XX")
# A read-only transaction: after a failover the connection leads to what is now a standby; a
# new connection finds the new primary (`target_session_attrs=read-write`).
_READ_ONLY = "25006"


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` means the connection (or the server) failed, so the connection is
    discarded and the batch fails, rather than the statement (then the batch is split).

    Statement errors are those Postgres answered about the statement (a value out of range,
    a constraint, a cast: SQLSTATE classes 22, 23, 42, ...) and the driver's refusal of an
    argument before sending it; anything not known to be one counts as a connection error.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    driver = _driver_error(exc)
    if isinstance(driver, ArgumentError):
        return False  # asyncpg could not encode an argument; nothing was sent
    if isinstance(driver, asyncpg.PostgresError):
        if isinstance(driver, asyncpg.PostgresConnectionError):
            return True
        sqlstate = str(getattr(driver, "sqlstate", "") or "")
        return sqlstate[:2] in _CONNECTION_CLASSES or sqlstate == _READ_ONLY or not sqlstate
    return True


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own exception behind SQLAlchemy's wrapping of it (`exc` if none)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _DRIVER_ERRORS):
            return current
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return exc


# A writer's held connection unused for longer than this is checked before its next batch.
IDLE_CHECK_S = 1.0


class _Held:
    """One writer's own connection in autocommit mode, taken when first needed."""

    def __init__(
        self, engine: AsyncEngine, prepare: Callable[[AsyncConnection], Awaitable[None]] | None
    ) -> None:
        self._engine = engine
        self._prepare = prepare
        self._conn: AsyncConnection | None = None
        self._used_at = 0.0

    async def connection(self) -> AsyncConnection:
        now = time.monotonic()
        if self._conn is not None and not await _alive(self._conn, now - self._used_at):
            await self.release(broken=True)
        self._used_at = now
        if self._conn is None:
            conn = await self._engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                if self._prepare is not None:
                    await self._prepare(conn)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def recover(self) -> None:
        """After a failed statement: clear SQLAlchemy's transaction state (in autocommit it
        holds nothing on the server), or discard the connection if that fails."""
        conn = self._conn
        if conn is None or not conn.in_transaction():
            return
        try:
            await conn.rollback()
        except Exception:  # noqa: BLE001 - the connection is suspect: use another
            await self.release(broken=True)

    async def release(self, *, broken: bool = False) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if broken:
            # A failed statement may have come from the driver directly, which the pool never
            # saw: discard the connection rather than hand it, perhaps dead, to the next user.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()
            return
        with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
            # Session settings must not follow the connection back into the pool.
            await conn.exec_driver_sql("RESET ALL")
        with contextlib.suppress(SQLAlchemyError, OSError, TimeoutError):
            await conn.close()


async def _alive(conn: AsyncConnection, idle_s: float) -> bool:
    """Whether a held connection still works: free to tell when the server closed it (the
    driver saw the socket close), one round trip after an idle spell (the server may have gone
    away without a word meanwhile; without load, the round trip costs nothing)."""
    try:
        raw = await conn.get_raw_connection()
        is_closed = getattr(raw.driver_connection, "is_closed", None)
        if is_closed is not None and is_closed():
            return False
        if idle_s > IDLE_CHECK_S:
            await conn.exec_driver_sql("SELECT 1")
    except Exception:  # noqa: BLE001 - any failure means: use another connection
        return False
    return True


def _fail(batch: Sequence[_Pending[T, R]], reason: str) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(CommitFailed(reason))


def describe(exc: BaseException) -> str:
    """The error's class and the driver's first line: enough to act on, never the statement's
    parameters (request data) nor a connection string."""
    orig = getattr(exc, "orig", None) or exc
    first_line = str(orig).splitlines()[0] if str(orig) else ""
    return f"{type(orig).__name__}: {first_line}"[:300]
