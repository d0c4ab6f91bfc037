"""Dynasor-CoT on the simulated engine: probes, certainty, cancellation, composition."""

from __future__ import annotations

import pytest
import trio

from engine_bridge import CostModel, SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import DynasorCoT, MajorityVote, Sampler, extract_answer

REASONING = "Let me think. " + "step " * 120 + "So the answer is \\boxed{42}."


def responder(probe_answer: object) -> object:
    def reply(call: SimulatedCall) -> str:
        cont = call.request.continuation or ""
        if "**Final Answer**" in cont:
            return probe_answer(cont) if callable(probe_answer) else str(probe_answer)
        return REASONING

    return reply


def engine(probe_answer: object) -> SimulatedEngine:
    return SimulatedEngine(responder(probe_answer), cost=CostModel(0.0, 0.01, 0.0))


def method(**kw: object) -> DynasorCoT:
    return DynasorCoT(Sampler(max_tokens=512), probe_interval=16, probe_tokens=8, **kw)  # type: ignore[arg-type]


async def test_consistent_probes_stop_the_reasoning_early(autojump_clock: object) -> None:
    eng = engine("42}")
    async with AsyncScaffoldingLlm(
        method(certainty_window=2), {"generation": EngineWorker(eng)}
    ) as llm:
        r = await llm.generate("What is 6 x 7?")
        assert llm.stats()["engine_requests"] == 0
    d = r.output.details
    assert d["early_exit"] is True and d["answer"] == "42"
    assert d["probes"][:2] == ["42", "42"]
    assert 32 <= d["reasoning_tokens"] < 64  # stopped after the second probe, not at 240
    assert r.output.finish_reason == "certain"
    assert extract_answer(r.output.output_str) == "42"
    assert eng.aborted >= 1  # the reasoning stream was cancelled in the engine


async def test_changing_probes_let_the_reasoning_finish(autojump_clock: object) -> None:
    # the probed answer changes with the reasoning's length: never two alike in a row
    eng = engine(lambda cont: f"{len(cont.split())}}}")
    async with AsyncScaffoldingLlm(
        method(certainty_window=2), {"generation": EngineWorker(eng)}
    ) as llm:
        r = await llm.generate("q")
    d = r.output.details
    assert d["early_exit"] is False and d["answer"] == "42"
    assert len(d["probes"]) >= 5 and len(set(d["probes"])) == len(d["probes"])
    assert r.output.output_str == REASONING


@pytest.mark.parametrize("probe", ["wait, maybe 42}", "answer}"])
async def test_hedging_and_placeholder_probes_do_not_count(
    autojump_clock: object, probe: str
) -> None:
    """A hedge is not certainty, nor a placeholder: a small model copies
    "\\boxed{answer}" from the instruction into every probe (agreeing probes of
    the word "answer" once stopped the reasoning)."""
    eng = engine(probe)
    async with AsyncScaffoldingLlm(
        method(certainty_window=2), {"generation": EngineWorker(eng)}
    ) as llm:
        r = await llm.generate("q")
    d = r.output.details
    assert d["early_exit"] is False and d["answer"] == "42"
    assert set(d["probes"]) == {None}


async def test_majority_vote_over_dynasor(autojump_clock: object) -> None:
    eng = engine("42}")
    vote = MajorityVote(method(certainty_window=3), samples=3, early_stop=False)
    async with AsyncScaffoldingLlm(vote, {"generation": EngineWorker(eng)}) as llm:
        r = await llm.generate("q")
        assert llm.stats()["engine_requests"] == 0
    assert r.output.details["votes"] == {"42": 3}


async def test_cancelling_the_request_leaves_no_engine_request(autojump_clock: object) -> None:
    eng = engine(lambda cont: f"{len(cont)}}}")  # never certain: runs until cancelled
    async with AsyncScaffoldingLlm(method(), {"generation": EngineWorker(eng)}) as llm:
        result = await llm.generate_async("q")
        await trio.sleep(0.5)  # reasoning and probes in flight
        assert llm.stats()["engine_requests"] >= 1
        await result.acancel()
        assert llm.stats()["engine_requests"] == 0
        assert result.cancelled
