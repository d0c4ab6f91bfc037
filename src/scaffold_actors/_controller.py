"""The two controller forms and how the runtime runs them."""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Mapping
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc

from engine_bridge import raise_single

from ._context import RequestContext, _cancel_job_end, _JobOwner, under_token_budget
from ._scope import ExecutionScope, current_scope
from ._tasks import GenerationTask, ScaffoldingOutput, StreamGenerationTask, Task
from ._worker import WorkerActor, _Job

__all__ = ["NativeController", "drive_generator", "run_controller"]


@runtime_checkable
class NativeController(Protocol):
    """A native (async) inference-time method.

    ``run`` receives the request context and a :class:`GenerationTask` holding the
    input, and returns a task whose ``output_str`` is the method's answer (method
    details go in ``customized_result_fields``).  Controllers compose: a method
    calls another's ``run`` with the same context.  Keep per-request state in
    local variables; one controller object serves every request.
    """

    async def run(
        self, ctx: RequestContext, task: GenerationTask, /, **kwargs: Any
    ) -> GenerationTask: ...


_UNSET: Any = object()  # drive(): nothing yielded yet
# a fan-out's yield stopped at a full inbox: the batch, the refused index, its start
_Refused = tuple[list[tuple[Task, WorkerActor]], int, float]


def _is_parallel(obj: object) -> bool:
    return hasattr(obj, "sub_gens") and not isinstance(obj, (list, tuple))


class _GroupNeeded:
    """A drive stopped before a yield that starts a stream (``obj``), to go on
    in a task group."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj


class _StreamState:
    """A StreamGenerationTask that a generator controller consumes step by step."""

    __slots__ = ("changed", "done", "error", "group", "reported", "scope")

    def __init__(self, group: Any = None) -> None:
        self.group = group  # the task group of the drive that started it
        self.scope = anyio.CancelScope()
        self.changed = anyio.Event()
        self.done = False
        self.error: BaseException | None = None
        self.reported = 0

    def wake(self) -> None:
        self.changed.set()


class _GeneratorDriver:
    """Runs TensorRT-LLM style generator controllers on a request context.

    A yielded list of tasks runs concurrently; a yielded ``ParallelProcess`` runs
    its sub-generators concurrently.  An exception from a task is thrown into the
    generator at its ``yield`` so the controller may handle it; otherwise it fails
    the request unchanged.  When the request is cancelled every generator is
    closed (its ``finally`` blocks run).
    """

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.streams: dict[int, _StreamState] = {}

    async def drive(self, gen: Generator[Any, Any, Any], obj: Any = _UNSET) -> Any:
        """Step ``gen`` to its end (``obj``: what it yielded already), handling
        what it yields; closes it however this ends.

        The streamed tasks it starts run in the background in a task group of
        this drive, opened at the first of them (a drive that starts none
        opens none): those still open when the generator returns are aborted."""
        try:
            step = await self._steps(gen, obj, None)
            if type(step) is _GroupNeeded:
                try:
                    async with self.ctx._backend.open_group() as tg:
                        step = await self._steps(gen, step.obj, tg)
                        self._raise_unread_stream_error(tg)
                        tg.cancel_scope.cancel()  # abort the streams still open
                except BaseExceptionGroup as group:
                    raise_single(group)
            return step
        finally:
            gen.close()

    async def _steps(self, gen: Generator[Any, Any, Any], obj: Any, tg: Any) -> Any:
        """Step ``gen`` to its end and return its value; without a group
        (``tg`` None), stop before a yield that starts a stream and return it
        as :class:`_GroupNeeded`."""
        send_exc: BaseException | None = None
        while True:
            if obj is _UNSET:
                try:
                    if send_exc is not None:
                        exc, send_exc = send_exc, None
                        obj = gen.throw(exc)
                    else:
                        obj = next(gen)
                except StopIteration as stop:
                    return stop.value
            if tg is None and self._starts_stream(obj):
                return _GroupNeeded(obj)
            try:
                await self._handle(obj, tg)
            except Exception as exc:
                send_exc = exc
            obj = _UNSET

    def _raise_unread_stream_error(self, group: Any) -> None:
        """A stream the generator started in ``group`` that failed, and whose
        error it never stepped into (it returned first): raise that error, so
        the request fails with it instead of it being lost."""
        for key, state in list(self.streams.items()):
            if state.group is group and state.error is not None:
                del self.streams[key]
                raise state.error

    def _starts_stream(self, obj: Any) -> bool:
        """Whether handling ``obj`` starts a streamed task in the background (a
        bad task is left for :meth:`_handle` to raise)."""
        tasks = obj if isinstance(obj, (list, tuple)) else (obj,)
        for t in tasks:
            if (
                isinstance(t, StreamGenerationTask)
                and not t.cancel_flag
                and id(t) not in self.streams
            ):
                try:
                    if self._streams_in_background(t):
                        return True
                except Exception:
                    return False
        return False

    async def _handle(self, obj: Any, streams_group: Any) -> None:
        """Run what the generator yielded; the streams it starts run in
        ``streams_group`` (the drive's group: None when it starts none)."""
        if _is_parallel(obj):
            gens = list(obj.sub_gens)
            # sub-controller i runs in the branch scope parent.child(i)
            parent = self.ctx.scope
            if len(gens) == 1:
                await self.ctx._in_scope(parent.child(0), self.drive, gens[0])
                return
            if not self.ctx._scope_workers and not under_token_budget():
                await _FanOut(self, gens, parent).run()
                return
            try:
                async with self.ctx._backend.open_group() as tg:
                    for i, g in enumerate(gens):
                        tg.start_soon(self.ctx._in_scope, parent.child(i), self.drive, g)
            except BaseExceptionGroup as group:
                raise_single(group)
            return
        if isinstance(obj, Task):
            obj = [obj]
        if not isinstance(obj, (list, tuple)) or not all(isinstance(t, Task) for t in obj):
            raise TypeError(
                "a generator controller must yield a list of Task objects or a "
                f"ParallelProcess, got {type(obj).__name__}"
            )
        streams = [
            t for t in obj if isinstance(t, StreamGenerationTask) and self._streams_in_background(t)
        ]
        plain = [t for t in obj if not any(t is s for s in streams)]
        shown = [t for t in plain if t.streaming_output_flag]
        if not streams and not shown:
            await self.ctx.run_all(plain)
            return
        for t in shown:
            self.ctx.resolve(t)
        rest = [t for t in plain if not t.streaming_output_flag]
        try:
            async with anyio.create_task_group() as tg:
                if rest:
                    tg.start_soon(self.ctx.run_all, rest)
                for t in shown:
                    tg.start_soon(self._run_shown, t)
                for t in streams:
                    tg.start_soon(self._step_stream, t, streams_group)
        except BaseExceptionGroup as group:
            raise_single(group)

    async def _run_shown(self, task: Task) -> None:
        """Run a task with ``streaming_output_flag``: its partial outputs go to the
        request's result as they come (TensorRT-LLM hands them over after the
        yield); the worker's list of them is then emptied."""

        shown = 0

        def show() -> None:
            nonlocal shown
            outputs = task.streaming_output_list
            if len(outputs) > shown:  # a new partial output
                shown = len(outputs)
                self.ctx.emit(outputs[-1])

        try:
            await self.ctx._run(task, show)
        finally:
            task.streaming_output_list = []

    def _streams_in_background(self, task: StreamGenerationTask) -> bool:
        return type(task) in self.ctx.resolve(task).worker.streaming_tasks

    async def _step_stream(self, task: StreamGenerationTask, group: Any) -> None:
        """Advance one streamed task to its next ``streaming_step`` boundary."""
        key = id(task)
        state = self.streams.get(key)
        if task.cancel_flag:
            if state is not None and not state.done:
                state.scope.cancel()
                while not state.done:
                    state.changed = anyio.Event()
                    await state.changed.wait()
            self.streams.pop(key, None)
            task.end_flag = True
            if state is not None and state.error is not None:
                raise state.error  # it failed before the cancel: not lost to it
            return
        if state is None:
            state = self.streams[key] = _StreamState(group)
            task.request_handle = state
            group.start_soon(self._run_stream, task, state)
        while True:
            if state.error is not None:
                self.streams.pop(key, None)
                raise state.error
            tokens = len(task.output_tokens or ())
            new = tokens - state.reported
            if state.done or (new > 0 and new >= max(task.streaming_step, 1)):
                state.reported = tokens
                if state.done:
                    task.end_flag = True
                    self.streams.pop(key, None)
                return
            state.changed = anyio.Event()
            await state.changed.wait()

    async def _run_stream(self, task: StreamGenerationTask, state: _StreamState) -> None:
        try:
            with state.scope:
                await self.ctx._run(task, state.wake)
        except Exception as exc:
            state.error = exc
        finally:
            state.done = True
            state.changed.set()


class _Branch:
    """One sub-generator of a fan-out, stepped by the fan-out's task."""

    __slots__ = ("error", "gen", "jobs", "pending", "scope")

    def __init__(self, gen: Generator[Any, Any, Any], scope: ExecutionScope) -> None:
        self.gen = gen
        self.scope = scope
        self.jobs: list[_StepJob] = []  # what its last yield runs
        self.pending = 0  # of those, not over yet
        self.error: BaseException | None = None  # the first of their errors


class _StepJob(_Job):
    """A task a sub-generator yielded, run as a job whose end is itself: the
    runner's ``done.set()`` tells the fan-out the job is over (one object per
    task: the job, its public :class:`TaskContext` and the fan-out's handle)."""

    __slots__ = ("_over", "branch", "cancelled", "fanout", "start")

    def __init__(
        self, task: Task, request_id: int, fanout: _FanOut, branch: _Branch, start: float
    ) -> None:
        _Job.__init__(self, task, request_id, None, None, self, branch.scope)
        self.fanout = fanout
        self.branch = branch
        self.start = start
        self.cancelled = False
        self._over = False

    @property
    def _job(self) -> _StepJob:  # the job of this handle (``_JobOwner``)
        return self

    def is_set(self) -> bool:
        return self._over

    def set(self) -> None:
        if not self._over:
            self._over = True
            self.fanout._job_over(self)
            # over: its cycles (its own end, its branch and fan-out) are cut, so
            # a finished request is freed by reference counting
            self.done = self.fanout = self.branch = None  # type: ignore[assignment]

    def cancel(self) -> None:
        """Cancel the job; one still queued, which will never run, is over at once."""
        _cancel_job_end(self, self)


class _FanOut(_JobOwner):
    """A ``ParallelProcess`` run from one task: its sub-generators are stepped
    here, and the plain task lists they yield go to the actors as jobs (no task,
    cancel scope or frames of the request's own per task).  The promises are
    those of a branch task per sub-generator: sub-generator ``i`` runs in scope
    ``parent.child(i)``; a task's error (the first of a yield's, the rest of
    which are cancelled) is thrown into its generator at the ``yield``; an error
    a generator lets out cancels everything and leaves unchanged; every task is
    over before this returns (on a cancellation: cancelled, and waited for
    within ``cancel_grace``), and every generator is closed.  A sub-generator
    that yields anything else (a stream, a shown task, a nested
    ``ParallelProcess``) goes on in a branch task of its own.
    """

    def __init__(
        self,
        driver: _GeneratorDriver,
        gens: list[Generator[Any, Any, Any]],
        parent: ExecutionScope,
    ) -> None:
        self._driver = driver
        self._ctx = ctx = driver.ctx
        self._backend = ctx._backend
        self._jobs: set[_StepJob] = set()
        self._wake: Any = None
        self._branches = [_Branch(g, parent.child(i)) for i, g in enumerate(gens)]
        self._ready: deque[_Branch] = deque()  # branches whose tasks are over
        self._live = 0  # branches stepped here and not done
        self._unstarted = 0  # of the branches, the first not stepped yet
        # branches that go on in a task of their own (with what they yielded),
        # until the group they start in is open
        self._moved: list[tuple[_Branch, Any]] = []
        self._tg: Any = None

    async def run(self) -> None:
        try:
            self._live = len(self._branches)
            await self._step()
            if self._moved:  # sub-generators that go on in tasks of their own
                try:
                    async with self._backend.open_group() as self._tg:
                        self._start_moved()
                        await self._step()
                except BaseExceptionGroup as group:
                    raise_single(group)
        except BaseException:
            self._cancel_jobs()
            raise
        finally:
            try:
                if self._jobs:
                    await self._wait_jobs()
            finally:
                for branch in self._branches:
                    branch.gen.close()

    async def _step(self) -> None:
        """Step the branches until every one stepped here is done; without a
        task group yet, return as soon as one must go on in a task of its own
        (the group is opened for it: a fan-out of plain task lists opens none)."""
        while self._live:
            if self._moved and self._tg is None:
                return
            if self._unstarted < len(self._branches):
                branch = self._branches[self._unstarted]
                self._unstarted += 1
                exc = None
            elif self._ready:
                branch = self._ready.popleft()
                exc = branch.error
            else:
                self._wake = self._backend.Event()
                await self._wake.wait()
                continue
            refused = self._advance(branch, exc)
            if refused is not None:
                await self._send_waiting(branch, refused)

    def _start_moved(self) -> None:
        moved, self._moved = self._moved, []
        for branch, obj in moved:
            self._tg.start_soon(
                self._driver.ctx._in_scope, branch.scope, self._driver.drive, branch.gen, obj
            )

    async def _send_waiting(self, branch: _Branch, refused: _Refused | None) -> None:
        """Send the rest of a yield that met a full inbox, waiting for room
        (backpressure) where it must."""
        while refused is not None:
            batch, i, start = refused
            await batch[i][1].send_waiting(branch.jobs[-1])
            refused = self._send(branch, batch, i + 1, start)

    def _advance(self, branch: _Branch, exc: BaseException | None) -> _Refused | None:
        """Step ``branch`` (throwing ``exc`` in) until it yields tasks to wait for,
        ends, or goes on in a task of its own (see :meth:`_send` for what it
        returns).  Its generator's error leaves."""
        ctx = self._driver.ctx
        gen = branch.gen
        while True:
            token = current_scope.set(branch.scope)
            try:
                obj = gen.send(None) if exc is None else gen.throw(exc)
            except StopIteration:
                self._live -= 1
                return None
            finally:
                current_scope.reset(token)
            exc = None
            try:
                batch = self._plain(obj)
            except Exception as error:  # a bad task: thrown in, as run_all raises it
                exc = error
                continue
            if batch is None:
                self._live -= 1
                self._moved.append((branch, obj))
                if self._tg is not None:
                    self._start_moved()
                return None
            if batch:
                branch.error = None
                branch.jobs = []
                branch.pending = 1  # held until every task is sent
                start = anyio.current_time() if ctx.trace is not None else 0.0
                return self._send(branch, batch, 0, start)

    def _plain(self, obj: Any) -> list[tuple[Task, WorkerActor]] | None:
        """``obj``'s tasks, validated, with their actors, if it is a list of
        tasks that just run; ``None`` for anything else."""
        if isinstance(obj, Task):
            obj = [obj]
        elif not isinstance(obj, (list, tuple)):
            return None
        for task in obj:
            if not isinstance(task, Task):
                return None
        batch = []
        for task in obj:
            actor = self._driver.ctx.resolve(task)
            if task.streaming_output_flag or (
                isinstance(task, StreamGenerationTask)
                and type(task) in actor.worker.streaming_tasks
            ):
                return None
            batch.append((task, actor))
        return batch

    def _send(
        self, branch: _Branch, batch: list[tuple[Task, WorkerActor]], first: int, start: float
    ) -> _Refused | None:
        """Hand ``batch[first:]`` to the actors as jobs.  Where an inbox is full, stop
        and return where (the refused task's job is made and counted, not sent);
        ``None`` once all are sent."""
        ctx = self._driver.ctx
        for i in range(first, len(batch)):
            task, actor = batch[i]
            if branch.error is not None:  # an earlier one failed while this waited
                ctx._account(task, start, start, "cancelled", None)
                continue
            step = job = _StepJob(task, ctx.request_id, self, branch, start)
            branch.jobs.append(step)
            branch.pending += 1
            self._jobs.add(step)
            if not actor.submit_nowait(job):
                return batch, i, start
        branch.pending -= 1
        if branch.pending == 0:
            self._ready.append(branch)
        return None

    def _job_over(self, step: _StepJob) -> None:
        """A task is over (called by its job's end, from the runner)."""
        self._jobs.discard(step)
        error = step.error
        status = "error" if error is not None else "cancelled" if step.cancelled else "ok"
        ctx = self._driver.ctx
        end = anyio.current_time() if ctx.trace is not None else 0.0
        ctx._account(step.task, step.start, end, status, error)
        branch = step.branch
        branch.pending -= 1
        last = branch.pending == 0
        if error is not None and branch.error is None:
            branch.error = error  # thrown into the generator; the rest are cancelled
            for other in branch.jobs:
                other.cancel()
        if last:
            self._ready.append(branch)
        if self._wake is not None:
            self._wake.set()


async def drive_generator(ctx: RequestContext, gen: Generator[Any, Any, Any]) -> Any:
    """Run one generator controller's ``process``/``generate`` generator on ``ctx``.

    Streamed tasks still open when the generator returns are aborted.
    """
    return await _GeneratorDriver(ctx).drive(gen)


def _is_generator_controller(controller: object) -> bool:
    return callable(getattr(controller, "process", None)) and callable(
        getattr(controller, "generate", None)
    )


async def run_controller(
    controller: Any, ctx: RequestContext, prompt: Any, kwargs: Mapping[str, Any]
) -> ScaffoldingOutput:
    """Run one request's controller (either form) and return its output."""
    if _is_generator_controller(controller):
        out = await drive_generator(ctx, controller.generate(prompt, **kwargs))
        if isinstance(out, ScaffoldingOutput):
            return out
        if isinstance(out, GenerationTask):
            return out.create_scaffolding_output()
        output_str = getattr(out, "output_str", None)
        return ScaffoldingOutput(output_str, getattr(out, "output_tokens", None))
    task = GenerationTask.create_from_prompt(prompt)
    run = getattr(controller, "run", None)
    if run is not None:
        result = await run(ctx, task, **kwargs)
    else:
        result = await controller(ctx, task, **kwargs)
    if not isinstance(result, GenerationTask):
        raise TypeError(
            f"controller {controller!r} returned {type(result).__name__}, expected a GenerationTask"
        )
    return result.create_scaffolding_output()
