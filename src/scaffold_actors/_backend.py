"""The event loop's own primitives for the per-task hot path.

anyio's portable wrappers cost several microseconds per use: since anyio 4.14
every ``TaskGroup.start_soon`` builds a task handle with its own cancel scope and
event, and every ``anyio.Event()`` / ``anyio.CancelScope()`` looks the backend up
through sniffio.  A task of ours crosses a spawn, two cancel scopes and an event
or two, so on trio the runtime uses trio's nursery, cancel scope and event
directly (they are what anyio wraps, with the same semantics); on asyncio it uses
anyio's task group and cancel scope (asyncio has no cancel scopes of its own) and
asyncio's event.  An idle runner waits parked on the loop's own wait (trio's
``wait_task_rescheduled``, an asyncio future) rather than on an event object per
wait.  Everything else in the package stays on anyio.

Which loop runs is looked up once per runtime (:func:`current_backend`) and kept by the
objects that need it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import outcome
import sniffio
import trio
import trio.lowlevel

__all__ = ["Backend", "Parked", "current_backend"]


class Parked:
    """A task parked by :meth:`Backend.park` until :meth:`Backend.unpark`."""

    __slots__ = ("abort", "waiter")

    def __init__(self) -> None:
        self.waiter: Any = None  # the loop's handle on the parked task; None: gone
        self.abort = self._abort  # made once: a park costs no function object

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self.waiter = None  # cancelled: nothing may be sent to it any more
        return trio.lowlevel.Abort.SUCCEEDED


class Backend:
    """The primitives, for one event loop."""

    __slots__ = ("CancelScope", "Event", "open_group", "park", "unpark")

    def __init__(
        self, open_group: Any, cancel_scope: Any, event: Any, park: Any, unpark: Any
    ) -> None:
        # ``async with backend.open_group() as group: group.start_soon(fn, *args)``
        self.open_group = open_group
        # ``with backend.CancelScope() as scope``: cancel(), cancelled_caught, shield
        self.CancelScope = cancel_scope
        # ``backend.Event()``: set(), is_set(), await wait()
        self.Event = event
        # ``value = await backend.park(parked)`` waits until ``backend.unpark(parked,
        # value)`` (an event's wait without an event object per wait); unpark
        # returns False, and sends nothing, if the parked task is gone (cancelled)
        self.park = park
        self.unpark = unpark


async def _trio_park(parked: Parked) -> Any:
    parked.waiter = trio.lowlevel.current_task()
    return await trio.lowlevel.wait_task_rescheduled(parked.abort)


def _trio_unpark(parked: Parked, value: Any) -> bool:
    task, parked.waiter = parked.waiter, None
    if task is None:
        return False
    trio.lowlevel.reschedule(task, outcome.Value(value))
    return True


async def _asyncio_park(parked: Parked) -> Any:
    parked.waiter = future = asyncio.get_running_loop().create_future()
    try:
        return await future
    finally:
        parked.waiter = None


def _asyncio_unpark(parked: Parked, value: Any) -> bool:
    future, parked.waiter = parked.waiter, None
    if future is None or future.done():  # cancelled (its task not resumed yet)
        return False
    future.set_result(value)
    return True


TRIO = Backend(trio.open_nursery, trio.CancelScope, trio.Event, _trio_park, _trio_unpark)
_ASYNCIO: Backend | None = None


def current_backend() -> Backend:
    """The primitives of the running event loop (call from inside it)."""
    global _ASYNCIO
    name = sniffio.current_async_library()
    if name == "trio":
        return TRIO
    if name == "asyncio":
        if _ASYNCIO is None:
            # anyio.CancelScope() looks the backend up on every construction;
            # its asyncio class, taken from an instance, is built directly
            _ASYNCIO = Backend(
                anyio.create_task_group,
                type(anyio.CancelScope()),
                asyncio.Event,
                _asyncio_park,
                _asyncio_unpark,
            )
        return _ASYNCIO
    raise RuntimeError(f"scaffold_actors runs on trio or asyncio (through anyio), not {name}")
