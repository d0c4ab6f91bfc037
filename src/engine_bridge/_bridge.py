"""Plumbing between an engine's own thread and the event loop."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any, NoReturn, Protocol

import anyio
import anyio.to_thread
import sniffio

from ._prefix import PrefixGate
from ._types import (
    AbortNotAcknowledgedWarning,
    EngineClosedError,
    EngineDelta,
    EngineError,
    EngineRequest,
)
from .lowlevel import Park, Parked, Unpark, parking

__all__ = [
    "AsyncioBridgedEngine",
    "BridgedEngine",
    "LoopCaller",
    "RequestStream",
    "first_error",
    "raise_single",
]


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error inside ``group``, unwrapped; ``group`` itself if it
    holds only cancellations.

    Cancellation exceptions are not errors (they belong to a scope outside).  When
    several tasks failed at once, the others are listed in the first one's notes,
    so callers can still ``except`` the original exception type.  Never raises.
    """
    try:
        cancelled: type[BaseException] | tuple[()] = anyio.get_cancelled_exc_class()
    except Exception:  # outside any event loop (the sync facade's constructor)
        cancelled = ()
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    # The same error can appear twice: raised by a child and re-raised by the body
    # that read the child's result.
    real = list({id(e): e for e in leaves if not isinstance(e, cancelled)}.values())
    if not real:
        return group
    first = real[0]
    if len(real) > 1:
        others = "; ".join(f"{type(e).__name__}: {e}" for e in real[1:4])
        more = f" (+{len(real) - 4} more)" if len(real) > 4 else ""
        first.add_note(f"{len(real) - 1} concurrent error(s) in the same request: {others}{more}")
    return first


def raise_single(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise :func:`first_error` of ``group``: the first real error unwrapped (its
    context cleared, its cause kept), or the group as is when it holds only cancellations.  Call
    it from an ``except BaseExceptionGroup`` block around a task group."""
    error = first_error(group)
    if error is group:
        raise group
    raise error from error.__cause__  # (its context cleared, its own cause kept)


class LoopCaller:
    """Schedules callbacks on the current event loop from any thread, without
    blocking the calling thread (trio's ``run_sync_soon`` / asyncio's
    ``call_soon_threadsafe``).  Create it inside the loop.

    Callbacks run in the order they were scheduled.  A burst of them wakes the
    loop once: they queue here, and only the first of a burst schedules the
    loop to run the queue (each wake-up is a write to the loop's wake-up
    socket and a turn of its scheduler)."""

    def __init__(self) -> None:
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._scheduled = False
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
        self._queue.append((fn, args))
        if self._scheduled:
            return True  # the loop runs the queue soon, this one included
        self._scheduled = True
        try:
            self._call(self._run_queued)
        except self._closed_errors:
            self._scheduled = False
            self._queue.clear()  # (they can never run)
            return False
        return True

    def _run_queued(self) -> None:
        """(In the loop) run every queued callback, in order."""
        self._scheduled = False  # (first: one queued from now on schedules us again)
        queue = self._queue
        while queue:
            fn, args = queue.popleft()
            fn(*args)


class RequestStream(Parked):
    """Per-request delta buffer filled by the engine (in the loop) and read by the
    consumer; an async iterator that never needs finalising.

    Two ends are tracked apart: ``done`` (nothing more is delivered to the
    consumer: the last delta came, the request failed, or the consumer left) and
    ``released`` (the engine itself confirmed it holds nothing of the request any
    more: it finished there, or the engine acknowledged an abort).

    The consumer waits parked on the stream itself (no event object per wait,
    no buffer until a delta is queued); :meth:`wait_released` waits for the
    engine's confirmation.
    """

    __slots__ = (
        "_closing",
        "_ended",
        "_engine",
        "_group",
        "_key",
        "_leads",
        "_park",
        "_pending",
        "_released_event",
        "_state",
        "_unpark",
        "done",
        "error",
        "on_wake",
        "released",
    )

    def __init__(self) -> None:
        super().__init__()
        self._pending: deque[EngineDelta] | None = None
        # the loop's park and unpark, looked up by the consumer's first wait
        self._park: Park | None = None
        self._unpark: Unpark | None = None
        self._released_event: anyio.Event | None = None
        self.done = False
        self.error: BaseException | None = None
        self.released = False
        # a stream started without a task (BridgedEngine.start_stream): what wake()
        # calls, and the engine that close() hands the request back to
        self.on_wake: Callable[[], None] | None = None
        self._engine: BridgedEngine | None = None
        self._key: Any = None
        self._state: Any = None
        self._closing = False  # close() asked the engine to drop it
        self._ended = False  # its last delta was delivered before close()
        # its PrefixGroup while it is a member here, and the gate to tell once
        # its prompt is computed (its first delta) while it leads the group
        self._group: Any = None
        self._leads: PrefixGate[Any] | None = None

    def push(self, delta: EngineDelta, *, released: bool = True) -> None:
        """Queue ``delta``; a final delta ends the stream and, unless
        ``released=False`` (the engine still runs it, e.g. a stop string was cut
        here), marks the request released by the engine."""
        if self._pending is None:
            self._pending = deque()
        self._pending.append(delta)
        if self._leads is not None:  # its prompt is computed: the group's others follow
            self.prefilled()
        if delta.finish_reason is not None:
            self.done = True
            if released:
                self.release()
        self.wake()

    def prefilled(self) -> None:
        """The engine computed this request's prompt (its first output, which
        an engine may see before anything is delivered): when it leads a
        prefix group, the group's held members are submitted now."""
        gate, self._leads = self._leads, None
        if gate is not None:
            gate.prefilled(self._group)

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done = True
        self.wake()

    def drop(self) -> None:
        """The consumer left: drop whatever the engine still sends."""
        self.done = True
        self._pending = None

    def close(self) -> None:
        """A started stream's end (:class:`~engine_bridge.StartedStream`): the
        engine is told to drop the request, aborting it if it still runs; once it
        confirmed (or ``abort_timeout`` passed) ``released`` is true and
        ``on_wake`` is called once more.  On a stream read through
        ``open_stream``: :meth:`drop`.  Idempotent; never blocks."""
        engine = self._engine
        if engine is None:
            self.drop()
        elif not self.released:
            engine._end_started(self)

    def next_nowait(self) -> EngineDelta | None:
        """The next delta; ``None`` while none is queued.  Raises the request's
        error once the queued deltas are read, :class:`StopAsyncIteration` once
        it is over.  Never blocks."""
        if self._pending:
            return self._pending.popleft()
        if self.error is not None:
            raise self.error
        if self.done:
            raise StopAsyncIteration
        return None

    def release(self) -> None:
        """The engine holds nothing of this request any more (idempotent).  A
        started stream the consumer closed is woken (its end is now complete)."""
        if not self.released:
            self.released = True
            if self._released_event is not None:
                self._released_event.set()
            engine = self._engine
            if engine is not None:  # a started stream: its slot is free from now on
                engine._forget_started(self)
                if self._closing and self.on_wake is not None:
                    self.on_wake()

    async def wait_released(self) -> None:
        """Block until :meth:`release` (at once if it was).  Cancellable."""
        if not self.released:
            if self._released_event is None:
                self._released_event = anyio.Event()
            await self._released_event.wait()

    def wake(self) -> None:
        """Resume the consumer if it waits for a delta (a started stream's
        ``on_wake`` is called instead)."""
        if self.on_wake is not None:
            self.on_wake()
        elif self.waiter is not None:
            assert self._unpark is not None
            self._unpark(self, None)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> EngineDelta:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self.error is not None:
                raise self.error
            if self.done:
                raise StopAsyncIteration
            if self._park is None:
                self._park, self._unpark = parking()
            await self._park(self)


class _HasStream(Protocol):
    stream: RequestStream


class BridgedEngine:
    """What engines whose model lives on another thread have in common.

    It keeps the live requests, bounds admission (``max_concurrent`` at once; more
    wait in :meth:`_admit` without polling), admits a :class:`PrefixGroup`'s
    members after its first one's prefill (:class:`PrefixGate`; a subclass whose
    engine keeps no prefix cache sets ``_share_prefixes = False``), aborts a request whose consumer leaves
    early and waits until the engine acknowledges the abort, and turns the
    engine's death into :class:`EngineError` for every live request.  Subclasses
    start their thread, call :meth:`_start_bridge` from the event loop, implement
    :meth:`_running` and :meth:`_abort`, and report outputs, failures and
    acknowledged aborts (:meth:`_release`) through the event loop
    (``self._caller``).

    Cancellation: leaving ``open_stream`` before the last delta tells the engine
    thread to abort and then waits, shielded from cancellation and for at most
    ``abort_timeout`` seconds, until the engine confirms it dropped the request.
    A confirmation that does not come in time is counted in ``abort_timeouts`` and
    reported with :class:`AbortNotAcknowledgedWarning`; the block then exits anyway
    (the request stays counted in ``num_active`` until the engine lets it go).
    """

    def __init__(self, max_concurrent: int, abort_timeout: float = 10.0) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1")
        if not abort_timeout > 0:
            raise ValueError("abort_timeout must be > 0")
        self.max_concurrent = max_concurrent
        self.abort_timeout = abort_timeout
        self._live: dict[Any, Any] = {}
        # requests whose abort the engine did not confirm in time (still held there)
        self._orphans: dict[Any, Any] = {}
        self._ids = itertools.count()
        self._failure: BaseException | None = None
        self._closed = False
        self._caller: LoopCaller | None = None
        self._slots: anyio.Semaphore | None = None
        self._thread: threading.Thread | None = None
        # abort deadlines of started streams: (monotonic time, key), one thread
        self._deadlines: list[tuple[float, Any]] = []
        self._deadline_lock = threading.Condition()
        self._watchdog: threading.Thread | None = None
        self.completed = 0
        self.aborted = 0
        self.abort_timeouts = 0
        self.started_streams = 0  # requests admitted by start_stream (no task to read them)
        self._gate: PrefixGate[Any] = PrefixGate(self._group_submit)
        self._share_prefixes = True

    # -- for subclasses ----------------------------------------------------------
    def _running(self) -> bool:
        """The engine's model is loaded and its thread started."""
        raise NotImplementedError

    def _abort(self, key: Any, state: Any) -> None:
        """Tell the engine thread to drop request ``key`` (must not block); the
        engine side calls :meth:`_release` in the loop once it has."""
        raise NotImplementedError

    def _request_key(self, n: int) -> Any:
        return n

    # -- shared behaviour ------------------------------------------------------------
    @property
    def num_active(self) -> int:
        """Requests the engine may still hold (those being aborted included)."""
        return len(self._live) + len(self._orphans)

    @property
    def healthy(self) -> bool:
        return (
            self._running()
            and not self._closed
            and self._failure is None
            and self._thread is not None
            and self._thread.is_alive()
        )

    def _start_bridge(self) -> None:
        # a closed engine can be started again (a fresh start clears an old failure)
        self._closed = False
        self._failure = None
        self._caller = LoopCaller()
        self._slots = anyio.Semaphore(self.max_concurrent)

    def _ensure_usable(self) -> None:
        if self._failure is not None:
            raise EngineError(f"engine is unhealthy: {self._failure}") from self._failure
        if self._closed or self._slots is None or not self._running():
            raise EngineClosedError("engine is not running (use `async with engine:`)")

    @asynccontextmanager
    async def _admit(self, state: _HasStream) -> AsyncIterator[Any]:
        """Wait for a slot, register ``state`` and yield its key; on exit, abort the
        request unless the engine released it, and wait for the engine to confirm."""
        assert self._slots is not None
        async with self._slots:
            if self._failure is not None:
                raise EngineError(f"engine is unhealthy: {self._failure}") from self._failure
            key = self._request_key(next(self._ids))
            self._live[key] = state
            try:
                yield key
            finally:
                stream = state.stream
                if stream._group is not None and self._leave_group(state):
                    stream.drop()
                    stream.release()  # held back by its group: it never reached the engine
                    self.aborted += 1
                if not stream.released:
                    # a final delta already delivered (a stop string cut here) is an end,
                    # not an abort, though the engine must still be told to drop it
                    ended = stream.done and stream.error is None
                    stream.drop()  # no output of it is delivered from now on
                    self._abort(key, state)
                    with anyio.CancelScope(shield=True):
                        with anyio.move_on_after(self.abort_timeout):
                            await stream.wait_released()
                    if stream.released:
                        self.aborted += not ended
                    else:
                        self.abort_timeouts += 1
                        warnings.warn(
                            f"{self!r} did not confirm the abort of request {key!r} within "
                            f"{self.abort_timeout} s; it may still hold an engine slot",
                            AbortNotAcknowledgedWarning,
                            stacklevel=2,
                        )
                self._live.pop(key, None)
                if not stream.released:  # still counted until the engine lets it go
                    self._orphans[key] = state

    def _release(self, key: Any) -> None:
        """The engine confirmed it dropped request ``key`` (call in the loop)."""
        state = self._live.get(key)
        if state is None:
            state = self._orphans.pop(key, None)
        if state is not None:
            state.stream.release()

    def _hand(self, key: Any, state: Any, request: EngineRequest) -> None:
        """Submit admitted ``state`` now, or through its prefix group's gate."""
        group = request.group
        if group is None or not self._share_prefixes or not self._sharable(state):
            self._submit(key, state)
            return
        stream = state.stream
        stream._key, stream._group = key, group
        self._gate.enter(group, state)

    def _sharable(self, state: Any) -> bool:
        """Whether ``state``'s prompt holds a full KV block another request can
        reuse (a shorter one is submitted at once: holding it gains nothing)."""
        return True

    def _group_submit(self, state: Any, leads: bool) -> None:
        stream = state.stream
        if leads:
            stream._leads = self._gate
        self._submit(stream._key, state)

    def _leave_group(self, state: Any) -> bool:
        """``state`` leaves its prefix group (once); True when it was still held
        back (it never reached the engine)."""
        stream = state.stream
        group, stream._group, stream._leads = stream._group, None, None
        return self._gate.leave(group, state)

    def _close_bridge(self) -> None:
        self._closed = True
        self._fail_all(EngineClosedError("engine closed"))

    def _on_failure(self, err: BaseException) -> None:
        self._failure = err
        self._fail_all(err)

    def _fail_all(self, err: BaseException) -> None:
        """The engine is gone or closing: every request fails, and nothing is held."""
        for state in [*self._live.values(), *self._orphans.values()]:
            # released first: a started stream's consumer, woken by the failure,
            # then ends it at once
            state.stream.release()
            state.stream.fail(err)
        self._orphans.clear()
        self._gate.clear()

    # -- streams started without a task ---------------------------------------------
    def _prepare(self, request: EngineRequest) -> _HasStream:
        """Check ``request`` and make its per-request state (with a fresh
        ``stream``) without blocking; raise what ``open_stream``'s entry raises."""
        raise NotImplementedError

    def _submit(self, key: Any, state: Any) -> None:
        """Hand the admitted request ``key`` to the engine thread (never blocks)."""
        raise NotImplementedError

    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        """Admit ``request`` (waiting while ``max_concurrent`` requests run) and
        yield its deltas; leaving the block aborts it in the engine and waits, for
        at most ``abort_timeout`` seconds, until the engine confirms."""
        state = self._prepare(request)
        async with self._admit(state) as key:
            self._hand(key, state, request)
            yield state.stream

    def start_stream(
        self, request: EngineRequest, on_wake: Callable[[], None]
    ) -> RequestStream | None:
        """Admit ``request`` now, without a task to read it, and return its
        :class:`~engine_bridge.StartedStream`; ``None`` when all
        ``max_concurrent`` slots are taken (nothing was started: read it through
        :meth:`open_stream`, which waits for one).  ``on_wake()`` is called in the
        event loop whenever the stream may have something new.  ``close()`` on
        the stream aborts the request and does not wait: the engine confirms
        later (``released``, and ``on_wake`` once more), or after
        ``abort_timeout`` seconds an engine-wide deadline gives up on it as
        :meth:`open_stream` does (counted in ``abort_timeouts``, the request
        kept in ``num_active`` until the engine lets it go).  Raises what
        ``open_stream``'s entry raises.  Never blocks."""
        self._ensure_usable()
        slots = self._slots
        assert slots is not None
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            return None
        key: Any = None
        try:
            state = self._prepare(request)
            key = self._request_key(next(self._ids))
            stream = state.stream
            stream.on_wake, stream._engine, stream._key, stream._state = on_wake, self, key, state
            self._live[key] = state
            self._hand(key, state, request)
            self.started_streams += 1
        except BaseException:
            if key is not None:
                self._live.pop(key, None)
            slots.release()
            raise
        return stream

    def _end_started(self, stream: RequestStream) -> None:
        """``stream.close()`` of a started stream the engine still holds: abort
        it (once); the engine's confirmation (``release()``) or the deadline
        (:meth:`_expire`) frees its slot and wakes its consumer.  Never blocks."""
        if stream._closing:
            return  # asked already: the engine's confirmation or the deadline comes
        stream._ended = stream.done and stream.error is None  # a stop string cut here
        stream._closing = True
        stream.drop()  # no output of it is delivered from now on
        if stream._group is not None and self._leave_group(stream._state):
            stream.release()  # held back by its group: it never reached the engine
            return
        self._watch(stream._key)
        self._abort(stream._key, stream._state)  # (last: an engine already gone releases at once)

    def _forget_started(self, stream: RequestStream) -> None:
        """A started stream the engine released: free its slot (once)."""
        key = stream._key
        if stream._group is not None:
            self._leave_group(stream._state)
        if self._live.get(key) is stream._state:  # (an orphan's slot was freed by _expire)
            del self._live[key]
            assert self._slots is not None
            self._slots.release()
            if stream._closing and not stream._ended:
                self.aborted += 1

    def _watch(self, key: Any) -> None:
        """Give up on the abort of started request ``key`` after ``abort_timeout``
        seconds (one deadline thread per engine, none per request)."""
        with self._deadline_lock:
            heapq.heappush(self._deadlines, (time.monotonic() + self.abort_timeout, key))
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watch_deadlines, name=f"{type(self).__name__}-abort-deadlines",
                    daemon=True,
                )  # fmt: skip
                self._watchdog.start()
            else:
                self._deadline_lock.notify()

    def _watch_deadlines(self) -> None:
        """Deadline thread: hands each due key to :meth:`_expire` in the loop;
        exits when none is left (the next :meth:`_watch` starts another)."""
        with self._deadline_lock:
            while self._deadlines:
                due, key = self._deadlines[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._deadline_lock.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                caller = self._caller
                if caller is not None:
                    caller.call_soon(self._expire, key)
            self._watchdog = None

    def _expire(self, key: Any) -> None:
        """(In the loop) the engine did not confirm the abort of started request
        ``key`` in time: warn, keep it counted as an orphan, free its slot, and end
        the stream for its consumer."""
        state = self._live.get(key)
        if state is None or state.stream.released:
            return
        self.abort_timeouts += 1
        warnings.warn(
            f"{self!r} did not confirm the abort of request {key!r} within "
            f"{self.abort_timeout} s; it may still hold an engine slot",
            AbortNotAcknowledgedWarning,
            stacklevel=2,
        )
        del self._live[key]
        self._orphans[key] = state
        assert self._slots is not None
        self._slots.release()
        stream = state.stream
        stream.released = True  # for its consumer: over (the engine may still hold it)
        if stream.on_wake is not None:
            stream.on_wake()


class AsyncioBridgedEngine(BridgedEngine):
    """A :class:`BridgedEngine` whose bridge thread runs an asyncio loop of its
    own (TensorRT-LLM's ``LLM`` API, Ray's futures need one).  The subclass's
    ``_thread_main(ready)`` runs the loop, sets ``_loop`` and ``_stop`` (an
    :class:`asyncio.Event` that ends it) and then ``ready``."""

    def __init__(self, max_concurrent: int, abort_timeout: float = 10.0) -> None:
        super().__init__(max_concurrent, abort_timeout)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _thread_main(self, ready: Future[None]) -> None:
        raise NotImplementedError

    async def _start_thread(self, name: str) -> None:
        """Start the bridge thread and wait (cancellably) until it is ready; a
        failed or cancelled start stops it and leaves nothing behind, so the
        engine can be started again.  Raises what the start raised."""
        self._start_bridge()
        ready: Future[None] = Future()
        thread = self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name=name, daemon=True
        )
        thread.start()
        try:
            await anyio.to_thread.run_sync(ready.result)
        except BaseException:
            self._close_bridge()
            self._stop_loop()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, 60)
            self._thread = None
            raise

    async def _stop_thread(self) -> None:
        """Fail what is left, stop the loop and wait (shielded, at most 60 s)
        for the thread; the engine can be started again."""
        self._close_bridge()
        self._stop_loop()
        thread = self._thread
        if thread is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, 60)
        self._thread = None

    def _stop_loop(self) -> None:
        """Ask the bridge loop to end (never blocks; a loop already gone is left)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
