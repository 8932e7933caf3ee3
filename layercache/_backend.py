"""Which event loop is running: asyncio or trio (the two anyio backends we support)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class Event(Protocol):
    """What anyio's, trio's and asyncio's events have in common."""

    def set(self) -> Any: ...

    def is_set(self) -> bool: ...

    def wait(self) -> Awaitable[Any]: ...


def running_library() -> str:
    """``"trio"`` or ``"asyncio"``, for the loop running this call.

    sniffio comes with trio (anyio itself does not need it): where it is missing, trio
    is not installed and the loop is asyncio's.
    """
    try:
        import sniffio
    except ImportError:  # pragma: no cover - trio is not installed
        return "asyncio"
    return sniffio.current_async_library()


def event_type() -> Callable[[], Event]:
    """The running loop's own event class, for events made per request.

    ``anyio.Event()`` looks the backend up each time it is made (a tenth of a cold
    Redis request's Python work); the loop's own class is what it wraps, and awaiting
    it under anyio's cancel scopes behaves the same on both loops.
    """
    if running_library() == "trio":
        import trio

        return trio.Event
    import asyncio

    return asyncio.Event
