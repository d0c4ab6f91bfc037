"""Plumbing between an engine's own thread and the event loop."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import sniffio

from ._types import EngineDelta

__all__ = ["LoopCaller", "RequestStream"]


class LoopCaller:
    """Schedules callbacks on the current event loop from any thread, without
    blocking the calling thread (trio's ``run_sync_soon`` / asyncio's
    ``call_soon_threadsafe``).  Create it inside the loop."""

    def __init__(self) -> None:
        library = sniffio.current_async_library()
        self._call: Callable[..., Any]
        if library == "trio":
            import trio

            self._call = trio.lowlevel.current_trio_token().run_sync_soon
            self._closed_errors: tuple[type[BaseException], ...] = (trio.RunFinishedError,)
        elif library == "asyncio":
            self._call = asyncio.get_running_loop().call_soon_threadsafe
            self._closed_errors = (RuntimeError,)
        else:  # pragma: no cover - anyio supports only these two
            raise RuntimeError(f"unsupported async library {library!r}")

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run ``fn(*args)`` in the loop soon; False if the loop is gone."""
        try:
            self._call(fn, *args)
        except self._closed_errors:
            return False
        return True


class RequestStream:
    """Per-request delta buffer filled by the engine (in the loop) and read by the
    consumer; an async iterator that never needs finalising."""

    __slots__ = ("_event", "done", "error", "pending")

    def __init__(self) -> None:
        self.pending: deque[EngineDelta] = deque()
        self._event: anyio.Event | None = None
        self.done = False
        self.error: BaseException | None = None

    def push(self, delta: EngineDelta) -> None:
        self.pending.append(delta)
        if delta.finish_reason is not None:
            self.done = True
        self.wake()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self.wake()

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> EngineDelta:
        while True:
            if self.pending:
                return self.pending.popleft()
            if self.error is not None:
                raise self.error
            if self.done:
                raise StopAsyncIteration
            self._event = anyio.Event()
            await self._event.wait()
            self._event = None
