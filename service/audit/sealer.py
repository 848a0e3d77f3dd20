"""The background sealer: keeps the journal's seal chain close behind its horizon."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.store.audit.seals import seal_pending

log = structlog.get_logger(__name__)


class Sealer:
    """The background sealer: seals what is pending every `interval_s` seconds."""

    def __init__(self, engine: AsyncEngine, *, interval_s: float) -> None:
        self._engine = engine
        self._interval_s = interval_s

    async def run(self) -> None:
        outage = Outage("sealing", first_s=self._interval_s, cap_s=self._interval_s)
        while True:
            try:
                sealed = await seal_pending(self._engine)
                outage.succeeded()
                if sealed:
                    log.debug(
                        "journal sealed",
                        seals=len(sealed),
                        through=sealed[-1].last_position,
                        head=sealed[-1].hash_hex,
                    )
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                # The database is away: said once, not with a traceback every interval.
                outage.failed(exc)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("sealing failed; retrying next interval")
            await asyncio.sleep(self._interval_s)
