"""The runtime's promises, on the simulated engine under trio's MockClock."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from helpers import EchoWorker, answers, one_shot

from engine_bridge import CostModel, EngineError, SamplingParams, SimulatedEngine, SimulatedOutput
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    ExecutionTrace,
    GenerationTask,
    InvalidTaskError,
    ReplayMismatchError,
    ReplayWorker,
    RequestCancelledError,
    RequestContext,
    RuntimeClosedError,
    StreamGenerationTask,
    Task,
    TaskFailedError,
    TaskNotSupportedError,
    TaskStatus,
    TooManyRequestsError,
    UnknownWorkerTagError,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import MajorityVote, Sampler

LONG = " ".join(f"w{i}" for i in range(200))


def sim(responder: Any = None, **kw: Any) -> SimulatedEngine:
    return SimulatedEngine(responder, **kw)


# -- results and composition ---------------------------------------------------


async def test_majority_vote_picks_the_most_common_answer(autojump_clock: object) -> None:
    engine = sim(answers("42", "41", "42", "7", "42", "41", "42", "42"))
    mv = MajorityVote(samples=8, early_stop=False)
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("What is 6*7?")
    assert r.output.details["answer"] == "42"
    assert r.output.details["votes"] == {"42": 5, "41": 2, "7": 1}
    assert "\\boxed{42}" in r.output.output_str
    assert r.usage.tasks == 8 and r.usage.completion_tokens > 0


async def test_majority_vote_early_stop_cancels_the_rest(autojump_clock: object) -> None:
    # Fast samples all say 3; the last three would take 1000 tokens each.
    def responder(call: Any) -> str:
        return answers("3")[0] if call.index < 5 else LONG

    engine = sim(responder)
    mv = MajorityVote(samples=8, early_stop=True)
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        stats = llm.stats()
    # k votes for "3" with 8 - k outstanding: decided once k > 8 - k, at k = 5.
    assert r.output.details["answer"] == "3"
    assert r.output.details["samples_finished"] == 5
    assert engine.aborted == 3
    assert engine.num_active == 0 and stats["tasks_running"] == 0


async def test_tasks_of_one_request_run_concurrently(autojump_clock: object) -> None:
    engine = sim("a b c d", cost=CostModel(0.0, 0.01, 0.0))
    async with AsyncScaffoldingLlm(
        MajorityVote(samples=16, early_stop=False), {"generation": EngineWorker(engine)}
    ) as llm:
        start = trio.current_time()
        await llm.generate("q")
        elapsed = trio.current_time() - start
    assert engine.peak_batch == 16
    # 4 decode steps, plus at most one while the later samples were still being
    # dispatched; sequentially it would be 16 * 4 steps.
    assert elapsed <= 5 * 0.01 + 1e-9


async def test_requests_run_concurrently_under_the_cap(autojump_clock: object) -> None:
    engine = sim("a b", cost=CostModel(0.0, 0.01, 0.0))
    async with AsyncScaffoldingLlm(
        one_shot, {"generation": EngineWorker(engine)}, max_in_flight=4
    ) as llm:
        results = await llm.generate([f"q{i}" for i in range(10)])
    assert [r.output.output_str for r in results] == ["a b"] * 10
    assert engine.peak_batch == 4


# -- deterministic cancellation -------------------------------------------------


async def test_cancel_mid_stream_leaves_nothing_alive(autojump_clock: object) -> None:
    engine = sim(LONG)
    sampler = Sampler(stream=True, streaming_step=4, max_tokens=200)
    async with AsyncScaffoldingLlm(sampler, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate_async("q")
        partials = []
        async for out in r:
            partials.append(out)
            if len(partials) == 3:
                await r.acancel()
                break
        assert engine.num_active == 0
        assert llm.stats() == {
            "requests_in_flight": 0,
            "tasks_running": 0,
            "tasks_queued": 0,
            "engine_requests": 0,
            "requests_completed": 1,
            "cancel_grace_overruns": 0,
        }
        assert engine.aborted == 1
        with pytest.raises(RequestCancelledError):
            await r
        # no further output after the cancel returned
        with pytest.raises(RequestCancelledError):
            await r.__aiter__().__anext__()
    assert [len(p.output_tokens) for p in partials] == [4, 8, 12]
    assert not partials[-1].finished


async def test_cancel_from_the_controller_one_task(autojump_clock: object) -> None:
    engine = sim(LONG)

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            slow = par.start(ctx.run, GenerationTask(input_str="slow", max_tokens=200))
            quick = par.start(ctx.run, GenerationTask(input_str="quick", max_tokens=2))
            await quick.wait()
            slow.cancel()
        assert slow.cancelled and engine.num_active == 0
        with pytest.raises(RequestCancelledError):
            slow.result()
        return quick.result()

    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert r.output.output_str == "w0 w1"
    assert engine.aborted == 1


async def test_stream_break_aborts_the_engine_request(autojump_clock: object) -> None:
    engine = sim(LONG)
    seen: list[int] = []

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        t = StreamGenerationTask(input_str="q", max_tokens=200, streaming_step=5)
        async with ctx.stream(t) as updates:
            async for part in updates:
                seen.append(len(part.output_tokens or ()))
                if len(seen) == 2:
                    break
        assert engine.num_active == 0
        return t

    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert seen == [5, 10]
    assert r.usage.completion_tokens >= 10
    assert engine.aborted == 1


async def test_stream_reaches_the_end(autojump_clock: object) -> None:
    engine = sim("a b c d e f g")

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        t = StreamGenerationTask(input_str="q", streaming_step=3)
        steps = []
        async with ctx.stream(t) as updates:
            async for part in updates:
                steps.append((len(part.output_tokens or ()), part.end_flag))
        t.customized_result_fields["steps"] = steps
        return t

    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert r.output.details["steps"] == [(3, False), (6, False), (7, True)]
    assert r.output.output_str == "a b c d e f g"


async def test_shutdown_with_requests_in_flight_cancels_them(autojump_clock: object) -> None:
    engine = sim(LONG)
    llm = AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=200), samples=4), {"generation": EngineWorker(engine)}
    )
    async with llm:
        results = [await llm.generate_async(f"q{i}") for i in range(5)]
        await trio.sleep(0.05)
        assert engine.num_active == 20
        await llm.shutdown()
        assert all(r.cancelled for r in results)
        assert engine.num_active == 0 and llm.stats()["requests_in_flight"] == 0
        with pytest.raises(RuntimeClosedError):
            await llm.generate_async("late")
    assert not engine.healthy  # closed with the runtime


async def test_exiting_the_block_cancels_in_flight_requests(autojump_clock: object) -> None:
    engine = sim(LONG)
    async with AsyncScaffoldingLlm(one_shot, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate_async("q")
        await trio.sleep(0.05)
    assert r.cancelled and engine.num_active == 0


async def test_cancelling_a_task_waits_for_the_handler_to_unwind(autojump_clock: object) -> None:
    """A handler with cleanup that takes time: the cancel returns after it."""
    log: list[str] = []

    class SlowCleanup(Worker):
        async def handle(self, task: GenerationTask) -> None:
            try:
                await trio.sleep(100)
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)
                    log.append("cleaned")

        task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]

    async with AsyncScaffoldingLlm(one_shot, {"generation": SlowCleanup()}) as llm:
        r = await llm.generate_async("q")
        await trio.sleep(1)
        await r.acancel()
        assert log == ["cleaned"]


# -- errors ---------------------------------------------------------------------


async def test_handler_exception_fails_only_its_request(autojump_clock: object) -> None:
    worker = EchoWorker()
    async with AsyncScaffoldingLlm(one_shot, {"generation": worker}) as llm:
        good1 = await llm.generate_async("fine")
        bad = await llm.generate_async("boom")
        good2 = await llm.generate_async("also fine")
        with pytest.raises(ValueError, match="boom in 'boom'"):
            await bad
        assert isinstance(bad.exception(), ValueError)
        assert (await good1).output.output_str == "echo: fine"
        assert (await good2).output.output_str == "echo: also fine"
        # the runtime keeps serving
        assert (await llm.generate("after")).output.output_str == "echo: after"
        with pytest.raises(ValueError):
            await llm.generate(["ok", "boom"])


async def test_failing_sample_cancels_its_siblings(autojump_clock: object) -> None:
    engine = sim(LONG)
    calls = 0

    class FlakyEngineWorker(EngineWorker):
        async def generation_handler(self, task: GenerationTask) -> TaskStatus:
            nonlocal calls
            calls += 1
            if calls == 3:
                await trio.sleep(0.02)
                raise KeyError("sample 3 failed")
            return await super().generation_handler(task)

        task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: generation_handler}  # type: ignore[dict-item]

    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=200), samples=6), {"generation": FlakyEngineWorker(engine)}
    ) as llm:
        with pytest.raises(KeyError, match="sample 3 failed"):
            await llm.generate("q")
        assert engine.num_active == 0 and engine.aborted == 5


async def test_engine_failure_surfaces_as_engine_error(autojump_clock: object) -> None:
    engine = sim(LONG)
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=200), samples=4), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate_async("q")
        await trio.sleep(0.05)
        engine.inject_failure()
        with pytest.raises(EngineError):
            await r
        assert llm.healthy() == {"generation": False}
        with pytest.raises(EngineError, match="unhealthy"):
            await llm.generate("again")


async def test_unknown_worker_tag_is_rejected_at_submission(autojump_clock: object) -> None:
    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        task.worker_tag = "verifier"
        return await ctx.run(task)

    worker = EchoWorker()
    async with AsyncScaffoldingLlm(controller, {"generation": worker}) as llm:
        with pytest.raises(
            UnknownWorkerTagError, match=r"'verifier'.*known tags: \['generation'\]"
        ) as info:
            await llm.generate("q")
    assert info.value.field == "worker_tag"
    assert worker.started == 0


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "prompt: must be a non-empty string"),
        ("   ", "prompt: must be a non-empty string"),
        (42, "prompt: must be a string or a list of chat messages, got int"),
        ([], "prompt: chat messages must not be empty"),
        ([{"role": "user"}], "prompt: message 0 must have str 'role' and 'content'"),
    ],
)
async def test_bad_prompt_is_rejected_at_submission(
    autojump_clock: object, prompt: Any, message: str
) -> None:
    worker = EchoWorker()
    async with AsyncScaffoldingLlm(one_shot, {"generation": worker}) as llm:
        with pytest.raises(InvalidTaskError, match=message):
            await llm.generate_async(prompt)
        assert llm.stats()["requests_in_flight"] == 0 and worker.started == 0


async def test_prompt_longer_than_context_is_rejected_at_submission(autojump_clock: object) -> None:
    engine = sim("a", max_context=16)
    worker = EngineWorker(engine, default_params=SamplingParams(max_tokens=4))
    async with AsyncScaffoldingLlm(one_shot, {"generation": worker}) as llm:
        ok = await llm.generate_async("short prompt")
        with pytest.raises(
            InvalidTaskError, match="no room to generate in the context length 16"
        ) as info:
            await llm.generate_async(LONG)
        assert info.value.field == "GenerationTask.prompt"
        assert "max_tokens" not in str(info.value)  # the submission check's probe is not named
        assert (await ok).output.output_str == "a"  # nothing accepted is lost


async def test_bad_sampling_params_are_rejected(autojump_clock: object) -> None:
    with pytest.raises(InvalidTaskError, match="max_tokens: must be >= 1, got -1"):
        Sampler(max_tokens=-1)

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        task.max_tokens = 10**9  # valid value, but no engine context fits it
        return await ctx.run(task)

    engine = sim("a", max_context=100)
    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        with pytest.raises(InvalidTaskError, match="context length 100"):
            await llm.generate("q")
    assert engine.completed == 0


async def test_run_all_validates_every_task_before_starting_any(autojump_clock: object) -> None:
    worker = EchoWorker()

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run_all([GenerationTask(input_str="a"), GenerationTask(input_str="")])
        return task

    async with AsyncScaffoldingLlm(controller, {"generation": worker}) as llm:
        with pytest.raises(InvalidTaskError, match="input_str"):
            await llm.generate("q")
    assert worker.started == 0


async def test_status_failures_are_raised(autojump_clock: object) -> None:
    class StatusWorker(Worker):
        async def handle(self, task: GenerationTask) -> TaskStatus:
            return TaskStatus.WORKER_EXECEPTION

        task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]

    async with AsyncScaffoldingLlm(one_shot, {"generation": StatusWorker()}) as llm:
        with pytest.raises(TaskFailedError, match="WORKER_EXECEPTION"):
            await llm.generate("q")


async def test_task_without_handler_is_rejected(autojump_clock: object) -> None:
    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run(
            StreamGenerationTask(input_str="q")
        )  # EchoWorker: GenerationTask handler covers subclasses
        from scaffold_actors import RewardTask

        await ctx.run(RewardTask(worker_tag="generation", input_str="q", candidates=["a"]))
        return task

    async with AsyncScaffoldingLlm(controller, {"generation": EchoWorker()}) as llm:
        with pytest.raises(TaskNotSupportedError, match="no handler for RewardTask"):
            await llm.generate("q")


async def test_task_timeout(autojump_clock: object) -> None:
    worker = EchoWorker()
    worker.task_timeout = 5.0
    async with AsyncScaffoldingLlm(one_shot, {"generation": worker}) as llm:
        start = trio.current_time()
        with pytest.raises(TimeoutError):
            await llm.generate("slow")
        assert trio.current_time() - start == pytest.approx(5.0)
        assert worker.cancelled == 1
        assert (await llm.generate("fast")).output.output_str == "echo: fast"


async def test_controller_returning_the_wrong_type(autojump_clock: object) -> None:
    async def controller(ctx: RequestContext, task: GenerationTask) -> Any:
        return "just a string"

    async with AsyncScaffoldingLlm(controller, {"generation": EchoWorker()}) as llm:
        with pytest.raises(TypeError, match="expected a GenerationTask"):
            await llm.generate("q")


def test_constructor_rejects_bad_configuration() -> None:
    with pytest.raises(TypeError, match="workers must be a non-empty mapping"):
        AsyncScaffoldingLlm(one_shot, {})
    with pytest.raises(TypeError, match="must be a Worker"):
        AsyncScaffoldingLlm(one_shot, {"generation": object()})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="controller must be"):
        AsyncScaffoldingLlm(42, {"generation": EchoWorker()})
    with pytest.raises(ValueError, match="max_in_flight"):
        AsyncScaffoldingLlm(one_shot, {"generation": EchoWorker()}, max_in_flight=0)


# -- backpressure -----------------------------------------------------------------


async def test_in_flight_cap_blocks_or_fails_fast(autojump_clock: object) -> None:
    worker = EchoWorker()
    async with AsyncScaffoldingLlm(one_shot, {"generation": worker}, max_in_flight=2) as llm:
        a = await llm.generate_async("slow a")
        b = await llm.generate_async("slow b")
        with pytest.raises(TooManyRequestsError, match="2 requests are in flight"):
            await llm.generate_async("c", block=False)
        submitted: list[Any] = []

        async def submit() -> None:
            submitted.append(await llm.generate_async("c"))

        async with trio.open_nursery() as n:
            n.start_soon(submit)
            await trio.sleep(10)
            assert submitted == []  # blocked at the cap
            await a.acancel()
        assert len(submitted) == 1
        assert (await submitted[0]).output.output_str == "echo: c"
        await b.acancel()


async def test_requests_waiting_at_the_cap_are_admitted_in_order(autojump_clock: object) -> None:
    """Requests past ``max_in_flight`` wait, and reach the engine in the order
    they came; one cancelled while it waits never reaches it, and the slot it
    waited for goes to the next one."""
    seen: list[str] = []

    def reply(call: Any) -> SimulatedOutput:
        seen.append(call.prompt)
        return SimulatedOutput("done", delay=3600.0 if call.prompt == "held" else 0.0)

    engine = SimulatedEngine(reply, cost=CostModel(0.0, 0.01, 0.0))
    async with AsyncScaffoldingLlm(
        one_shot, {"generation": EngineWorker(engine)}, max_in_flight=1
    ) as llm:
        held = await llm.generate_async("held")
        waiting: dict[str, trio.CancelScope] = {}
        results: dict[str, Any] = {}

        async def submit(prompt: str) -> None:
            with trio.CancelScope() as waiting[prompt]:
                results[prompt] = await (await llm.generate_async(prompt))

        # virtual time: a slot lost would leave the rest waiting forever
        with trio.fail_after(7200):
            async with trio.open_nursery() as n:
                for prompt in ("w1", "w2", "w3", "w4"):
                    n.start_soon(submit, prompt)
                    await trio.testing.wait_all_tasks_blocked()
                waiting["w2"].cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert seen == ["held"]  # all of them still wait at the cap
                await held.acancel()
    assert seen == ["held", "w1", "w3", "w4"]
    assert sorted(results) == ["w1", "w3", "w4"] and engine.num_active == 0


async def test_worker_inbox_and_concurrency_are_bounded(autojump_clock: object) -> None:
    worker = EchoWorker()
    worker.max_concurrency = 2
    worker.inbox_size = 3
    peak = {"running": 0, "queued": 0}

    async def controller(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run_all([GenerationTask(input_str=f"q{i}") for i in range(20)])
        return task

    async with AsyncScaffoldingLlm(controller, {"generation": worker}) as llm:
        r = await llm.generate_async("q")
        while not r.done:
            s = llm.stats()
            peak["running"] = max(peak["running"], s["tasks_running"])
            peak["queued"] = max(peak["queued"], s["tasks_queued"])
            await trio.sleep(0.001)
        await r
    assert peak == {"running": 2, "queued": 3}
    assert worker.finished == 20


# -- determinism, tracing, replay ------------------------------------------------


def test_whole_run_is_reproducible(deterministic_scheduling: None) -> None:
    from conftest import reseed_trio

    async def run() -> tuple[list[str], list[dict[str, Any]], float]:
        engine = sim(seed=3, cost=CostModel())
        mv = MajorityVote(Sampler(max_tokens=32), samples=5)
        async with AsyncScaffoldingLlm(
            mv, {"generation": EngineWorker(engine)}, max_in_flight=3
        ) as llm:
            results = await llm.generate([f"question {i}" for i in range(12)])
        return (
            [r.output.output_str for r in results],
            [dict(r.output.details) for r in results],
            trio.current_time(),
        )

    runs = []
    for _ in range(2):
        reseed_trio()
        runs.append(trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0)))
    assert runs[0] == runs[1]


async def test_trace_records_and_replays(autojump_clock: object, tmp_path: Any) -> None:
    engine = sim()
    mv = MajorityVote(Sampler(max_tokens=32, temperature=0.8), samples=6, early_stop=False)
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}, trace=True) as llm:
        original = await llm.generate("What is 3+4?")
    trace = original.trace
    assert trace is not None and len(trace.records) == 6
    rec = trace.records[0]
    assert (
        rec.task_type == "GenerationTask" and rec.worker_tag == "generation" and rec.status == "ok"
    )
    assert rec.inputs["input_str"] == "What is 3+4?" and rec.inputs["temperature"] == 0.8
    assert rec.outputs["output_str"] and rec.duration > 0

    path = tmp_path / "trace.json"
    trace.save(path)
    loaded = ExecutionTrace.load(path)
    assert loaded == trace

    replay = ReplayWorker(loaded)
    async with AsyncScaffoldingLlm(mv, {tag: replay for tag in replay.tags}) as llm:
        again = await llm.generate("What is 3+4?")
        assert again.output == original.output
        with pytest.raises(ReplayMismatchError, match="What is 5"):
            await llm.generate("What is 5+5?")


async def test_trace_records_failures_and_cancellations(autojump_clock: object) -> None:
    async with AsyncScaffoldingLlm(one_shot, {"generation": EchoWorker()}, trace=True) as llm:
        bad = await llm.generate_async("boom")
        slow = await llm.generate_async("slow")
        with pytest.raises(ValueError):
            await bad
        await trio.sleep(1)
        await slow.acancel()
    assert bad.trace is not None and bad.trace.records[0].status == "error"
    assert "ValueError: boom" in (bad.trace.records[0].error or "")
    assert slow.trace is not None and slow.trace.records[0].status == "cancelled"


def test_trace_rejects_other_documents() -> None:
    with pytest.raises(ValueError, match="scaffold-actors-trace/1"):
        ExecutionTrace.from_json('{"format": "x", "records": []}')


# -- workers ---------------------------------------------------------------------------


def test_register_task_handler_is_per_instance() -> None:
    async def special(worker: Any, task: GenerationTask) -> None:
        task.output_str = "special"

    a, b = EchoWorker(), EchoWorker()
    a.register_task_handler(GenerationTask, special)
    assert a.find_handler(GenerationTask) is special
    assert b.find_handler(GenerationTask) is EchoWorker.handle
    with pytest.raises(TypeError):
        a.register_task_handler(int, special)  # type: ignore[arg-type]


async def test_run_task_directly_reports_status() -> None:
    from scaffold_actors import RewardTask

    w = EchoWorker()
    task = GenerationTask(input_str="q")
    assert await w.run_task(task) is TaskStatus.SUCCESS and task.output_str == "echo: q"
    assert (
        await w.run_task(RewardTask(input_str="q", candidates=["a"]))
        is TaskStatus.WORKER_NOT_SUPPORTED
    )


async def test_engine_start_failure_propagates_from_enter() -> None:
    class BrokenWorker(Worker):
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def lifespan(self):  # type: ignore[no-untyped-def]
            raise OSError("no GPU here")
            yield

    with pytest.raises(OSError, match="no GPU here"):
        async with AsyncScaffoldingLlm(one_shot, {"generation": BrokenWorker()}):
            pass


async def test_majority_vote_without_any_answer(autojump_clock: object) -> None:
    engine = sim("I am not sure.")
    async with AsyncScaffoldingLlm(
        MajorityVote(samples=3), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate("q")
    assert r.output.output_str == "" and r.output.finish_reason == "no_answer"
    assert r.output.details["answer"] is None and r.output.details["samples_finished"] == 3


def test_a_forgotten_sync_runtimes_loop_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A ScaffoldingLlm collected without shutdown() is shut down by its
    finalizer; when its loop ends with an error (a worker failing to close),
    nobody is left to raise to, so the error is logged with its traceback."""
    import contextlib
    import gc

    from scaffold_actors import ScaffoldingLlm

    class FailsToClose(EchoWorker):
        @contextlib.asynccontextmanager
        async def lifespan(self) -> Any:
            yield
            raise RuntimeError("the worker failed to close")

    llm = ScaffoldingLlm(Sampler(max_tokens=3), {"generation": FailsToClose()})
    assert llm.generate("q").output is not None
    with caplog.at_level("ERROR", logger="scaffold_actors"):
        del llm
        gc.collect()
    assert "collected without shutdown() ended with an error" in caplog.text
    assert "the worker failed to close" in caplog.text
