"""The self-verification reward: the generation model judges candidates."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
from helpers import Stripped

from engine_bridge import (
    CostModel,
    SimulatedCall,
    SimulatedEngine,
    SimulatedOutput,
)
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RequestCancelledError,
    RequestContext,
    RewardTask,
    SelfVerifier,
)
from scaffold_actors._self_verifier import says_yes
from scaffold_actors.methods import BeamSearch, BestOfN, Sampler, StepSearch
from scaffold_actors.testing import Script, assert_nothing_left, reply, stall


def verdicts(yes_for: str, p_yes: float = 0.8) -> Script:
    """A script whose candidates are "candidate N"; its verdict is Yes (with
    probability ``p_yes``) for a prompt holding ``yes_for``, No otherwise."""
    script = Script()
    script.on(f"{yes_for}\n\nIs the", reply("Yes", [math.log(p_yes)]))
    script.on("Is the proposed", reply("No", [math.log(0.7)]))
    script.on("Are the steps", reply("No", [math.log(0.7)]))
    return script


def runtime(controller: Any, engine: Any, **verifier: Any) -> AsyncScaffoldingLlm:
    return AsyncScaffoldingLlm(
        controller,
        {"generation": EngineWorker(engine), "reward": SelfVerifier(engine, **verifier)},
    )


async def test_best_of_n_picks_the_candidate_the_model_says_yes_to() -> None:
    script = verdicts("candidate 2").then(*(f"candidate {i}" for i in range(4)))
    engine = SimulatedEngine(script, cost=CostModel.instant())
    async with runtime(BestOfN(Sampler(max_tokens=8), samples=4), engine) as llm:
        r = await (await llm.generate_async("Which one?"))
        assert_nothing_left(llm, engine)
    assert r.output.output_str == "candidate 2"
    # the score is the engine's own probability of the Yes token, not a count
    assert r.output.details["best_score"] == pytest.approx(0.8)
    assert sorted(r.output.details["scores"]) == pytest.approx([0, 0, 0, 0.8])
    verdict_calls = [c for c in script.calls if "Is the proposed solution correct" in c.prompt]
    assert len(verdict_calls) == 4 * 4  # four verdicts per candidate
    assert all(c.request.params.max_tokens == 1 for c in verdict_calls)


async def test_a_yes_token_drawn_several_times_counts_once() -> None:
    engine = SimulatedEngine(verdicts("candidate 0", p_yes=0.6), cost=CostModel.instant())
    task = RewardTask(input_str="Which one?", candidates=["candidate 0"])
    async with engine:
        await SelfVerifier(engine, samples=5).run_task(task)
    assert task.scores == pytest.approx([0.6])  # 5 draws of one token: its probability


async def test_verdict_tokens_count_in_the_usage() -> None:
    script = verdicts("candidate 1").then("candidate 0", "candidate 1")
    engine = SimulatedEngine(script, cost=CostModel.instant())
    async with runtime(BestOfN(Sampler(max_tokens=8), samples=2), engine, samples=3) as llm:
        r = await (await llm.generate_async("Which one?"))
    # 2 candidates of 2 tokens, then 3 one-token verdicts for each
    assert r.usage.completion_tokens == 2 * 2 + 2 * 3
    assert engine.completed == 2 + 2 * 3  # the engine's own count of finished requests
    verdict_prompt_tokens = sum(
        len(engine.tokenizer.encode(c.prompt)) for c in script.calls if "Is the" in c.prompt
    )
    assert r.usage.prompt_tokens >= verdict_prompt_tokens > 0


async def test_without_logprobs_the_score_is_the_fraction_of_yes() -> None:
    script = Script().then("Yes", "No", "Yes", "No sir")
    inner = SimulatedEngine(script, cost=CostModel.instant())
    engine: Any = Stripped(inner, logprobs=None)  # a server that ignores logprobs
    task = RewardTask(input_str="Which one?", candidates=["candidate 0"])
    async with inner:
        verifier = SelfVerifier(engine, samples=4)
        await verifier.run_task(task)
    assert task.scores == [0.5]


async def test_a_tree_search_runs_on_process_verdicts(autojump_clock: object) -> None:
    script = verdicts("good step")
    script.on("Are the steps so far correct", reply("No", [math.log(0.9)]))
    script.then("good step", "bad step")
    script.default = "\\boxed{4}"
    engine = SimulatedEngine(script, cost=CostModel.instant())
    search = BeamSearch(StepSearch(Sampler(max_tokens=8), max_steps=1), beam_width=1, expansions=2)
    async with runtime(search, engine) as llm:
        r = await (await llm.generate_async("Steps?"))
        assert_nothing_left(llm, engine)
    process = [c for c in script.calls if "A solution in progress" in c.prompt]
    assert process, "a step search asks the process prompt"
    assert r.output is not None


async def test_cancelling_the_request_aborts_the_verdicts_in_the_engine(
    autojump_clock: object,
) -> None:
    asked = trio.Event()
    verdicts_seen = []

    def stalled_verdict(call: SimulatedCall) -> SimulatedOutput:
        verdicts_seen.append(call)
        if len(verdicts_seen) == 3:
            asked.set()
        return stall(1000, "Yes")

    script = Script().on("Is the proposed", stalled_verdict).then("candidate 0")
    engine = SimulatedEngine(script, cost=CostModel.instant())
    async with runtime(BestOfN(Sampler(max_tokens=8), samples=1), engine, samples=3) as llm:
        handle = await llm.generate_async("Which one?")
        await asked.wait()  # the three verdicts are in the engine
        assert engine.num_active == 3
        handle.cancel()
        with pytest.raises(RequestCancelledError):
            await handle
        assert engine.num_active == 0 and engine.aborted == 3  # the engine's own counts
        assert_nothing_left(llm, engine)


async def test_a_verdict_longer_than_the_context_is_refused_at_submission() -> None:
    script = Script().on("Is the proposed", "Yes").then("candidate 0")
    engine = SimulatedEngine(script, cost=CostModel.instant())

    async def controller(ctx: RequestContext, task: GenerationTask) -> Any:
        return await ctx.run(RewardTask(input_str=task.input_str, candidates=["word " * 9000]))

    async with runtime(controller, engine) as llm:
        with pytest.raises(InvalidTaskError, match="context"):
            await (await llm.generate_async("Which one?"))
        assert engine.completed == 0 and engine.peak_batch == 0  # the engine never saw it


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "samples must be an int >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"outcome_prompt": "{question} only"}, "outcome_prompt must contain"),
        ({"process_prompt": "no fields"}, "process_prompt must contain"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SelfVerifier(SimulatedEngine(), **kwargs)


@pytest.mark.parametrize(
    ("text", "yes"),
    [("Yes", True), (" yes.", True), ("**YES**", True), ("No", False), ("Y", False), ("", False)],
)
def test_says_yes(text: str, yes: bool) -> None:
    assert says_yes(text) is yes


@pytest.mark.slow_model
async def test_every_method_runs_on_the_embedded_model() -> None:
    """The issue's "every method runs out of the box": each method of `scaffold
    methods` on the embedded SmolLM2, scoring methods judged by the model itself
    (tiny settings: a few tokens each)."""
    pytest.importorskip("transformers")
    from engine_bridge import HFEngine
    from scaffold_actors.cli._registry import METHODS, build_method

    small = {
        "beam-search": {"step_tokens": 4, "max_steps": 1, "expansions": 2},
        "dvts": {"step_tokens": 4, "max_steps": 1, "expansions": 2},
        "best-first": {"step_tokens": 4, "max_steps": 1, "max_expansions": 2},
        "mcts": {"step_tokens": 4, "max_steps": 1, "iterations": 2},
        "dynasor": {"probe_interval": 4},
        "deepconf": {"window": 4},
    }
    async with HFEngine(seed=0) as engine:
        for name, spec in METHODS.items():
            controller = build_method(
                name, samples=2, max_tokens=8, temperature=0.7, params=small.get(name)
            )
            workers = {
                "generation": EngineWorker(engine, manage_engine=False),
                "reward": SelfVerifier(engine, samples=2),
            }
            async with AsyncScaffoldingLlm(controller, workers) as llm:
                r = await (await llm.generate_async("What is 2 + 2?"))
                assert_nothing_left(llm, engine)
            assert r.output is not None and r.usage.completion_tokens > 0, name
            if spec.uses_reward:
                assert r.usage.tasks > 2, name  # verdicts ran
