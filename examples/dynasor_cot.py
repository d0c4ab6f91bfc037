"""Dynasor-CoT: probe the reasoning for its answer every few tokens and stop
once consecutive probes agree.

    python examples/dynasor_cot.py "What is 9 * 8?"             # embedded model
    python examples/dynasor_cot.py "What is 9 * 8?" --simulated # no model
"""

from __future__ import annotations

import argparse

import trio

from engine_bridge import HFEngine, SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import DynasorCoT, Sampler


def simulated_reply(call: SimulatedCall) -> str:
    if "**Final Answer**" in (call.request.continuation or ""):
        return "72} \\]"  # every probe already knows
    return "Nine eights: " + "8 + " * 40 + "... so \\boxed{72}."


async def main(question: str, simulated: bool) -> None:
    engine = SimulatedEngine(simulated_reply) if simulated else HFEngine()
    method = DynasorCoT(
        Sampler(
            max_tokens=160,
            temperature=0.6,
            instruction="Think step by step, put the final number in \\boxed{}.",
        ),
        probe_interval=16,
        certainty_window=2,
        probe_tokens=12,
    )
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        result = await llm.generate(question)
    d = result.output.details
    print(result.output.output_str)
    print(
        f"answer={d['answer']} early_exit={d['early_exit']} probes={d['probes']} "
        f"reasoning_tokens={d['reasoning_tokens']} total_tokens={result.usage.completion_tokens}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 9 * 8?")
    ap.add_argument("--simulated", action="store_true")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated)
