"""Low-level waiting for engine authors: one task parked until another hands it
a value, on the event loop's own wait.

An ``anyio.Event`` per wait costs an event object, the loop's event under it,
that event's set of waiters, a closure and two coroutine frames.  A task that
waits over and over on the same thing (a request's consumer for its next
delta, a worker's runner for its next job) parks instead on an object it keeps:
trio's ``wait_task_rescheduled`` or an asyncio future, nothing else.  The
built-in engines' streams and the scaffold runtime's runners wait this way.

Usage: subclass :class:`Parked` (or keep one), look the loop's pair up once
with :func:`parking` from inside the loop, then ``value = await park(parked)``
in the waiting task and ``unpark(parked, value)`` from any other task of the
same loop.

Blocking and cancellation: ``park`` blocks until ``unpark`` hands a value.
Cancelling the parked task ends the wait at once with the loop's cancellation
exception, and clears ``parked.waiter``, so a later ``unpark`` sends nothing
and returns ``False`` (a value handed to a task that is gone is never lost
silently: the caller sees ``False`` and keeps it).  ``unpark`` never blocks; it
returns ``False`` too when nobody is parked.  One ``Parked`` serves one waiting
task at a time.  Both run only in the event loop's thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import sniffio
import trio
import trio.lowlevel

__all__ = [
    "Park",
    "Parked",
    "Unpark",
    "asyncio_park",
    "asyncio_unpark",
    "parking",
    "trio_park",
    "trio_unpark",
]

Park = Callable[["Parked"], Awaitable[Any]]
Unpark = Callable[["Parked", Any], bool]


class Parked:
    """Where a task waits (:func:`trio_park` / :func:`asyncio_park`) until it is
    handed a value (the matching ``unpark``).  Subclass it (slots) to make an
    object the wait itself, with no object of its own.

    On trio the object is its own abort function (``parked(raise_cancel)``:
    what ``trio.lowlevel.wait_task_rescheduled`` calls when the parked task is
    cancelled), so a wait costs no function object either.
    """

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: Any = None  # the loop's handle on the parked task; None: none

    def __call__(self, _: Any) -> trio.lowlevel.Abort:
        self.waiter = None  # cancelled: nothing may be sent to it any more
        return trio.lowlevel.Abort.SUCCEEDED


def trio_park(parked: Parked) -> Awaitable[Any]:
    """trio's own wait for ``parked`` (await it at once): a wait adds no frame of
    this function's to the waiting task's stack."""
    parked.waiter = trio.lowlevel.current_task()
    return trio.lowlevel.wait_task_rescheduled(parked)  # noqa: ASYNC105 (awaited by the caller)


def trio_unpark(parked: Parked, value: Any) -> bool:
    task, parked.waiter = parked.waiter, None
    if task is None:
        return False
    trio.lowlevel.reschedule(task, outcome.Value(value))
    return True


async def asyncio_park(parked: Parked) -> Any:
    parked.waiter = future = asyncio.get_running_loop().create_future()
    try:
        return await future
    finally:
        parked.waiter = None


def asyncio_unpark(parked: Parked, value: Any) -> bool:
    future, parked.waiter = parked.waiter, None
    if future is None or future.done():  # cancelled (its task not resumed yet)
        return False
    future.set_result(value)
    return True


def parking() -> tuple[Park, Unpark]:
    """``(park, unpark)`` for the running loop; raises ``RuntimeError`` on a loop
    other than trio and asyncio."""
    name = sniffio.current_async_library()
    if name == "trio":
        return trio_park, trio_unpark
    if name == "asyncio":
        return asyncio_park, asyncio_unpark
    raise RuntimeError(f"engine_bridge runs on trio or asyncio (through anyio), not {name}")
