"""A worker that serves generation tasks with any :class:`engine_bridge.Engine`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

from engine_bridge import Engine, EngineDelta, InvalidRequestError, SamplingParams

from ._errors import InvalidTaskError
from ._tasks import GenerationTask, StreamGenerationTask, Task, TaskStatus
from ._worker import Handler, Worker

__all__ = ["EngineWorker", "notify_progress"]


def notify_progress(task: Task) -> None:
    """Tell whoever consumes ``task`` as a stream that its outputs changed.

    Handlers of :class:`StreamGenerationTask` call this after each update of
    ``output_str`` / ``output_tokens``; it never blocks.
    """
    callback = task.__dict__.get("_progress")
    if callback is not None:
        callback()


def _apply(task: GenerationTask, delta: EngineDelta) -> None:
    task.output_str = (task.output_str or "") + delta.text
    if task.output_tokens is None:
        task.output_tokens = []
    task.output_tokens.extend(delta.token_ids)
    if delta.logprobs is not None:
        if task.logprobs is None:
            task.logprobs = []
        task.logprobs.extend(delta.logprobs)
    task.completion_tokens_num += delta.num_tokens
    task.prompt_tokens_num = delta.prompt_tokens or task.prompt_tokens_num
    if delta.finish_reason is not None:
        task.finish_reason = delta.finish_reason


def _reset_outputs(task: GenerationTask) -> None:
    task.output_str = ""
    task.output_tokens = []
    task.logprobs = None
    task.finish_reason = None
    task.completion_tokens_num = 0


class EngineWorker(Worker):
    """Runs :class:`GenerationTask` and :class:`StreamGenerationTask` on ``engine``.

    The engine is started when the runtime starts the worker and closed at
    shutdown, unless ``manage_engine=False`` (the caller runs ``async with
    engine:`` itself, e.g. to share one engine between runtimes).  Sampling parameters a task leaves as ``None`` come from
    ``default_params``.  A task's engine request is aborted as soon as the task is
    cancelled (the engine frees its slot before the cancellation completes).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        default_params: SamplingParams | None = None,
        max_concurrency: int | None = None,
        inbox_size: int | None = None,
        task_timeout: float | None = None,
        manage_engine: bool = True,
    ) -> None:
        self.engine = engine
        self.manage_engine = manage_engine
        self.default_params = default_params if default_params is not None else SamplingParams()
        if max_concurrency is not None:
            self.max_concurrency = max_concurrency
        if inbox_size is not None:
            self.inbox_size = inbox_size
        if task_timeout is not None:
            self.task_timeout = task_timeout

    @property
    def healthy(self) -> bool:
        return self.engine.healthy

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        if not self.manage_engine:
            yield
            return
        async with self.engine:
            yield

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, GenerationTask):
            request = task.engine_request(self.default_params, stream=False)
            try:
                self.engine.check(request)
            except InvalidRequestError as e:
                if isinstance(e, InvalidTaskError):
                    raise
                raise InvalidTaskError(
                    f"{type(task).__name__}.{e.field}", str(e).split(": ", 1)[1]
                ) from None

    async def generation_handler(self, task: GenerationTask) -> TaskStatus:
        # a task under a token budget streams, so the budget sees every step
        on_tokens = task.__dict__.get("_on_tokens")
        request = task.engine_request(self.default_params, stream=on_tokens is not None)
        _reset_outputs(task)
        async with self.engine.open_stream(request) as stream:
            async for delta in stream:
                _apply(task, delta)
                if on_tokens is not None:
                    on_tokens(delta.num_tokens)
        return TaskStatus.SUCCESS

    async def stream_generation_handler(self, task: StreamGenerationTask) -> TaskStatus:
        request = task.engine_request(self.default_params, stream=True)
        on_tokens = task.__dict__.get("_on_tokens")
        _reset_outputs(task)
        task.end_flag = False
        async with self.engine.open_stream(request) as stream:
            async for delta in stream:
                _apply(task, delta)
                if on_tokens is not None:
                    on_tokens(delta.num_tokens)
                if delta.finish_reason is not None:
                    task.end_flag = True
                notify_progress(task)
        task.end_flag = True
        notify_progress(task)
        return TaskStatus.SUCCESS

    # Marked so the generator-controller driver streams it in the background.
    stream_generation_handler.scaffold_streams = True  # type: ignore[attr-defined]

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        GenerationTask: generation_handler,
        StreamGenerationTask: stream_generation_handler,
    }

    def __repr__(self) -> str:
        return f"EngineWorker({self.engine!r})"
