"""Framework vs. direct engine throughput with the engine saturated.

Majority vote with ``--samples`` samples (default 16) over ``--prompts`` prompts, two
ways, on the same warm engine, alternating and repeated:

* ``direct``: every sample sent straight into the engine (``engine.open_stream``),
  all at once, so the engine's admission keeps it saturated;
* ``framework``: ``MajorityVote(Sampler(), samples=N, early_stop=False)`` through
  ``AsyncScaffoldingLlm`` and an ``EngineWorker`` (request scopes, controller,
  worker actor, engine worker).

Throughput is generated tokens per second; the ratio framework / direct is the
number that matters (target >= 0.97).  Prints one JSON object.

With ``--ray``, the framework runs over a ``RayEngine``: the same engine, built the
same way, in a Ray actor of a local Ray cluster started for the run (given the GPU
with ``num_gpus=1`` on CUDA), while ``direct`` drives the engine in this process;
both engines stay loaded and the runs alternate.

Models: ``embedded`` (SmolLM2-135M GGUF, CPU), a local folder, or
``random-qwen2-0.5b``: a Qwen2-shaped model (hidden 896, 14 heads, 2 KV heads,
intermediate 4864, 30 layers) with random weights built from a config on the
device, using the tokenizer given with ``--tokenizer`` (its vocabulary sets the
embedding size).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import random
import statistics
import time
from typing import Any

import anyio

from engine_bridge import EngineRequest, SamplingParams
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May. How many clips did she sell?",
    "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes of babysitting. How much did she earn?",
    "Betty needs $100 for a wallet. She has half of the money. Her parents give $15 and her grandparents twice as much. How much more does she need?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total does it take?",
    "Julie is reading a 120-page book. Yesterday she read 12 pages and today twice as many. How many pages are left?",
    "Albert buys 2 large pizzas with 16 slices and 2 small pizzas with 8 slices. How many slices does he eat?",
    "Ken made a care package. He put a box on a scale and poured jelly beans to bring the weight to 2 pounds. How much does it weigh?",
]


def build_engine(args: argparse.Namespace) -> Any:
    from engine_bridge import HFEngine

    common: dict[str, Any] = {
        "device": args.device,
        "max_concurrent": args.max_concurrent,
        "kv_cache_tokens": args.kv_cache_tokens or None,
        "batching": json.loads(args.batching),
        "admission_window": args.admission_window,
        "admission_window_max": args.admission_window_max,
    }
    if args.model == "embedded":
        return HFEngine(**common)
    if args.model == "random-qwen2-0.5b":
        from _random_model import random_qwen2

        model, tokenizer = random_qwen2(args.tokenizer, args.dtype, args.device)
        return HFEngine(
            "random-qwen2-0.5b",
            preloaded=(model, tokenizer),
            dtype=args.dtype,
            chat_template=getattr(tokenizer, "chat_template", None) is not None,
            **common,
        )
    return HFEngine(args.model, dtype=args.dtype, **common)


async def run_direct(
    engine: Any, prompts: list[str], samples: int, params: SamplingParams
) -> tuple[float, int]:
    tokens = 0

    async def one(prompt: str) -> None:
        nonlocal tokens
        async with engine.open_stream(EngineRequest(params, prompt=prompt, stream=False)) as s:
            async for d in s:
                tokens += len(d.token_ids)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for p in prompts:
            for _ in range(samples):
                tg.start_soon(one, p)
    return time.perf_counter() - start, tokens


async def run_framework(
    engine: Any, prompts: list[str], samples: int, params: SamplingParams
) -> tuple[float, int]:
    sampler = Sampler(max_tokens=params.max_tokens, temperature=params.temperature)
    method = MajorityVote(sampler, samples=samples, early_stop=False)
    worker = EngineWorker(engine, manage_engine=False, max_concurrency=100_000, inbox_size=100_000)
    async with AsyncScaffoldingLlm(
        method, {"generation": worker}, max_in_flight=len(prompts)
    ) as llm:
        start = time.perf_counter()
        results = await llm.generate(prompts)
        elapsed = time.perf_counter() - start
    return elapsed, sum(r.usage.completion_tokens for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded", help="embedded | random-qwen2-0.5b | PATH")
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for random-qwen2-0.5b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-concurrent", type=int, default=64, help="engine admission limit")
    ap.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=32768,
        help="KV cache size; 0 = size it from free memory",
    )
    ap.add_argument("--batching", default="{}", help="JSON of ContinuousBatchingConfig fields")
    ap.add_argument(
        "--admission-window", type=float, default=0.005, help="quiet gap closing a burst (s)"
    )
    ap.add_argument("--admission-window-max", type=float, default=0.05, help="longest burst (s)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--ray",
        action="store_true",
        help="framework over the same engine hosted in a Ray actor (a local Ray cluster)",
    )
    ap.add_argument(
        "--gc",
        choices=("on", "between-runs"),
        default="on",
        help="between-runs: collect and freeze before each timed run, no collection inside it",
    )
    args = ap.parse_args()

    prompts = [QUESTIONS[i % len(QUESTIONS)] + f" (#{i})" for i in range(args.prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
    engine = build_engine(args)
    framework_engine = engine
    if args.ray:
        import functools

        import ray

        from engine_bridge import RayEngine

        gpus = 1 if args.device.startswith("cuda") else 0
        ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False)
        framework_engine = RayEngine(
            functools.partial(build_engine, args), num_gpus=gpus, max_concurrent=args.max_concurrent
        )

    async def bench() -> dict[str, list[tuple[float, int]]]:
        runs: dict[str, list[tuple[float, int]]] = {"direct": [], "framework": []}
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(engine)
            if framework_engine is not engine:
                await stack.enter_async_context(framework_engine)
            # warm-up at full size, discarded: the first 256-request batch of a fresh
            # engine was always the slowest run (new batch shapes)
            await run_direct(engine, prompts, args.samples, params)
            await run_framework(framework_engine, prompts, args.samples, params)
            for i in range(args.repeats):
                # ABBA order, so slow drift of the engine weighs on both modes alike
                order = ("direct", "framework") if i % 2 == 0 else ("framework", "direct")
                for mode in order:
                    run = run_direct if mode == "direct" else run_framework
                    target = engine if mode == "direct" else framework_engine
                    if args.gc == "between-runs":
                        gc.enable()
                        gc.collect()
                        gc.freeze()
                        gc.disable()
                    engine._bursts.clear()
                    t0 = time.monotonic()
                    runs[mode].append(await run(target, prompts, args.samples, params))
                    bursts[mode].append([(round(t - t0, 4), n) for t, n in engine._bursts][:6])
            gc.enable()
        return runs

    bursts: dict[str, list[Any]] = {"direct": [], "framework": []}
    runs = anyio.run(bench)
    tps = {k: [tok / sec for sec, tok in v] for k, v in runs.items()}
    med = {k: statistics.median(v) for k, v in tps.items()}
    info: dict[str, Any] = {}
    if engine.model is not None:
        info["parameters"] = sum(p.numel() for p in engine.model.parameters())
    try:
        import torch

        if args.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover - informational only
        pass
    pair = [f / d for f, d in zip(tps["framework"], tps["direct"], strict=True)]
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(pair, k=len(pair))) for _ in range(2000))
    out = {
        "benchmark": "engine_saturation",
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "requests": args.prompts * args.samples,
        "max_tokens": args.max_tokens,
        "max_concurrent": args.max_concurrent,
        "kv_cache_tokens": args.kv_cache_tokens or "auto",
        "batching": json.loads(args.batching),
        "admission_window": args.admission_window,
        "admission_window_max": args.admission_window_max,
        "gc": args.gc,
        "framework_engine": "RayEngine (the same engine in a Ray actor)" if args.ray else "the same",
        "machine": platform.machine(),
        **info,
        "tokens_per_second": {k: [round(x, 1) for x in v] for k, v in tps.items()},
        "median_tokens_per_second": {k: round(v, 1) for k, v in med.items()},
        "ratio_framework_over_direct": round(med["framework"] / med["direct"], 4),
        "pair_ratios": [
            round(f / d, 4) for f, d in zip(tps["framework"], tps["direct"], strict=True)
        ],
        "median_pair_ratio": round(
            statistics.median(f / d for f, d in zip(tps["framework"], tps["direct"], strict=True)),
            4,
        ),
        "median_pair_ratio_95ci": [round(boot[50], 4), round(boot[1949], 4)],
        "ratio_of_total_throughput": round(
            (sum(t for _, t in runs["framework"]) / sum(s for s, _ in runs["framework"]))
            / (sum(t for _, t in runs["direct"]) / sum(s for s, _ in runs["direct"])),
            4,
        ),
        "first_bursts_seconds_and_sizes": bursts,
        "seconds": {k: [round(s, 3) for s, _ in v] for k, v in runs.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
