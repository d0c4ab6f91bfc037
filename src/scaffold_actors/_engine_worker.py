"""A worker that serves generation tasks with any :class:`engine_bridge.Engine`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, ClassVar

from engine_bridge import (
    Engine,
    EngineDelta,
    InvalidRequestError,
    SamplingParams,
    ToolCall,
    answer_tool_calls,
)

from ._chat import AssistantMessage, ChatTask
from ._errors import InvalidTaskError
from ._hints import DropKVCacheTask, TokenizeTask
from ._task_context import TaskContext, task_context
from ._tasks import (
    GenerationTask,
    ScaffoldingOutput,
    StreamGenerationTask,
    Task,
    TaskStatus,
    check_not_taken_yet,
)
from ._worker import Handler, Worker

if TYPE_CHECKING:
    from engine_bridge import StartedStream

    from ._worker import WorkerActor, _Job

__all__ = ["EngineWorker"]


# Each assignment to a task's field runs its class's __setattr__ hook (the
# field's converter and validator): a field already holding the value is left alone.


def _apply(task: GenerationTask, delta: EngineDelta) -> None:
    task.output_str = (task.output_str or "") + delta.text
    tokens = task.output_tokens
    if tokens is None:
        task.output_tokens = tokens = []
    tokens.extend(delta.token_ids)
    if delta.logprobs is not None:
        if task.logprobs is None:
            task.logprobs = []
        task.logprobs.extend(delta.logprobs)
        task.cumulative_logprob = (task.cumulative_logprob or 0.0) + sum(delta.logprobs)
    if delta.top_logprobs is not None:
        if task.top_logprobs is None:
            task.top_logprobs = []
        task.top_logprobs.extend(delta.top_logprobs)
    if delta.num_tokens:
        task.completion_tokens_num += delta.num_tokens
    if delta.prompt_tokens and delta.prompt_tokens != task.prompt_tokens_num:
        task.prompt_tokens_num = delta.prompt_tokens
    if delta.finish_reason is not None:
        task.finish_reason = delta.finish_reason


def _reset_outputs(task: GenerationTask) -> None:
    task.output_str = ""
    task.output_tokens = []
    if task.logprobs is not None:
        task.logprobs = None
        task.cumulative_logprob = None
    if task.top_logprobs is not None:
        task.top_logprobs = None
    if task.finish_reason is not None:
        task.finish_reason = None
    if task.completion_tokens_num:
        task.completion_tokens_num = 0


def _take(task: GenerationTask, ctx: TaskContext, delta: EngineDelta, partials: bool) -> None:
    """What a plain generation does with each delta, in ``generation_handler``
    and started without a runner alike: outputs, token report, partial output
    (``partials``: ``task.streaming_output_flag``), progress."""
    _apply(task, delta)
    ctx.report_tokens(delta.num_tokens)
    if partials and delta.finish_reason is None:
        task.streaming_output_list.append(
            ScaffoldingOutput(task.output_str, list(task.output_tokens or ()), finished=False)
        )
    ctx.notify_progress()


class _StartedGeneration:
    """A :class:`GenerationTask` run without a handler frame: the engine calls it
    (``on_wake``) as deltas come, and it does what ``generation_handler`` does
    with each.  It is also the job's canceller (``job.cancel_scope``)."""

    __slots__ = ("actor", "job", "partials", "stream")

    def __init__(self, actor: WorkerActor, job: _Job, partials: bool) -> None:
        self.actor = actor
        self.job = job
        self.partials = partials
        self.stream: StartedStream | None = None  # None: over (the job ended)

    def __call__(self) -> None:
        stream = self.stream
        if stream is None:
            return
        job = self.job
        if not job.cancel_requested:
            task: GenerationTask = job.task  # type: ignore[assignment]
            try:
                while not job.cancel_requested:
                    delta = stream.next_nowait()
                    if delta is None:
                        return  # more to come: the engine wakes us again
                    _take(task, job, delta, self.partials)
            except StopAsyncIteration:
                pass
            except Exception as exc:  # handed to the requester, never swallowed
                job.error = exc
        self.cancel()  # over (or cancelled): release it

    def cancel(self) -> None:
        """Close the stream (``job.cancel()`` calls it): the engine drops the
        request, aborting it if it still runs; the job ends once the engine
        released it.  Idempotent."""
        stream = self.stream
        if stream is not None:
            stream.close()
            if stream.released:  # else the engine wakes us once it has
                self.stream = None
                self.actor._end_started(self.job)


class EngineWorker(Worker):
    """Runs :class:`GenerationTask` and :class:`StreamGenerationTask` on ``engine``.

    The engine is started when the runtime starts the worker and closed at
    shutdown, unless ``manage_engine=False`` (the caller runs ``async with
    engine:`` itself, e.g. to share one engine between runtimes).  Sampling
    parameters a task leaves as ``None`` come from ``default_params``.  Every
    request's prompt is checked against the engine at submission
    (:meth:`check_request`) unless ``check_prompts=False``.  A task's engine request is aborted as soon as the task is
    cancelled (the engine frees its slot before the cancellation completes).

    On an engine that can start streams (:class:`~engine_bridge.StartsStreams`:
    the simulated, transformers and TensorRT-LLM engines), a plain
    :class:`GenerationTask` run by the stock ``generation_handler`` on a worker
    without ``task_timeout`` runs without a task of its own: the engine hands it
    each delta, and it does what the handler would (same outputs, token reports,
    progress, errors, cancellation).  When the engine has no free slot (a
    bridged engine at ``max_concurrent``) it runs in a runner as usual, which
    waits for one.
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
        check_prompts: bool = True,
    ) -> None:
        self.engine = engine
        self._running = 0  # lifespans entered (run_task starts the engine when none is)
        self.manage_engine = manage_engine
        self.check_prompts = check_prompts
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
            self._running += 1
            try:
                yield
            finally:
                self._running -= 1

    async def run_task(self, task: Task) -> TaskStatus:
        """Run ``task`` directly, without a runtime (TensorRT-LLM compatible:
        ``asyncio.run(worker.run_task(task))``).  A worker whose engine is not
        running (no runtime started it) starts it for this task and closes it
        after, so each call is complete in itself (an engine is bound to the
        event loop that started it).  Raises what the handler raises; cancelling
        the call aborts the engine request."""
        if self.manage_engine and not self._running:
            async with self.lifespan():
                return await super().run_task(task)
        return await super().run_task(task)

    def check_request(self, prompt: object) -> None:
        """Refuse, at submission, a prompt the engine can never take (longer than
        its context, say) with :class:`InvalidTaskError` naming the field; skipped
        when the worker was made with ``check_prompts=False`` (a worker that never
        sees the request's prompt as such, a judge with a shorter context say)."""
        if not self.check_prompts:
            return
        probe = GenerationTask.create_from_prompt(prompt)  # type: ignore[arg-type]
        probe.max_tokens = 1
        self.check_task(probe)

    def stats(self) -> Mapping[str, int]:
        """``{"engine_requests": n}``: requests alive in the engine (its
        ``num_active``, the engine's own count)."""
        return {"engine_requests": self.engine.num_active}

    def check_task(self, task: Task) -> None:
        super().check_task(task)
        if isinstance(task, GenerationTask):
            check_not_taken_yet(task)
            request = task.engine_request(self.default_params, stream=False)
            try:
                self.engine.check(request)
            except InvalidRequestError as e:
                raise InvalidTaskError.of(type(task).__name__, e) from None

    async def generation_handler(self, task: GenerationTask) -> TaskStatus:
        ctx = task_context()
        # a task under a token budget streams, so the budget sees every step; so
        # does one whose partial outputs somebody reads
        partials = task.streaming_output_flag
        stream = ctx.counts_tokens or ctx.streamed or partials
        request = task.engine_request(self.default_params, stream=stream)
        _reset_outputs(task)
        async with self.engine.open_stream(request) as deltas:
            async for delta in deltas:
                _take(task, ctx, delta, partials)
        return TaskStatus.SUCCESS

    def _start_nowait(self, actor: WorkerActor, job: _Job) -> bool:
        """Start ``job`` without a runner when it is a plain generation that
        ``generation_handler`` would run and the engine can start streams
        (:class:`~engine_bridge.StartsStreams`); ``False``: run it as usual.
        Raises what the engine's admission raises."""
        task = job.task
        if (
            self.task_timeout is not None
            or not isinstance(task, GenerationTask)
            or self.find_handler(type(task)) is not _GENERATION
        ):
            return False
        # the engine's class must have it (a wrapper forwarding attributes to an
        # engine inside would skip its own open_stream)
        engine = self.engine
        start = getattr(type(engine), "start_stream", None)
        if start is None:
            return False
        if job.cancel_requested:  # cancelled before it began: it never reaches the engine
            actor._end_started(job)
            return True
        partials = task.streaming_output_flag
        run = _StartedGeneration(actor, job, partials)
        request = task.engine_request(
            self.default_params, stream=job.counts_tokens or job.streamed or partials
        )
        _reset_outputs(task)
        stream = start(engine, request, run)
        if stream is None:  # no free slot: a runner waits for one (open_stream)
            return False
        run.stream = stream
        job.cancel_scope = run
        return True

    async def stream_generation_handler(self, task: StreamGenerationTask) -> TaskStatus:
        ctx = task_context()
        request = task.engine_request(self.default_params, stream=True)
        _reset_outputs(task)
        task.end_flag = False
        async with self.engine.open_stream(request) as stream:
            async for delta in stream:
                _apply(task, delta)
                ctx.report_tokens(delta.num_tokens)
                if delta.finish_reason is not None:
                    task.end_flag = True
                ctx.notify_progress()
        task.end_flag = True
        ctx.notify_progress()
        return TaskStatus.SUCCESS

    async def chat_handler(self, task: ChatTask) -> TaskStatus:
        """One assistant turn: the reply is appended to ``task.messages`` as an
        :class:`AssistantMessage` once generation ended.

        With ``task.tools``, the tools are offered in the system message and the
        ``<tool_call>`` blocks the model writes become the message's
        ``tool_calls`` (and ``task.tool_calls``), with ``finish_reason``
        ``"tool_calls"``; the content keeps the rest of the text.
        """
        ctx = task_context()
        request = task.engine_request(self.default_params, stream=ctx.counts_tokens or ctx.streamed)
        _reset_outputs(task)
        task.end_flag = False
        reported: tuple[ToolCall, ...] | None = None
        reasoning: list[str] = []
        task.reasoning_tokens_num = 0
        async with self.engine.open_stream(request) as stream:
            async for delta in stream:
                _apply(task, delta)
                reported = delta.tool_calls or reported
                if delta.reasoning:
                    reasoning.append(delta.reasoning)
                if delta.reasoning_tokens is not None:  # only what the server reports
                    task.reasoning_tokens_num = delta.reasoning_tokens
                ctx.report_tokens(delta.num_tokens)
                ctx.notify_progress()
        task.end_flag = True
        # an engine with a tool-call API reports the calls; else they are in the text
        content, found = answer_tool_calls(task.output_str or "", reported, bool(task.tools))
        calls = found or None
        if calls:
            task.finish_reason = "tool_calls"
        task.tool_calls = calls
        task.messages.append(
            AssistantMessage(
                content,
                reasoning_content="".join(reasoning) or None,
                tool_calls=calls,
                finish_reason=task.finish_reason,
            )
        )
        ctx.notify_progress()
        return TaskStatus.SUCCESS

    async def tokenize_handler(self, task: TokenizeTask) -> TaskStatus:
        """The engine's own token count of the task's prompt."""
        task.token_count = await self.engine.count_tokens(task.engine_request())
        return TaskStatus.SUCCESS

    async def drop_kv_cache_handler(self, task: DropKVCacheTask) -> TaskStatus:
        """The engine frees the chat's prefix-cache blocks (past those retained)."""
        task.freed_blocks = await self.engine.drop_kv_cache(task.hint())
        return TaskStatus.SUCCESS

    # the generator-controller driver steps these while they run in the background
    streaming_tasks = (StreamGenerationTask,)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        GenerationTask: generation_handler,
        StreamGenerationTask: stream_generation_handler,
        ChatTask: chat_handler,
        TokenizeTask: tokenize_handler,
        DropKVCacheTask: drop_kv_cache_handler,
    }

    def __repr__(self) -> str:
        return f"EngineWorker({self.engine!r})"


_GENERATION = EngineWorker.task_handlers[GenerationTask]
