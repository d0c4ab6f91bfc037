"""A runtime on the simulated engine, fakes built from plain functions, and
leak checks."""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import attrs

from engine_bridge import CostModel, SimulatedEngine

from .._engine_worker import EngineWorker
from .._errors import InvalidTaskError
from .._runtime import AsyncScaffoldingLlm
from .._tasks import RewardTask, Task, TaskStatus
from .._tools import ToolWorker
from .._trace import ExecutionTrace, ReplayWorker
from .._worker import Handler, Worker
from ._script import Answer, Script

__all__ = [
    "LeakError",
    "RewardFake",
    "SimulatedRuntime",
    "assert_nothing_left",
    "replay_runtime",
    "simulated_runtime",
    "tool_fakes",
    "virtual_clock",
]


class LeakError(AssertionError):
    """Something a finished test should have released is still alive; the
    message says what (requests, tasks, engine requests, threads)."""


def virtual_clock() -> Any:
    """trio's ``MockClock(autojump_threshold=0)``: time jumps ahead whenever every
    task waits, so sleeps, stalls and timeouts take no real time.  Run with
    ``trio.run(main, clock=virtual_clock())``, pytest-trio's ``autojump_clock``
    fixture, or anyio's ``anyio_backend = ("trio", {"clock": virtual_clock()})``."""
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0)


def assert_nothing_left(
    llm: AsyncScaffoldingLlm,
    *engines: SimulatedEngine,
    threads: set[threading.Thread] | None = None,
) -> None:
    """Raise :class:`LeakError` unless the runtime has no request in flight, no
    task running or queued, no engine request alive (its workers' own counts
    and each engine's), and, when ``threads`` (a snapshot taken before) is
    given, no thread started since still runs."""
    left: list[str] = []
    stats = llm.stats()
    for name in ("requests_in_flight", "tasks_running", "tasks_queued", "engine_requests"):
        if stats.get(name):
            left.append(f"{name}={stats[name]}")
    for engine in engines:
        if engine.num_active:
            left.append(f"{engine!r} holds {engine.num_active} requests")
    if threads is not None:
        extra = [t.name for t in threading.enumerate() if t not in threads and t.is_alive()]
        if extra:
            left.append(f"threads still running: {extra}")
    if left:
        raise LeakError("left after the test: " + "; ".join(left))


def tool_fakes(tools: Mapping[str, Callable[..., Any]]) -> ToolWorker:
    """A :class:`ToolWorker` serving plain functions (sync or async) as tools:
    ``tool_fakes({"add": lambda a, b: a + b})``.  A sync function runs in the
    loop (keep it quick); what it raises is the tool's error result."""
    worker = ToolWorker()
    for name, fn in tools.items():
        worker.register(_as_async(fn), name=name, description=inspect.getdoc(fn) or name)
    return worker


def _as_async(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(fn):
        return fn

    async def call(**kwargs: Any) -> Any:
        return fn(**kwargs)

    call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    call.__doc__ = fn.__doc__
    return call


class RewardFake(Worker):
    """A reward worker from a plain function: ``score(question, candidate)``
    gives each candidate's score; with ``step_score(question, step)``, a
    :class:`RewardTask` with a ``step_separator`` also gets per-step scores.
    ``calls`` records ``(question, candidates)`` of each task.  A score that
    is not a number fails the task (never a made-up score)."""

    def __init__(
        self,
        score: Callable[[str, str], float],
        step_score: Callable[[str, str], float] | None = None,
    ) -> None:
        self.score = score
        self.step_score = step_score
        self.calls: list[tuple[str, list[str]]] = []

    async def reward(self, task: RewardTask) -> TaskStatus:
        question = task.input_str or ""
        self.calls.append((question, list(task.candidates)))
        task.scores = [_number(self.score(question, c)) for c in task.candidates]
        if task.step_separator and self.step_score is not None:
            step = self.step_score
            task.step_scores = [
                [_number(step(question, s)) for s in c.split(task.step_separator) if s.strip()]
                for c in task.candidates
            ]
        return TaskStatus.SUCCESS

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: reward}


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTaskError(
            "RewardTask.scores", f"the fake's score must be a number, got {value!r}"
        )
    return float(value)


@attrs.define
class SimulatedRuntime:
    """What :func:`simulated_runtime` gives: the runtime (``llm``), its simulated
    ``engine`` and the ``script`` that answers it.  ``generate`` and
    ``generate_async`` are the runtime's."""

    llm: AsyncScaffoldingLlm
    engine: SimulatedEngine
    script: Script | None

    async def generate(self, prompts: Any, **kwargs: Any) -> Any:
        return await self.llm.generate(prompts, **kwargs)

    async def generate_async(self, prompt: Any, **kwargs: Any) -> Any:
        return await self.llm.generate_async(prompt, **kwargs)


@asynccontextmanager
async def simulated_runtime(
    controller: Any,
    script: Script | Answer | None = None,
    *,
    tools: Mapping[str, Callable[..., Any]] | Worker | None = None,
    reward: Callable[[str, str], float] | Worker | None = None,
    workers: Mapping[Any, Worker] | None = None,
    cost: CostModel | None = None,
    check_leaks: bool = True,
    engine_options: Mapping[str, Any] | None = None,
    **runtime_options: Any,
) -> AsyncIterator[SimulatedRuntime]:
    """``async with simulated_runtime(controller, script) as rt:`` an
    :class:`AsyncScaffoldingLlm` running ``controller`` on a
    :class:`SimulatedEngine` answered by ``script`` (a :class:`Script`; any other
    answer, a text or :func:`stall` say, answers every prompt; ``None``: the
    engine's seeded default), under the ``"generation"`` tag; ``tools`` (plain functions, see
    :func:`tool_fakes`, or a worker) under ``"tool"``; ``reward`` (a function of
    ``(question, candidate)``, see :class:`RewardFake`, or a worker) under
    ``"reward"``; more ``workers`` by tag.

    The engine answers at once (``CostModel.instant()``) unless ``cost`` says
    otherwise; under a mock clock (:func:`virtual_clock`) its stalls and every
    sleep take no real time either.  ``runtime_options`` go to
    :class:`AsyncScaffoldingLlm` (``trace=True``, ``max_in_flight``, ...).

    On leaving, with ``check_leaks`` (the default), :func:`assert_nothing_left`
    runs before the runtime shuts down (when the block raised, its exception is
    given back as itself and the check is skipped).
    """
    if script is not None and not isinstance(script, Script):
        script = Script(default=script)  # one answer for every prompt
    engine = SimulatedEngine(
        script,
        cost=cost if cost is not None else CostModel.instant(),
        **dict(engine_options or {}),
    )
    all_workers: dict[Any, Worker] = {"generation": EngineWorker(engine)}
    if tools is not None:
        all_workers["tool"] = tools if isinstance(tools, Worker) else tool_fakes(tools)
    if reward is not None:
        all_workers["reward"] = reward if isinstance(reward, Worker) else RewardFake(reward)
    all_workers.update(workers or {})
    async with AsyncScaffoldingLlm(controller, all_workers, **runtime_options) as llm:
        yield SimulatedRuntime(llm, engine, script)
        if check_leaks:
            assert_nothing_left(llm, engine)


@asynccontextmanager
async def replay_runtime(
    controller: Any, trace: ExecutionTrace | str, **runtime_options: Any
) -> AsyncIterator[AsyncScaffoldingLlm]:
    """``async with replay_runtime(controller, "run.json") as llm:`` the
    controller re-run on the tasks a traced run recorded (``trace=True``, then
    ``result.trace.save(path)``): every worker is a :class:`ReplayWorker`
    answering from the trace, so a run recorded once on a real model replays in
    CI with none.  A task the trace does not hold raises
    :class:`ReplayMismatchError`."""
    recorded = trace if isinstance(trace, ExecutionTrace) else ExecutionTrace.load(trace)
    replay = ReplayWorker(recorded)
    async with AsyncScaffoldingLlm(
        controller, {tag: replay for tag in replay.tags}, **runtime_options
    ) as llm:
        yield llm
