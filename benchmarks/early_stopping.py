"""Early stopping measured against its papers: samples and tokens saved, at what
accuracy, on a built-in set with the embedded model.

Each early-stopping method runs beside its own baseline, on the same problems,
the same engine (started once) and the same seed:

* majority vote of ``--samples`` without early stopping (the baseline), with
  ``LeaderDecided`` (stop once the answer cannot change), Adaptive-Consistency
  (Beta posterior >= 0.95) and ESC (a window of 4 agreeing answers); the votes
  draw 4 samples at a time (``concurrency=4``), as ESC draws its windows, so a
  rule can stop before the rest are drawn;
* Dynasor-CoT (probe every 16 tokens, stop when 2 probes agree) against one
  chain of thought of the same ``--max-tokens``;
* DeepConf online (DeepConf-high: warm-up 4, keep_top 0.9) against DeepConf
  offline with the same number of traces.

Prints one JSON object: per configuration the accuracy, samples finished and
completion tokens per problem (probe tokens included: the engine's counts), and
for votes how much the samples agree (``leader_share``: the leading answer's share
of the votes cast, averaged over problems); per early-stopping method the samples and tokens saved against its
baseline and the paired accuracy difference with a 95% bootstrap interval.

    python benchmarks/early_stopping.py --dataset arithmetic --samples 16
    python benchmarks/early_stopping.py --engine simulated --limit 3      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import anyio

from engine_bridge import SamplingParams
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.cli._bench import load_dataset, paired_difference
from scaffold_actors.cli._main import EngineOptions, build_engine
from scaffold_actors.cli._registry import COT
from scaffold_actors.methods import (
    AdaptiveConsistency,
    DeepConf,
    DynasorCoT,
    MajorityVote,
    Sampler,
    WindowAgreement,
    extract_answer,
    math_equivalent,
)


def configs(samples: int, max_tokens: int) -> dict[str, tuple[Any, str | None]]:
    """name -> (controller, the baseline it is measured against)."""
    s = Sampler(max_tokens=max_tokens, temperature=0.7, instruction=COT)

    def vote(early: Any) -> MajorityVote:
        return MajorityVote(s, samples=samples, early_stop=early, concurrency=4)

    return {
        "vote (no early stop)": (vote(False), None),
        "LeaderDecided": (vote(True), "vote (no early stop)"),
        "Adaptive-Consistency": (vote(AdaptiveConsistency(0.95)), "vote (no early stop)"),
        "ESC (window 4)": (vote(WindowAgreement(4)), "vote (no early stop)"),
        "cot": (s, None),
        "Dynasor-CoT": (DynasorCoT(s, probe_interval=16, certainty_window=2), "cot"),
        "DeepConf offline": (
            DeepConf(s, samples=samples, mode="offline", keep_top=0.9, window=16),
            None,
        ),
        "DeepConf online": (
            DeepConf(s, samples=samples, mode="online", keep_top=0.9, warmup=4, window=16),
            "DeepConf offline",
        ),
    }


async def run_one(
    engine: Any, controller: Any, problems: list[Any], concurrency: int, max_tokens: int
) -> list[dict[str, Any]]:
    worker = EngineWorker(
        engine, manage_engine=False, default_params=SamplingParams(max_tokens=max_tokens)
    )
    rows: list[dict[str, Any]] = [{} for _ in problems]
    limit = anyio.Semaphore(concurrency)
    async with AsyncScaffoldingLlm(controller, {"generation": worker}) as llm:

        async def one(i: int) -> None:
            async with limit:
                r = await (await llm.generate_async(problems[i].question))
            out = r.output
            predicted = out.details.get("answer") if out.details else None
            if predicted is None:
                predicted = extract_answer(out.output_str)
            correct = predicted is not None and await anyio.to_thread.run_sync(
                math_equivalent, str(predicted), problems[i].answer
            )
            votes = (out.details or {}).get("votes") or {}
            rows[i] = {
                "correct": bool(correct),
                "tokens": r.usage.completion_tokens,
                "samples": (out.details or {}).get("samples_finished", 1),
                # how much the samples agree: the leader's share of the votes cast
                "leader_share": max(votes.values()) / sum(votes.values()) if votes else None,
                # no majority: the two leading answers have as many votes
                "tie": len(votes) > 1 and sorted(votes.values())[-1] == sorted(votes.values())[-2],
            }

        async with anyio.create_task_group() as tg:
            for i in range(len(problems)):
                tg.start_soon(one, i)
    return rows


def _mean(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(sum(xs) / len(xs), 3) if xs else None


async def main(args: argparse.Namespace) -> dict[str, Any]:
    problems = load_dataset(args.dataset, limit=args.limit)
    # the engine `scaffold run --engine ...` starts (on a CPU: its CPU sizing)
    engine = build_engine(EngineOptions(engine=args.engine, seed=args.seed), device=args.device)
    results: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    plan = configs(args.samples, args.max_tokens)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        unknown = wanted - set(plan)
        if unknown:
            raise SystemExit(f"unknown configuration(s): {', '.join(sorted(unknown))}")
        keep = wanted | {plan[n][1] for n in wanted if plan[n][1]}
        plan = {n: v for n, v in plan.items() if n in keep}
    async with engine:
        for name, (controller, _) in plan.items():
            t0 = time.perf_counter()
            results[name] = await run_one(
                engine, controller, problems, args.concurrency, args.max_tokens
            )
            seconds[name] = round(time.perf_counter() - t0, 1)
    n = len(problems)
    table = {
        name: {
            "accuracy": round(sum(r["correct"] for r in rows) / n, 4),
            "samples_per_problem": round(sum(r["samples"] for r in rows) / n, 2),
            "tokens_per_problem": round(sum(r["tokens"] for r in rows) / n, 1),
            "leader_share": _mean([r["leader_share"] for r in rows]),
            "seconds": seconds[name],
        }
        for name, rows in results.items()
    }
    savings = {}
    for name, (_, base) in plan.items():
        if base is None:
            continue
        d, lo, hi = paired_difference(
            [r["correct"] for r in results[name]], [r["correct"] for r in results[base]]
        )
        savings[name] = {
            "baseline": base,
            "samples_saved": round(
                1 - table[name]["samples_per_problem"] / table[base]["samples_per_problem"], 3
            ),
            "tokens_saved": round(
                1 - table[name]["tokens_per_problem"] / table[base]["tokens_per_problem"], 3
            ),
            "accuracy_difference": round(d, 4),
            "accuracy_difference_95": [round(lo, 4), round(hi, 4)],
        }
    return {**run_header(args, n), "configs": table, "early_stopping": savings}


def run_header(args: argparse.Namespace, problems: int) -> dict[str, Any]:
    """What a run of these benchmarks was: engine, set, sizes, seed."""
    return {
        "engine": args.engine,
        "dataset": args.dataset,
        "problems": problems,
        "samples": args.samples,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
    }


def common_arguments(description: str) -> argparse.ArgumentParser:
    """The options this benchmark shares with ``vote_defaults.py``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--engine", choices=["hf", "simulated"], default="hf")
    parser.add_argument("--dataset", default="arithmetic")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4, help="problems in flight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device for --engine hf (cuda:0)")
    return parser


if __name__ == "__main__":
    parser = common_arguments(__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=None, help="comma-separated configurations (their baselines run too)"
    )
    print(json.dumps(anyio.run(main, parser.parse_args()), indent=2))
