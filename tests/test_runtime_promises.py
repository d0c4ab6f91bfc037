"""Promises of the facades that a review found broken: each test fails without its
mechanism (tools/mutations.py lists which)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import ClassVar

import pytest
import trio
import trio.testing
from helpers import EchoWorker, StuckWorker, one_shot

from engine_bridge import CostModel, EngineError, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    CancelGraceExceededWarning,
    EngineWorker,
    GenerationTask,
    RequestContext,
    RuntimeClosedError,
    ScaffoldingLlm,
    Task,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import MajorityVote, Sampler

LONG = " ".join(f"w{i}" for i in range(200))


async def test_cancelling_generate_cancels_what_it_submitted(autojump_clock: object) -> None:
    """``generate()`` under a cancel scope: when the scope is left, nothing it
    submitted is alive, in the runtime or in the engine."""
    engine = SimulatedEngine(LONG)
    mv = MajorityVote(Sampler(max_tokens=200), samples=4)
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        with trio.move_on_after(0.05) as scope:
            await llm.generate(["q1", "q2", "q3"])
        assert scope.cancelled_caught
        # every sample was aborted in the engine (none ran on to its end), and the
        # engine's own queues are empty
        assert (engine.aborted, engine.completed, engine.num_active) == (12, 0, 0)
        stats = llm.stats()
        assert (stats["requests_in_flight"], stats["tasks_running"], stats["engine_requests"]) == (
            0,
            0,
            0,
        )


async def test_two_iterators_over_one_result_both_see_every_update(
    autojump_clock: object,
) -> None:
    step = trio.Event()
    go_on = trio.Event()

    async def emitter(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        ctx.emit("one")
        await step.wait()
        ctx.emit("two")
        await go_on.wait()
        task.output_str = "end"
        return task

    seen: dict[str, list[str]] = {"a": [], "b": []}
    async with AsyncScaffoldingLlm(emitter, {"generation": EchoWorker()}) as llm:
        result = await llm.generate_async("q")

        async def read(name: str) -> None:
            async for out in result:
                seen[name].append(out.output_str)

        with trio.fail_after(60):  # virtual time: fires at once if an iterator is stranded
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read, "a")
                nursery.start_soon(read, "b")
                await trio.testing.wait_all_tasks_blocked()
                step.set()
                await trio.testing.wait_all_tasks_blocked()
                go_on.set()
    assert seen["a"] == seen["b"] == ["one", "two", "end"]


async def test_a_cancel_that_outlives_cancel_grace_is_loud(autojump_clock: object) -> None:
    async with AsyncScaffoldingLlm(one_shot, {"generation": StuckWorker()}, cancel_grace=2) as llm:
        r = await llm.generate_async("q")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.warns(
            CancelGraceExceededWarning, match=r"StuckWorker \(tag 'generation'\).*GenerationTask"
        ):
            await r.acancel()
        assert llm.stats()["cancel_grace_overruns"] == 1
        assert llm.stats()["tasks_running"] == 1  # and it is still there, said so


async def test_the_bodys_own_exception_is_not_wrapped(autojump_clock: object) -> None:
    engine = SimulatedEngine(LONG)
    with pytest.raises(ValueError, match="mine") as info:
        async with AsyncScaffoldingLlm(one_shot, {"generation": EngineWorker(engine)}) as llm:
            r = await llm.generate_async("q")
            await trio.sleep(0.01)
            raise ValueError("mine")
    assert type(info.value) is ValueError
    assert r.cancelled and engine.num_active == 0


async def test_a_failure_of_the_runtime_itself_is_raised_unwrapped() -> None:
    class BadClose(Worker):
        @asynccontextmanager
        async def lifespan(self) -> AsyncIterator[None]:
            yield
            raise EngineError("engine failed to close")

    with pytest.raises(EngineError, match="failed to close"):
        async with AsyncScaffoldingLlm(one_shot, {"generation": BadClose()}):
            pass


# -- the blocking facade --------------------------------------------------------


class _DiesAtClose(Worker):
    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        yield
        raise EngineError("the engine did not shut down cleanly")


def test_sync_shutdown_raises_the_loop_threads_error() -> None:
    llm = ScaffoldingLlm(one_shot, {"generation": _DiesAtClose()})
    with pytest.raises(EngineError, match="did not shut down cleanly"):
        llm.shutdown()
    llm.shutdown()  # idempotent, and said once


class _CrashesMidRun(Worker):
    """Its engine's monitor task dies while the runtime runs: the loop ends."""

    def __init__(self) -> None:
        self.crash = trio.Event()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async def monitor() -> None:
            await self.crash.wait()
            raise EngineError("engine monitor crashed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor)
            yield

    async def handle(self, task: GenerationTask) -> None:
        self.crash.set()
        await trio.sleep(3600)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]


def test_sync_errors_after_start_reach_the_caller() -> None:
    worker = _CrashesMidRun()
    llm = ScaffoldingLlm(one_shot, {"generation": worker}, backend="trio")
    r = llm.generate_async("q")
    with pytest.raises(Exception):  # noqa: B017 - cancelled, or the portal is gone
        r.result()
    llm._loop.thread.join()  # the loop ended: an event, no clock
    with pytest.raises(RuntimeClosedError, match="engine monitor crashed") as info:
        llm.generate_async("again")
    assert isinstance(info.value.__cause__, EngineError)
    with pytest.raises(EngineError, match="engine monitor crashed"):
        llm.shutdown()


class _StuckHalfAMinute(Worker):
    async def handle(self, task: GenerationTask) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(30)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]


def test_sync_shutdown_is_bounded() -> None:
    """A handler that ignores cancellation for 30 s: shutdown gives up after its
    bound with TimeoutError instead of waiting it out."""
    llm = ScaffoldingLlm(
        one_shot, {"generation": _StuckHalfAMinute()}, cancel_grace=0.05, shutdown_timeout=0.5
    )
    llm.generate_async("q")
    with pytest.warns(CancelGraceExceededWarning):
        with pytest.raises(TimeoutError, match=r"did not stop within 0\.5 s"):
            llm.shutdown()


def test_sync_generate_interrupted_cancels_its_requests() -> None:
    """A KeyboardInterrupt (Ctrl-C) while ``generate`` waits: its requests do not
    run on.  Read from the engine: every one aborted, none alive."""
    import signal

    # a shell's background job ignores SIGINT and Python then leaves it ignored:
    # the Ctrl-C below would never arrive and ``generate`` would wait for ever
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_generate()
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupt_generate() -> None:
    import signal
    import threading
    import time

    # 30 s a step: the requests cannot finish before the interrupt, however busy
    # the machine (at 0.01 s a step they once did, beside two CPU burners)
    engine = SimulatedEngine(LONG, cost=CostModel(step_base=30.0))
    with ScaffoldingLlm(one_shot, {"generation": EngineWorker(engine)}) as llm:

        def interrupt_once_all_run() -> None:
            deadline = time.monotonic() + 60  # a hang guard: they run long before
            while engine.num_active < 3 and time.monotonic() < deadline:
                time.sleep(0.005)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)  # Ctrl-C

        threading.Thread(target=interrupt_once_all_run, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            llm.generate(["a", "b", "c"])
        assert engine.aborted == 3 and engine.num_active == 0
        assert llm.stats()["engine_requests"] == 0


async def test_a_task_goes_to_an_idle_runner_only_when_nothing_waits_before_it() -> None:
    """The hand-off straight to an idle runner skips the inbox, so it must not
    overtake: while a task sits in the inbox (serve has not taken it yet), a
    sender waits on a full inbox, no slot is free or the actor is closing, a new
    task takes the inbox like the others."""
    from scaffold_actors._worker import _Job

    async with AsyncScaffoldingLlm(one_shot, {"generation": EchoWorker()}) as llm:
        await llm.generate("warm")
        actor = llm._actors["generation"]
        assert len(actor._idle) == 1

        def job() -> _Job:
            return _Job(GenerationTask(input_str="q"), None, None, None, trio.Event())

        for name in ("_in_inbox", "_waiting_senders"):
            setattr(actor, name, 1)  # as if a task were ahead of this one
            try:
                assert not actor._hand_to_idle_runner(job())
            finally:
                setattr(actor, name, 0)
        slots = actor.worker.max_concurrency
        for _ in range(slots):
            assert actor._slots.take_nowait()
        assert not actor._hand_to_idle_runner(job())  # every slot busy
        for _ in range(slots):
            actor._slots.give_back()
        assert len(actor._idle) == 1  # nothing was handed over
        handed = job()
        assert actor._hand_to_idle_runner(handed)  # nothing ahead: straight to it
        await handed.done.wait()
        assert handed.task.output_str == "echo: q"


async def test_a_runners_next_task_is_not_hit_by_the_last_ones_cancellation(
    autojump_clock: object,
) -> None:
    """A runner's tasks share its cancel scope until one is cancelled.  A task
    cancelled while its handler is shielded may return without meeting the
    cancellation: the next task on that runner must start under a fresh scope,
    not the cancelled one."""

    class Shielded(Worker):
        max_concurrency = 1  # one runner: the second task runs where the first did

        async def handle(self, task: GenerationTask) -> None:
            if task.input_str == "first":
                with trio.CancelScope(shield=True):
                    await trio.sleep(1)  # the cancellation arrives here
                return  # and no checkpoint follows: the scope is left cancelled
            await trio.lowlevel.checkpoint()  # a cancelled scope would hit it
            task.output_str = f"done {task.input_str}"

        task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            first = par.submit(GenerationTask(input_str="first"))
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()  # lands in the shield
        return await ctx.run(GenerationTask(input_str="second"))

    async with AsyncScaffoldingLlm(method, {"generation": Shielded()}) as llm:
        with trio.fail_after(60):
            out = await llm.generate("q")
        await trio.testing.wait_all_tasks_blocked()
        # the one runner waits for work, listed once (a runner whose idle wait
        # met the old cancellation would have listed itself twice)
        assert len(llm._actors["generation"]._idle) == 1
    assert out.output is not None and out.output.output_str == "done second"
