"""`serve`'s server leaves what its startup made out of every later garbage collection."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import uvicorn

from service.web.serving import Server


def test_what_startup_made_is_frozen_once_the_server_has_started() -> None:
    made: list[list[list[int]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                made.append([[] for _ in range(5_000)])  # what a startup keeps: containers
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    server = Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))

    async def frozen_while_serving() -> tuple[int, int]:
        before = gc.get_freeze_count()
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        during = gc.get_freeze_count()
        server.should_exit = True
        await serving
        return before, during

    gc.unfreeze()
    try:
        before, during = asyncio.run(frozen_while_serving())
    finally:
        gc.unfreeze()  # the rest of the suite collects as usual
    assert before == 0
    assert during >= 5_001  # the startup's lists and the list holding them, at least
