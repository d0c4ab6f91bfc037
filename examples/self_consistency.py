"""Self-consistency variants: adaptive stopping, math-aware answer grouping,
confidence-weighted votes, all under a request-wide token budget.

    python examples/self_consistency.py "What is 15 + 27?"             # embedded model
    python examples/self_consistency.py "What is 15 + 27?" --simulated # no model
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import trio

from engine_bridge import HFEngine, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, GenerationTask
from scaffold_actors.methods import AdaptiveConsistency, MajorityVote, Sampler, math_equivalent


def mean_probability(out: GenerationTask) -> float:
    """Vote weight: the sample's mean token probability."""
    lps = out.logprobs or []
    return math.exp(sum(lps) / len(lps)) if lps else 0.0


class WithinBudget:
    """Runs ``method`` with at most ``tokens`` generated tokens for the request."""

    def __init__(self, method: Any, tokens: int) -> None:
        self.method, self.tokens = method, tokens

    async def run(self, ctx: Any, task: GenerationTask) -> GenerationTask:
        async with ctx.token_budget(self.tokens) as budget:
            out: GenerationTask = await self.method.run(ctx, task)
        out.customized_result_fields["tokens_spent"] = budget.spent
        return out


async def main(question: str, simulated: bool, budget: int) -> None:
    engine = (
        SimulatedEngine(["So \\boxed{42}.", "It is \\boxed{42.0}.", "\\boxed{41}"], seed=1)
        if simulated
        else HFEngine()
    )
    vote = MajorityVote(
        Sampler(
            max_tokens=48,
            temperature=0.7,
            num_logprobs=0,
            instruction="Put the final answer in \\boxed{}.",
        ),
        samples=12,
        early_stop=AdaptiveConsistency(threshold=0.9, min_samples=3),
        equivalent=math_equivalent,
        weight=mean_probability,
        concurrency=4,
    )
    async with AsyncScaffoldingLlm(
        WithinBudget(vote, budget), {"generation": EngineWorker(engine)}
    ) as llm:
        result = await llm.generate(question)
    d = result.output.details
    print(result.output.output_str)
    print(
        f"answer={d['answer']} votes={d['votes']} samples={d['samples_finished']}/"
        f"{d['samples_requested']} tokens_spent={d['tokens_spent']}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 15 + 27?")
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--budget", type=int, default=400, help="tokens for the whole request")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated, args.budget)
