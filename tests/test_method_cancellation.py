"""Cancelling any method's request mid-way leaves no engine request alive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest
import trio

from engine_bridge import CostModel, SimulatedCall, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    PythonTool,
    RewardTask,
    Task,
    ToolWorker,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import (
    MCTS,
    BeamSearch,
    BestFirstSearch,
    BestOfN,
    DeepConf,
    DiverseVerifierTreeSearch,
    DynasorCoT,
    MajorityVote,
    ReActAgent,
    Sampler,
    StepSearch,
    StreamUntil,
)


class ConstantReward(Worker):
    async def score(self, task: RewardTask) -> None:
        await trio.sleep(0.01)
        task.scores = [0.5] * len(task.candidates)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


def long_reply(call: SimulatedCall) -> str:
    """Long enough that nothing finishes before the cancel; probes always hedge."""
    if "**Final Answer**" in (call.request.continuation or ""):
        return "hmm " * 50
    if "Action Input" in (call.request.continuation or "") or call.request.messages:
        return "Thought: " + "hmm " * 300
    return "word " * 300 + "\\boxed{1}"


SAMPLER = Sampler(max_tokens=400)
STEPS = StepSearch(Sampler(max_tokens=400), max_steps=4)
METHODS: dict[str, Callable[[], Any]] = {
    "sampler": lambda: SAMPLER,
    "majority_vote": lambda: MajorityVote(SAMPLER, samples=8),
    "best_of_n": lambda: BestOfN(SAMPLER, samples=4),
    "dynasor": lambda: DynasorCoT(SAMPLER, probe_interval=8),
    "deepconf_offline": lambda: DeepConf(SAMPLER, samples=6),
    "deepconf_online": lambda: DeepConf(SAMPLER, samples=6, mode="online", warmup=2),
    "beam": lambda: BeamSearch(STEPS, beam_width=2, expansions=2),
    "dvts": lambda: DiverseVerifierTreeSearch(STEPS, subtrees=2, expansions=2),
    "best_first": lambda: BestFirstSearch(STEPS),
    "mcts": lambda: MCTS(STEPS),
    "stream_until": lambda: StreamUntil(SAMPLER, max_tokens=350),
    "react": lambda: ReActAgent({"python": "run code"}, SAMPLER),
    "vote_over_dynasor": lambda: MajorityVote(DynasorCoT(SAMPLER, probe_interval=8), samples=3),
    "best_of_n_over_beam": lambda: BestOfN(
        BeamSearch(STEPS, beam_width=2, expansions=2), samples=2
    ),
}


@pytest.mark.parametrize("prefix_cache_blocks", [0, 4096], ids=["no-prefix-cache", "groups"])
@pytest.mark.parametrize("name", list(METHODS))
async def test_cancel_leaves_no_engine_request(
    name: str, prefix_cache_blocks: int, autojump_clock: object
) -> None:
    """Also with a prefix cache, where a vote's samples and a node's children
    are prefix groups whose members may be held back by the engine."""
    engine = SimulatedEngine(
        long_reply,
        cost=CostModel(0.0, 0.01, 0.0),
        prefix_cache_blocks=prefix_cache_blocks,
        block_size=2,  # ("What is 1?" holds a full block: its groups are held back)
    )
    workers = {
        "generation": EngineWorker(engine),
        "reward": ConstantReward(),
        "tool": ToolWorker({"python": PythonTool()}),
    }
    async with AsyncScaffoldingLlm(METHODS[name](), workers) as llm:
        result = await llm.generate_async("What is 1?")
        await trio.sleep(0.5)  # 50 engine steps: every method has requests in flight
        assert engine.num_active > 0
        await result.acancel()
        assert engine.num_active == 0 and llm.stats()["engine_requests"] == 0
        assert llm.stats()["tasks_running"] == 0
        assert result.cancelled
    assert engine.aborted >= 1
