"""A plain generation on an :class:`EngineWorker` whose engine can start streams
(:class:`engine_bridge.StartsStreams`, the simulated engine) runs without a
runner task: the engine calls it as deltas come.  Each promise of the handler
path holds there too, read from the engine's own state: cancellation aborts the
engine request before it returns, an error reaches the requester, a task
cancelled before it began never reaches the engine, and an actor being closed
waits for such generations to end."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio
from helpers import reached

from engine_bridge import CostModel, SamplingParams, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    RequestCancelledError,
    RequestContext,
    Task,
)
from scaffold_actors._worker import Handler, WorkerActor

WORDS = 40
TEXT = " ".join(f"w{i}" for i in range(WORDS))
N = 32


def make_engine() -> SimulatedEngine:
    return SimulatedEngine(TEXT, cost=CostModel(0.0, 0.01, 0.0))


def worker(engine: SimulatedEngine, **kw: Any) -> EngineWorker:
    return EngineWorker(engine, default_params=SamplingParams(max_tokens=WORDS), **kw)


def tasks_alive() -> int:
    """Every task in this trio run (the whole tree from the root)."""
    todo, count = [trio.lowlevel.current_root_task()], 0
    while todo:
        task = todo.pop()
        count += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return count


class OwnHandler(EngineWorker):
    """An engine worker with a generation handler of its own: it runs as usual."""

    calls = 0

    async def own(self, task: GenerationTask) -> None:
        OwnHandler.calls += 1
        await EngineWorker.generation_handler(self, task)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {
        **EngineWorker.task_handlers,
        GenerationTask: own,  # type: ignore[dict-item]
    }


async def fan_out_and_count(w: EngineWorker, engine: SimulatedEngine) -> tuple[int, list[str]]:
    seen: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            handles = [par.submit(GenerationTask.create_from_prompt(f"q{i}")) for i in range(N)]
            await trio.sleep(0.005)  # virtual time: less than one engine step
            assert engine.num_active == N  # every one of them in the engine
            seen["tasks"] = tasks_alive()
        seen["texts"] = [h.result().output_str for h in handles]
        return task

    async with AsyncScaffoldingLlm(method, {"generation": w}) as llm:
        await llm.generate("q")
        assert engine.num_active == 0
    return seen["tasks"], seen["texts"]


async def test_a_plain_generation_runs_without_a_task_of_its_own(autojump_clock: object) -> None:
    engine = make_engine()
    tasks, texts = await fan_out_and_count(worker(engine), engine)
    assert texts == [TEXT] * N
    assert tasks < N  # the runtime's own few, none per generation
    # the same generations through a handler of one's own: a runner each
    engine = make_engine()
    OwnHandler.calls = 0
    tasks, texts = await fan_out_and_count(OwnHandler(engine), engine)
    assert texts == [TEXT] * N and OwnHandler.calls == N
    assert tasks >= N


async def test_cancelling_a_started_generation_aborts_it_in_the_engine(
    autojump_clock: object,
) -> None:
    engine = make_engine()
    async with AsyncScaffoldingLlm(
        lambda ctx, task: ctx.run(task), {"generation": worker(engine)}
    ) as llm:
        result = await llm.generate_async("q")
        await trio.sleep(0.1)  # virtual time: some tokens made, not all
        assert engine.num_active == 1
        await result.acancel()
        # the engine dropped it before the cancellation returned
        assert engine.num_active == 0 and engine.aborted == 1 and engine.completed == 0
        with pytest.raises(RequestCancelledError):
            await result


class Picky(GenerationTask):
    """A task that refuses some outputs (a user's validation)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "output_str" and value and "w5" in value:
            raise ValueError("w5 is not allowed")
        super().__setattr__(name, value)


async def test_an_error_while_reading_a_started_generation_fails_its_task(
    autojump_clock: object,
) -> None:
    engine = make_engine()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        picky = Picky.create_from_prompt("q")
        picky.streaming_output_flag = True  # a delta per token: it fails mid-way
        await ctx.run(picky)
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker(engine)}) as llm:
        with pytest.raises(ValueError, match="w5 is not allowed"):
            await llm.generate("q")
        # the engine request was dropped mid-way, at the failing delta
        assert engine.num_active == 0 and engine.aborted == 1 and engine.completed == 0


async def test_a_generation_cancelled_before_it_began_never_reaches_the_engine(
    autojump_clock: object,
) -> None:
    engine = make_engine()
    async with AsyncScaffoldingLlm(
        lambda ctx, task: ctx.run(task), {"generation": worker(engine, max_concurrency=1)}
    ) as llm:
        first = await llm.generate_async("a")
        second = await llm.generate_async("b")  # taken from the inbox; waits for the slot
        await trio.sleep(0.05)
        assert reached(engine) == 1
        await second.acancel()
        assert (await first).output.output_str == TEXT
        with pytest.raises(RequestCancelledError):
            await second
        await llm.generate("c")  # the slot is free again
        assert engine.completed == 2 and reached(engine) == 2 and engine.aborted == 0


async def test_closing_an_actor_waits_for_its_started_generations(autojump_clock: object) -> None:
    engine = make_engine()
    actor = WorkerActor("generation", worker(engine))
    task = GenerationTask.create_from_prompt("q")
    events: list[str] = []
    async with engine, trio.open_nursery() as nursery:
        actor.open()

        async def serve() -> None:
            await actor.serve()
            events.append(f"served with {engine.num_active} in the engine")

        async def execute() -> None:
            await actor.execute(task)
            events.append("executed")

        nursery.start_soon(serve)
        await trio.lowlevel.checkpoint()
        nursery.start_soon(execute)
        await trio.sleep(0.1)  # virtual time: some tokens made, not all
        assert engine.num_active == 1 and actor.running == 1
        actor.close()
    # serve returned only once the generation was over (its requester wakes in
    # the same turn, in either order)
    assert sorted(events) == ["executed", "served with 0 in the engine"]
    assert task.output_str == TEXT and engine.completed == 1 and actor.running == 0
