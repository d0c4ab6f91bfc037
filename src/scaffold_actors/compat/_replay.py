"""TensorRT-LLM's trace replay: an :class:`ExecutionTrace` played back as load.

Each branch of the trace gets a :class:`QueueExecutor` that consumes that
branch's events in order, concurrently with its sibling branches, as the
agent's tasks ran: system, user and tool messages become synthetic prompt
tokens of the lengths the trace recorded, each assistant message a generation
of exactly the recorded ``completion_tokens`` (``ignore_eos``) on the prompt
built so far, and each tool call a pause of its recorded duration.  What the
engine did is recorded in :class:`ReplayGenerationStats`, from the engine's own
answers.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc

from engine_bridge import EngineError, raise_single

from .._tasks import GenerationTask, TaskStatus
from .._worker import Worker
from ._tracing import ExecutionTrace, TraceEvent

__all__ = [
    "QueueExecutor",
    "QueueManager",
    "ReplayEngine",
    "ReplayGenerationStats",
    "RngFactory",
    "make_seeded_rng_factory",
]

#: a branch path -> that branch's random number generator
RngFactory = Callable[[tuple[int, ...]], random.Random]

#: synthetic token ids are drawn from this range (TensorRT-LLM's)
TOKEN_ID_RANGE = (100, 30000)


def _fresh_rng(branch_path: tuple[int, ...]) -> random.Random:
    return random.Random()


def make_seeded_rng_factory(*seed_parts: Any) -> RngFactory:
    """A :data:`RngFactory` whose generator for a branch is seeded by
    ``(seed_parts, branch_path)`` through SHA-256: the same session replayed
    twice (in two processes, under any ``PYTHONHASHSEED``) sends the same token
    ids, so the second pass hits the prefix cache the first one filled."""
    key = "\x00".join(repr(p) for p in seed_parts)

    def factory(branch_path: tuple[int, ...]) -> random.Random:
        digest = hashlib.sha256(f"{key}\x00{tuple(branch_path)!r}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    return factory


def _random_ids(n: int, rng: random.Random) -> list[int]:
    low, high = TOKEN_ID_RANGE
    return [rng.randint(low, high) for _ in range(max(n, 0))]


class ReplayGenerationStats:
    """One entry per replayed assistant message: the trace's
    ``trace_completion_tokens``, the engine's ``replay_output_token_len`` (its
    own count) and ``replay_content_token_len`` (after the recorded reasoning
    tokens), ``reasoning_tokens``, ``latency_s`` (measured around the
    generation), ``usage_completion_tokens`` / ``usage_prompt_tokens`` (the
    engine's usage), ``request_id`` and ``branch_path``; ``session_index`` and
    ``trace_index`` stamped on each.  ``ttft_s`` is ``None``: a replayed
    generation is run whole, so its first token is not timed (never made up).
    """

    __slots__ = ("_entries", "session_index", "trace_index")

    def __init__(self, *, session_index: int | None = None, trace_index: int | None = None) -> None:
        self._entries: list[dict[str, Any]] = []
        self.session_index = session_index
        self.trace_index = trace_index

    def record_assistant(
        self,
        *,
        trace_completion_tokens: int,
        replay_output_token_len: int,
        replay_content_token_len: int,
        reasoning_tokens: int,
        ttft_s: float | None = None,
        latency_s: float | None = None,
        usage_completion_tokens: int | None = None,
        usage_prompt_tokens: int | None = None,
        request_id: str | None = None,
        branch_path: tuple[int, ...] | None = None,
    ) -> None:
        self._entries.append(
            {
                "trace_completion_tokens": trace_completion_tokens,
                "replay_output_token_len": replay_output_token_len,
                "replay_content_token_len": replay_content_token_len,
                "reasoning_tokens": reasoning_tokens,
                "ttft_s": ttft_s,
                "latency_s": latency_s,
                "usage_completion_tokens": usage_completion_tokens,
                "usage_prompt_tokens": usage_prompt_tokens,
                "session_index": self.session_index,
                "trace_index": self.trace_index,
                "request_id": request_id,
                "branch_path": list(branch_path or ()),
            }
        )

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries)

    def sum_trace_completion_tokens(self) -> int:
        return sum(int(e["trace_completion_tokens"]) for e in self._entries)

    def sum_replay_output_tokens(self) -> int:
        return sum(int(e["replay_output_token_len"]) for e in self._entries)


class QueueExecutor:
    """Replays one branch's events, in order (TensorRT-LLM compatible).

    Made by :meth:`QueueManager.allocate_queue`, which runs it in the replay's
    task group.  ``done_event`` is set when it has consumed its queue to the
    end (:meth:`QueueManager.close_queue`).  An event it cannot replay (an
    assistant message without ``completion_tokens``, a generation the worker
    fails) raises out of :meth:`ReplayEngine.launch_trace`, cancelling the
    other branches.
    """

    def __init__(
        self,
        trace_id: str,
        worker: Worker,
        system_token_cache: dict[str, list[int]],
        rng: random.Random,
        branch_path: tuple[int, ...],
        generation_stats: ReplayGenerationStats | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.worker = worker
        self.branch_path = tuple(branch_path)
        self.done_event = anyio.Event()
        self._system_token_cache = system_token_cache
        self._rng = rng
        self._stats = generation_stats
        self._send, self._receive = anyio.create_memory_object_stream[TraceEvent | None](math.inf)
        self._pending = 0
        self._drained = anyio.Event()
        self._drained.set()
        self._segments: dict[int, list[list[int]]] = {}

    def put(self, event: TraceEvent | None) -> None:
        """Queue ``event`` (``None``: the end).  Never blocks."""
        if self._pending == 0:
            self._drained = anyio.Event()
        self._pending += 1
        self._send.send_nowait(event)

    async def join(self) -> None:
        """Wait until every event queued so far has been replayed."""
        await self._drained.wait()

    async def run(self) -> None:
        try:
            async with self._receive:
                async for event in self._receive:
                    try:
                        if event is None:
                            return
                        await self._replay(event)
                    finally:
                        self._pending -= 1
                        if self._pending == 0:
                            self._drained.set()
        finally:
            self.done_event.set()

    async def _replay(self, event: TraceEvent) -> None:
        if event.event_type == "tool_call":
            if event.duration_ms and event.duration_ms > 0:
                await anyio.sleep(event.duration_ms / 1000)
        elif event.event_type == "message":
            if event.role == "assistant":
                await self._generate(event)
            else:
                self._store(event, self._prompt_ids(event))
        # parallel_* are routed by the engine; drop_kv_cache is not replayed yet

    def _prompt_ids(self, event: TraceEvent) -> list[int]:
        n = event.tokens or 0
        if event.role != "system":
            return _random_ids(n, self._rng)
        key = event.system_prompt_id or f"conv:{event.conversation_id}"
        cached = self._system_token_cache.get(key)
        if cached is None:
            cached = self._system_token_cache[key] = _random_ids(n, self._rng)
        elif len(cached) < n:  # the same template rendered longer: grow the shared prefix
            cached.extend(_random_ids(n - len(cached), self._rng))
        return cached[:n]

    def _store(self, event: TraceEvent, ids: list[int]) -> None:
        segments = self._segments.setdefault(event.conversation_id or 0, [])
        index = event.message_index
        if index is not None and index < len(segments):
            segments[index] = ids
        else:
            segments.append(ids)

    async def _generate(self, event: TraceEvent) -> None:
        completion = event.completion_tokens or 0
        if completion <= 0:
            raise ValueError(
                f"trace {self.trace_id}: the assistant message on branch {list(self.branch_path)} "
                f"has completion_tokens={event.completion_tokens!r}; a replay needs > 0"
            )
        prompt = [i for s in self._segments.get(event.conversation_id or 0, []) for i in s]
        if not prompt:
            prompt = _random_ids(1, self._rng)  # an engine takes no empty prompt
        task = GenerationTask(
            input_tokens=prompt, max_tokens=completion, ignore_eos=True, temperature=1.0
        )
        started = time.perf_counter()
        status = await self.worker.run_task(task)
        latency = time.perf_counter() - started
        if status != TaskStatus.SUCCESS:
            raise RuntimeError(f"trace {self.trace_id}: the replayed generation ended {status}")
        produced = task.completion_tokens_num or len(task.output_tokens or ())
        if not produced:
            raise EngineError("the engine answered a replayed generation without a token count")
        # the conversation goes on with the engine's tokens where it gave them; else with
        # placeholders of the length it reported (the prompt is synthetic anyway)
        output = (
            list(task.output_tokens) if task.output_tokens else _random_ids(produced, self._rng)
        )
        reasoning = event.reasoning_tokens or 0
        content = output[reasoning:]
        if self._stats is not None:
            self._stats.record_assistant(
                trace_completion_tokens=completion,
                replay_output_token_len=produced,
                replay_content_token_len=len(content),
                reasoning_tokens=reasoning,
                latency_s=latency,
                usage_completion_tokens=task.completion_tokens_num or None,
                usage_prompt_tokens=task.prompt_tokens_num or None,
                request_id=None,
                branch_path=self.branch_path,
            )
        self._store(event, content)


class QueueManager:
    """The replay's :class:`QueueExecutor` s, one per live branch, by queue id
    and by branch path (TensorRT-LLM compatible).  Used by
    :class:`ReplayEngine` inside :meth:`~ReplayEngine.launch_trace`."""

    def __init__(
        self,
        worker: Worker,
        system_token_cache: dict[str, list[int]],
        rng_factory: RngFactory,
        generation_stats: ReplayGenerationStats | None = None,
    ) -> None:
        self._worker = worker
        self._system_token_cache = system_token_cache
        self._rng_factory = rng_factory
        self._generation_stats = generation_stats
        self._executors: dict[str, QueueExecutor] = {}
        self._branch_to_queue: dict[tuple[int, ...], str] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    def allocate_queue(self, trace_id: str, branch_path: tuple[int, ...]) -> str:
        """Start an executor for ``branch_path`` (its generator seeded first)
        and return its queue id.  Raises :class:`RuntimeError` outside a replay."""
        if self._tg is None:
            raise RuntimeError("queues are allocated by ReplayEngine.launch_trace")
        path = tuple(branch_path)
        executor = QueueExecutor(
            trace_id,
            self._worker,
            self._system_token_cache,
            self._rng_factory(path),
            path,
            self._generation_stats,
        )
        queue_id = str(uuid.uuid4())
        self._executors[queue_id] = executor
        self._branch_to_queue[path] = queue_id
        self._tg.start_soon(executor.run)
        return queue_id

    def get_queue(self, branch_path: tuple[int, ...]) -> QueueExecutor:
        """The executor replaying ``branch_path``.  Raises :class:`ValueError`
        for a branch the trace never opened (a malformed trace)."""
        queue_id = self._branch_to_queue.get(tuple(branch_path))
        if queue_id is None:
            raise ValueError(
                f"the trace has an event on branch {list(branch_path)} it never opened"
            )
        return self._executors[queue_id]

    def close_queue(self, queue_id: str) -> None:
        """No more events for this queue: its executor ends after the queued ones."""
        self._executors[queue_id].put(None)

    async def drain_branch(self, branch_path: tuple[int, ...]) -> None:
        """Wait until ``branch_path``'s executor replayed every event queued so far
        (at a fork: the parent's generation that forked has finished)."""
        await self.get_queue(branch_path).join()

    async def wait_all_done(self, queue_ids: list[str]) -> None:
        """Wait until these executors have ended."""
        for queue_id in queue_ids:
            await self._executors[queue_id].done_event.wait()

    def unregister_queue(self, queue_id: str) -> None:
        executor = self._executors.pop(queue_id, None)
        if executor is not None and self._branch_to_queue.get(executor.branch_path) == queue_id:
            del self._branch_to_queue[executor.branch_path]


class ReplayEngine:
    """Replays an :class:`ExecutionTrace` on ``worker`` (TensorRT-LLM compatible).

    ``await launch_trace(trace)`` walks the events in order: a
    ``parallel_start`` waits until its parent branch has replayed everything
    before it (the fork follows the generation that made it), then opens one
    executor per branch; a ``parallel_end`` closes them and waits for them;
    any other event goes to its branch's executor.  It returns when the root
    branch is done.

    ``system_token_cache`` (shared between engines replaying sessions of the
    same traces) makes system messages of one template the same token ids, so
    the engine's prefix cache sees what it would in production; ``rng_factory``
    (:func:`make_seeded_rng_factory`) makes a session's token ids repeatable.

    The worker must serve :class:`GenerationTask` with ``input_tokens`` and
    ``ignore_eos`` (an ``EngineWorker``); one that is not running
    (``healthy`` false) is started for the replay and stopped after it.

    Cancellation: cancelling ``launch_trace`` cancels every branch and the
    generations in flight (they are aborted in the engine).  A branch that
    fails cancels the others and its error is raised as itself.
    """

    def __init__(
        self,
        worker: Worker,
        generation_stats: ReplayGenerationStats | None = None,
        system_token_cache: dict[str, list[int]] | None = None,
        rng_factory: RngFactory | None = None,
    ) -> None:
        self.worker = worker
        self.generation_stats = generation_stats
        self._system_token_cache = system_token_cache if system_token_cache is not None else {}
        self.queue_manager = QueueManager(
            worker,
            self._system_token_cache,
            rng_factory if rng_factory is not None else _fresh_rng,
            generation_stats,
        )

    @asynccontextmanager
    async def _running_worker(self) -> AsyncIterator[None]:
        if self.worker.healthy:
            yield
            return
        async with self.worker.lifespan():
            yield

    async def launch_trace(self, trace: ExecutionTrace) -> None:
        manager = self.queue_manager
        try:
            async with self._running_worker(), anyio.create_task_group() as tg:
                manager._tg = tg
                try:
                    await self._walk(trace)
                finally:
                    manager._tg = None
        except BaseExceptionGroup as group:
            raise_single(group)

    async def _walk(self, trace: ExecutionTrace) -> None:
        manager = self.queue_manager
        root = manager.allocate_queue(trace.trace_id, ())
        forks: list[list[str]] = []
        for event in trace.events:
            path = tuple(event.branch_path or ())
            if event.event_type == "parallel_start":
                await manager.drain_branch(path)
                children = [
                    manager.allocate_queue(trace.trace_id, (*path, i))
                    for i in range(event.num_branches or 0)
                ]
                forks.append(children)
            elif event.event_type == "parallel_end":
                if not forks:
                    raise ValueError(f"trace {trace.trace_id}: parallel_end without its start")
                children = forks.pop()
                for queue_id in children:
                    manager.close_queue(queue_id)
                await manager.wait_all_done(children)
                for queue_id in children:
                    manager.unregister_queue(queue_id)
            else:
                manager.get_queue(path).put(event)
        manager.close_queue(root)
        await manager.wait_all_done([root])
        manager.unregister_queue(root)
