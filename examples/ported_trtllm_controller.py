"""A TensorRT-LLM Scaffolding controller, run by changing only the import.

This is TensorRT-LLM's token-budget majority vote example: it keeps sampling
rounds until a token budget is spent, counting tokens with a task collection.

    python examples/ported_trtllm_controller.py            # embedded model
    python examples/ported_trtllm_controller.py --simulated
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from engine_bridge import HFEngine, SimulatedEngine
from scaffold_actors import EngineWorker

# was: from tensorrt_llm.scaffolding import (...)
from scaffold_actors.compat import (
    Controller,
    GenerationTokenCounter,
    NativeGenerationController,
    ParallelProcess,
    ScaffoldingLlm,
    get_digit_majority_vote_result,
    with_task_collection,
)


@with_task_collection("token_counter", GenerationTokenCounter)
class TokenBudgetMajorityVoteController(Controller):
    def __init__(self, generation_controller: Controller, token_budget: int, samples_per_turn: int):
        super().__init__()
        self.generation_controller = generation_controller
        self.token_budget = token_budget
        self.samples_per_turn = samples_per_turn

    def clone(self) -> TokenBudgetMajorityVoteController:
        return TokenBudgetMajorityVoteController(
            self.generation_controller.clone(), self.token_budget, self.samples_per_turn
        )

    def process(self, tasks: list[Any], **kwargs: Any) -> Any:
        candidates = []
        while self.task_collections["token_counter"].generation_token_count < self.token_budget:
            n = self.samples_per_turn
            tasks_list = [copy.deepcopy(tasks) for _ in range(n)]
            yield ParallelProcess(
                [self.generation_controller.clone() for _ in range(n)],
                tasks_list,
                [copy.deepcopy(kwargs) for _ in range(n)],
            )
            candidates.extend(t[0].output_str for t in tasks_list)
        index, _answer = get_digit_majority_vote_result(candidates)
        tasks[0].output_str = candidates[index] if candidates else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--budget", type=int, default=96)
    args = ap.parse_args()
    engine = SimulatedEngine(seed=2) if args.simulated else HFEngine()
    generation = NativeGenerationController(sampling_params={"max_tokens": 32, "temperature": 0.8})
    controller = TokenBudgetMajorityVoteController(
        generation, token_budget=args.budget, samples_per_turn=3
    )
    llm = ScaffoldingLlm(
        controller, {NativeGenerationController.WorkerTag.GENERATION: EngineWorker(engine)}
    )
    result = llm.generate("What is 7 + 8? Give the final answer as \\boxed{}.")
    print(result.output.output_str)
    print("tokens:", result.task_collections["token_counter"].generation_token_count)
    llm.shutdown(shutdown_workers=True)


if __name__ == "__main__":
    main()
