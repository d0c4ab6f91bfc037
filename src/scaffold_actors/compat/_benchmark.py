"""TensorRT-LLM's ``async_scaffolding_benchmark``: requests at a fixed concurrency."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread
import attrs

from .._result import ScaffoldingResult
from ._task_collection import TaskCollection, with_task_collection

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
    strategy: Any = None,
) -> tuple[list[ScaffoldingResult], list[float], list[float], float]:
    """Run ``requests`` through ``scaffolding_llm`` (a compat ``ScaffoldingLlm``),
    ``concurrency`` at a time, with each of ``task_collection_types`` attached to
    the controller (TensorRT-LLM compatible; call it from asyncio or trio).

    Returns ``(results, start_times, execution_times, total_time)`` in completion
    order (wall-clock seconds).  A failed request raises its error once the
    requests already running have finished.  ``strategy`` (TensorRT-LLM's load
    generation strategies) is not provided: pass ``concurrency``.
    """
    if strategy is not None:
        raise ValueError("load generation strategies are not provided here; pass concurrency=N")
    if concurrency is None or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, got {concurrency!r}")
    _collect(scaffolding_llm, task_collection_types)
    slots = anyio.Semaphore(concurrency)
    results: list[ScaffoldingResult] = []
    starts: list[float] = []
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
            starts.append(start)
            durations.append(time.time() - start)

    begin = time.time()
    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(one, request)
    return results, starts, durations, time.time() - begin
