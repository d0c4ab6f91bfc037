"""A native controller: sample until two answers agree, then cancel the rest.

python examples/native_controller.py "What is 3 * 4?"            # embedded model
python examples/native_controller.py "What is 3 * 4?" --simulated  # no model
"""

from __future__ import annotations

import argparse

import trio

from engine_bridge import HFEngine, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, GenerationTask, RequestContext
from scaffold_actors.methods import extract_answer


async def first_agreeing_pair(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
    """Sample up to 6 answers concurrently; return as soon as two agree."""
    seen: dict[str | None, GenerationTask] = {}
    out = task
    async with ctx.parallel() as par:
        for _ in range(6):
            par.start(
                ctx.run, GenerationTask(input_str=task.input_str, max_tokens=64, temperature=0.8)
            )
        async for done in par.as_completed():
            out = done.result()
            answer = extract_answer(out.output_str)
            if answer is not None and answer in seen:
                par.cancel_all()  # their engine requests are aborted before the block exits
                out.customized_result_fields["answer"] = answer
                break
            seen[answer] = out
    out.customized_result_fields["samples_seen"] = len(seen) + 1
    return out


async def main(question: str, simulated: bool) -> None:
    engine = SimulatedEngine(seed=1) if simulated else HFEngine()
    async with AsyncScaffoldingLlm(
        first_agreeing_pair, {"generation": EngineWorker(engine)}
    ) as llm:
        result = await llm.generate(question)
    print(result.output.output_str)
    print(result.output.details, f"tokens={result.usage.completion_tokens}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 3 * 4? Answer with \\boxed{}.")
    ap.add_argument("--simulated", action="store_true", help="use the simulated engine")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated)
