"""Workers: actors that own a backend for one role and run tasks for it.

A :class:`Worker` holds task handlers (``async def handler(worker, task)``) keyed by
task type.  The runtime wraps each worker in an actor (:class:`WorkerActor`) with a
bounded inbox and a concurrency limit; every task runs in its own cancel scope, and
a failing handler fails only the task that ran it.  A handler reaches the runtime
through its task's :class:`TaskContext` (:func:`task_context`), and the runtime
reaches the worker through the methods and attributes of the worker protocol
(see :class:`Worker`); there is no other channel.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Self

import anyio
import anyio.abc

from ._backend import Parked, Slots, current_backend
from ._errors import CancelGraceExceededWarning, TaskFailedError, TaskNotSupportedError
from ._scope import ExecutionScope, current_scope
from ._task_context import _CURRENT, TaskContext
from ._tasks import Task, TaskStatus

__all__ = ["Handler", "Worker", "WorkerActor"]

Handler = Callable[[Any, Any], Awaitable["TaskStatus | None"]]


class Worker:
    """Base class of workers (TensorRT-LLM compatible).

    Subclasses declare handlers in a class-level ``task_handlers`` mapping from task
    type to ``async def handler(self, task) -> TaskStatus | None``, or register them
    per instance with :meth:`register_task_handler`.  A handler signals failure by
    raising; the exception reaches the request that submitted the task unchanged.
    Returning ``TaskStatus.WORKER_NOT_SUPPORTED`` / ``WORKER_EXECEPTION`` (the
    TensorRT-LLM convention) is turned into :class:`TaskNotSupportedError` /
    :class:`TaskFailedError`, so no failure is ever silent.

    The worker protocol (everything the runtime asks of a worker; override what
    applies, the defaults are inert):

    ``task_handlers`` / :meth:`register_task_handler` / :meth:`find_handler`
        which handler runs which task type.
    ``max_concurrency``, ``inbox_size``, ``task_timeout``
        tune the actor the runtime builds around the worker: ``max_concurrency``
        tasks run at once, ``inbox_size`` more may wait, and a task running longer
        than ``task_timeout`` seconds fails with :class:`TimeoutError`.
    ``streaming_tasks``
        the task types (exact types, not subclasses) whose handlers report
        progress as outputs grow
        (:meth:`TaskContext.notify_progress`).  A generator controller that
        yields such a task steps it every ``streaming_step`` tokens while it runs
        in the background; other tasks run to completion at each yield.
    :meth:`check_task`
        called for every task at submission, before it is queued: refuse a task
        the worker can never run.
    :meth:`check_request`
        called for every request at submission with its prompt: refuse a prompt
        the worker can never serve (too long for the context, say).
    :meth:`on_scope_end`
        an execution scope (a request, a parallel branch) has finished: release
        what the worker keeps for it.
    :meth:`stats`
        live counts the worker owns (``engine_requests``: requests alive in its
        engine), summed into :meth:`AsyncScaffoldingLlm.stats`.
    :attr:`healthy`, :meth:`lifespan`, :meth:`shutdown` / :meth:`async_shutdown`
        health for ``/health``; start-up and shut-down with the runtime.

    A handler talks back through :func:`task_context`: it reports generated
    tokens (for token budgets) and progress (for streams) there.
    """

    task_handlers: ClassVar[dict[type[Task], Handler]] = {}
    max_concurrency: int = 256
    inbox_size: int = 256
    task_timeout: float | None = None
    streaming_tasks: tuple[type[Task], ...] = ()
    # ``_start_nowait(actor, job) -> bool``: start a job without a runner (it
    # calls ``actor._end_started(job)`` once over), or False; raises what the
    # job's handler would raise at once.  Ours only (EngineWorker's).
    _start_nowait: Callable[[WorkerActor, _Job], bool] | None = None

    def register_task_handler(self, task_cls: type[Task], handler: Handler) -> None:
        """Add or replace the handler for ``task_cls`` on this worker only.

        (TensorRT-LLM mutates a dict shared by every worker class; here other
        workers are unaffected.)  ``handler`` is called as ``handler(self, task)``.
        """
        if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
            raise TypeError(f"task_cls must be a Task subclass, got {task_cls!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        own = self.__dict__.setdefault("_instance_handlers", {})
        own[task_cls] = handler
        self.__dict__.pop("_handler_cache", None)

    def find_handler(self, task_cls: type[Task]) -> Handler | None:
        """The handler for ``task_cls``: exact type first, then its base classes;
        per-instance registrations win over class-level ones."""
        cache: dict[type[Task], Handler | None] = self.__dict__.setdefault("_handler_cache", {})
        try:
            return cache[task_cls]
        except KeyError:
            pass
        handler = cache[task_cls] = self._lookup_handler(task_cls)
        return handler

    def _lookup_handler(self, task_cls: type[Task]) -> Handler | None:
        own: dict[type[Task], Handler] = self.__dict__.get("_instance_handlers", {})
        for klass in task_cls.__mro__:
            handler = own.get(klass)
            if handler is not None:
                return handler
            for worker_cls in type(self).__mro__:
                table = worker_cls.__dict__.get("task_handlers")
                if table and klass in table:
                    return table[klass]  # type: ignore[no-any-return]
        return None

    def check_task(self, task: Task) -> None:
        """Reject a task this worker can never run (called at submission).

        The default checks that a handler exists; engine workers also check
        engine limits such as the context length.
        """
        if self.find_handler(type(task)) is None:
            raise TaskNotSupportedError(
                f"{type(self).__name__} has no handler for {type(task).__name__}"
            )

    def check_request(self, prompt: object) -> None:
        """Refuse a request whose prompt this worker can never serve (called at
        submission with the request's prompt, already checked to be a non-empty
        string or list of chat messages).  Raise :class:`InvalidTaskError`
        naming the field; the default accepts everything."""

    async def on_scope_end(self, scope_id: str) -> None:
        """Release what this worker holds for the execution scope ``scope_id``
        (an MCP session, a sandbox): called once when a request or one of its
        parallel branches has finished, after every task submitted in it has
        ended, whether it succeeded, failed or was cancelled.

        Runs shielded from cancellation, bounded by the runtime's
        ``cancel_grace`` (an overrun warns :class:`CancelGraceExceededWarning`).  An exception it raises fails the request (or, when
        the scope ended with an error already, is noted on that error).  The
        default does nothing; the runtime only calls workers that override it.
        """

    def stats(self) -> Mapping[str, int]:
        """Live counts this worker owns, for leak checks (for example
        ``{"engine_requests": n}``: requests alive in its engine).  Counts of the
        same name are summed over the runtime's workers.  Must not block."""
        return {}

    @property
    def healthy(self) -> bool:
        return True

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Entered by the runtime before the first task and exited at shutdown.

        Engine workers start and stop their engine here.
        """
        yield

    async def run_task(self, task: Task) -> TaskStatus:
        """Run ``task`` directly, without an actor (TensorRT-LLM compatible).

        The handler sees a :class:`TaskContext` with no request, no budget and
        no stream consumer.
        """
        handler = self.find_handler(type(task))
        if handler is None:
            return TaskStatus.WORKER_NOT_SUPPORTED
        token = _CURRENT.set(TaskContext(task, scope=current_scope.get()))
        try:
            status = await handler(self, task)
        finally:
            _CURRENT.reset(token)
        return TaskStatus.SUCCESS if status is None else status

    def shutdown(self) -> None:
        """Release resources that outlive the runtime (TensorRT-LLM compatible)."""

    async def async_shutdown(self) -> None:
        self.shutdown()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


class _Job(TaskContext):
    """A task in an actor: its public :class:`TaskContext` plus the actor's
    bookkeeping (one object per task)."""

    __slots__ = ("cancel_scope", "done", "error", "started")

    def __init__(
        self,
        task: Task,
        request_id: int | None,
        on_tokens: Callable[[int], None] | None,
        on_progress: Callable[[], None] | None,
        done: Any,
        scope: ExecutionScope | None = None,
    ) -> None:
        super().__init__(task, request_id, on_tokens, on_progress, scope)
        # what the job's end is told to: an event the requester waits on, or a
        # Parallel block's handle (anything with set() and is_set())
        self.done = done
        self.error: BaseException | None = None
        self.cancel_scope: Any = None
        self.started = False

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()


def _status_error(worker: Worker, task: Task, status: TaskStatus) -> Exception:
    """The error a handler's failure status stands for (TensorRT-LLM's convention)."""
    if status is TaskStatus.WORKER_NOT_SUPPORTED:
        return TaskNotSupportedError(
            f"{type(worker).__name__} does not support this {type(task).__name__}"
        )
    return TaskFailedError(
        f"{type(worker).__name__} handler returned {status!r} for {type(task).__name__}",
        status,
    )


def _same_context(a: contextvars.Context, b: contextvars.Context) -> bool:
    """Whether two contexts hold the same variables with the same values."""
    if len(a) != len(b):
        return False
    get = a.get
    for var, value in b.items():
        if get(var, a) is not value:
            return False
    return True


class WorkerActor:
    """The actor around one worker (internal to the runtime).

    ``serve()`` runs in the runtime's task group.  :meth:`execute` is called by a
    request: it blocks while the inbox is full (backpressure), then until the task
    has finished.  If the caller is cancelled, the task is cancelled too and
    ``execute`` waits (shielded, at most ``cancel_grace`` seconds) until the handler
    has unwound, so an engine request under it has been aborted when the
    cancellation returns.  A handler that is still running when the grace runs out
    is reported with :class:`CancelGraceExceededWarning` naming the worker and the
    task, and counted in ``grace_overruns``.

    Handlers run in runner tasks under ``serve``'s task group, never in the
    requester's task.  A worker may start a job without a runner instead (the
    engine worker does, for a plain generation on an engine that starts streams:
    the engine then calls it as deltas come); such a job keeps every promise
    above, its cancel aborting the engine request before ``execute`` returns,
    and ``serve`` waits for it as for a runner.  A runner takes the next job
    when its handler returns, and ``execute`` hands a job straight to an idle
    runner, or starts it without one, (skipping the inbox) only when no job is
    queued or waiting to be queued before it and a slot is free.
    A runner whose handler left a context variable set retires, so the next job
    starts from a clean context.  Closing the actor wakes the idle runners, which
    exit; busy ones exit when their handler returns.
    """

    def __init__(self, tag: object, worker: Worker, *, cancel_grace: float = 30.0) -> None:
        if worker.max_concurrency < 1 or worker.inbox_size < 0:
            raise ValueError("max_concurrency must be >= 1 and inbox_size >= 0")
        self.tag = tag
        self.worker = worker
        self.cancel_grace = cancel_grace
        self.running = 0
        self.completed = 0
        self.grace_overruns = 0

    #: runners kept waiting for work at most (more exit when they finish)
    max_idle_runners = 256

    def open(self) -> None:
        """Create the inbox and limiter (in the event loop that will serve them)."""
        self._send, self._recv = anyio.create_memory_object_stream[_Job](self.worker.inbox_size)
        self._loop = current_backend()
        self._slots = Slots(self.worker.max_concurrency, self._loop)
        self._clean = contextvars.copy_context()  # what every job starts from
        # Runner tasks run the handlers: each takes the next job when its handler
        # returns, so a task costs no spawn of its own; an idle runner is handed a
        # job straight from the requester (no trip through serve) when the inbox
        # is empty, nobody waits to send and a slot is free.
        self._idle: list[Parked] = []  # runners waiting for work
        self._group: Any = None
        self._closed = False
        self._in_inbox = 0  # jobs sent and not yet taken by serve
        self._waiting_senders = 0
        # jobs the worker started without a runner (Worker._start_nowait), and
        # what serve waits on for them at the end
        self._start_nowait = self.worker._start_nowait
        self._started = 0
        self._started_over: Any = None

    @property
    def queued(self) -> int:
        return self._send.statistics().current_buffer_used

    async def serve(self) -> None:
        recv, slots = self._recv, self._slots
        try:
            async with self._loop.open_group() as group, recv:
                self._group = group
                async for job in recv:
                    # Drain what is already queued without a checkpoint per message;
                    # block only when the inbox is empty or every slot is busy.
                    while True:
                        self._in_inbox -= 1
                        if job.cancel_requested:
                            job.done.set()
                        else:
                            if not slots.take_nowait():
                                await slots.take()  # every slot busy: wait for one
                            self._dispatch(job)
                        try:
                            job = recv.receive_nowait()
                        except (anyio.WouldBlock, anyio.EndOfStream):
                            break
                self._release_idle()  # the inbox is closed: idle runners exit
            if self._started:  # jobs without a runner are still running: wait for them
                self._started_over = self._loop.Event()
                await self._started_over.wait()
        finally:
            self._closed = True  # (on an error the group has cancelled every runner)

    def _dispatch(self, job: _Job) -> None:
        """Start ``job`` (its slot taken) on an idle runner or a new one."""
        self.running += 1
        # started from now on: a requester cancelled before its handler begins still
        # waits for it (it may reach the engine first)
        job.started = True
        start = self._start_nowait
        if start is not None:
            self._started += 1
            try:
                taken = start(self, job)
            except Exception as exc:  # what its handler would have raised at once
                job.error = exc
                taken = True
                self._end_started(job)
            if taken:
                return
            self._started -= 1
        unpark = self._loop.unpark
        while self._idle:
            if unpark(self._idle.pop(), job):
                return
        # a runner starts from the actor's context (not from a requester's, when
        # one starts it): the one snapshot every runner's jobs are checked against
        self._clean.run(self._group.start_soon, self._runner, job)

    def _end_started(self, job: _Job) -> None:
        """A job started without a runner is over (called once, by what runs it)."""
        job.cancel_scope = None
        self._started -= 1
        self.running -= 1
        self.completed += 1
        self._slots.give_back()
        job.done.set()
        if not self._started and self._started_over is not None:
            self._started_over.set()

    def _hand_to_idle_runner(self, job: _Job) -> bool:
        """Start ``job`` at once, when nothing is queued or waiting before it and
        a slot is free (else it goes through the inbox), on an idle runner or
        (when the worker can) without one."""
        if (
            (not self._idle and (self._start_nowait is None or self._group is None))
            or self._in_inbox
            or self._waiting_senders
            or self._closed
        ):
            return False
        if not self._slots.take_nowait():
            return False
        self._dispatch(job)
        return True

    def submit_nowait(self, job: _Job) -> bool:
        """Start or queue ``job`` without blocking: ``False`` (nothing sent) when
        it would have to wait for room in the inbox, so the caller can wait in
        a task of its own.  Raises what ``execute`` raises for a closed actor.
        ``job.done.set()`` is called exactly once the job is over (its handler
        returned, or it was dropped from the inbox, cancelled before it began),
        possibly before this returns (a job the worker started without a runner
        that its engine refused at admission): count the job before calling."""
        if self._hand_to_idle_runner(job):
            return True
        if self._waiting_senders:
            return False  # behind a requester already waiting for room
        try:
            self._send.send_nowait(job)
        except anyio.WouldBlock:
            return False
        self._in_inbox += 1
        return True

    async def send_waiting(self, job: _Job) -> None:
        """Send a job :meth:`submit_nowait` refused: block until there is room in
        the inbox (backpressure), behind the requesters already waiting.

        Cancellation: a cancelled wait sends nothing (``job.done`` is not set)."""
        self._in_inbox += 1
        self._waiting_senders += 1
        try:
            await self._send.send(job)  # inbox full: wait (backpressure)
        except BaseException:
            self._in_inbox -= 1  # never sent
            raise
        finally:
            self._waiting_senders -= 1

    def _release_idle(self) -> None:
        idle, self._idle = self._idle, []
        for runner in idle:
            self._loop.unpark(runner, None)

    async def _runner(self, job: _Job | None) -> None:
        idle = Parked()  # where this runner waits for work
        worker = self.worker
        while job is not None:
            # One cancel scope serves this runner's jobs one after another (a
            # scope costs an enter and an exit): ``job.cancel()`` cancels it while
            # that job runs, and the next job gets a new one.  A job's
            # cancellation is caught here; any other leaves the runner.
            with self._loop.CancelScope() as scope:
                while True:
                    # The job's handler runs here, in this frame (a coroutine per
                    # job would hold a frame more per running task).  Its error
                    # goes to ``job.error``; its cancellation leaves through the
                    # ``finally`` (the job is over) to the scope above.
                    task = job.task
                    token = _CURRENT.set(job)
                    scope_token = current_scope.set(job.scope)
                    job.cancel_scope = scope
                    try:
                        if job.cancel_requested:
                            scope.cancel()
                        handler = worker.find_handler(type(task))
                        if handler is None:
                            raise TaskNotSupportedError(
                                f"{type(worker).__name__} has no handler for {type(task).__name__}"
                            )
                        timeout = worker.task_timeout
                        if timeout is None:
                            status = await handler(worker, task)
                        else:
                            with anyio.fail_after(timeout):
                                status = await handler(worker, task)
                        if status is not None and status is not TaskStatus.SUCCESS:
                            raise _status_error(worker, task, status)
                    except Exception as exc:  # handed to the requester, never swallowed
                        job.error = exc
                    finally:
                        # over: a late cancel() must not reach the next job
                        job.cancel_scope = None
                        current_scope.reset(scope_token)
                        _CURRENT.reset(token)
                        self.running -= 1
                        self.completed += 1
                        self._slots.give_back()
                        job.done.set()
                    if scope.cancel_called:
                        break  # cancelled, though its handler returned: a new scope
                    if not self._stays(idle):
                        return
                    job = await self._loop.park(idle)  # the next job; None: released
                    if job is None:
                        return
            if not self._stays(idle):
                return
            job = await self._loop.park(idle)

    def _stays(self, idle: Parked) -> bool:
        """Whether a runner whose job is over waits for the next one (listed as
        idle, to be parked on ``idle``), rather than exiting."""
        if (
            self._closed
            or len(self._idle) >= self.max_idle_runners
            # a handler that left a context variable set would leak it into
            # the next job: this runner retires and a fresh one takes over
            or not _same_context(self._clean, contextvars.copy_context())
        ):
            return False
        self._idle.append(idle)
        return True

    def close(self) -> None:
        """Stop taking tasks; ``serve`` returns once running tasks finish."""
        self._closed = True
        self._send.close()

    async def execute(
        self,
        task: Task,
        request_id: int | None = None,
        on_tokens: Callable[[int], None] | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        """Queue ``task`` and wait until its handler returned; raise its error.

        ``on_tokens`` and ``on_progress`` are what the handler's
        :class:`TaskContext` calls for ``report_tokens`` and ``notify_progress``.
        """
        job = _Job(
            task, request_id, on_tokens, on_progress, self._loop.Event(), current_scope.get()
        )
        finished = False
        try:
            if not self.submit_nowait(job):
                await self.send_waiting(job)
            await job.done.wait()
            finished = True
        finally:
            if not finished:
                job.cancel()
                if job.started and not job.done.is_set():
                    with anyio.CancelScope(shield=True), anyio.move_on_after(self.cancel_grace):
                        await job.done.wait()
                    if not job.done.is_set():
                        self.grace_overrun(task)
        if job.error is not None:
            raise job.error

    def grace_overrun(self, task: Task) -> None:
        """Count and report a cancelled ``task`` whose handler is still running
        after ``cancel_grace`` (:class:`CancelGraceExceededWarning`)."""
        self.grace_overruns += 1
        warnings.warn(
            f"{type(self.worker).__name__} (tag {self.tag!r}) did not unwind "
            f"its cancelled {type(task).__name__} within cancel_grace="
            f"{self.cancel_grace} s; the cancellation returns while it runs",
            CancelGraceExceededWarning,
            stacklevel=3,
        )
