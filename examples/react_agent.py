"""A ReAct agent with a sandboxed Python tool and a registered async function.

python examples/react_agent.py "What is 2**20 - 1?"             # embedded model
python examples/react_agent.py "What is 2**20 - 1?" --simulated # scripted model
"""

from __future__ import annotations

import argparse

import trio

from engine_bridge import HFEngine, SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, PythonTool, ToolWorker
from scaffold_actors.methods import ReActAgent, Sampler

tools = ToolWorker({"python": PythonTool(timeout=5, memory_mb=256)})


@tools.register
async def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def simulated_reply(call: SimulatedCall) -> str:
    if "Observation:" not in (call.request.continuation or ""):
        return 'Thought: I will compute it.\nAction: python\nAction Input: {"code": "print(2**20 - 1)"}\n'
    return "Thought: the tool printed it.\nFinal Answer: 1048575"


async def main(question: str, simulated: bool) -> None:
    engine = SimulatedEngine(simulated_reply) if simulated else HFEngine()
    agent = ReActAgent(tools.specs(), Sampler(max_tokens=96, temperature=0.0), max_turns=4)
    async with AsyncScaffoldingLlm(
        agent, {"generation": EngineWorker(engine), "tool": tools}
    ) as llm:
        result = await llm.generate(question)
    d = result.output.details
    print(d["transcript"])
    print(
        f"answer={d['answer']!r} turns={d['turns']} tool_calls={len(d['tool_calls'])} finished={d['finished']}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("question", nargs="?", default="What is 2**20 - 1? Use the python tool.")
    ap.add_argument("--simulated", action="store_true")
    args = ap.parse_args()
    trio.run(main, args.question, args.simulated)
