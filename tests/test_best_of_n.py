"""Native Best-of-N on the simulated engine with a scripted reward worker."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio

from engine_bridge import CostModel, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RewardTask, Task, Worker
from scaffold_actors._worker import Handler
from scaffold_actors.methods import BestOfN, Sampler
from scaffold_actors.testing import RewardFake, Script, simulated_runtime

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


def first_two_words(scores: dict[str, float]) -> RewardFake:
    return RewardFake(lambda question, candidate: scores[" ".join(candidate.split()[:2])])


async def test_picks_the_highest_score(autojump_clock: object) -> None:
    reward = first_two_words(
        {"candidate 0": 0.1, "candidate 1": 0.9, "candidate 2": 0.4, "candidate 3": 0.2}
    )
    best = BestOfN(Sampler(max_tokens=64), samples=4)
    async with simulated_runtime(best, Script().then(*REPLIES), reward=reward) as rt:
        r = await rt.generate("q")
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


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [2, 0, 3, 1]])
async def test_ties_go_to_the_first_finished(autojump_clock: object, order: list[int]) -> None:
    reward = RewardFake(lambda question, candidate: 1.0)
    script = Script().then(*(f"candidate {i}" for i in range(4))).finish_order(order)
    best = BestOfN(Sampler(max_tokens=64), samples=4)
    async with simulated_runtime(best, script, reward=reward) as rt:
        r = await rt.generate("q")
    assert r.output.output_str == f"candidate {order[0]}"


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


async def test_chat_prompts_score_against_the_last_user_message(autojump_clock: object) -> None:
    reward = RewardFake(lambda question, candidate: 1.0)
    best = BestOfN(Sampler(max_tokens=64), samples=2)
    async with simulated_runtime(best, Script(default="4"), reward=reward) as rt:
        await rt.generate(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
        )
    assert [question for question, _ in reward.calls] == ["2+2?", "2+2?"]


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        BestOfN(samples=0)


@pytest.mark.trio
async def test_a_candidate_cut_before_its_answer_is_chosen_only_when_all_were(
    autojump_clock: object,
) -> None:
    """The best score went to a text cut by max_tokens (the embedded model's
    word problem answered "none" that way): a finished candidate wins instead."""
    long = "candidate 0 " + "reasoning " * 40  # cut at 8 tokens
    reward = first_two_words({"candidate 0": 0.9, "candidate 1": 0.2, "candidate 2": 0.1})
    best = BestOfN(Sampler(max_tokens=8), samples=3)
    script = Script().then(long, "candidate 1 \\boxed{7}", "candidate 2 \\boxed{5}")
    async with simulated_runtime(best, script, reward=reward) as rt:
        r = await rt.generate("q")
    assert r.output.output_str == "candidate 1 \\boxed{7}"
    assert r.output.details["best_score"] == 0.2 and r.output.details["cut_by_length"] == 1
    # all cut: the best of them, said to be cut
    script = Script(default=long)
    async with simulated_runtime(BestOfN(Sampler(max_tokens=8), samples=2), script,
                                 reward=reward) as rt:  # fmt: skip
        r = await rt.generate("q")
    assert r.output.finish_reason == "length" and r.output.details["cut_by_length"] == 2
