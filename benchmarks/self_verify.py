"""How well the generation model judges answers: the self-verification reward.

For every problem of a built-in set, two candidates: the right answer and a
wrong one (the gold value plus an offset), each written as a short solution
ending in ``\\boxed{}``.  :class:`SelfVerifier` scores both on the chosen engine
(the embedded SmolLM2 by default).  Prints one JSON object: the mean score of
right and wrong candidates, the AUROC (the probability that a right candidate
outscores a wrong one, ties counting half: 0.5 is chance), how often the right
candidate of a problem scores strictly higher than its wrong one (what best-of-2
would pick), and the verdict tokens spent.

    python benchmarks/self_verify.py --dataset arithmetic --samples 8
    python benchmarks/self_verify.py --engine simulated --limit 4     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio

from scaffold_actors import RewardTask, SelfVerifier
from scaffold_actors.cli._bench import load_dataset


def auroc(right: list[float], wrong: list[float]) -> float:
    """P(a right candidate scores above a wrong one), ties half (Mann-Whitney U)."""
    pairs = [(r > w) + 0.5 * (r == w) for r in right for w in wrong]
    return sum(pairs) / len(pairs)


def candidate(value: int) -> str:
    return f"Adding up the numbers in the question gives {value}. The answer is \\boxed{{{value}}}."


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_dataset(args.dataset, limit=args.limit)
    if args.engine == "simulated":
        from engine_bridge import SimulatedEngine

        engine: Any = SimulatedEngine(seed=args.seed)
    else:
        from engine_bridge import HFEngine

        engine = HFEngine(seed=args.seed)
    started = time.perf_counter()
    async with engine:
        loaded = time.perf_counter()
        verifier = SelfVerifier(engine, samples=args.samples)
        tasks = []
        for p in problems:
            gold = int(p.answer)
            wrong = gold + (3 if gold % 2 else -2)
            tasks.append(
                RewardTask(input_str=p.question, candidates=[candidate(gold), candidate(wrong)])
            )
        async with anyio.create_task_group() as tg:
            for t in tasks:
                tg.start_soon(verifier.run_task, t)
    done = time.perf_counter()
    right = [t.scores[0] for t in tasks if t.scores]
    wrong = [t.scores[1] for t in tasks if t.scores]
    return {
        "engine": args.engine,
        "dataset": args.dataset,
        "problems": len(problems),
        "samples_per_verdict": args.samples,
        "mean_score_right": round(sum(right) / len(right), 4),
        "mean_score_wrong": round(sum(wrong) / len(wrong), 4),
        "auroc": round(auroc(right, wrong), 4),
        "right_scored_higher": sum(r > w for r, w in zip(right, wrong, strict=True)),
        "ties": sum(r == w for r, w in zip(right, wrong, strict=True)),
        "verdict_tokens": {
            "prompt": sum(t.prompt_tokens_num for t in tasks),
            "completion": sum(t.completion_tokens_num for t in tasks),
        },
        "seconds": {"engine_start": round(loaded - started, 2), "scoring": round(done - loaded, 2)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["hf", "simulated"], default="hf")
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--samples", type=int, default=8, help="verdicts per candidate")
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(anyio.run(main, parser.parse_args()), indent=2))
