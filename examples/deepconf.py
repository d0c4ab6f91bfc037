"""DeepConf: keep the most confident reasoning traces (by token log-probabilities)
and vote among them; online mode cuts weak traces while they generate.

    python examples/deepconf.py "What is 7 + 8?"                    # embedded, offline
    python examples/deepconf.py "What is 7 + 8?" --mode online      # embedded, online
    python examples/deepconf.py "What is 7 + 8?" --simulated        # no model
"""

from __future__ import annotations

import argparse

import trio

from engine_bridge import HFEngine, SimulatedCall, SimulatedEngine, SimulatedOutput
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import DeepConf, Sampler


def simulated_reply(call: SimulatedCall) -> SimulatedOutput:
    sure = call.index % 3 != 2  # one trace in three is unsure and wrong
    text = "Adding: " + "7 plus 8 " * 10 + ("gives \\boxed{15}" if sure else "gives \\boxed{16}")
    return SimulatedOutput(text, [-0.1 if sure else -2.5] * 64)


async def main(question: str, simulated: bool, mode: str) -> None:
    engine = SimulatedEngine(simulated_reply) if simulated else HFEngine()
    method = DeepConf(
        Sampler(max_tokens=48, temperature=0.8, instruction="Put the final answer in \\boxed{}."),
        samples=8,
        mode=mode,  # type: ignore[arg-type]
        keep_top=0.5,
        window=16,
        warmup=4,
        check_every=8,
    )
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        result = await llm.generate(question)
    d = result.output.details
    print(result.output.output_str)
    print(
        f"answer={d['answer']} kept={d['kept']} terminated={d['terminated']} "
        f"threshold={d['threshold']:.3f} tokens={result.usage.completion_tokens}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 7 + 8?")
    ap.add_argument("--simulated", action="store_true")
    ap.add_argument("--mode", choices=("offline", "online"), default="offline")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated, args.mode)
