"""The app on the test's own event loop: its lifespan run by hand, HTTP through ASGI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar


@asynccontextmanager
async def running(app: Litestar) -> AsyncIterator[None]:
    """Run `app`'s lifespan in a task of its own (its cancel scopes must enter and exit in one
    task, and pytest may set up and tear down a fixture in different ones)."""
    started = asyncio.Event()
    stop = asyncio.Event()

    async def lifespan() -> None:
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what the startup raised
    try:
        yield
    finally:
        stop.set()
        await task


async def app_client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for `app` on the test's own event loop, lifespan entered."""
    async with (
        running(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        yield client
