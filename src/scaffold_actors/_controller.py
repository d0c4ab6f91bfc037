"""The two controller forms and how the runtime runs them."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, Protocol, runtime_checkable

import anyio

from engine_bridge import raise_single

from ._context import RequestContext
from ._tasks import GenerationTask, ScaffoldingOutput, StreamGenerationTask, Task

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


def _is_parallel(obj: object) -> bool:
    return hasattr(obj, "sub_gens") and not isinstance(obj, (list, tuple))


class _StreamState:
    """A StreamGenerationTask that a generator controller consumes step by step."""

    __slots__ = ("changed", "done", "error", "reported", "scope")

    def __init__(self) -> None:
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

    def __init__(self, ctx: RequestContext, tg: anyio.abc.TaskGroup) -> None:
        self.ctx = ctx
        self.tg = tg
        self.streams: dict[int, _StreamState] = {}

    async def drive(self, gen: Generator[Any, Any, Any]) -> Any:
        send_exc: BaseException | None = None
        try:
            while True:
                try:
                    if send_exc is not None:
                        exc, send_exc = send_exc, None
                        obj = gen.throw(exc)
                    else:
                        obj = next(gen)
                except StopIteration as stop:
                    return stop.value
                try:
                    await self._handle(obj)
                except Exception as exc:
                    send_exc = exc
        finally:
            gen.close()

    async def _handle(self, obj: Any) -> None:
        if _is_parallel(obj):
            gens = list(obj.sub_gens)
            # sub-controller i runs in the branch scope parent.child(i)
            parent = self.ctx.scope
            if len(gens) == 1:
                await self.ctx._in_scope(parent.child(0), self.drive, gens[0])
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
                    tg.start_soon(self._step_stream, t)
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

    async def _step_stream(self, task: StreamGenerationTask) -> None:
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
            return
        if state is None:
            state = self.streams[key] = _StreamState()
            task.request_handle = state
            self.tg.start_soon(self._run_stream, task, state)
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


async def drive_generator(ctx: RequestContext, gen: Generator[Any, Any, Any]) -> Any:
    """Run one generator controller's ``process``/``generate`` generator on ``ctx``.

    Streamed tasks still open when the generator returns are aborted.
    """
    try:
        async with anyio.create_task_group() as tg:
            driver = _GeneratorDriver(ctx, tg)
            value = await driver.drive(gen)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise_single(group)
    return value


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
