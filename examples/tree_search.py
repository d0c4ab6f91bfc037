"""Tree search over reasoning steps with a process reward model: beam search,
diverse verifier tree search, best-first search or MCTS.

The process reward here is a small heuristic worker (steps that compute
something score higher, a boxed answer scores highest); with a trained PRM use
``RewardWorker("/path/to/prm", kind="process")``.

    python examples/tree_search.py "What is 23 + 19?" --search beam    # embedded model
    python examples/tree_search.py --search mcts --simulated            # no model
"""

from __future__ import annotations

import argparse
import re
from typing import ClassVar

import trio

from engine_bridge import HFEngine, SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RewardTask, Task, Worker
from scaffold_actors._worker import Handler
from scaffold_actors.methods import (
    MCTS,
    BeamSearch,
    BestFirstSearch,
    DiverseVerifierTreeSearch,
    Sampler,
    StepSearch,
    extract_boxed,
)


class HeuristicPRM(Worker):
    """Mean step score: 1 for a step with a boxed answer, 0.6 for a step with an
    equation, 0.3 otherwise."""

    async def score(self, task: RewardTask) -> None:
        sep = task.step_separator or "\n\n"
        scores = []
        for c in task.candidates:
            steps = [s for s in c.split(sep) if s.strip()] or [""]
            per = [
                1.0 if extract_boxed(s) else 0.6 if re.search(r"\d\s*[-+*/=]\s*\d", s) else 0.3
                for s in steps
            ]
            scores.append(sum(per) / len(per))
        task.scores = scores

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


def simulated_reply(call: SimulatedCall) -> str:
    depth = (call.request.continuation or "").count("\n\n")
    if depth >= 2:
        return "So the answer is \\boxed{42}."
    step = call.rng.choice(["23 + 19 = 42", "let me think about it"])
    return f"Step {depth + 1}: {step}\n\n"


async def main(question: str, simulated: bool, search_name: str) -> None:
    engine = SimulatedEngine(simulated_reply) if simulated else HFEngine()
    steps = StepSearch(
        Sampler(
            max_tokens=40,
            temperature=0.8,
            instruction="Solve it in short steps separated by blank lines; end with \\boxed{answer}.",
        ),
        max_steps=4,
    )
    method = {
        "beam": BeamSearch(steps, beam_width=2, expansions=2),
        "dvts": DiverseVerifierTreeSearch(steps, subtrees=2, expansions=2),
        "best-first": BestFirstSearch(steps, expansions=2, max_expansions=6),
        "mcts": MCTS(steps, iterations=6, expansions=2),
    }[search_name]
    workers = {"generation": EngineWorker(engine), "reward": HeuristicPRM()}
    async with AsyncScaffoldingLlm(method, workers) as llm:
        result = await llm.generate(question)
    d = result.output.details
    print(result.output.output_str)
    print(
        f"search={search_name} answer={d['answer']} score={d.get('score', 0):.3f} "
        f"steps={d.get('steps')} expanded={d['expanded']} tokens={result.usage.completion_tokens}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 23 + 19?")
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--search", choices=("beam", "dvts", "best-first", "mcts"), default="beam")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated, args.search)
