"""DeepConf on the simulated engine with scripted per-token log-probabilities."""

from __future__ import annotations

import math

import pytest

from engine_bridge import CostModel, SimulatedCall, SimulatedEngine, SimulatedOutput
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import (
    DeepConf,
    MajorityVote,
    Sampler,
    group_confidences,
    trace_confidence,
)

SURE, UNSURE = -0.05, -2.0


def trace(answer: str, lp: float) -> SimulatedOutput:
    text = "word " * 40 + f"so \\boxed{{{answer}}}"
    return SimulatedOutput(text, [lp] * 64)


def scripted(plan: list[tuple[str, float]]) -> SimulatedEngine:
    def reply(call: SimulatedCall) -> SimulatedOutput:
        return trace(*plan[call.index % len(plan)])

    return SimulatedEngine(reply, cost=CostModel(0.0, 0.01, 0.0))


def test_confidence_measures() -> None:
    xs = [-1.0, -1.0, -3.0, -1.0]
    assert group_confidences(xs, 2) == [-1.0, -2.0, -2.0]
    assert group_confidences(xs, 10) == [-1.5]
    assert trace_confidence(xs, "mean", 2, 2) == -1.5
    assert trace_confidence(xs, "lowest_group", 2, 2) == -2.0
    assert trace_confidence(xs, "tail", 2, 2) == -2.0
    assert trace_confidence(xs, "bottom10", 2, 2) == -2.0
    assert trace_confidence([], "mean", 2, 2) == -math.inf


# three confident traces say 7, five unsure ones say 3
OFFLINE_PLAN = [
    ("3", UNSURE),
    ("7", SURE),
    ("3", UNSURE),
    ("7", SURE),
    ("3", UNSURE),
    ("7", SURE),
    ("3", UNSURE),
    ("3", UNSURE),
]


async def test_offline_filtering_overrules_the_plain_majority(autojump_clock: object) -> None:
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(max_tokens=64), samples=8, early_stop=False),
        {"generation": EngineWorker(scripted(OFFLINE_PLAN))},
    ) as llm:
        plain = await llm.generate("q")
    assert plain.output.details["answer"] == "3"
    method = DeepConf(Sampler(max_tokens=64), samples=8, keep_top=0.375, window=8)
    async with AsyncScaffoldingLlm(
        method, {"generation": EngineWorker(scripted(OFFLINE_PLAN))}
    ) as llm:
        r = await llm.generate("q")
    d = r.output.details
    assert d["answer"] == "7" and d["kept"] == 3 and set(d["votes"]) == {"7"}
    assert d["threshold"] == pytest.approx(SURE)


async def test_online_terminates_unsure_traces_in_the_engine(autojump_clock: object) -> None:
    # warm-up (first four): 7, 8, 3?, 7 -> threshold between unsure and sure
    plan = [("7", SURE), ("8", SURE), ("3", UNSURE), ("7", SURE)]
    plan += [("3", UNSURE)] * 3 + [("7", SURE)] * 3
    engine = scripted(plan)
    method = DeepConf(
        Sampler(max_tokens=64),
        samples=10,
        mode="online",
        warmup=4,
        keep_top=0.75,
        window=8,
        check_every=4,
    )
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        assert llm.stats()["engine_requests"] == 0
    d = r.output.details
    assert d["answer"] == "7"
    assert d["terminated"] == 3 and engine.aborted == 3  # cut after ~8 of 44 tokens
    assert d["samples_finished"] == 7 and d["kept"] == 6
    assert r.usage.completion_tokens < 10 * 44


async def test_online_stops_sampling_at_consensus(autojump_clock: object) -> None:
    engine = scripted([("7", SURE)])
    method = DeepConf(Sampler(max_tokens=64), samples=32, mode="online", warmup=4, window=8)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        assert llm.stats()["engine_requests"] == 0
    assert r.output.details["answer"] == "7"
    assert r.output.details["samples_finished"] == 4  # unanimous warm-up: nothing more ran


def test_bad_parameters_are_rejected() -> None:
    with pytest.raises(ValueError):
        DeepConf(mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DeepConf(keep_top=0.0)
    with pytest.raises(ValueError):
        DeepConf(measure="median")  # type: ignore[arg-type]


PEAKED = (("a", -0.01), ("b", -6.0), ("c", -7.0))  # token confidence 4.34
FLAT = (("a", -1.1), ("b", -1.1), ("c", -1.1))  # token confidence 1.1


def topk_trace(answer: str, sampled: float, alts: tuple[tuple[str, float], ...]) -> SimulatedOutput:
    text = "word " * 40 + f"so \\boxed{{{answer}}}"
    return SimulatedOutput(text, [sampled] * 64, top_logprobs=[alts] * 64)


# "1" once, from a peaked distribution but an unlikely sampled token; "2" twice,
# from flat distributions with likely sampled tokens
TOPK_PLAN = [("1", UNSURE, PEAKED), ("2", SURE, FLAT), ("2", SURE, FLAT)]


def topk_engine() -> SimulatedEngine:
    return SimulatedEngine(
        lambda call: topk_trace(*TOPK_PLAN[call.index % 3]), cost=CostModel(0.0, 0.01, 0.0)
    )


@pytest.mark.parametrize(("top_k", "answer"), [(3, "1"), (0, "2")])
async def test_top_k_confidence_is_the_papers(
    autojump_clock: object, top_k: int, answer: str
) -> None:
    """With top_k the token confidence is minus the mean top-k logprob (the
    peaked trace wins); without, the sampled token's logprob (the other two)."""
    method = DeepConf(Sampler(max_tokens=64), samples=3, keep_top=0.33, window=8, top_k=top_k)
    engine = topk_engine()
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert r.output.details["answer"] == answer and r.output.details["kept"] == 1
    expected = -sum(lp for _, lp in PEAKED) / 3 if top_k else SURE
    assert r.output.details["threshold"] == pytest.approx(expected)


async def test_top_k_without_alternatives_from_the_engine_fails_clearly(
    autojump_clock: object,
) -> None:
    from helpers import Stripped

    inner = topk_engine()
    no_alternatives = Stripped(inner, top_logprobs=None)  # a server that ignores top_logprobs
    method = DeepConf(Sampler(max_tokens=64), samples=3, top_k=3)
    async with inner:
        worker = EngineWorker(no_alternatives, manage_engine=False)  # type: ignore[arg-type]
        async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
            with pytest.raises(
                ValueError,
                match=r"needs the engine's top-k logprobs; it reported them for 0 of 42 tokens",
            ):
                await llm.generate("q")
