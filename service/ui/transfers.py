"""The transfers pages: the list (by status, type, last event time; keyset paged) and one
transfer: its state now or as of a time, what each event changed, and its events."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.store.console import transfer_events
from service.store.projections.read import Page, get_transfer, list_transfers
from service.ui.errors import ConsoleError
from service.ui.pages import page
from service.ui.session import Session
from service.ui.subjects import CHANGED, Form, Window, list_page, travel

TRANSFER_STATUSES = ("PENDING", "COMPLETED", "FAILED")
LIST_FIELDS = ("status", "type", "profile_id", *CHANGED)


class TransferPages(Controller):
    path = "/transfers"

    @get("/")
    async def transfers_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
    ) -> Template:
        async def fetch(conn: AsyncConnection, form: Form, window: Window) -> Page:
            return await list_transfers(
                conn,
                filters={
                    # Stored as Paxos sends them, in capitals: any case typed finds them.
                    "status": form.typed["status"].upper() or None,
                    "type": form.typed["type"].upper() or None,
                    "profile_id": form.typed["profile_id"] or None,
                },
                **window,
            )

        return await list_page(
            request.query_params,
            session,
            reader,
            nav="transfers",
            fields=LIST_FIELDS,
            id_key="transfer_id",
            statuses=TRANSFER_STATUSES,
            fetch=fetch,
        )

    @get("/{transfer_id:str}")
    async def transfer_page(
        self,
        request: Request[Any, Any, State],
        session: NamedDependency[Session],
        reader: NamedDependency[AsyncEngine],
        transfer_id: FromPath[str],
    ) -> Template:
        async with reader.connect() as conn:
            transfer = await get_transfer(conn, transfer_id)
            if transfer is None:
                raise ConsoleError(status_code=404, detail=f"No transfer with id {transfer_id}.")
            items = await transfer_events(conn, transfer_id)
            base_url = f"/ui/transfers/{transfer_id}"
            travelled = await travel(conn, "transfers", transfer_id, request.query_params, base_url)
        return page(
            "transfer.html",
            session,
            status_code=400 if travelled.form.problems else 200,
            nav="transfers",
            transfer_id=transfer_id,
            transfer=travelled.shown(transfer),
            travelling=travelled.travelling,
            form=travelled.form,
            timeline=travelled.timeline,
            items=items,
        )
