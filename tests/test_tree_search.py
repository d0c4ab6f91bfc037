"""Tree search with a scripted process reward model on the simulated engine."""

from __future__ import annotations

from typing import Any, ClassVar

import trio

from engine_bridge import CostModel, SimulatedCall, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    RewardTask,
    Task,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import (
    MCTS,
    BeamSearch,
    BestFirstSearch,
    BestOfN,
    DiverseVerifierTreeSearch,
    MajorityVote,
    Sampler,
    StepSearch,
)

SEP = "\n\n"


def step_responder(call: SimulatedCall) -> str:
    """Two reasoning steps, each good or bad at random, then the answer: right
    only after two good steps."""
    cont = call.request.continuation or ""
    depth = cont.count(SEP)
    if depth < 2:
        kind = "good" if call.rng.random() < 0.5 else "bad"
        return f"{kind} step {depth}{SEP}more"
    return "\\boxed{5}" if "bad" not in cont else "\\boxed{4}"


class ScriptedPRM(Worker):
    """Scores a solution by the fraction of good steps (a right answer counts as
    good); records every batch it scored."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, float]]] = []

    async def score(self, task: RewardTask) -> None:
        scores = []
        for c in task.candidates:
            steps = c.split(SEP) if task.step_separator else [c]
            good = sum(1 for s in steps if s.startswith("good") or "boxed{5}" in s)
            scores.append(good / len(steps))
        self.calls.append(list(zip(task.candidates, scores, strict=True)))
        task.scores = scores

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


SEARCH = StepSearch(Sampler(max_tokens=16, temperature=1.0), max_steps=6)


def setup() -> tuple[SimulatedEngine, ScriptedPRM, dict[str, Any]]:
    engine = SimulatedEngine(step_responder, cost=CostModel(0.0, 0.01, 0.0))
    prm = ScriptedPRM()
    return engine, prm, {"generation": EngineWorker(engine), "reward": prm}


def terminal(text: str) -> bool:
    return "boxed" in text


async def run(
    method: Any, prompt: str = "What is 2 + 3?"
) -> tuple[Any, SimulatedEngine, ScriptedPRM]:
    engine, prm, workers = setup()
    async with AsyncScaffoldingLlm(method, workers) as llm:
        r = await llm.generate(prompt)
        assert llm.stats()["engine_requests"] == 0
    return r, engine, prm


def best_final_score(prm: ScriptedPRM) -> float:
    return max(s for batch in prm.calls for c, s in batch if terminal(c))


async def test_beam_search_keeps_the_best_beams(autojump_clock: object) -> None:
    r, _, prm = await run(BeamSearch(SEARCH, beam_width=2, expansions=4))
    # depth by depth: what was expanded next is among the 2 best open candidates
    for batch, nxt in zip(prm.calls, prm.calls[1:], strict=False):
        open_ = sorted((s for c, s in batch if not terminal(c)), reverse=True)
        cutoff = open_[min(1, len(open_) - 1)]
        parents = {c.rsplit(SEP, 1)[0] for c, _ in nxt}
        scores = dict(batch)
        assert all(scores[p] >= cutoff for p in parents)
        # two beams (their texts may coincide), four children each
        assert len(nxt) == 4 * min(2, len(open_))
        assert all(sum(c.startswith(p + SEP) for c, _ in nxt) % 4 == 0 for p in parents)
    d = r.output.details
    assert d["score"] == best_final_score(prm)
    assert r.output.output_str.endswith("}") and d["answer"] in ("4", "5")


async def test_dvts_runs_independent_subtrees(autojump_clock: object) -> None:
    r, _, prm = await run(DiverseVerifierTreeSearch(SEARCH, subtrees=3, expansions=3))
    first_depth = [b for b in prm.calls if all(SEP not in c for c, _ in b)]
    assert len(first_depth) == 3 and all(len(b) == 3 for b in first_depth)
    assert r.output.details["score"] == best_final_score(prm)


async def test_best_first_expands_the_best_open_node(autojump_clock: object) -> None:
    method = BestFirstSearch(SEARCH, expansions=2, max_expansions=10)
    r, _, prm = await run(method)
    open_nodes: list[tuple[str, float]] = [("", 0.0)]
    for batch in prm.calls:
        parent = batch[0][0].rsplit(SEP, 1)[0] if SEP in batch[0][0] else ""
        score = next(s for c, s in open_nodes if c == parent)
        assert score == max(s for _, s in open_nodes)  # the best open node was expanded
        open_nodes.remove((parent, score))
        open_nodes += batch
    assert r.output.details["expanded"] <= 10
    assert terminal(r.output.output_str)


async def test_mcts_returns_the_best_final_solution(autojump_clock: object) -> None:
    r, _, prm = await run(MCTS(SEARCH, iterations=12, expansions=2, exploration=0.5))
    d = r.output.details
    assert d["finished"] >= 1 and d["score"] == best_final_score(prm)
    assert d["iterations"] <= 12


async def test_compositions(autojump_clock: object) -> None:
    # best-of-N over tree search, majority vote over DVTS
    r, _, _ = await run(BestOfN(BeamSearch(SEARCH, beam_width=1, expansions=2), samples=2))
    assert len(r.output.details["scores"]) == 2
    r, _, _ = await run(
        MajorityVote(
            DiverseVerifierTreeSearch(SEARCH, subtrees=2, expansions=2), samples=3, early_stop=False
        )
    )
    assert sum(r.output.details["votes"].values()) == 3


async def test_cancelling_a_search_leaves_no_engine_request(autojump_clock: object) -> None:
    _, _, workers = setup()
    slow = StepSearch(Sampler(max_tokens=16, temperature=1.0), max_steps=50)
    async with AsyncScaffoldingLlm(BeamSearch(slow, beam_width=4, expansions=4), workers) as llm:
        result = await llm.generate_async("q")
        await trio.sleep(0.02)
        assert llm.stats()["engine_requests"] > 0
        await result.acancel()
        assert llm.stats()["engine_requests"] == 0


async def test_search_under_a_token_budget_returns_the_best_so_far(autojump_clock: object) -> None:
    class Budgeted:
        async def run(self, ctx: Any, task: GenerationTask) -> GenerationTask:
            async with ctx.token_budget(12):
                out: GenerationTask = await BeamSearch(SEARCH, beam_width=2, expansions=4).run(
                    ctx, task
                )
            return out

    r, _, _ = await run(Budgeted())
    assert r.output.details["budget_exhausted"] == 1
    assert r.usage.completion_tokens <= 12 + 8
