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
from collections import deque
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel
import sniffio
import trio
import trio.lowlevel

from engine_bridge.lowlevel import Parked, asyncio_park, asyncio_unpark, trio_park, trio_unpark

__all__ = ["Backend", "Parked", "Slots", "current_backend"]


class Backend:
    """The primitives, for one event loop."""

    __slots__ = (
        "CancelScope",
        "Event",
        "checkpoint",
        "open_group",
        "open_spawner",
        "park",
        "unpark",
    )

    def __init__(
        self,
        open_group: Any,
        open_spawner: Any,
        cancel_scope: Any,
        event: Any,
        park: Any,
        unpark: Any,
        checkpoint: Any,
    ) -> None:
        # ``async with backend.open_group() as group: group.start_soon(fn, *args)``;
        # ``group.cancel_scope`` cancels the group's tasks
        self.open_group = open_group
        # the same without ``cancel_scope``, for a group never cancelled as a whole
        # whose tasks each carry their own cancel scope (the runtime's requests)
        self.open_spawner = open_spawner
        # ``with backend.CancelScope() as scope``: cancel(), cancelled_caught, shield
        self.CancelScope = cancel_scope
        # ``backend.Event()``: set(), is_set(), await wait()
        self.Event = event
        # ``value = await backend.park(parked)`` waits until ``backend.unpark(parked,
        # value)`` (an event's wait without an event object per wait); unpark
        # returns False, and sends nothing, if the parked task is gone (cancelled)
        self.park = park
        self.unpark = unpark
        # ``await backend.checkpoint()``: a cancellation point and a schedule point
        self.checkpoint = checkpoint


class _AsyncioSpawner:
    """asyncio's own task group behind ``start_soon``: a task started here costs
    no anyio task handle (its cancel scope and event) and no wrapper coroutine
    stepped on every resume.  anyio's cancel scopes work in its tasks as in any
    asyncio task.  A task's error cancels the others and the body, and leaves
    the ``async with`` in an exception group, as anyio's group does; there is
    no ``cancel_scope``: cancel each task through its own scope."""

    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._group.__aexit__(exc_type, exc, tb)

    def start_soon(self, fn: Any, *args: Any) -> None:
        self._group.create_task(fn(*args))


TRIO = Backend(
    trio.open_nursery,
    trio.open_nursery,
    trio.CancelScope,
    trio.Event,
    trio_park,
    trio_unpark,
    trio.lowlevel.checkpoint,
)
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
                _AsyncioSpawner,
                type(anyio.CancelScope()),
                asyncio.Event,
                asyncio_park,
                asyncio_unpark,
                anyio.lowlevel.checkpoint,
            )
        return _ASYNCIO
    raise RuntimeError(f"scaffold_actors runs on trio or asyncio (through anyio), not {name}")


class _Granted(Parked):
    """A requester waiting for one of :class:`Slots` (parked until handed one)."""

    __slots__ = ("granted",)

    def __init__(self) -> None:
        super().__init__()
        self.granted = False


class Slots:
    """A number of slots (``max_in_flight`` requests, a worker's
    ``max_concurrency`` tasks), handed out first come, first served.

    A requester that must wait is parked on an object of its own in a queue:
    no lock, exception or traceback is held per waiting request (thousands may
    wait).  Like ``anyio.Semaphore.acquire``, :meth:`take` is a checkpoint
    whether or not it waits (a cancelled requester takes no slot).

    Cancellation: a requester cancelled while it waits leaves the queue; one
    cancelled after it was handed a slot (asyncio resumes it with the
    cancellation) hands the slot on, so none is lost.
    """

    __slots__ = ("_loop", "_waiting", "free")

    def __init__(self, slots: int, loop: Backend) -> None:
        self.free = slots
        self._waiting: deque[_Granted] = deque()
        self._loop = loop

    def take_nowait(self) -> bool:
        """Take a slot if one is free and nobody waits before; never blocks."""
        if self.free and not self._waiting:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        """Block until a slot is free and every earlier requester has one."""
        if self.take_nowait():
            try:
                await self._loop.checkpoint()
            except BaseException:
                self.give_back()
                raise
            return
        me = _Granted()
        self._waiting.append(me)
        try:
            await self._loop.park(me)
        except BaseException:
            if me.granted:
                self.give_back()  # handed a slot, then cancelled: the next one's
            elif me in self._waiting:  # (give_back may have passed it over already)
                self._waiting.remove(me)
            raise

    def give_back(self) -> None:
        """Return a slot: to the first requester waiting, else to the free ones."""
        unpark = self._loop.unpark
        while self._waiting:
            waiter = self._waiting.popleft()
            if unpark(waiter, None):  # else cancelled while it waited: the next one
                waiter.granted = True
                return
        self.free += 1
