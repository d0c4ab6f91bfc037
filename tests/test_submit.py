"""``Parallel.submit``: a child that is one task handed to its worker's actor as a
job, with no task of the request's own.  Each promise of ``start(ctx.run, task)``
is checked where the engine sees it (tools/mutations.py lists the mechanisms)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from helpers import (
    EchoWorker,
    OrderedEchoWorker,
    ScopedEchoWorker,
    StuckWorker,
    left_for_the_collector,
    reached,
)

from engine_bridge import EngineError, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    CancelGraceExceededWarning,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RequestCancelledError,
    RequestContext,
)

LONG = " ".join(f"w{i}" for i in range(200))


def gen(prompt: str, max_tokens: int = 200) -> GenerationTask:
    return GenerationTask(input_str=prompt, max_tokens=max_tokens)


async def test_submitted_tasks_return_filled_in_branch_scopes(autojump_clock: object) -> None:

    worker = ScopedEchoWorker()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            handles = [par.submit(GenerationTask(input_str=p)) for p in ("a", "b", "c")]
            done = [h.result().output_str async for h in par.as_completed()]
        assert sorted(done) == ["echo: a", "echo: b", "echo: c"]
        assert [await h.wait() for h in handles] == [h.result() for h in handles]
        task.output_str = ",".join(h.result().output_str or "" for h in handles)
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}, trace=True) as llm:
        r = await llm.generate_async("q")
        out = await r
    assert out.output is not None and out.output.output_str == "echo: a,echo: b,echo: c"
    root = f"req-{r.request_id}"
    assert sorted(worker.scopes) == [f"{root}:0", f"{root}:1", f"{root}:2"]
    # accounted as ctx.run accounts: usage and one trace record per task
    assert r.usage.tasks == 3 and r.usage.completion_tokens == 9
    assert r.trace is not None and [rec.status for rec in r.trace.records] == ["ok"] * 3
    assert all(rec.end > rec.start for rec in r.trace.records)


async def test_leaving_the_block_waits_for_submitted_tasks(autojump_clock: object) -> None:
    """Left normally, the block waits for every submitted task; left by a
    cancellation, it returns only once the engine dropped each of them."""
    engine = SimulatedEngine(LONG)
    seen: dict[str, object] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            handles = [par.submit(gen(f"p{i}", max_tokens=3)) for i in range(3)]
        seen["done"] = [h.done for h in handles]
        seen["completed"] = engine.completed
        with trio.move_on_after(1) as cancelled:
            async with ctx.parallel() as par:
                for i in range(4):
                    par.submit(gen(f"q{i}"))
                await trio.sleep_forever()
        seen["cancelled"] = cancelled.cancelled_caught
        seen["engine"] = (engine.aborted, engine.num_active)  # as the cancel returned
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    assert seen == {"done": [True] * 3, "completed": 3, "cancelled": True, "engine": (4, 0)}


async def test_a_bad_task_is_refused_at_submit_and_nothing_starts(autojump_clock: object) -> None:
    engine = SimulatedEngine(LONG)
    caught: list[BaseException] = []

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            try:
                # valid as built; refused when submitted (n must be 1)
                par.submit(GenerationTask(input_str="q", n=2))
            except InvalidTaskError as e:
                caught.append(e)
            assert par.handles == []
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    assert len(caught) == 1 and "GenerationTask.n" in str(caught[0])
    assert reached(engine) == 0


async def test_cancelling_one_submitted_task_aborts_it_in_the_engine(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            long = par.submit(gen("long"))
            short = par.submit(gen("short", max_tokens=2))
            await short.wait()
            assert engine.num_active == 1
            long.cancel()
            with pytest.raises(RequestCancelledError):
                await long.wait()
            # the block waits for the handler to unwind: the engine dropped it
        assert engine.aborted == 1 and engine.num_active == 0
        return short.result()

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        out = await llm.generate("q")
    assert out.output is not None and out.output.output_str == "w0 w1"


async def test_a_queued_submitted_task_cancelled_never_reaches_the_engine(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)
    worker = EngineWorker(engine, max_concurrency=1)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            first = par.submit(gen("first", max_tokens=3))
            queued = par.submit(gen("queued"))
            queued.cancel()  # still in the inbox: over at once
            assert queued.done and queued.cancelled
            await first.wait()
        return first.result()

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        await llm.generate("q")
        assert llm.stats()["tasks_queued"] == 0
    assert (reached(engine), engine.completed) == (1, 1)


async def test_a_failing_submitted_task_fails_the_block_and_aborts_the_rest(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)
    worker = EngineWorker(engine)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            for i in range(3):
                par.submit(gen(f"long {i}"))
            await trio.testing.wait_all_tasks_blocked()
            assert engine.num_active == 3  # the engine holds them when the error comes
            bad = GenerationTask(input_str="boom")
            bad.worker_tag = "echo"
            par.submit(bad)
            async for _ in par.as_completed():
                pass
        raise AssertionError("the block must raise")  # pragma: no cover

    async with AsyncScaffoldingLlm(method, {"generation": worker, "echo": EchoWorker()}) as llm:
        with pytest.raises(ValueError, match="boom") as info:
            await llm.generate("q")
        assert type(info.value) is ValueError  # unwrapped
        assert llm.stats()["tasks_running"] == 0
    assert (engine.aborted, engine.num_active) == (3, 0)


async def test_cancelling_the_request_aborts_submitted_tasks_before_it_returns(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)
    started = trio.Event()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            for i in range(4):
                par.submit(gen(f"p{i}"))
            started.set()
            await trio.sleep_forever()
        return task  # pragma: no cover

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate_async("q")
        await started.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert engine.num_active == 4
        await r.acancel()
        assert (engine.aborted, engine.num_active) == (4, 0)
        assert llm.stats()["tasks_running"] == 0


async def test_a_submitted_task_that_outlives_cancel_grace_is_loud(
    autojump_clock: object,
) -> None:
    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            par.submit(GenerationTask(input_str="q"))
            await trio.sleep_forever()
        return task  # pragma: no cover

    async with AsyncScaffoldingLlm(method, {"generation": StuckWorker()}, cancel_grace=2) as llm:
        r = await llm.generate_async("q")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.warns(CancelGraceExceededWarning, match=r"StuckWorker \(tag 'generation'\)"):
            await r.acancel()
        assert llm.stats()["cancel_grace_overruns"] == 1


async def test_a_full_inbox_makes_submit_wait_in_a_child_in_order(autojump_clock: object) -> None:
    """With no room in the inbox, the task is started as an ordinary child that
    waits for room (backpressure, as ctx.run does); every task runs once."""
    worker = OrderedEchoWorker()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            handles = [par.submit(GenerationTask(input_str=str(i))) for i in range(5)]
        task.output_str = " ".join(h.result().output_str or "" for h in handles)
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        with trio.fail_after(60):  # virtual time: fires at once if a task was lost
            out = await llm.generate("q")
    assert sorted(worker.order) == ["0", "1", "2", "3", "4"]
    assert out.output is not None
    assert out.output.output_str == " ".join(f"echo: {i}" for i in range(5))


async def test_under_a_token_budget_submit_is_cut_like_ctx_run(autojump_clock: object) -> None:
    from scaffold_actors import TokenBudgetExhaustedError

    engine = SimulatedEngine(LONG)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.token_budget(10):
            async with ctx.parallel() as par:
                par.submit(gen("a"))  # each is capped to the 10 tokens left;
                par.submit(gen("b"))  # together they overrun the budget
        return task  # pragma: no cover

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        with pytest.raises(TokenBudgetExhaustedError):
            await llm.generate("q")
    assert engine.num_active == 0 and engine.aborted >= 1


async def test_a_finished_request_is_freed_without_the_collector(autojump_clock: object) -> None:
    """A submitted task's handle cuts its links to its block and its job once it is
    over: a finished request leaves no reference cycle behind (before, each one
    left about a hundred objects for a full collection to find)."""

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            handles = [par.submit(gen(f"p{i}", 4)) for i in range(8)]
        task.output_str = ",".join(h.result().output_str or "" for h in handles)
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(SimulatedEngine())}) as llm:
        assert await left_for_the_collector(llm, 20) < 20


async def test_a_task_refused_at_admission_fails_its_block(autojump_clock: object) -> None:
    """A task its engine refuses as it is handed over (it is over before
    ``submit`` returns) fails the block with the engine's error."""

    def reply(call: object) -> object:
        return 42 if "bad" in getattr(call, "prompt", "") else "fine"

    engine = SimulatedEngine(reply)  # type: ignore[arg-type]

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            par.submit(gen("good", 4))
            if task.input_str == "q":
                par.submit(gen("bad", 4))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        with pytest.raises(EngineError, match="malformed engine output"):
            await llm.generate("q")
        assert engine.num_active == 0 and llm.stats()["tasks_running"] == 0
        assert (await llm.generate("again")).output is not None  # served as before
