"""The per-request context a native controller receives."""

from __future__ import annotations

import contextvars
import inspect
import warnings
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from engine_bridge import raise_single

from ._backend import Backend, current_backend
from ._budget import TokenBudget, TokenBudgetExhaustedError
from ._errors import CancelGraceExceededWarning, RequestCancelledError, UnknownWorkerTagError
from ._scope import ExecutionScope, current_scope
from ._tasks import (
    GenerationTask,
    RewardTask,
    ScaffoldingOutput,
    StreamGenerationTask,
    Task,
    normalize_tag,
)
from ._trace import ExecutionTrace, TaskRecord, TokenUsage
from ._worker import Worker, WorkerActor, _Job

if TYPE_CHECKING:
    from ._result import ScaffoldingResult

__all__ = ["Handle", "Parallel", "RequestContext"]

T = TypeVar("T")
# the token budgets enclosing the current task (children inherit them)
_BUDGETS: contextvars.ContextVar[tuple[TokenBudget, ...]] = contextvars.ContextVar(
    "scaffold_token_budgets", default=()
)
TaskT = TypeVar("TaskT", bound=Task)


def under_token_budget() -> bool:
    """Whether code running now is inside a :meth:`RequestContext.token_budget`."""
    return bool(_BUDGETS.get())


class Handle(Generic[T]):
    """One child started in a :class:`Parallel` block.

    ``cancel()`` cancels it (without failing the block); ``await handle.wait()``
    returns its value, re-raises its error, or raises
    :class:`RequestCancelledError` if it was cancelled.
    """

    __slots__ = (
        "_backend",
        "_done",
        "_error",
        "_finished",
        "_scope",
        "_value",
        "cancelled",
        "index",
    )

    def __init__(self, index: int, backend: Backend | None = None) -> None:
        self.index = index
        self._backend = backend if backend is not None else current_backend()
        self._scope = self._backend.CancelScope()
        self._finished = False
        self._done: Any = None  # an event, made only when somebody waits
        self._value: T | None = None
        self._error: BaseException | None = None
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self._finished

    def cancel(self) -> None:
        if not self._finished:
            self.cancelled = True
            self._scope.cancel()

    def _finish(self) -> None:
        self._finished = True
        if self._done is not None:
            self._done.set()

    def result(self) -> T:
        """The value of a finished child (raises if it failed or was cancelled)."""
        if not self._finished:
            raise RuntimeError("handle is not done yet")
        if self._error is not None:
            raise self._error
        if self.cancelled:
            raise RequestCancelledError(f"child {self.index} was cancelled")
        return self._value  # type: ignore[return-value]

    async def wait(self) -> T:
        """Block until the child finished, then :meth:`result`.  A checkpoint even
        when it already has (cancellation is seen here either way)."""
        if self._finished:
            await anyio.lowlevel.checkpoint()
        else:
            if self._done is None:
                self._done = self._backend.Event()
            await self._done.wait()
        return self.result()


def _cancel_job_end(end: Any, job: _Job) -> None:
    """``cancel()`` of ``job``'s ``done`` (``_TaskHandle`` for a :class:`Parallel`
    block; for a generator controller's fan-out the job is its own end,
    ``_StepJob``): cancel the job; a job still queued, which will never run, is
    over at once."""
    if not end.is_set():
        end.cancelled = True
        _Job.cancel(job)  # the job's own cancel (a fan-out's end is the job)
        if not job.started:
            end.set()  # never reached a runner, and never will: over now


class _TaskHandle(Handle[Any]):
    """A child that is one task run as a job on its worker's actor, with no task
    of its own in the request (:meth:`Parallel.submit`).  It is the job's
    ``done``: the runner (or the inbox, for a job cancelled before it began)
    calls :meth:`set` once the job is over."""

    __slots__ = ("_job", "_par", "_start")

    def __init__(self, index: int, par: Parallel, start: float) -> None:
        self.index = index
        self._backend = par._backend
        self._scope = None  # cancelling cancels the job (its runner's scope)
        self._finished = False
        self._done = None
        self._value = None
        self._error = None
        self.cancelled = False
        self._par = par
        self._start = start
        self._job: Any = None

    def cancel(self) -> None:
        if not self._finished:
            _cancel_job_end(self, self._job)

    def is_set(self) -> bool:
        return self._finished

    def set(self) -> None:
        if self._finished:
            return
        job = self._job
        status = "cancelled" if self.cancelled else "ok"
        if job.error is not None:
            self._error, status = job.error, "error"
        elif not self.cancelled:
            self._value = job.task
        self._par._job_over(self, status)
        # over: the cycles with its block and its job are cut, so a finished
        # request is freed by reference counting, not left to a full collection
        self._par = self._job = None  # type: ignore[assignment]


class _JobOwner:
    """What hands tasks to actors as jobs and must see them over before it is
    left (a :class:`Parallel` block, a generator controller's fan-out): its
    handles (``cancel()``, ``_job``) sit in ``_jobs`` until their job is over,
    each end sets ``_wake``."""

    _ctx: RequestContext | None
    _backend: Backend
    _jobs: set[Any]
    _wake: Any

    def _cancel_jobs(self) -> None:
        for handle in list(self._jobs):
            handle.cancel()

    async def _wait_jobs(self) -> None:
        """Until every job is over; if cancelled meanwhile, cancel them
        and wait (shielded, at most the grace) for their handlers to unwind."""
        try:
            await self._until_jobs_over()
        except anyio.get_cancelled_exc_class():
            self._cancel_jobs()
            ctx = self._ctx
            assert ctx is not None  # jobs are submitted through a context
            with anyio.CancelScope(shield=True), anyio.move_on_after(ctx._scope_grace):
                await self._until_jobs_over()
            for handle in self._jobs:
                task = handle._job.task
                ctx._actors[normalize_tag(task.worker_tag)].grace_overrun(task)
            raise

    async def _until_jobs_over(self) -> None:
        while self._jobs:
            self._wake = self._backend.Event()
            await self._wake.wait()


class Parallel(_JobOwner):
    """Run children concurrently inside a request (a task group under it).

    ``start(fn, *args)`` starts ``await fn(*args)`` and returns a :class:`Handle`;
    ``as_completed()`` yields handles in the order they finish (cancelled ones are
    skipped); ``cancel_all()`` cancels every child still running.  The first child
    that raises cancels the others and its exception leaves the block unchanged.
    Leaving the block waits for every child, so nothing outlives it.

    ``submit(task)`` is ``start(ctx.run, task)`` for one task, without a task of
    the request's own per child: the task goes straight to its worker's actor as
    a job (the cheaper way to fan out samples).

    Made by :meth:`RequestContext.parallel`, child ``i`` runs in the execution
    scope ``parent.child(i)`` (see :class:`ExecutionScope`), ended (workers'
    ``on_scope_end``) when the child finishes.

    Cancellation: cancelling the code around the block cancels every child;
    leaving the block then waits until each submitted task's handler has
    unwound (shielded, at most the runtime's ``cancel_grace``, with
    :class:`CancelGraceExceededWarning` past it), so the engine requests under
    them are gone when the cancellation leaves the block.
    """

    def __init__(self, ctx: RequestContext | None = None) -> None:
        self._ctx = ctx
        self._backend = ctx._backend if ctx is not None else current_backend()
        self._group_cm = self._backend.open_group()
        self._tg: Any = None
        self._handles: list[Handle[Any]] = []
        self._finished: deque[Handle[Any]] = deque()
        self._wake: Any = None
        self._running = 0
        self._jobs: set[_TaskHandle] = set()  # submitted tasks not over yet
        self._failure: BaseException | None = None  # the first submitted task's error

    async def __aenter__(self) -> Self:
        self._tg = await self._group_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc is not None:
            self._cancel_jobs()
        try:
            try:
                swallowed = bool(await self._group_cm.__aexit__(exc_type, exc, tb))
            except BaseExceptionGroup as group:
                raise_single(group)
                raise  # pragma: no cover
        finally:
            if self._jobs:
                await self._wait_jobs()
        if self._failure is not None:
            raise self._failure
        return swallowed

    def _job_over(self, handle: _TaskHandle, status: str) -> None:
        """A submitted task is over (called by its handle, from the runner)."""
        self._jobs.discard(handle)
        self._running -= 1
        ctx = self._ctx
        assert ctx is not None
        end = anyio.current_time() if ctx.trace is not None else 0.0
        ctx._account(handle._job.task, handle._start, end, status, handle._error)
        handle._finish()
        if handle._error is not None and self._failure is None:
            # as a failing child does: the block is cancelled, the error leaves it
            self._failure = handle._error
            self._tg.cancel_scope.cancel()
            self._cancel_jobs()
        if not handle.cancelled:
            self._finished.append(handle)
        if self._wake is not None:
            self._wake.set()

    @property
    def handles(self) -> Sequence[Handle[Any]]:
        return self._handles

    def start(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Handle[T]:
        handle: Handle[T] = Handle(len(self._handles), self._backend)
        self._handles.append(handle)
        self._running += 1
        parent = current_scope.get()
        branch = parent.child(handle.index) if parent is not None else None
        self._tg.start_soon(self._child, handle, fn, args, branch)
        return handle

    def submit(self, task: TaskT) -> Handle[TaskT]:
        """Run ``task`` as a child of the block, as ``start(ctx.run, task)`` does:
        the handle's value is the task with its outputs filled.

        The task is validated here (a bad task raises :class:`InvalidTaskError`
        or :class:`UnknownWorkerTagError` now, nothing started) and handed to its
        worker's actor at once, with no task of the request's own: a child that
        costs a job, not a task, a cancel scope and their frames.  Where that
        cannot keep ``ctx.run``'s promises it starts ``ctx.run`` as an ordinary
        child instead (same results): under a token budget, with workers that
        watch scope ends, or when the worker's inbox is full (the child then
        waits for room, as ``ctx.run`` does).

        Cancellation: ``handle.cancel()`` cancels the task's handler (a task
        still queued never starts); see the class for leaving the block.
        """
        if self._ctx is None:
            raise RuntimeError("submit() needs a block made by ctx.parallel()")
        return self._submit(task, self._ctx.resolve(task))

    def _submit(self, task: TaskT, actor: WorkerActor) -> Handle[TaskT]:
        """:meth:`submit` for a task resolved (validated) already, or a copy of one."""
        ctx = self._ctx
        assert ctx is not None
        if (
            ctx._scope_workers
            or (_BUDGETS.get() and isinstance(task, GenerationTask))
            or self._failure is not None
        ):
            return self.start(_run_resolved, ctx, task, actor)
        index = len(self._handles)
        parent = current_scope.get()
        branch = parent.child(index) if parent is not None else None
        handle = _TaskHandle(index, self, anyio.current_time() if ctx.trace is not None else 0.0)
        job = handle._job = _Job(task, ctx.request_id, None, None, handle, branch)
        # counted before it is handed over: a job may be over before submit_nowait
        # returns (its engine refused it at admission)
        self._handles.append(handle)
        self._jobs.add(handle)
        self._running += 1
        if not actor.submit_nowait(job):
            self._handles.pop()
            self._jobs.discard(handle)
            self._running -= 1
            return self.start(_run_resolved, ctx, task, actor)
        return handle

    async def _child(
        self,
        handle: Handle[T],
        fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
        branch: ExecutionScope | None,
    ) -> None:
        try:
            with handle._scope:
                if branch is not None and self._ctx is not None:
                    handle._value = await self._ctx._in_scope(branch, fn, *args)
                else:
                    handle._value = await fn(*args)
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                handle.cancelled = True
            else:
                handle._error = exc
            raise
        finally:
            self._running -= 1
            handle._finish()
            if not handle.cancelled:
                self._finished.append(handle)
            if self._wake is not None:
                self._wake.set()
        if handle._scope.cancelled_caught:
            handle.cancelled = True

    def cancel_all(self) -> None:
        for h in self._handles:
            h.cancel()

    def as_completed(self) -> AsyncIterator[Handle[Any]]:
        """Yield each child's handle as it finishes (successfully or with an error
        that is about to propagate); stops when no child is left running.
        Cancelled children are skipped."""
        return _Completed(self)


async def _run_resolved(ctx: RequestContext, task: TaskT, actor: WorkerActor) -> TaskT:
    await ctx._run(task, None, actor)
    return task


class _Completed:
    __slots__ = ("_par",)

    def __init__(self, par: Parallel) -> None:
        self._par = par

    def __aiter__(self) -> _Completed:
        return self

    async def __anext__(self) -> Handle[Any]:
        par = self._par
        while True:
            while par._finished:
                h = par._finished.popleft()
                if not h.cancelled:
                    return h
            if par._running == 0:
                raise StopAsyncIteration
            par._wake = par._backend.Event()
            await par._wake.wait()
            par._wake = None


class RequestContext:
    """What a native controller gets for one request.

    All methods must be called from the request's own task (or children of it).
    Cancelling the request cancels whatever they are awaiting; the engine requests
    under them are aborted before the cancellation completes.
    """

    def __init__(
        self,
        request_id: int,
        actors: Mapping[object, WorkerActor],
        *,
        result: ScaffoldingResult | None = None,
        trace: ExecutionTrace | None = None,
        scope_workers: Sequence[Worker] = (),
        scope_grace: float = 30.0,
        check_prompts: bool = True,
        backend: Backend | None = None,
    ) -> None:
        self.request_id = request_id
        self._actors = actors
        self._result = result
        self.usage = TokenUsage()
        self.trace = trace
        self.root_scope = ExecutionScope(f"req-{request_id}")
        self._scope_workers = scope_workers
        self._scope_grace = scope_grace
        self._check_prompts = check_prompts
        self._loop: Backend | None = backend

    @property
    def _backend(self) -> Backend:
        """The event loop's primitives (looked up once, from inside the loop)."""
        if self._loop is None:
            self._loop = current_backend()
        return self._loop

    # -- execution scopes --------------------------------------------------
    @property
    def scope(self) -> ExecutionScope:
        """The execution scope of the calling code: the request's root scope, or
        the parallel branch it runs in."""
        return current_scope.get() or self.root_scope

    async def _in_scope(
        self, scope: ExecutionScope, fn: Callable[..., Awaitable[T]], *args: Any
    ) -> T:
        """``await fn(*args)`` with ``scope`` as the current scope, then end it."""
        token = current_scope.set(scope)
        failed: BaseException | None = None
        try:
            return await fn(*args)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            current_scope.reset(token)
            if self._scope_workers:
                await self._end_scope(scope.scope_id, failed)

    async def _end_scope(self, scope_id: str, failed: BaseException | None) -> None:
        """Every worker's ``on_scope_end(scope_id)``, shielded and bounded; the
        first error is raised after all ran (noted on ``failed`` instead when the
        scope already ended with an error)."""
        errors: list[BaseException] = []
        with anyio.CancelScope(shield=True), anyio.move_on_after(self._scope_grace) as bound:
            for worker in self._scope_workers:
                try:
                    outcome = worker.on_scope_end(scope_id)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as exc:
                    errors.append(exc)
        if bound.cancelled_caught:
            warnings.warn(
                f"on_scope_end({scope_id!r}) did not finish within cancel_grace="
                f"{self._scope_grace} s; the scope ends while a worker still releases it",
                CancelGraceExceededWarning,
                stacklevel=2,
            )
        for error in errors:
            note = f"{type(error).__name__} in on_scope_end({scope_id!r}): {error}"
            if failed is not None:
                failed.add_note(note)
            elif error is not errors[0]:
                errors[0].add_note(note)
        if errors and failed is None:
            raise errors[0]

    # -- tasks -----------------------------------------------------------
    def resolve(self, task: Task) -> WorkerActor:
        """The actor that runs ``task``; validates the task first.

        Raises :class:`InvalidTaskError` (naming the field) or
        :class:`UnknownWorkerTagError` without running anything.
        """
        task.validate()
        if self._check_prompts and isinstance(task, GenerationTask):
            task.check_prompt()
        actor = self._actors.get(normalize_tag(task.worker_tag))
        if actor is None:
            raise UnknownWorkerTagError(task.worker_tag, [str(t) for t in self._actors])
        actor.worker.check_task(task)
        return actor

    async def run(self, task: TaskT) -> TaskT:
        """Run one task to completion and return it with its outputs filled.

        Blocks while the worker's inbox is full.  Raises the handler's exception
        unchanged if it fails.
        """
        await self._run(task)
        return task

    async def _run(
        self,
        task: Task,
        on_progress: Callable[[], None] | None = None,
        actor: WorkerActor | None = None,
    ) -> None:
        """:meth:`run`, with ``on_progress`` as the task's progress listener
        (what its handler's :meth:`TaskContext.notify_progress` calls); ``actor``
        when the task was resolved (validated) already."""
        if actor is None:
            actor = self.resolve(task)
        budgets = _BUDGETS.get() if isinstance(task, GenerationTask) else ()
        if budgets:
            await self._run_budgeted(actor, task, budgets, on_progress)  # type: ignore[arg-type]
        else:
            await self._run_on(actor, task, None, on_progress)

    async def _run_on(
        self,
        actor: WorkerActor,
        task: Task,
        on_tokens: Callable[[int], None] | None,
        on_progress: Callable[[], None] | None,
    ) -> None:
        # the clock is read only for a trace (each read looks the loop up)
        start = anyio.current_time() if self.trace is not None else 0.0
        status = "cancelled"
        error: BaseException | None = None
        try:
            await actor.execute(task, self.request_id, on_tokens, on_progress)
            status = "ok"
        except Exception as exc:
            status, error = "error", exc
            raise
        finally:
            end = anyio.current_time() if self.trace is not None else 0.0
            self._account(task, start, end, status, error)

    async def _run_budgeted(
        self,
        actor: WorkerActor,
        task: GenerationTask,
        budgets: tuple[TokenBudget, ...],
        on_progress: Callable[[], None] | None,
    ) -> None:
        remaining = min(b.remaining for b in budgets)
        if remaining <= 0:
            raise TokenBudgetExhaustedError(
                f"token budget spent ({', '.join(repr(b) for b in budgets)})"
            )
        if task.max_tokens is None or task.max_tokens > remaining:
            task.max_tokens = remaining

        charged = 0

        def on_tokens(n: int) -> None:
            nonlocal charged
            charged += n
            for b in budgets:
                b.charge(n)

        scope = anyio.CancelScope()
        for b in budgets:
            b._live.add(scope)
        try:
            with scope:
                await self._run_on(actor, task, on_tokens, on_progress)
            if task.completion_tokens_num > charged:  # a worker that does not stream
                on_tokens(task.completion_tokens_num - charged)
        finally:
            for b in budgets:
                b._live.discard(scope)
        if scope.cancelled_caught:
            raise TokenBudgetExhaustedError(
                f"token budget spent while generating ({', '.join(repr(b) for b in budgets)})"
            )

    @asynccontextmanager
    async def token_budget(self, limit: int) -> AsyncIterator[TokenBudget]:
        """``async with ctx.token_budget(n) as budget:`` — generation tasks run
        inside the block share ``n`` completion tokens (see :class:`TokenBudget`);
        budgets nest (a task counts against every enclosing one) and apply to the
        children started inside the block, not to their siblings outside it."""
        budget = TokenBudget(limit)
        token = _BUDGETS.set((*_BUDGETS.get(), budget))
        try:
            yield budget
        finally:
            _BUDGETS.reset(token)

    def _account(
        self, task: Task, start: float, end: float, status: str, error: BaseException | None
    ) -> None:
        usage = self.usage
        usage.tasks += 1
        if isinstance(task, (GenerationTask, RewardTask)):
            usage.prompt_tokens += task.prompt_tokens_num
            usage.completion_tokens += task.completion_tokens_num
        if self.trace is not None:
            self.trace.records.append(
                TaskRecord(
                    type(task).__name__,
                    normalize_tag(task.worker_tag),
                    task.inputs(),
                    task.outputs(),
                    start,
                    end,
                    status,
                    None if error is None else f"{type(error).__name__}: {error}",
                )
            )

    async def run_all(self, tasks: Sequence[TaskT]) -> list[TaskT]:
        """Run tasks concurrently; the first failure cancels the rest and is raised.

        Every task is validated before any starts, so a bad task rejects the whole
        batch without side effects.
        """
        actors = [self.resolve(t) for t in tasks]
        if len(tasks) == 1:
            await self._run(tasks[0], None, actors[0])
        elif tasks:
            try:
                async with anyio.create_task_group() as tg:
                    for t, actor in zip(tasks, actors, strict=True):
                        tg.start_soon(self._run, t, None, actor)
            except BaseExceptionGroup as group:
                raise_single(group)
        return list(tasks)

    def parallel(self) -> Parallel:
        """``async with ctx.parallel() as par:`` — see :class:`Parallel`."""
        return Parallel(self)

    @asynccontextmanager
    async def stream(
        self, task: StreamGenerationTask
    ) -> AsyncIterator[AsyncIterator[StreamGenerationTask]]:
        """Run ``task`` in the background and iterate over its progress.

        Each iteration yields ``task`` itself once at least ``task.streaming_step``
        new tokens arrived (or generation ended; ``task.end_flag`` tells), with
        ``output_str`` holding everything so far.  Leaving the block before the end
        (``break``, an exception, cancellation) aborts the generation; the engine
        request is gone when the block has exited.  An error of the generation is
        raised from the iteration, or when the block exits if nobody iterated.
        """
        self.resolve(task)
        updates = _StreamUpdates(task)

        async def runner() -> None:
            try:
                await self._run(task, updates.wake)
            except Exception as exc:
                updates.failure = exc
            finally:
                updates.finished = True
                updates.wake()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runner)
                try:
                    yield updates
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise_single(group)
        if updates.failure is not None and not updates.failure_raised:
            raise updates.failure

    # -- request output --------------------------------------------------
    def emit(self, output: ScaffoldingOutput | str) -> None:
        """Publish a partial output of the request to whoever iterates its result.

        Never blocks: a slow consumer sees the latest partial output (partial
        outputs are cumulative), not every one.
        """
        if isinstance(output, str):
            output = ScaffoldingOutput(output, finished=False)
        if self._result is not None:
            self._result._publish_partial(output)

    def _emit_later(self, make: Callable[[], ScaffoldingOutput]) -> None:
        """:meth:`emit` of ``make()``, called only if somebody reads it (it must
        build from values that do not change afterwards)."""
        if self._result is not None:
            self._result._publish_partial(make)


class _StreamUpdates:
    """Async iterator behind :meth:`RequestContext.stream` (coalescing, never blocks
    the producer)."""

    __slots__ = ("_end_sent", "_event", "_seen", "failure", "failure_raised", "finished", "task")

    def __init__(self, task: StreamGenerationTask) -> None:
        self.task = task
        self._seen = 0
        self._end_sent = False
        self._event: anyio.Event | None = None
        self.finished = False
        self.failure: BaseException | None = None
        self.failure_raised = False

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    def __aiter__(self) -> _StreamUpdates:
        return self

    async def __anext__(self) -> StreamGenerationTask:
        task = self.task
        while True:
            if self.failure is not None:
                self.failure_raised = True
                raise self.failure
            tokens = len(task.output_tokens or ())
            ended = self.finished or task.end_flag
            new = tokens - self._seen
            if (new > 0 and new >= max(task.streaming_step, 1)) or (ended and not self._end_sent):
                self._seen = tokens
                self._end_sent = ended
                return task
            if self.finished:
                raise StopAsyncIteration
            self._event = anyio.Event()
            await self._event.wait()
            self._event = None
