"""Native Best-of-N on the simulated engine with a scripted reward worker."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio

from engine_bridge import CostModel, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RewardTask, Task, Worker
from scaffold_actors._worker import Handler
from scaffold_actors.methods import BestOfN, Sampler

# sample i says "candidate i" with i+1 extra words, so later samples take longer
REPLIES = [f"candidate {i}" + " pad" * (i * 5) for i in range(4)]


class ScriptedReward(Worker):
    """Scores by a table keyed on the candidate's first two words; records when it ran."""

    def __init__(self, table: dict[str, float], fail_on: str | None = None) -> None:
        self.table = table
        self.fail_on = fail_on
        self.scored_at: list[tuple[str, float]] = []

    async def score(self, task: RewardTask) -> None:
        key = " ".join(task.candidates[0].split()[:2])
        if key == self.fail_on:
            raise RuntimeError(f"reward model failed on {key!r}")
        await trio.sleep(0.05)
        self.scored_at.append((key, trio.current_time()))
        task.scores = [self.table[key]]

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


def workers(reward: Worker, engine: SimulatedEngine) -> dict[str, Any]:
    return {"generation": EngineWorker(engine), "reward": reward}


async def test_picks_the_highest_score() -> None:
    reward = ScriptedReward(
        {"candidate 0": 0.1, "candidate 1": 0.9, "candidate 2": 0.4, "candidate 3": 0.2}
    )
    async with AsyncScaffoldingLlm(
        BestOfN(Sampler(max_tokens=64), samples=4), workers(reward, SimulatedEngine(REPLIES))
    ) as llm:
        r = await llm.generate("q")
    assert r.output.output_str.startswith("candidate 1")
    assert r.output.details["best_score"] == 0.9 and sorted(r.output.details["scores"]) == [
        0.1,
        0.2,
        0.4,
        0.9,
    ]


async def test_scoring_overlaps_generation(autojump_clock: object) -> None:
    engine = SimulatedEngine(REPLIES, cost=CostModel(0.0, 0.01, 0.0))
    reward = ScriptedReward({f"candidate {i}": float(i) for i in range(4)})
    async with AsyncScaffoldingLlm(
        BestOfN(Sampler(max_tokens=64), samples=4), workers(reward, engine)
    ) as llm:
        start = trio.current_time()
        r = await llm.generate("q")
        end = trio.current_time()
    first_scored = reward.scored_at[0][1] - start
    # the longest sample needs 17 steps (0.17 s); the first score is in before that
    assert reward.scored_at[0][0] == "candidate 0" and first_scored < 0.17
    assert end - start == pytest.approx(0.17 + 0.05, abs=0.011)  # only the last score is serial
    assert r.output.output_str.startswith("candidate 3")


async def test_ties_go_to_the_first_finished() -> None:
    reward = ScriptedReward({f"candidate {i}": 1.0 for i in range(4)})
    async with AsyncScaffoldingLlm(
        BestOfN(Sampler(max_tokens=64), samples=4), workers(reward, SimulatedEngine(REPLIES))
    ) as llm:
        r = await llm.generate("q")
    assert r.output.output_str.startswith("candidate 0")


async def test_a_failing_score_fails_the_request_and_cancels_the_rest(
    autojump_clock: object,
) -> None:
    engine = SimulatedEngine(REPLIES)
    reward = ScriptedReward({}, fail_on="candidate 0")
    async with AsyncScaffoldingLlm(
        BestOfN(Sampler(max_tokens=64), samples=4), workers(reward, engine)
    ) as llm:
        with pytest.raises(RuntimeError, match="reward model failed on 'candidate 0'"):
            await llm.generate("q")
        assert engine.num_active == 0 and llm.stats()["tasks_running"] == 0
    assert engine.aborted >= 1


async def test_chat_prompts_score_against_the_last_user_message() -> None:
    seen: list[str] = []

    class Recording(ScriptedReward):
        async def score(self, task: RewardTask) -> None:
            seen.append(task.input_str or "")
            task.scores = [1.0]

        task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]

    async with AsyncScaffoldingLlm(
        BestOfN(Sampler(max_tokens=64), samples=2), workers(Recording({}), SimulatedEngine(REPLIES))
    ) as llm:
        await llm.generate(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
        )
    assert seen == ["2+2?", "2+2?"]


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        BestOfN(samples=0)
