"""The interface every engine implements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ._types import EngineDelta, EngineRequest, KVCacheDrop

__all__ = ["Engine"]


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
