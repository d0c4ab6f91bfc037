"""The async core: one task group owns the workers; each request gets a cancel scope."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self, cast

import anyio
import anyio.abc

from engine_bridge import raise_single

from ._backend import Backend, Slots, current_backend
from ._context import RequestContext
from ._controller import run_controller
from ._errors import InvalidTaskError, RuntimeClosedError, TooManyRequestsError
from ._result import ScaffoldingResult
from ._tasks import normalize_tag
from ._trace import ExecutionTrace
from ._worker import Worker, WorkerActor

__all__ = ["AsyncScaffoldingLlm", "Prompt", "validate_prompt"]

Prompt = str | Sequence[Mapping[str, str]]


def validate_prompt(prompt: object) -> None:
    """Raise :class:`InvalidTaskError` unless ``prompt`` is a non-empty string or a
    non-empty list of ``{"role": str, "content": str}`` messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidTaskError("prompt", "must be a non-empty string")
        return
    if isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if not prompt:
            raise InvalidTaskError("prompt", "chat messages must not be empty")
        for i, m in enumerate(prompt):
            if (
                not isinstance(m, Mapping)
                or not isinstance(m.get("role"), str)
                or not isinstance(m.get("content"), str)
            ):
                raise InvalidTaskError(
                    "prompt", f"message {i} must have str 'role' and 'content', got {m!r}"
                )
        return
    raise InvalidTaskError(
        "prompt", f"must be a string or a list of chat messages, got {type(prompt).__name__}"
    )


def _is_single_prompt(prompts: object) -> bool:
    if isinstance(prompts, str):
        return True
    return (
        isinstance(prompts, Sequence)
        and bool(prompts)
        and all(isinstance(p, Mapping) for p in prompts)
    )


def _check_controller(controller: object) -> None:
    has_gen = callable(getattr(controller, "process", None)) and callable(
        getattr(controller, "generate", None)
    )
    if not (has_gen or callable(getattr(controller, "run", None)) or callable(controller)):
        raise TypeError(
            "controller must be a generator controller (process/generate), an object "
            f"with an async run(ctx, task) method, or an async function; got {controller!r}"
        )


class AsyncScaffoldingLlm:
    """Run an inference-time method (``controller``) over ``workers``, async API.

    Use it as ``async with AsyncScaffoldingLlm(controller, workers) as llm:`` from
    trio or asyncio (it is built on anyio).  ``workers`` maps worker tags (strings
    or enum members, which match their value) to :class:`Worker` objects.

    At most ``max_in_flight`` requests run at once; :meth:`generate_async` blocks
    while the cap is reached, or raises :class:`TooManyRequestsError` when called
    with ``block=False``.  With ``trace=True`` every request records an
    :class:`ExecutionTrace`.  ``cancel_grace`` bounds how long a cancelled task may
    take to unwind (its engine request's abort included; engines wait up to their
    own ``abort_timeout``, 10 s by default, for the engine to confirm); a task
    that overruns it is reported with :class:`CancelGraceExceededWarning`.
    ``check_prompts`` (default on) refuses at submission a prompt that is not a
    non-empty string or list of messages, one the workers refuse
    (:meth:`Worker.check_request`), and blank task prompts; off, what a prompt
    means is the controller's business (TensorRT-LLM's semantics, the default of
    :mod:`scaffold_actors.compat`).

    An exception raised in the body of ``async with`` reaches the caller as
    itself (not wrapped in an exception group); the requests still in flight are
    cancelled and every worker is stopped before it propagates.

    Generator controllers (with ``clone()``) are cloned per request, as in
    TensorRT-LLM; native controllers are shared.
    """

    #: the class of the results :meth:`generate_async` hands out
    result_class: type[ScaffoldingResult] = ScaffoldingResult

    def __init__(
        self,
        controller: Any,
        workers: Mapping[Any, Worker],
        *,
        max_in_flight: int = 64,
        trace: bool = False,
        cancel_grace: float = 30.0,
        check_prompts: bool = True,
    ) -> None:
        _check_controller(controller)
        if not isinstance(workers, Mapping) or not workers:
            raise TypeError("workers must be a non-empty mapping of worker tag -> Worker")
        actors: dict[object, WorkerActor] = {}
        for tag, worker in workers.items():
            if not isinstance(worker, Worker):
                raise TypeError(f"workers[{tag!r}] must be a Worker, got {type(worker).__name__}")
            key = normalize_tag(tag)
            if key in actors:
                raise ValueError(f"worker tag {key!r} is given twice")
            actors[key] = WorkerActor(key, worker, cancel_grace=cancel_grace)
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.controller = controller
        self.workers = dict(workers)
        self.max_in_flight = max_in_flight
        self.trace = trace
        self._actors = actors
        # each worker once, though it may serve several tags
        self._workers = list({id(a.worker): a.worker for a in actors.values()}.values())
        # the workers that keep something per execution scope
        self._scope_workers = [
            w
            for w in self._workers
            if type(w).on_scope_end is not Worker.on_scope_end or "on_scope_end" in vars(w)
        ]
        self.cancel_grace = cancel_grace
        self.check_prompts = check_prompts
        # anyio primitives bind to the event loop they are created in, so they are
        # made in __aenter__ (the sync facade constructs this on another thread).
        self._slots: Slots | None = None
        self._idle: anyio.Event | None = None
        self._ids = itertools.count()
        self._in_flight: set[ScaffoldingResult] = set()
        self._stack: AsyncExitStack | None = None
        self._tg: Any = None  # the loop's task group (a trio nursery on trio)
        self._loop: Backend | None = None
        self._closing = False
        self.completed = 0

    # -- lifecycle -----------------------------------------------------------
    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("AsyncScaffoldingLlm is already started")
        self._loop = current_backend()
        self._slots = Slots(self.max_in_flight, self._loop)
        self._idle = anyio.Event()
        self._idle.set()
        for actor in self._actors.values():
            actor.open()
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            for worker in self._workers:
                await stack.enter_async_context(worker.lifespan())
            # the loop's own group: a request's task is started without anyio's
            # per-task handle (see _backend.py); each request has a cancel scope
            # of its own, and the group is never cancelled as a whole
            self._tg = await stack.enter_async_context(self._loop.open_spawner())
            for actor in self._actors.values():
                self._tg.start_soon(actor.serve)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._begin_shutdown()
        stack, self._stack = self._stack, None
        if stack is None:
            return
        # The body's own exception is not handed to the task group (which would wrap
        # it in exception groups): every request is already cancelled and every actor
        # closed, so the group ends by itself, and the body's exception then goes on
        # unchanged.  A failure of the runtime itself is raised unwrapped.
        try:
            await stack.aclose()
        except BaseExceptionGroup as group:
            raise_single(group)

    def _begin_shutdown(self) -> None:
        self._closing = True
        for result in list(self._in_flight):
            result._cancel_now()
        for actor in self._actors.values():
            actor.close()

    async def shutdown(self) -> None:
        """Stop taking requests, cancel those in flight and wait until they unwound.

        Workers and engines stop when the ``async with`` block exits.
        """
        self._begin_shutdown()
        if self._idle is not None:
            await self._idle.wait()

    # -- requests ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._tg is None or self._closing:
            raise RuntimeClosedError("the runtime is shut down or not started")

    def _precheck(self, prompt: Prompt) -> None:
        for worker in self._workers:
            worker.check_request(prompt)

    async def generate_async(
        self, prompt: Prompt, *, block: bool = True, **kwargs: Any
    ) -> ScaffoldingResult:
        """Submit one request and return its :class:`ScaffoldingResult` at once.

        Bad input raises here (:class:`InvalidTaskError` naming the field) and
        nothing is submitted.  Blocks while ``max_in_flight`` requests run, unless
        ``block=False``.  ``kwargs`` are passed to the controller.
        """
        self._check_open()
        if self.check_prompts:
            validate_prompt(prompt)
            self._precheck(prompt)
        assert self._slots is not None and self._idle is not None
        if block:
            await self._slots.take()
        elif not self._slots.take_nowait():
            raise TooManyRequestsError(
                f"{self.max_in_flight} requests are in flight (max_in_flight)"
            )
        try:
            self._check_open()
        except BaseException:
            self._slots.give_back()
            raise
        controller = self.controller
        clone = getattr(controller, "clone", None)
        if callable(clone) and callable(getattr(controller, "process", None)):
            controller = clone()
        result = self.result_class(next(self._ids), prompt, self._loop)
        self._in_flight.add(result)
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        assert self._tg is not None
        self._tg.start_soon(self._run_request, result, controller, prompt, kwargs)
        return result

    async def _run_request(
        self, result: ScaffoldingResult, controller: Any, prompt: Prompt, kwargs: Mapping[str, Any]
    ) -> None:
        ctx = RequestContext(
            result.request_id,
            self._actors,
            result=result,
            trace=ExecutionTrace() if self.trace else None,
            scope_workers=self._scope_workers,
            scope_grace=self.cancel_grace,
            check_prompts=self.check_prompts,
            backend=self._loop,
        )
        result.usage = ctx.usage
        result.trace = ctx.trace
        try:
            assert self._loop is not None
            with self._loop.CancelScope() as scope:
                result._scope = scope
                if result.cancelled:
                    scope.cancel()
                output = await ctx._in_scope(
                    ctx.root_scope, run_controller, controller, ctx, prompt, kwargs
                )
            if scope.cancel_called:
                result._finish(cancelled=True)
            else:
                collections = getattr(controller, "task_collections", None)
                if collections:
                    result.task_collections = collections
                result._finish(output)
        except Exception as exc:
            result._finish(exception=exc)
        finally:
            assert self._slots is not None and self._idle is not None
            result._finish(cancelled=True)  # no-op unless torn down by a BaseException
            self._in_flight.discard(result)
            self._slots.give_back()
            self.completed += 1
            if not self._in_flight:
                self._idle.set()

    async def generate(self, prompts: Prompt | Sequence[Prompt], **kwargs: Any) -> Any:
        """Run one prompt (returns its result) or a list (returns a list of results).

        Waits for every request; if any failed, raises the first failure (in
        submission order) after all have finished.  Cancelling the call cancels
        every request it submitted and returns once they have unwound (their engine
        requests aborted), as structured concurrency promises.
        """
        single = _is_single_prompt(prompts)
        batch = cast("list[Prompt]", [prompts] if single else list(prompts))
        if self.check_prompts:
            for p in batch:
                validate_prompt(p)
        results: list[ScaffoldingResult] = []
        try:
            for p in batch:
                results.append(await self.generate_async(p, **kwargs))
            for r in results:
                await r._done.wait()
        except BaseException:
            # cancelled (or a later prompt was refused): what this call submitted is
            # its own, and does not outlive it
            for r in results:
                r._cancel_now()
            with anyio.CancelScope(shield=True):
                for r in results:
                    await r._done.wait()
            raise
        for r in results:
            r._outcome()
        return results[0] if single else results

    # -- introspection ---------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Live counts, for leak checks: requests and tasks alive, how many
        cancelled tasks overran ``cancel_grace``, and what each worker counts
        itself (:meth:`Worker.stats`; ``engine_requests``: requests alive in the
        engines), summed by name over the workers."""
        actors = self._actors.values()
        counts = {
            "requests_in_flight": len(self._in_flight),
            "tasks_running": sum(a.running for a in actors),
            "tasks_queued": sum(a.queued for a in actors),
            "engine_requests": 0,
            "requests_completed": self.completed,
            "cancel_grace_overruns": sum(a.grace_overruns for a in actors),
        }
        for worker in self._workers:
            for name, value in worker.stats().items():
                counts[name] = counts.get(name, 0) + value
        return counts

    def healthy(self) -> dict[str, bool]:
        return {str(tag): a.worker.healthy for tag, a in self._actors.items()}
