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
import anyio.lowlevel
import sniffio
import trio
import trio.lowlevel

from engine_bridge.lowlevel import Parked, asyncio_park, asyncio_unpark, trio_park, trio_unpark

__all__ = ["Backend", "Parked", "current_backend"]


class Backend:
    """The primitives, for one event loop."""

    __slots__ = ("CancelScope", "Event", "checkpoint", "open_group", "park", "unpark")

    def __init__(
        self,
        open_group: Any,
        cancel_scope: Any,
        event: Any,
        park: Any,
        unpark: Any,
        checkpoint: Any,
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
        # ``await backend.checkpoint()``: a cancellation point and a schedule point
        self.checkpoint = checkpoint


TRIO = Backend(
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
                type(anyio.CancelScope()),
                asyncio.Event,
                asyncio_park,
                asyncio_unpark,
                anyio.lowlevel.checkpoint,
            )
        return _ASYNCIO
    raise RuntimeError(f"scaffold_actors runs on trio or asyncio (through anyio), not {name}")
