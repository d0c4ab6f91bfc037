"""The worker protocol: a worker written only from the docs takes part in token
budgets, streaming (native and generator controllers), prechecks and ``stats()``
exactly as the engine worker does.

Every check runs on three workers: ``DocWorker`` below (uses nothing but the public
API: ``Worker``, ``task_context()``, ``streaming_tasks``, ``check_request``,
``stats``) and ``EngineWorker`` over the simulated engine, both as it is
(plain generations start without a runner) and read through ``open_stream`` only
(every generation runs ``generation_handler``).  Live counts are read
from each worker's own state (``DocWorker.live``, the engine's ``num_active``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar

import anyio
import pytest
from helpers import RunnerEngine

from engine_bridge import CostModel, SamplingParams, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RequestContext,
    StreamGenerationTask,
    Task,
    TaskContext,
    TaskStatus,
    TokenBudgetExhaustedError,
    Worker,
    task_context,
)
from scaffold_actors.compat import Controller

WORDS = 40  # tokens each generation would produce if nothing stops it
STEP = 0.01  # virtual seconds per token


class DocWorker(Worker):
    """Generates ``w0 w1 ...``, one token every ``STEP`` virtual seconds."""

    streaming_tasks = (StreamGenerationTask,)

    def __init__(self, max_prompt_chars: int = 100) -> None:
        self.max_prompt_chars = max_prompt_chars
        self.live = 0  # generations running now: this worker's own "engine" state
        self.contexts: list[TaskContext] = []

    def check_request(self, prompt: object) -> None:
        text = prompt if isinstance(prompt, str) else str(prompt)
        if len(text) > self.max_prompt_chars:
            raise InvalidTaskError("prompt", f"longer than {self.max_prompt_chars} characters")

    def stats(self) -> dict[str, int]:
        return {"engine_requests": self.live}

    async def generate(self, task: GenerationTask) -> TaskStatus:
        ctx = task_context()
        self.contexts.append(ctx)
        task.output_str, task.output_tokens, task.completion_tokens_num = "", [], 0
        self.live += 1
        try:
            for i in range(min(task.max_tokens or WORDS, WORDS)):
                await anyio.sleep(STEP)
                task.output_str += f"w{i} "
                task.output_tokens.append(i)
                task.completion_tokens_num += 1
                ctx.report_tokens(1)
                ctx.notify_progress()
            task.finish_reason = "length"
            if isinstance(task, StreamGenerationTask):
                task.end_flag = True
                ctx.notify_progress()
        finally:
            self.live -= 1
        return TaskStatus.SUCCESS

    task_handlers: ClassVar[dict[type[Task], Any]] = {
        GenerationTask: generate,
        StreamGenerationTask: generate,
    }


class Subject:
    """One worker under test and how to read its live count."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "doc":
            self.worker: Worker = DocWorker()
            self.live: Callable[[], int] = lambda: self.worker.live  # type: ignore[attr-defined]
        else:
            # "engine": plain generations start without a runner; "runner-engine":
            # an engine read through open_stream only, so generation_handler runs
            text = " ".join(f"w{i}" for i in range(WORDS))
            kind = SimulatedEngine if name == "engine" else RunnerEngine
            engine = kind(text, cost=CostModel(0.0, STEP, 0.0), max_context=64)
            self.worker = EngineWorker(engine, default_params=SamplingParams(max_tokens=WORDS))
            self.live = lambda: engine.num_active


@pytest.fixture(params=["doc", "engine", "runner-engine"])
def subject(request: pytest.FixtureRequest) -> Subject:
    return Subject(request.param)


async def run(subject: Subject, controller: Any, prompt: str = "q") -> Any:
    async with AsyncScaffoldingLlm(controller, {"generation": subject.worker}) as llm:
        result = await llm.generate(prompt)
        assert llm.stats()["engine_requests"] == 0 == subject.live()
    return result


async def test_a_budget_stops_a_generation_mid_way(
    subject: Subject, autojump_clock: object
) -> None:
    seen: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.token_budget(12) as budget:
            a = GenerationTask.create_from_prompt("a")
            b = GenerationTask.create_from_prompt("b")
            with pytest.raises(TokenBudgetExhaustedError):
                await ctx.run_all([a, b])  # 2 x up to 12 tokens, 12 in all
            seen["spent"] = budget.spent
            seen["made"] = a.completion_tokens_num + b.completion_tokens_num
        task.output_str = "done"
        return task

    await run(subject, method)
    # the budget saw every token as it was made, and stopped both mid-way
    assert seen["spent"] >= 12 and seen["made"] < 2 * 12


async def test_a_budget_charges_each_token_as_it_is_made(
    subject: Subject, autojump_clock: object
) -> None:
    charged: list[int] = []

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.token_budget(100) as budget:
            t = GenerationTask.create_from_prompt("a")
            t.max_tokens = 8
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while budget.spent < 8:
                        charged.append(budget.spent)
                        await anyio.sleep(STEP)

                tg.start_soon(watch)
                await ctx.run(t)
        return t

    await run(subject, method)
    assert len(set(charged)) > 2  # the charge grew while the task ran, not once at its end


async def test_a_native_stream_steps_and_a_break_ends_the_generation(
    subject: Subject, autojump_clock: object
) -> None:
    steps: list[int] = []

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        s = StreamGenerationTask.create_from_prompt("a")
        s.streaming_step = 3
        async with ctx.stream(s) as updates:
            async for t in updates:
                steps.append(len(t.output_tokens or ()))
                if len(steps) == 3:
                    break
        assert subject.live() == 0  # gone when the block has exited
        return s

    await run(subject, method)
    assert steps == [3, 6, 9]


async def test_a_generator_controller_steps_a_stream_and_cancels_it(
    subject: Subject, autojump_clock: object
) -> None:
    steps: list[int] = []

    class Stepper(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            s = StreamGenerationTask.create_from_prompt("a")
            s.streaming_step = 4
            while len(s.output_tokens or ()) < 10:
                yield [s]
                steps.append(len(s.output_tokens or ()))
            s.cancel_flag = True
            yield [s]
            tasks[0].output_str = s.output_str

    await run(subject, Stepper())
    assert steps == [4, 8, 12]


async def test_the_prompt_is_checked_at_submission(
    subject: Subject, autojump_clock: object
) -> None:
    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        raise AssertionError("never runs")

    async with AsyncScaffoldingLlm(method, {"generation": subject.worker}) as llm:
        with pytest.raises(InvalidTaskError, match="prompt"):
            await llm.generate_async("x " * 200)
        assert llm.stats()["requests_in_flight"] == 0


async def test_stats_show_the_workers_own_live_count(
    subject: Subject, autojump_clock: object
) -> None:
    started = anyio.Event()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            for p in ("a", "b", "c"):
                par.start(ctx.run, GenerationTask.create_from_prompt(p))
            await anyio.sleep(STEP * 3)
            started.set()
            await anyio.sleep_forever()
        return task

    async with AsyncScaffoldingLlm(method, {"generation": subject.worker}) as llm:
        result = await llm.generate_async("q")
        await started.wait()
        assert llm.stats()["engine_requests"] == 3 == subject.live()
        await result.acancel()
        assert llm.stats()["engine_requests"] == 0 == subject.live()


async def test_the_handler_sees_its_own_context(autojump_clock: object) -> None:
    worker = DocWorker()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        plain = GenerationTask.create_from_prompt("a")
        plain.max_tokens = 2
        await ctx.run(plain)
        async with ctx.token_budget(50):
            budgeted = GenerationTask.create_from_prompt("b")
            budgeted.max_tokens = 2
            await ctx.run(budgeted)
        s = StreamGenerationTask.create_from_prompt("c")
        s.max_tokens = 2
        async with ctx.stream(s) as updates:
            async for _ in updates:
                pass
        return plain

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        r = await llm.generate_async("q")
        await r
    plain, budgeted, streamed = worker.contexts
    assert [c.request_id for c in worker.contexts] == [r.request_id] * 3
    assert (plain.counts_tokens, plain.streamed) == (False, False)
    assert (budgeted.counts_tokens, budgeted.streamed) == (True, False)
    assert (streamed.counts_tokens, streamed.streamed) == (False, True)
    assert not any(c.cancel_requested for c in worker.contexts)


async def test_a_cancelled_handler_sees_cancel_requested(autojump_clock: object) -> None:
    seen: list[bool] = []

    class Slow(Worker):
        async def handle(self, task: GenerationTask) -> None:
            try:
                await anyio.sleep_forever()
            finally:
                seen.append(task_context().cancel_requested)

        task_handlers: ClassVar[dict[type[Task], Any]] = {GenerationTask: handle}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        with anyio.move_on_after(1):
            await ctx.run(GenerationTask.create_from_prompt("a"))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": Slow()}) as llm:
        await llm.generate("q")
    assert seen == [True]


async def test_task_context_outside_a_handler_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="only available inside a task handler"):
        task_context()
    worker = DocWorker()
    task = GenerationTask.create_from_prompt("a")
    task.max_tokens = 2
    assert await worker.run_task(task) is TaskStatus.SUCCESS  # run_task gives one
    (ctx,) = worker.contexts
    assert ctx.request_id is None and not ctx.counts_tokens and not ctx.streamed
