"""StreamUntil: a stream consumed step by step and cut by a budget or a condition."""

from __future__ import annotations

from engine_bridge import CostModel, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler, StreamUntil

TEXT = " ".join(f"w{i}" for i in range(100)) + " \\boxed{3}"


def engine() -> SimulatedEngine:
    return SimulatedEngine(TEXT, cost=CostModel(0.0, 0.01, 0.0))


async def test_cut_at_the_token_budget(autojump_clock: object) -> None:
    eng = engine()
    method = StreamUntil(Sampler(max_tokens=500), max_tokens=20, streaming_step=4)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(eng)}) as llm:
        result = await llm.generate_async("q")
        partials = [o.output_str async for o in result]
        r = await result
        assert llm.stats()["engine_requests"] == 0
    d = r.output.details
    assert r.output.finish_reason == "budget" and d["cut"] and 20 <= d["tokens"] < 24
    assert eng.aborted == 1
    assert partials[-1] == r.output.output_str and r.output.output_str.startswith("w0 w1")


async def test_cut_by_a_condition(autojump_clock: object) -> None:
    method = StreamUntil(
        Sampler(max_tokens=500), stop_when=lambda text: "w10 " in text, streaming_step=2
    )
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine())}) as llm:
        r = await llm.generate("q")
    assert r.output.finish_reason == "condition" and "w10" in r.output.output_str
    assert "w30" not in r.output.output_str


async def test_runs_to_the_end_when_nothing_cuts_it(autojump_clock: object) -> None:
    vote = MajorityVote(StreamUntil(Sampler(max_tokens=500)), samples=2, early_stop=False)
    async with AsyncScaffoldingLlm(vote, {"generation": EngineWorker(engine())}) as llm:
        r = await llm.generate("q")
    assert r.output.details["votes"] == {"3": 2}
