"""TensorRT-LLM's ``async_scaffolding_benchmark``: requests at a fixed concurrency."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, cast

import anyio
import anyio.to_thread
import attrs

from .._result import ScaffoldingResult
from ._task_collection import TaskCollection, with_task_collection
from .load_generation_strategy import ConcurrentStrategy, LoadGenerationStrategy

__all__ = ["ScaffoldingBenchRequest", "async_scaffolding_benchmark"]


@attrs.frozen
class ScaffoldingBenchRequest:
    """One benchmark request: its ``prompt`` and, optionally, ``scope_params``
    handed to every worker that has ``set_scope_params(scope_id, **params)``
    before the request runs (``scope_id`` is the request's root scope,
    ``"req-N"``)."""

    prompt: str
    scope_params: Mapping[str, str | list[str]] | None = None


def _collect(llm: Any, task_collection_types: Mapping[str, type[TaskCollection]]) -> None:
    """Attach the collections (TensorRT-LLM decorates the prototype's class in
    place; a class already decorated for a name is not decorated twice, so a
    second benchmark does not count twice)."""
    prototype = llm.prototype_controller
    cls = type(prototype)
    done: set[str] = set(cls.__dict__.get("_benchmark_collections", ()))
    for name, collection_cls in task_collection_types.items():
        prototype.task_collections[name] = collection_cls()
        if name not in done:
            with_task_collection(name, collection_cls)(cls)
            done.add(name)
    cls._benchmark_collections = frozenset(done)
    llm.enable_output_task_collection()


async def async_scaffolding_benchmark(
    scaffolding_llm: Any,
    task_collection_types: Mapping[str, type[TaskCollection]],
    requests: Sequence[ScaffoldingBenchRequest],
    concurrency: int | None = None,
    strategy: LoadGenerationStrategy | None = None,
) -> tuple[list[ScaffoldingResult], list[float], float]:
    """Run ``requests`` through ``scaffolding_llm`` (a compat ``ScaffoldingLlm``)
    with each of ``task_collection_types`` attached to the controller
    (TensorRT-LLM compatible; call it from asyncio or trio).

    The load: ``concurrency`` requests at a time, or a ``strategy`` from
    :mod:`scaffold_actors.compat.load_generation_strategy` (when
    each request is sent, and how many run at once); give one of them.

    Returns ``(results, execution_times, total_time)`` in completion order
    (wall-clock seconds), as every TensorRT-LLM release does.  A failed request
    raises its error once the requests already running have finished.
    Raises :class:`ValueError` at once for a missing or non-positive load.
    """
    if strategy is None:
        if concurrency is None or concurrency < 1:
            raise ValueError(
                f"concurrency must be a positive integer (or pass strategy=), got {concurrency!r}"
            )
        strategy = ConcurrentStrategy(concurrency=concurrency)
    elif not isinstance(strategy, LoadGenerationStrategy):
        raise TypeError(
            f"strategy must be a LoadGenerationStrategy (load_generation_strategy), got {strategy!r}"
        )
    _collect(scaffolding_llm, task_collection_types)
    slots = strategy.get_semaphore()
    results: list[ScaffoldingResult] = []
    durations: list[float] = []

    async def one(request: ScaffoldingBenchRequest) -> None:
        async with slots:
            start = time.time()
            # submitting may block while the runtime is at max_in_flight: off this loop
            result = await anyio.to_thread.run_sync(scaffolding_llm.generate_async, request.prompt)
            if request.scope_params:
                for worker in {id(w): w for w in scaffolding_llm.workers.values()}.values():
                    setter = getattr(worker, "set_scope_params", None)
                    if callable(setter):
                        setter(result.id, **request.scope_params)
            await result.aresult()
            results.append(result)
            durations.append(time.time() - start)

    begin = time.time()
    async with anyio.create_task_group() as tg:
        pending = iter(requests)
        times = cast("AsyncGenerator[float, None]", strategy.request_times())
        try:
            for request in pending:
                instant = await times.__anext__()
                await anyio.sleep(max(0.0, instant - time.time()))
                tg.start_soon(one, request)
        finally:
            await times.aclose()
    return results, durations, time.time() - begin
