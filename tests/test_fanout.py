"""A ``ParallelProcess`` run from one task: the sub-generators are stepped by the
task that drives their parent, and the task lists they yield go to the actors as
jobs.  Each promise of a branch task per sub-generator is checked where the
engine (or the generator) sees it; tools/mutations.py lists the mechanisms."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from helpers import (
    OrderedEchoWorker,
    RunnerEngine,
    ScopedEchoWorker,
    StuckWorker,
    left_for_the_collector,
    reached,
)

from engine_bridge import SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    CancelGraceExceededWarning,
    EngineWorker,
    InvalidTaskError,
    Worker,
    current_scope,
)
from scaffold_actors._worker import Handler
from scaffold_actors.compat import (
    Controller,
    GenerationTask,
    ParallelProcess,
    StreamGenerationTask,
    Task,
)

LONG = " ".join(f"w{i}" for i in range(200))
Step = Callable[[list[Task]], Generator[Any, Any, None]]


def gen(prompt: str, max_tokens: int = 200, tag: str = "generation") -> GenerationTask:
    return GenerationTask(input_str=prompt, max_tokens=max_tokens, worker_tag=tag)


class Sub(Controller):
    """A sub-controller whose ``process`` is the given generator function."""

    def __init__(self, step: Step) -> None:
        super().__init__()
        self.step = step

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        return self.step(tasks)


class Fan(Controller):
    """Yields one ParallelProcess of ``steps``; keeps the sub-generators alive (so
    garbage collection cannot close them in the runtime's place)."""

    def __init__(self, *steps: Step) -> None:
        super().__init__()
        self.steps = steps
        self.subs: list[Generator[Any, Any, None]] = []

    def clone(self) -> Fan:
        return self  # one request per test: keep what it saw here

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        fan = ParallelProcess(
            [Sub(s) for s in self.steps], [[gen(f"sub {i}")] for i in range(len(self.steps))]
        )
        self.subs.extend(fan.sub_gens)
        yield fan
        tasks[0].output_str = "done"  # type: ignore[attr-defined]


async def test_sub_generators_step_and_run_their_tasks_in_branch_scopes(
    autojump_clock: object,
) -> None:
    stepped: list[str] = []

    worker = ScopedEchoWorker()

    def two_rounds(tasks: list[Task]) -> Generator[Any, Any, None]:
        for round_ in range(2):
            scope = current_scope.get()
            assert scope is not None
            stepped.append(scope.scope_id)
            batch = [gen(f"{round_}a"), gen(f"{round_}b")]
            yield batch
            assert [t.output_str for t in batch] == [f"echo: {round_}a", f"echo: {round_}b"]
        yield []  # nothing to run: stepped on at once

    fan = Fan(two_rounds, two_rounds, two_rounds)
    async with AsyncScaffoldingLlm(fan, {"generation": worker}, trace=True) as llm:
        r = await llm.generate_async("q")
        out = await r
    assert out.output is not None and out.output.output_str == "done"
    root = f"req-{r.request_id}"
    assert sorted(stepped) == sorted([f"{root}:{i}" for i in range(3)] * 2)
    assert sorted(worker.scopes) == sorted([f"{root}:{i}" for i in range(3)] * 4)
    # accounted as ctx.run accounts: usage and one trace record per task
    assert r.usage.tasks == 12 and r.usage.completion_tokens == 36
    assert r.trace is not None and [rec.status for rec in r.trace.records] == ["ok"] * 12
    assert all(rec.end > rec.start for rec in r.trace.records)


async def test_a_task_error_is_thrown_into_its_generator_after_its_siblings_are_aborted(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)
    seen: dict[str, object] = {}

    def failing(tasks: list[Task]) -> Generator[Any, Any, None]:
        try:
            yield [gen("long a"), gen("long b"), gen("boom", tag="echo")]
        except ValueError as e:
            # thrown in once the rest of the yield is over: aborted in the engine
            seen["error"] = str(e)
            seen["aborted"] = engine.aborted
        yield [gen("after", max_tokens=2)]
        seen["after"] = "ok"

    def fine(tasks: list[Task]) -> Generator[Any, Any, None]:
        t = gen("fine", max_tokens=3)
        yield [t]
        seen["fine"] = t.output_str

    class LateFailure(Worker):
        """Fails once everything else waits: the engine holds the siblings then."""

        async def handle(self, task: GenerationTask) -> None:
            await trio.testing.wait_all_tasks_blocked()
            raise ValueError(f"boom in {task.input_str!r}")

        task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]

    workers = {"generation": EngineWorker(engine), "echo": LateFailure()}
    async with AsyncScaffoldingLlm(Fan(failing, fine), workers, trace=True) as llm:
        r = await llm.generate_async("q")
        await r
    assert seen == {
        "error": "boom in 'boom'",
        "aborted": 2,
        "after": "ok",
        "fine": "w0 w1 w2",
    }
    assert r.trace is not None
    assert sorted(rec.status for rec in r.trace.records) == [
        "cancelled",
        "cancelled",
        "error",
        "ok",
        "ok",
    ]


async def test_a_bad_task_is_thrown_into_its_generator_and_nothing_of_its_yield_runs(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(LONG)
    caught: list[BaseException] = []

    def bad(tasks: list[Task]) -> Generator[Any, Any, None]:
        try:
            # valid as built; refused when the runtime checks it (n must be 1)
            yield [gen("good", max_tokens=2), GenerationTask(input_str="q", n=2)]
        except InvalidTaskError as e:
            caught.append(e)

    async with AsyncScaffoldingLlm(Fan(bad, bad), {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    assert len(caught) == 2 and all("GenerationTask.n" in str(e) for e in caught)
    assert reached(engine) == 0


# "runner": an engine read through open_stream only, whose aborted generations
# unwind in their runners (what the fan-out must wait for); "started": plain
# generations started without a runner, dropped by the engine as they are cancelled
ENGINES = pytest.mark.parametrize(
    "engine_kind", [SimulatedEngine, RunnerEngine], ids=["started", "runner"]
)


@ENGINES
async def test_a_generator_error_aborts_every_branch_and_leaves_unchanged(
    engine_kind: type[SimulatedEngine], autojump_clock: object
) -> None:
    engine = engine_kind(LONG)
    closed: list[int] = []

    def waiting(tasks: list[Task]) -> Generator[Any, Any, None]:
        try:
            yield [gen("long a"), gen("long b")]
        finally:
            closed.append(engine.num_active)  # closed once its tasks are gone

    def failing(tasks: list[Task]) -> Generator[Any, Any, None]:
        yield [gen("short", max_tokens=2)]
        raise KeyError("controller bug")

    fan = Fan(waiting, failing)
    async with AsyncScaffoldingLlm(fan, {"generation": EngineWorker(engine)}) as llm:
        with pytest.raises(KeyError, match="controller bug") as info:
            await llm.generate("q")
        assert type(info.value) is KeyError  # unwrapped
        # the engine dropped the other branch's tasks before the error came out
        assert (engine.aborted, engine.num_active) == (2, 0)
        assert llm.stats()["tasks_running"] == 0
    assert closed == [0]


@ENGINES
async def test_cancelling_the_request_aborts_every_task_and_closes_every_generator(
    engine_kind: type[SimulatedEngine], autojump_clock: object
) -> None:
    engine = engine_kind(LONG)
    closed: list[tuple[int, int]] = []

    def waiting(i: int) -> Step:
        def step(tasks: list[Task]) -> Generator[Any, Any, None]:
            try:
                yield [gen(f"long {i}")]
            finally:
                closed.append((i, engine.num_active))  # closed once the tasks are gone

        return step

    fan = Fan(*(waiting(i) for i in range(4)))
    async with AsyncScaffoldingLlm(fan, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate_async("q")
        await trio.testing.wait_all_tasks_blocked()
        assert engine.num_active == 4
        await r.acancel()
        # as the cancellation returned: every engine request gone, every generator closed
        assert (engine.aborted, engine.num_active) == (4, 0)
        assert sorted(closed) == [(0, 0), (1, 0), (2, 0), (3, 0)]
        assert llm.stats()["tasks_running"] == 0
    assert len(fan.subs) == 4


async def test_a_task_that_outlives_cancel_grace_is_loud(autojump_clock: object) -> None:
    def one(tasks: list[Task]) -> Generator[Any, Any, None]:
        yield [gen("q")]

    async with AsyncScaffoldingLlm(
        Fan(one, one), {"generation": StuckWorker()}, cancel_grace=2
    ) as llm:
        r = await llm.generate_async("q")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.warns(CancelGraceExceededWarning, match=r"StuckWorker \(tag 'generation'\)"):
            await r.acancel()
        assert llm.stats()["cancel_grace_overruns"] == 2


async def test_a_full_inbox_makes_the_fan_out_wait_for_room(autojump_clock: object) -> None:
    """With no room in the inbox the fan-out waits (backpressure, as ctx.run
    does); every task runs once and each branch gets its own output."""
    worker = OrderedEchoWorker()
    outputs: dict[str, str | None] = {}

    def two(tasks: list[Task]) -> Generator[Any, Any, None]:
        name = tasks[0].input_str  # type: ignore[attr-defined]
        batch = [gen(f"{name}.0"), gen(f"{name}.1")]
        yield batch
        for t in batch:
            outputs[t.input_str or ""] = t.output_str

    async with AsyncScaffoldingLlm(Fan(*[two] * 4), {"generation": worker}) as llm:
        with trio.fail_after(60):  # virtual time: fires at once if a task was lost
            await llm.generate("q")
    names = [f"sub {i}.{j}" for i in range(4) for j in range(2)]
    assert sorted(worker.order) == names
    assert outputs == {n: f"echo: {n}" for n in names}


async def test_a_sub_generator_that_streams_goes_on_in_a_task_of_its_own(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(" ".join(f"t{i}" for i in range(40)))
    seen: dict[str, object] = {}

    def streaming(tasks: list[Task]) -> Generator[Any, Any, None]:
        stream = StreamGenerationTask.create_from_generation_task(tasks[0], 4)  # type: ignore[arg-type]
        stream.max_tokens = 10
        snapshots = []
        while not stream.end_flag:
            yield [stream]
            snapshots.append(len(stream.output_tokens or ()))
        seen["snapshots"] = snapshots
        scope = current_scope.get()
        seen["scope"] = scope.scope_id if scope is not None else None
        t = gen("then", max_tokens=2)
        yield [t]
        seen["then"] = t.output_str

    def plain(tasks: list[Task]) -> Generator[Any, Any, None]:
        t = gen("plain", max_tokens=3)
        yield t  # a single task, not in a list
        seen["plain"] = t.output_str

    async with AsyncScaffoldingLlm(
        Fan(streaming, plain), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate_async("q")
        await r
    assert seen == {
        "snapshots": [4, 8, 10],
        "scope": f"req-{r.request_id}:0",
        "then": "t0 t1",
        "plain": "t0 t1 t2",
    }


async def test_a_finished_fan_out_is_freed_without_the_collector(autojump_clock: object) -> None:
    """A fan-out's job cuts its links (to itself as its end, its branch and its
    fan-out) once over: a finished request leaves no reference cycle behind
    (before, each vote left about a hundred objects for a full collection)."""
    from scaffold_actors.compat import MajorityVoteController, NativeGenerationController

    controller = MajorityVoteController(
        NativeGenerationController({"max_tokens": 4}), default_sample_num=8
    )
    worker = EngineWorker(SimulatedEngine("The answer is \\boxed{4}"))
    async with AsyncScaffoldingLlm(controller, {"generation": worker}) as llm:
        assert await left_for_the_collector(llm, 20) < 20
