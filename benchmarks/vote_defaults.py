"""The majority vote's defaults chosen by measurement: temperature x instruction.

A vote of ``--samples`` (the CLI's default, 16) for each temperature and each
instruction form on the same problems, the same engine (started once) and the same
seed. Per configuration: accuracy (Wilson 95% interval), completion tokens per
problem, how much the samples agree (``leader_share``: the leading answer's share of
the votes cast, averaged over problems), how often the vote is a tie, and the paired
accuracy difference from the CLI's defaults (temperature 0.7, the step-by-step
instruction) with a 95% bootstrap interval.

    python benchmarks/vote_defaults.py --dataset arithmetic
    python benchmarks/vote_defaults.py --dataset arithmetic-all --temperatures 0.7,1.0
    python benchmarks/vote_defaults.py --engine simulated --limit 3      # a smoke run

Instruction forms (appended to the question, as ``scaffold run --instruction``):
``cot`` the CLI's default, ``short`` asks for the boxed answer only, ``none``
sends the question alone.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio
from early_stopping import _mean, common_arguments, run_header, run_one

from scaffold_actors.cli._bench import accuracy_interval, load_dataset, paired_difference
from scaffold_actors.cli._main import EngineOptions, build_engine
from scaffold_actors.cli._registry import COT
from scaffold_actors.methods import MajorityVote, Sampler

INSTRUCTIONS = {
    "cot": COT,
    "short": "Give only the final answer, as \\boxed{answer}.",
    "none": "",
}
DEFAULT = (0.7, "cot")


def _name(temperature: float, instruction: str) -> str:
    return f"T={temperature} {instruction}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_dataset(args.dataset, limit=args.limit)
    temperatures = [float(t) for t in args.temperatures.split(",")]
    forms = [f.strip() for f in args.instructions.split(",")]
    unknown = set(forms) - set(INSTRUCTIONS)
    if unknown:
        raise SystemExit(f"unknown instruction form(s): {', '.join(sorted(unknown))}")
    grid = [(t, f) for t in temperatures for f in forms]
    engine = build_engine(EngineOptions(engine=args.engine, seed=args.seed), device=args.device)
    results: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    async with engine:
        for t, f in grid:
            vote = MajorityVote(
                Sampler(max_tokens=args.max_tokens, temperature=t, instruction=INSTRUCTIONS[f]),
                samples=args.samples,
                early_stop=False,
            )
            t0 = time.perf_counter()
            results[_name(t, f)] = await run_one(
                engine, vote, problems, args.concurrency, args.max_tokens
            )
            seconds[_name(t, f)] = round(time.perf_counter() - t0, 1)
    n = len(problems)
    base = _name(*DEFAULT)
    table: dict[str, Any] = {}
    for name, rows in results.items():
        right = sum(r["correct"] for r in rows)
        lo, hi = accuracy_interval(right, n)
        row: dict[str, Any] = {
            "accuracy": round(right / n, 4),
            "accuracy_95": [round(lo, 4), round(hi, 4)],
            "tokens_per_problem": round(sum(r["tokens"] for r in rows) / n, 1),
            "leader_share": _mean([r["leader_share"] for r in rows]),
            "ties": sum(bool(r["tie"]) for r in rows),
            "no_answer": sum(r["leader_share"] is None for r in rows),
            "seconds": seconds[name],
        }
        if base in results and name != base:
            d, dlo, dhi = paired_difference(
                [r["correct"] for r in rows], [r["correct"] for r in results[base]]
            )
            row["vs_default"] = [round(d, 4), [round(dlo, 4), round(dhi, 4)]]
        table[name] = row
    return {
        **run_header(args, n),
        "default": base,
        "instructions": {f: INSTRUCTIONS[f] for f in forms},
        "configs": table,
    }


if __name__ == "__main__":
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument("--temperatures", default="0.3,0.7,1.0")
    parser.add_argument("--instructions", default="cot,short,none")
    print(json.dumps(anyio.run(main, parser.parse_args()), indent=2))
