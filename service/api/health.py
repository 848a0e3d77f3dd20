"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db.migrations import head_revision, revision_of
from service.db.outages import STORE_ERRORS
from service.settings import Settings
from service.store.audit.anchors import SinkStatus, sink_status
from service.store.fetch_queue import fetch_backlog
from service.store.paxos_connection import PaxosConnection, read_connection
from service.store.projections.checkpoints import lag as projection_lag
from service.store.subscriptions import failing_subscriptions


class Live(msgspec.Struct, frozen=True):
    status: str


class Backlog(msgspec.Struct, frozen=True):
    pending: int
    oldest_pending_age_s: float | None


class Ready(msgspec.Struct, frozen=True):
    status: str  # "ready" | "not_ready"
    database: str  # "ok" | "unreachable"
    migrations: str  # "current" | "behind" | "unknown"
    fetch_backlog: Backlog | None = None
    # Per projection; readiness fails when one is more than PROJECTION_MAX_LAG_S behind.
    # Left out (not null) when the database could not be asked.
    projections: list[ProjectionLag] | msgspec.UnsetType = msgspec.UNSET
    # "on" (this process fetches), "workers" (serve --no-background: `worker` processes do),
    # "off" (no Paxos credentials: webhooks are stored and acknowledged, nothing is fetched).
    # "off" is still ready: the intake, which Paxos needs, works.
    fetching: str | msgspec.UnsetType = msgspec.UNSET
    # Push subscriptions that gave up retrying (`failing`): shown, but they do not make the
    # service unready (the receiver is at fault, and the service itself works).
    failing_subscriptions: list[str] | msgspec.UnsetType = msgspec.UNSET
    # "signed" (AUDIT_SIGNING_KEY set: each new seal is signed) or "unsigned"; either is ready.
    seals: str | msgspec.UnsetType = msgspec.UNSET
    # "ok", or "degraded" when a seal has waited more than AUDIT_ANCHOR_MAX_LAG_S for its
    # anchor in some sink of AUDIT_ANCHOR_URL; "off" without sinks. Degraded is still ready.
    anchoring: str | msgspec.UnsetType = msgspec.UNSET
    # How the calls to Paxos go (left out when fetching is off): shown, never a reason to be
    # unready, since the intake that Paxos needs works without it and fetching catches up.
    paxos: PaxosView | msgspec.UnsetType = msgspec.UNSET


class PaxosView(msgspec.Struct, frozen=True):
    # "ok", "failing" (the latest token request failed, `token_error` says why) or "unknown"
    # (none made yet).
    token: str
    token_error: str | None
    token_checked_at: datetime | None
    last_get_event_at: datetime | None


def paxos_view(state: PaxosConnection) -> PaxosView:
    """The API shape of the recorded Paxos connection."""
    token = "unknown" if state.token_ok is None else "ok" if state.token_ok else "failing"
    return PaxosView(token, state.token_error, state.token_checked_at, state.last_get_event_at)


class ProjectionLag(msgspec.Struct, frozen=True):
    name: str
    events_behind: int
    seconds_behind: float
    ok: bool


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", summary="The process is up")
    async def live(self) -> Live:
        return Live("ok")

    @get(
        "/ready",
        summary="Database reachable and migrated; fetch backlog",
        responses={
            503: ResponseSpec(
                Ready,
                description="Not ready: the body says what is wrong.",
                generate_examples=False,
            )
        },
    )
    async def ready(
        self,
        engine: NamedDependency[AsyncEngine],
        settings: NamedDependency[Settings],
        fetching: NamedDependency[str],
    ) -> Response[Ready]:
        try:
            async with asyncio.timeout(3), engine.connect() as conn:
                revision = await revision_of(conn)
                if revision is None:
                    return Response(
                        Ready("not_ready", "ok", "behind", fetching=fetching), status_code=503
                    )
                current = revision == head_revision()
                backlog = await fetch_backlog(conn)
                lags = await projection_lag(conn) if current else []
                failing = await failing_subscriptions(conn) if current else []
                anchors = (
                    await sink_status(conn, settings.audit_anchor_url)
                    if current and settings.audit_anchor_url
                    else []
                )
                paxos = (
                    paxos_view(await read_connection(conn))
                    if current and fetching != "off"
                    else msgspec.UNSET
                )
        except STORE_ERRORS:
            return Response(
                Ready("not_ready", "unreachable", "unknown", fetching=fetching), status_code=503
            )
        projections = [
            ProjectionLag(
                p.name,
                p.events_behind,
                round(p.seconds_behind, 3),
                p.seconds_behind <= settings.projection_max_lag_s,
            )
            for p in lags
        ]
        ok = current and all(p.ok for p in projections)
        body = Ready(
            "ready" if ok else "not_ready",
            "ok",
            "current" if current else "behind",
            Backlog(backlog.pending, backlog.oldest_pending_age_s),
            projections,
            fetching,
            failing,
            seals="signed" if settings.audit_signing_key is not None else "unsigned",
            anchoring=_anchoring(settings, anchors),
            paxos=paxos,
        )
        return Response(body, status_code=200 if ok else 503)


def _anchoring(settings: Settings, sinks: list[SinkStatus]) -> str:
    if not settings.audit_anchor_url:
        return "off"
    lagging = any(s.behind_s > settings.audit_anchor_max_lag_s for s in sinks)
    return "degraded" if lagging else "ok"
