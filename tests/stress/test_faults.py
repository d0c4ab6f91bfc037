"""Faults injected under load: the affected requests fail with a clear error, the
others complete, nothing leaks, and the runtime serves new requests afterwards."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import pytest
import trio

from engine_bridge import CostModel, EngineError, SimulatedCall, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    RequestCancelledError,
    Task,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import MajorityVote, Sampler

N = 200


def number_reply(call: SimulatedCall) -> Any:
    n = int(call.prompt.rsplit("#", 1)[-1].split()[0])
    if n % 10 == 3:
        return 42  # malformed: not text
    return "word " * (n % 7) + f"\\boxed{{{n}}}"


def no_leaks(llm: AsyncScaffoldingLlm, engine: SimulatedEngine) -> None:
    stats = llm.stats()
    assert (stats["requests_in_flight"], stats["tasks_running"], stats["tasks_queued"]) == (0, 0, 0)
    assert engine.num_active == 0 and stats["engine_requests"] == 0


async def serves_again(llm: AsyncScaffoldingLlm) -> None:
    r = await llm.generate("Question #1001 now")
    assert r.output.details["answer"] == "1001"


async def test_random_cancels_and_malformed_output(autojump_clock: object) -> None:
    engine = SimulatedEngine(number_reply, cost=CostModel(0.0, 0.01, 0.0))
    rng = random.Random(5)
    outcomes: dict[int, str] = {}
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=32), samples=4, early_stop=False),
        {"generation": EngineWorker(engine)},
        max_in_flight=N,
    ) as llm:

        async def one(i: int) -> None:
            result = await llm.generate_async(f"Question #{i} now")
            if i % 2 == 0:  # the user cancels half of them at a random point
                await trio.sleep(rng.random() * 0.1)
                await result.acancel()
            try:
                r = await result
            except RequestCancelledError:
                outcomes[i] = "cancelled"
            except EngineError as e:
                assert "malformed engine output" in str(e)
                outcomes[i] = "malformed"
            else:
                assert r.output.details["answer"] == str(i)
                outcomes[i] = "ok"

        async with trio.open_nursery() as nursery:
            for i in range(N):
                nursery.start_soon(one, i)
        no_leaks(llm, engine)
        await serves_again(llm)
    odd = [i for i in range(N) if i % 2]
    assert all(outcomes[i] == ("malformed" if i % 10 == 3 else "ok") for i in odd)
    evens = [outcomes[i] for i in range(N) if i % 2 == 0]
    assert evens.count("cancelled") > N // 4  # most were cut before they finished
    assert engine.aborted > 0


class HangsOnSeven(Worker):
    task_timeout = 1.0

    async def generate(self, task: GenerationTask) -> None:
        if "#7 " in (task.input_str or ""):
            await trio.sleep_forever()
        await trio.sleep(0.1)
        task.output_str = "\\boxed{1}"

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: generate}  # type: ignore[dict-item]


async def test_a_hanging_handler_times_out_alone(autojump_clock: object) -> None:
    async with AsyncScaffoldingLlm(Sampler(), {"generation": HangsOnSeven()}) as llm:
        results = [await llm.generate_async(f"Question #{i} now") for i in range(20)]
        failures = []
        for r in results:
            try:
                await r
            except TimeoutError:
                failures.append(r.request_id)
        assert len(failures) == 1
        assert llm.stats()["tasks_running"] == 0 and llm.stats()["requests_in_flight"] == 0
        assert (await llm.generate("Question #8 now")).output.output_str == "\\boxed{1}"


async def test_shutdown_with_everything_in_flight(autojump_clock: object) -> None:
    engine = SimulatedEngine("word " * 50, cost=CostModel(0.0, 0.01, 0.0))
    llm = AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=64), samples=4), {"generation": EngineWorker(engine)}
    )
    async with llm:
        results = [await llm.generate_async(f"q{i}") for i in range(50)]
        await trio.sleep(0.1)
        assert engine.num_active > 0
    for r in results:
        with pytest.raises(RequestCancelledError):
            await r
    assert engine.num_active == 0
