"""Which event loop is running: asyncio or trio (the two anyio backends we support),
and the one owner check: is a call on the thread and loop that entered a stack?"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

try:
    from sniffio import thread_local as _sniffio
except ImportError:  # pragma: no cover - trio (which brings sniffio) is not installed
    _sniffio = None  # type: ignore[assignment]


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


LoopIdentity = tuple[object, object]
"""What runs a call: asyncio's running loop and trio's run token (``None`` for each
that is not running here)."""


def running_loop() -> LoopIdentity:
    """The event loop (or loops) this call runs on, as :data:`LoopIdentity`.

    Both libraries are asked, because they nest in one thread: a trio task can call
    ``asyncio.run()`` synchronously and an asyncio task ``trio.run()`` (the outer one's
    marker stays set inside), and trio's guest mode runs trio inside an asyncio loop.
    Trio marks each task step in sniffio's thread-local (asyncio's nested in it still
    sees it: then both are set, which is neither the trio run's identity nor the nested
    loop's alone). About 60 ns on asyncio, 150 ns on trio.
    """
    loop = asyncio._get_running_loop()
    if _sniffio is None or _sniffio.name != "trio":
        return (loop, None)
    import trio

    return (loop, trio.lowlevel.current_trio_token())


def describe_loop(identity: LoopIdentity) -> str:
    """``identity`` in words, for error messages."""
    loop, trio_run = identity
    if loop is not None and trio_run is not None:
        return "a trio run and an asyncio loop nested in one another"
    if trio_run is not None:
        return f"trio run {id(trio_run):#x}"
    if loop is not None:
        return f"asyncio loop {id(loop):#x}"
    return "no event loop"


class Owner:
    """The thread and event loop that entered a stack, and the check that a call comes
    from them.

    A stack changes its state without locks because one thread runs it, and what it
    awaits belongs to one loop (a trio event cannot be awaited on asyncio, an asyncio
    future not on another loop): a call from anywhere else would corrupt it, so it is
    refused before it touches anything.
    """

    __slots__ = ("loop", "thread", "thread_name")

    def __init__(self) -> None:
        """Record the calling thread and loop: call it from the owner's task."""
        self.thread = threading.get_ident()
        """The owner thread's :func:`threading.get_ident`."""
        self.thread_name = threading.current_thread().name
        self.loop = running_loop()

    def __repr__(self) -> str:
        return f"<Owner thread={self.thread_name!r} {describe_loop(self.loop)}>"

    def check(self, what: str) -> None:
        """Return if the caller runs on the owner's thread and loop.

        :param what: the call, for the message (``"CacheStack.get()"``).
        :raises RuntimeError: the caller is on another thread, or on another event
            loop in the owner's thread; the message says which.
        """
        if threading.get_ident() != self.thread:
            raise RuntimeError(
                f"{what} was called from thread {threading.current_thread().name!r}, but "
                f"this CacheStack belongs to thread {self.thread_name!r}, which entered it: "
                f"use a stack only from the thread and event loop that entered it (from "
                f"a worker thread, hand the call to that loop: anyio.from_thread.run)"
            )
        loop = running_loop()
        if loop[0] is not self.loop[0] or loop[1] is not self.loop[1]:
            raise RuntimeError(
                f"{what} was called from {describe_loop(loop)}, but this CacheStack "
                f"belongs to {describe_loop(self.loop)} of thread {self.thread_name!r}, "
                f"which entered it: use a stack only from the event loop that entered it"
            )
