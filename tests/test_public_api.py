"""The public API on both anyio backends (trio with a mock clock, and asyncio)."""

from __future__ import annotations

import asyncio
import threading

import anyio
import anyio.lowlevel
import pytest
from helpers import EchoWorker, RunnerEngine, answers, one_shot

from engine_bridge import CostModel, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RequestCancelledError,
    RequestContext,
    RuntimeClosedError,
    ScaffoldingLlm,
    TooManyRequestsError,
    Worker,
)
from scaffold_actors.methods import MajorityVote, Sampler

FAST = CostModel(0.0, 0.0005, 0.0)  # real seconds on asyncio: keep it small
LONG = " ".join(f"w{i}" for i in range(2000))


@pytest.mark.anyio
async def test_generate_on_both_backends() -> None:
    engine = SimulatedEngine(answers("8", "8", "3"), cost=FAST)
    async with AsyncScaffoldingLlm(
        MajorityVote(samples=3, early_stop=False), {"generation": EngineWorker(engine)}
    ) as llm:
        single = await llm.generate("q")
        batch = await llm.generate(["a", "b"])
        chat = await llm.generate([{"role": "user", "content": "hi"}])
    assert single.output.details["answer"] == "8"
    assert len(batch) == 2 and chat.output.output_str


@pytest.mark.anyio
async def test_stream_partial_outputs_then_final() -> None:
    engine = SimulatedEngine("a b c d e f g h", cost=FAST)
    async with AsyncScaffoldingLlm(
        Sampler(stream=True, streaming_step=3), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate_async("q")
        outs = [o async for o in r]
    assert outs[-1].finished and outs[-1].output_str == "a b c d e f g h"
    assert all(not o.finished for o in outs[:-1]) and outs[0].output_str.startswith("a")


@pytest.mark.anyio
async def test_cancel_on_both_backends() -> None:
    engine = SimulatedEngine(LONG, cost=FAST)
    async with AsyncScaffoldingLlm(
        Sampler(max_tokens=2000), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate_async("q")
        await anyio.sleep(0.01)
        await r.acancel()
        assert engine.num_active == 0 and llm.stats()["tasks_running"] == 0
        with pytest.raises(RequestCancelledError):
            await r


@pytest.mark.anyio
async def test_errors_and_rejections_on_both_backends() -> None:
    async with AsyncScaffoldingLlm(one_shot, {"generation": EchoWorker()}, max_in_flight=1) as llm:
        with pytest.raises(InvalidTaskError, match="prompt"):
            await llm.generate_async("")
        with pytest.raises(ValueError, match="boom"):
            await llm.generate("boom")
        slow = await llm.generate_async("slow")
        with pytest.raises(TooManyRequestsError):
            await llm.generate_async("x", block=False)
        await slow.acancel()
        assert (await llm.generate("ok")).output.output_str == "echo: ok"
    with pytest.raises(RuntimeClosedError):
        await llm.generate_async("after")


@pytest.mark.anyio
async def test_parallel_children_on_both_backends() -> None:
    """ctx.parallel() runs on each loop's own primitives (trio's nursery, scope
    and event; anyio's group and scope with asyncio's event): a cancelled handle
    is aborted in the engine while its siblings finish, as_completed skips it,
    wait() returns a value, and a child's error leaves the block unchanged."""
    engine = SimulatedEngine(LONG, cost=FAST)
    seen: dict[str, object] = {}

    class Boom(Exception):
        pass

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async def sample(tokens: int) -> str:
            t = GenerationTask(input_str="q", max_tokens=tokens)
            return (await ctx.run(t)).output_str or ""

        async with ctx.parallel() as par:
            long = par.start(sample, 2000)
            short = [par.start(sample, 2) for _ in range(2)]
            with anyio.fail_after(60):  # a hang guard (virtual time on trio)
                assert await short[0].wait() == "w0 w1"
            long.cancel()
            seen["done"] = [h.index async for h in par.as_completed()]
        seen["long"] = (long.done, long.cancelled)
        seen["active"] = engine.num_active

        async def fails() -> None:
            await anyio.lowlevel.checkpoint()
            raise Boom("child")

        with pytest.raises(Boom, match="child"):
            async with ctx.parallel() as par:
                par.start(sample, 2000)
                par.start(fails)
        seen["active after error"] = engine.num_active
        return task

    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    assert sorted(seen["done"]) == [1, 2]  # the cancelled one is skipped
    assert seen["long"] == (True, True)
    assert seen["active"] == 0 and seen["active after error"] == 0
    assert engine.aborted >= 2  # the engine saw both long generations aborted


@pytest.mark.anyio
async def test_a_task_handed_to_an_idle_runner_is_cancelled_in_the_engine() -> None:
    """After a first task, its runner waits for work and the next task is handed
    to it straight from the requester (no trip through the inbox): cancelling
    that request still aborts the generation in the engine before it returns.
    (An engine read through ``open_stream`` only: generations run in runners.)"""
    engine = RunnerEngine(LONG, cost=FAST)
    async with AsyncScaffoldingLlm(
        Sampler(max_tokens=2000), {"generation": EngineWorker(engine)}
    ) as llm:
        actor = llm._actors["generation"]
        short = await llm.generate_async("q", max_tokens=1)
        await short
        assert len(actor._idle) == 1  # the first task's runner waits for work
        r = await llm.generate_async("q")
        while engine.num_active == 0:  # until the engine admitted it
            await anyio.lowlevel.checkpoint()
        assert not actor._idle  # handed to that runner
        await r.acancel()
        assert engine.num_active == 0 and engine.aborted == 1
        with pytest.raises(RequestCancelledError):
            await r


@pytest.mark.anyio
async def test_a_context_variable_a_handler_leaves_set_does_not_reach_the_next_task() -> None:
    """Runners are reused across tasks: one whose handler left a context variable
    set retires, so the next task (on another runner) does not see it."""
    import contextvars

    leaked: contextvars.ContextVar[str] = contextvars.ContextVar("leaked", default="clean")
    seen: list[str] = []

    class Leaky(Worker):
        async def generate(self, task: GenerationTask) -> None:
            seen.append(leaked.get())
            leaked.set(f"left by task {len(seen)}")  # never reset
            task.output_str = "x"

        task_handlers = {GenerationTask: generate}

    async with AsyncScaffoldingLlm(one_shot, {"generation": Leaky()}) as llm:
        for _ in range(3):
            await llm.generate("q")
    assert seen == ["clean", "clean", "clean"]


# --- the sync facade ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_sync_api(backend: str) -> None:
    engine = SimulatedEngine(answers("6", "6", "1"), cost=FAST)
    with ScaffoldingLlm(
        MajorityVote(samples=3), {"generation": EngineWorker(engine)}, backend=backend
    ) as llm:
        r = llm.generate("q")
        assert r.output.details["answer"] == "6"
        results = llm.generate(["a", "b", "c"])
        assert [x.done for x in results] == [True] * 3
        handle = llm.generate_async("q")
        assert handle.result(timeout=10).output.details["answer"] == "6"
        assert llm.stats()["requests_in_flight"] == 0
    with pytest.raises(RuntimeClosedError):
        llm.generate_async("after")
    llm.shutdown()  # idempotent


def test_sync_streaming_iteration() -> None:
    engine = SimulatedEngine("one two three four five six", cost=FAST)
    with ScaffoldingLlm(
        Sampler(stream=True, streaming_step=2), {"generation": EngineWorker(engine)}
    ) as llm:
        outs = list(llm.generate_async("q"))
    assert outs[-1].output_str == "one two three four five six" and outs[-1].finished


def test_sync_cancel_returns_after_engine_is_freed() -> None:
    engine = SimulatedEngine(LONG, cost=FAST)
    with ScaffoldingLlm(Sampler(max_tokens=2000), {"generation": EngineWorker(engine)}) as llm:
        r = llm.generate_async("q")
        deadline = threading.Event()
        deadline.wait(0.05)
        r.cancel()
        assert r.cancelled
        assert llm.stats()["engine_requests"] == 0
        with pytest.raises(RequestCancelledError):
            r.result()


def test_sync_errors_reach_the_caller() -> None:
    with ScaffoldingLlm(one_shot, {"generation": EchoWorker()}) as llm:
        with pytest.raises(ValueError, match="boom"):
            llm.generate(["fine", "boom"])
        with pytest.raises(InvalidTaskError):
            llm.generate("")
        with pytest.raises(TimeoutError):
            llm.generate_async("slow").result(timeout=0.05)


def test_result_awaited_from_a_foreign_asyncio_loop() -> None:
    """The TensorRT-LLM run_basic_generation --run_async pattern."""

    async def main() -> str:
        llm = ScaffoldingLlm(one_shot, {"generation": EchoWorker()})
        future = llm.generate_async("hello")
        result = await future.aresult()
        llm.shutdown()
        return result.output.output_str or ""

    assert asyncio.run(main()) == "echo: hello"


def test_sync_result_cannot_block_inside_its_loop() -> None:
    async def main() -> None:
        async with AsyncScaffoldingLlm(one_shot, {"generation": EchoWorker()}) as llm:
            r = await llm.generate_async("x")
            with pytest.raises(RuntimeError, match="await"):
                r.result()
            await r

    anyio.run(main)


def test_engine_start_failure_raises_from_the_constructor() -> None:
    from contextlib import asynccontextmanager

    class Broken(EchoWorker):
        @asynccontextmanager
        async def lifespan(self):  # type: ignore[no-untyped-def]
            raise OSError("cannot load model")
            yield

    with pytest.raises(OSError, match="cannot load model"):
        ScaffoldingLlm(one_shot, {"generation": Broken()})


def test_bad_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        ScaffoldingLlm(one_shot, {"generation": EchoWorker()}, backend="curio")  # type: ignore[arg-type]
