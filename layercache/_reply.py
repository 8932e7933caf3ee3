"""A one-shot reply slot: one side fills it once, any number of tasks wait on it.

Waiters never share a task with the producer, so cancelling a waiter only stops that
waiter: the producer fills the slot whether or not anyone still waits.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import anyio

from ._backend import Event

T = TypeVar("T")


class ReplySlot(Generic[T]):
    __slots__ = ("_done", "_error", "_value")

    def __init__(self, event: Event | None = None) -> None:
        """``event``: a fresh event to wait on (default: an ``anyio.Event``)."""
        self._done: Event = event if event is not None else anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "empty" if not self.done else "failed" if self._error else "filled"
        return f"<ReplySlot {state}>"

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def set(self, value: T) -> None:
        """Fill the slot; later calls (and ``fail``) are ignored."""
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        """Fill the slot with an error every waiter will raise."""
        if not self._done.is_set():
            self._error = error
            self._done.set()

    def result(self) -> T:
        """What a filled slot holds (its error raised): :meth:`wait` without the wait."""
        assert self._done.is_set(), "the slot is empty"
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    async def wait(self) -> T:
        await self._done.wait()
        return self.result()
