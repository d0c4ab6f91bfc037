"""Does the model call a tool when the question needs one?  A ReAct agent over
an MCP server's ``add`` tool (docs/mcp.md's server, over stdio) on questions
the model cannot do in its head (sums of two 4- and 5-digit numbers), against
the no-tool baseline (one greedy sample asked for the answer alone).

Arms: ``no-tool``; ``agent-described`` (the tool-call format described in the
system message); ``agent-example`` (one worked exchange with the tool shown,
``ReActAgent(example=...)``).  Per arm: questions where the model called the
tool, right answers, turns, generated tokens, seconds.  Greedy: the same every
run.  Prints one JSON object.

    python benchmarks/agent_tools.py                    # embedded model, CPU
    python benchmarks/agent_tools.py --questions 4      # fewer
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from engine_bridge import HFEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, MCPWorker
from scaffold_actors.methods import ReActAgent, Sampler, extract_answer

SERVER = '''from mcp.server.mcpserver import MCPServer

app = MCPServer("calc")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


if __name__ == "__main__":
    app.run("stdio")
'''

EXAMPLE = """Question: What is 123 + 456?
Thought: I will add them with the add tool.
Action: add
Action Input: {"a": 123, "b": 456}
Observation: 579
Thought: The tool returned 579.
Final Answer: 579"""


def questions(n: int) -> list[tuple[str, int]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        a, b = rng.randrange(1000, 99999), rng.randrange(1000, 99999)
        out.append((f"What is {a} + {b}?", a + b))
    return out


def right(answer: str | None, truth: int) -> bool:
    got = extract_answer(answer or "")
    return got is not None and got.replace(",", "") == str(truth)


async def run_arm(arm: str, qs: list[tuple[str, int]], workers: dict[str, Any],
                  tools: dict[str, str], max_tokens: int) -> dict[str, Any]:  # fmt: skip
    sampler = Sampler(max_tokens=max_tokens, temperature=0.0)
    if arm == "no-tool":
        controller: Any = Sampler(
            max_tokens=max_tokens, temperature=0.0, instruction="Give only the final answer."
        )
    else:
        controller = ReActAgent(
            tools, sampler, max_turns=4, example=EXAMPLE if arm == "agent-example" else False
        )
    rows = []
    start = time.perf_counter()
    async with AsyncScaffoldingLlm(controller, workers) as llm:
        for q, truth in qs:
            r = await llm.generate(q)
            d = r.output.details
            answer = d.get("answer", r.output.output_str) if arm != "no-tool" else r.output.output_str
            calls = d.get("tool_calls", [])
            rows.append({
                "question": q,
                "answer": (answer or "")[:80],
                "right": right(answer, truth),
                "tool_calls": len(calls),
                "tool_ok": sum(1 for c in calls if c["name"] == "add" and not c["is_error"]),
                "turns": d.get("turns", 1),
                "tokens": r.usage.completion_tokens,
            })  # fmt: skip
            print(json.dumps({arm: rows[-1]}), file=sys.stderr, flush=True)
    return {
        "called_the_tool": sum(1 for x in rows if x["tool_ok"]),
        "right": sum(1 for x in rows if x["right"]),
        "questions": len(rows),
        "tokens": sum(x["tokens"] for x in rows),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    qs = questions(args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        server = Path(tmp) / "calc_server.py"
        server.write_text(SERVER)
        servers = {"calc": [sys.executable, str(server)]}
        tools = await MCPWorker.discover(servers)
        engine = HFEngine()
        workers = {"generation": EngineWorker(engine), "tool": MCPWorker(servers)}
        results = {}
        for arm in args.arms.split(","):
            results[arm] = await run_arm(arm, qs, workers, tools, args.max_tokens)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--arms", default="no-tool,agent-described,agent-example")
    ap.add_argument("--max-tokens", type=int, default=96, help="tokens per turn")
    args = ap.parse_args()
    import transformers

    out = {
        "benchmark": "agent_tools",
        "model": "embedded SmolLM2-135M-Instruct",
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": trio.run(run, args),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
