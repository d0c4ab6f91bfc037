"""The interface every engine implements."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._types import EngineDelta, EngineRequest, KVCacheDrop

__all__ = ["Engine", "StartedStream", "StartsStreams"]


@runtime_checkable
class Engine(Protocol):
    """An inference engine as the scaffold runtime sees it.

    Lifecycle: ``async with engine:`` starts it (its scheduler task or bridge
    thread) and closing it aborts every request still alive.

    ``open_stream(request)`` is an async context manager that admits the request
    (waiting, without busy polling, while the engine is at capacity) and yields an
    async iterator of :class:`EngineDelta`; the last delta has ``finish_reason``
    set.  Leaving the block for any reason (end of output, ``break``, an
    exception, cancellation) aborts the request in the engine and frees its slot
    and KV blocks before the block exits; after that no further delta of the
    request is delivered.

    ``check(request)`` raises :class:`InvalidRequestError` for a request the engine
    can never serve (prompt longer than the context, ...), without side effects,
    so callers can reject bad input at submission.

    ``count_prompt_tokens(request)`` counts the prompt with the engine's own
    tokenizer, without blocking; ``0`` means the engine cannot count locally
    (an engine behind HTTP).  ``await count_tokens(request)`` always answers with
    the engine's own count (an HTTP engine asks its server's ``/tokenize``), or
    raises :class:`EngineError` when the engine has no way to know.

    ``await drop_kv_cache(drop)`` is a hint that a conversation is over: the
    engine releases the prefix-cache blocks holding it past those of its first
    ``drop.keep_messages`` messages (blocks a live request still reads are
    left), and returns how many blocks it freed, or ``None`` when it took the
    hint without saying (a server that answers without a count).  An engine
    with no releasable prefix cache raises :class:`NotSupportedError`.
    """

    @property
    def num_active(self) -> int:
        """Requests the engine holds right now (waiting or running)."""
        ...

    @property
    def healthy(self) -> bool: ...

    def check(self, request: EngineRequest) -> None: ...

    def count_prompt_tokens(self, request: EngineRequest) -> int: ...

    async def count_tokens(self, request: EngineRequest) -> int: ...

    async def drop_kv_cache(self, drop: KVCacheDrop) -> int | None: ...

    def open_stream(
        self, request: EngineRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[EngineDelta]]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StartedStream(Protocol):
    """A request's deltas read without a task of its own (what
    :meth:`StartsStreams.start_stream` returns).

    ``next_nowait()`` returns the next :class:`EngineDelta`, ``None`` while none
    is queued; it raises the request's error once the queued deltas are read,
    and :class:`StopAsyncIteration` once the request is over (its last delta
    read, or the stream closed).

    ``close()`` is leaving ``open_stream``'s block: the engine is told to drop
    the request (aborting it if it still runs), and no delta is delivered after.
    ``released`` is ``True`` once the engine holds nothing of the request any
    more, or once it gave up waiting for that (a bridged engine's
    ``abort_timeout``: the request then stays counted in ``num_active`` until
    the engine lets it go, as after ``open_stream``); an engine that confirms a
    drop later calls the stream's ``on_wake`` once more when it has.  Neither
    blocks.
    """

    @property
    def released(self) -> bool: ...

    def next_nowait(self) -> EngineDelta | None: ...

    def close(self) -> None: ...


@runtime_checkable
class StartsStreams(Protocol):
    """An engine that can also start a request without a task to read it.

    ``start_stream(request, on_wake)`` admits ``request`` at once, raising what
    ``open_stream``'s entry raises (a closed or failed engine, an invalid
    request), and returns its :class:`StartedStream`, or ``None`` when the
    engine has no room for it now (nothing started: ``open_stream`` waits for
    room).  ``on_wake()`` is called in the event loop (from the engine's own
    task, or a callback its thread scheduled) whenever the stream may have
    something new (a delta, an error, the end, a confirmed release); it must
    neither block nor raise, and may close the stream.  Never blocks.

    The runtime uses it for a plain :class:`GenerationTask` on an
    :class:`EngineWorker` (no task, no cancel scope and no frames per running
    generation); an engine without it is read through ``open_stream``.
    """

    def start_stream(
        self, request: EngineRequest, on_wake: Callable[[], None]
    ) -> StartedStream | None: ...
