"""Best-of-N: sample several answers, score each as it finishes, keep the best.

The reward here is a small heuristic worker (a boxed numeric answer, then
brevity); with a trained reward model use ``RewardWorker("/path/to/orm")``.

    python examples/best_of_n.py "What is 12 + 7?"             # embedded model
    python examples/best_of_n.py "What is 12 + 7?" --simulated # no model
"""

from __future__ import annotations

import argparse
from typing import ClassVar

import trio

from engine_bridge import HFEngine, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RewardTask, Task, Worker
from scaffold_actors._worker import Handler
from scaffold_actors.methods import BestOfN, Sampler, extract_boxed


class HeuristicReward(Worker):
    """1 for a boxed numeric answer, minus a little per character."""

    async def score(self, task: RewardTask) -> None:
        scores = []
        for c in task.candidates:
            boxed = extract_boxed(c)
            numeric = boxed is not None and boxed.replace(".", "", 1).lstrip("-").isdigit()
            scores.append((1.0 if numeric else 0.0) - len(c) / 10_000)
        task.scores = scores

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


async def main(question: str, simulated: bool) -> None:
    engine = SimulatedEngine(seed=3) if simulated else HFEngine()
    method = BestOfN(
        Sampler(max_tokens=64, temperature=0.8, instruction="Put the final answer in \\boxed{}."),
        samples=4,
    )
    workers = {"generation": EngineWorker(engine), "reward": HeuristicReward()}
    async with AsyncScaffoldingLlm(method, workers) as llm:
        result = await llm.generate(question)
    print(result.output.output_str)
    print("scores:", [round(s, 4) for s in result.output.details["scores"]])


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 12 + 7?")
    ap.add_argument("--simulated", action="store_true")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated)
