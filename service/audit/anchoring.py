"""The anchorer: writes the seal chain's head to every sink outside the database.

After each new seal, at most every AUDIT_ANCHOR_INTERVAL_S per sink, the head seal (id,
positions, hash, signature, key id, time, and with AUDIT_TSA_URL an RFC 3161 token over the
hash) goes as one small JSON document (service/domain/anchor.py) to each sink. One anchorer at
a time across processes (an advisory lock, like the sealer's). It never blocks intake or
sealing: it only reads the seals; a failed sink (or TSA) is counted
(paxos_audit_anchor_failures_total{sink}), recorded for the console, and retried with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.tsa import TimestampError, timestamp
from service.db.outages import STORE_ERRORS, Outage
from service.domain.anchor import Anchor
from service.settings import Settings
from service.store.audit.anchors import (
    TSA_SINK,
    head_seal,
    last_anchored,
    record_anchor,
    record_failure,
    try_lock,
)
from service.store.audit.sinks import Sink, sink_for
from service.telemetry.metrics import AUDIT_ANCHOR_FAILURES

log = structlog.get_logger(__name__)


def sinks_of(settings: Settings) -> list[Sink]:
    """The sinks AUDIT_ANCHOR_URL names."""
    return [
        sink_for(
            url,
            s3_endpoint=settings.audit_anchor_s3_endpoint,
            retain_days=settings.audit_anchor_retain_days,
        )
        for url in settings.audit_anchor_url
    ]


class Backoff:
    """Per sink: after n failures in a row, wait first_s * 2**(n-1) (at most cap_s)."""

    def __init__(self, first_s: float, cap_s: float) -> None:
        self.first_s = first_s
        self.cap_s = cap_s
        self._failures: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def ready(self, sink: str) -> bool:
        return time.monotonic() >= self._until.get(sink, 0.0)

    def failed(self, sink: str) -> None:
        n = self._failures.get(sink, 0) + 1
        self._failures[sink] = n
        self._until[sink] = time.monotonic() + min(self.cap_s, self.first_s * 2 ** (n - 1))

    def succeeded(self, sink: str) -> None:
        self._failures.pop(sink, None)
        self._until.pop(sink, None)


class Anchorer:
    """The background anchorer: every `poll_s`, anchors the head where it is due."""

    def __init__(
        self,
        engine: AsyncEngine,
        http: httpx.AsyncClient,
        sinks: Sequence[Sink],
        *,
        interval_s: float,
        tsa_url: str | None = None,
        poll_s: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._engine = engine
        self._http = http
        self._sinks = list(sinks)
        self._interval_s = interval_s
        self._tsa_url = tsa_url
        self._poll_s = poll_s
        self._backoff = backoff or Backoff(first_s=1.0, cap_s=max(60.0, interval_s))

    async def run(self) -> None:
        outage = Outage("anchoring", first_s=self._poll_s, cap_s=self._poll_s)
        while True:
            try:
                await self.anchor_once()
                outage.succeeded()
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                outage.failed(exc)
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("anchoring failed; retrying next round")
            await asyncio.sleep(self._poll_s)

    async def anchor_once(self) -> list[str]:
        """Anchor the head to each sink where it is due; the sinks written to."""
        written: list[str] = []
        async with self._engine.connect() as conn, conn.begin():
            if not await try_lock(conn):
                return written
            head = await head_seal(conn)
            if head is None:
                return written
            last = await last_anchored(conn)
            now = datetime.now(UTC)
            due = [
                s
                for s in self._sinks
                if self._backoff.ready(s.url)
                and (s.url not in last or last[s.url][0] < head.seal_id)
                and (
                    s.url not in last or (now - last[s.url][1]).total_seconds() >= self._interval_s
                )
            ]
            if not due:
                return written
            token: str | None = None
            if self._tsa_url is not None:
                if not self._backoff.ready(TSA_SINK):
                    return written
                try:
                    token = await timestamp(self._http, self._tsa_url, bytes.fromhex(head.hash_hex))
                    self._backoff.succeeded(TSA_SINK)
                except TimestampError as exc:
                    # Anchoring waits for the TSA; sealing and intake do not.
                    self._fail(TSA_SINK, str(exc))
                    await record_failure(conn, TSA_SINK, str(exc))
                    return written
            anchor = Anchor(
                seal_id=head.seal_id,
                first_position=head.first_position,
                last_position=head.last_position,
                seal_hash=head.hash_hex,
                signature=head.signature_hex,
                key_id=head.key_id,
                anchored_at=now,
                timestamp_token=token,
            )
            failed: dict[str, str] = {}
            for sink in due:
                try:
                    await sink.write(anchor)
                except Exception as exc:  # noqa: BLE001 - one sink's failure is its own
                    failed[sink.url] = f"{type(exc).__name__}: {exc}"
                    self._fail(sink.url, failed[sink.url])
                    continue
                self._backoff.succeeded(sink.url)
                written.append(sink.url)
            # Recorded after every write: until now the transaction wrote nothing (no xid).
            for url in written:
                await record_anchor(conn, url, anchor)
            if token is not None:  # the TSA answered: its success, its failures cleared
                await record_anchor(conn, TSA_SINK, anchor)
            for url, error in failed.items():
                await record_failure(conn, url, error)
        if written:
            log.info("seal head anchored", seal_id=anchor.seal_id, sinks=written)
        return written

    def _fail(self, sink: str, error: str) -> None:
        AUDIT_ANCHOR_FAILURES.labels(sink=sink).inc()
        self._backoff.failed(sink)
        log.warning("anchoring failed; retrying with backoff", sink=sink, error=error)
