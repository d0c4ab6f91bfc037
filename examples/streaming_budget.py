"""Stream a generation step by step and cut it at a token budget or when a
condition holds (the engine request is aborted at the cut).

    python examples/streaming_budget.py "Count from 1 to 50." --budget 24   # embedded model
    python examples/streaming_budget.py --simulated                          # no model
"""

from __future__ import annotations

import argparse

import trio

from engine_bridge import HFEngine, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import Sampler, StreamUntil


async def main(prompt: str, simulated: bool, budget: int, stop_at: str | None) -> None:
    engine = SimulatedEngine(" ".join(str(i) for i in range(1, 51))) if simulated else HFEngine()
    method = StreamUntil(
        Sampler(max_tokens=256, temperature=0.0),
        max_tokens=budget,
        stop_when=(lambda text: stop_at in text) if stop_at else None,
        streaming_step=4,
    )
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        result = await llm.generate_async(prompt)
        async for partial in result:  # every 4 tokens
            print(f"... {len(partial.output_tokens or ())} tokens", flush=True)
        final = await result
    print(final.output.output_str)
    print(f"finish_reason={final.output.finish_reason} tokens={final.output.details['tokens']}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("prompt", nargs="?", default="Count from 1 to 50, separated by spaces.")
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--budget", type=int, default=24)
    ap.add_argument("--stop-at", default=None, help="cut once the text contains this")
    args = ap.parse_args()
    trio.run(main, args.prompt, args.simulated, args.budget, args.stop_at)
