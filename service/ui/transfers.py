"""A transfer's page: its projected state and the events about it, newest first."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncEngine

from service.store.console import transfer_events
from service.store.projections.read import get_transfer
from service.ui.errors import ConsoleError
from service.ui.pages import page
from service.ui.session import Session


class TransferPages(Controller):
    path = "/transfers"

    @get("/{transfer_id:str}")
    async def transfer_page(
        self,
        session: NamedDependency[Session],
        engine: NamedDependency[AsyncEngine],
        transfer_id: FromPath[str],
    ) -> Template:
        async with engine.connect() as conn:
            transfer = await get_transfer(conn, transfer_id)
            if transfer is None:
                raise ConsoleError(status_code=404, detail=f"No transfer with id {transfer_id}.")
            items = await transfer_events(conn, transfer_id)
        return page("transfer.html", session, transfer=transfer, items=items)
