"""The event loop's own primitives for the per-task hot path.

anyio's portable wrappers cost several microseconds per use: since anyio 4.14
every ``TaskGroup.start_soon`` builds a task handle with its own cancel scope and
event, and every ``anyio.Event()`` / ``anyio.CancelScope()`` looks the backend up
through sniffio.  A task of ours crosses a spawn, two cancel scopes and an event
or two, so on trio the runtime uses trio's nursery, cancel scope and event
directly (they are what anyio wraps, with the same semantics); on asyncio it uses
anyio's task group and cancel scope (asyncio has no cancel scopes of its own) and
asyncio's event.  Everything else in the package stays on anyio.

Which loop runs is looked up once per runtime (:func:`current_backend`) and kept by the
objects that need it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import sniffio
import trio

__all__ = ["Backend", "current_backend"]


class Backend:
    """The three primitives, for one event loop."""

    __slots__ = ("CancelScope", "Event", "open_group")

    def __init__(self, open_group: Any, cancel_scope: Any, event: Any) -> None:
        # ``async with backend.open_group() as group: group.start_soon(fn, *args)``
        self.open_group = open_group
        # ``with backend.CancelScope() as scope``: cancel(), cancelled_caught, shield
        self.CancelScope = cancel_scope
        # ``backend.Event()``: set(), is_set(), await wait()
        self.Event = event


TRIO = Backend(trio.open_nursery, trio.CancelScope, trio.Event)
_ASYNCIO: Backend | None = None
# any other loop anyio supports: anyio's own primitives
_PORTABLE = Backend(anyio.create_task_group, anyio.CancelScope, anyio.Event)


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
            _ASYNCIO = Backend(anyio.create_task_group, type(anyio.CancelScope()), asyncio.Event)
        return _ASYNCIO
    return _PORTABLE
