"""The background sealer: keeps the journal's seal chain close behind its horizon."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.outages import STORE_ERRORS, Outage
from service.domain.signing import Signer, read_signer
from service.settings import Settings
from service.store.audit.seals import seal_pending

log = structlog.get_logger(__name__)


def signer_for(settings: Settings) -> Signer | None:
    """The seals' signing key (AUDIT_SIGNING_KEY, read once per process), or None: unsigned.
    ValueError naming the setting if the file is missing or not an Ed25519 private key."""
    if settings.audit_signing_key is None:
        return None
    try:
        return read_signer(settings.audit_signing_key)
    except ValueError as exc:
        raise ValueError(f"AUDIT_SIGNING_KEY: {exc}") from None


class Sealer:
    """The background sealer: seals what is pending every `interval_s` seconds, signing each
    seal with `signer` (AUDIT_SIGNING_KEY) if given."""

    def __init__(
        self, engine: AsyncEngine, *, interval_s: float, signer: Signer | None = None
    ) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._signer = signer

    async def run(self) -> None:
        outage = Outage("sealing", first_s=self._interval_s, cap_s=self._interval_s)
        while True:
            try:
                sealed = await seal_pending(self._engine, signer=self._signer)
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
