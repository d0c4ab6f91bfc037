"""A vote's samples on the transformers engine: each prefilling the prompt
(today's path: requests arriving together share nothing) vs one prefix group
(the first computes the prompt, the others reuse its KV blocks).

For each prompt length P and vote size N, both arms run alternately on fresh
prompts (random token ids, distinct from their first token, so nothing carries
over between runs): N requests submitted together, each generating exactly
``--max-tokens`` tokens (``ignore_eos``).  Per arm: prompt tokens computed per
request (transformers' own prefix search: ``HFEngine.prefill_tokens``), time to
first token (median and max over the vote's samples, medians over repeats),
and generated tokens/s (the vote's tokens over its wall time, median over
repeats), with the grouped / ungrouped ratio of the medians.  ``--replicas 2``
runs the same through an :class:`EnginePool` with prefix affinity (engines
sharing one model).  Prints one JSON object.

    python benchmarks/prefill_sharing.py                       # embedded model, CPU
    python benchmarks/prefill_sharing.py --model random-qwen2-0.5b \\
        --tokenizer .bench_assets/smollm2-tokenizer --device cuda --dtype bfloat16 \\
        --prompt-tokens 512,2048 --samples 4,16,64 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bridge import EnginePool, EngineRequest, HFEngine, PrefixGroup, SamplingParams


def make_engines(args: argparse.Namespace) -> list[HFEngine]:
    common: dict[str, Any] = {
        "device": args.device,
        "max_concurrent": args.max_concurrent,
        "kv_cache_tokens": args.kv_cache_tokens or None,
        "seed": 0,
        "batching": json.loads(args.batching),
    }
    if args.model.startswith("random-qwen2-"):
        from _random_model import random_qwen2

        # a model each: transformers keeps one batching manager per model
        return [
            HFEngine(
                args.model,
                preloaded=random_qwen2(args.tokenizer, args.dtype, args.device, args.model),
                dtype=args.dtype,
                **common,
            )
            for _ in range(args.replicas)
        ]
    model = None if args.model == "embedded" else args.model
    return [HFEngine(model, dtype=args.dtype, **common) for _ in range(args.replicas)]


async def one_vote(
    target: Any, engines: list[HFEngine], ids: tuple[int, ...], n: int, grouped: bool,
    max_tokens: int,
) -> dict[str, float]:  # fmt: skip
    group = PrefixGroup(n) if grouped else None
    request = EngineRequest(
        SamplingParams(max_tokens=max_tokens, temperature=0.8, ignore_eos=True),
        prompt_token_ids=ids,
        group=group,
    )
    computed0 = sum(e.prefill_tokens for e in engines)
    ttft: list[float] = []
    tokens = [0]
    start = time.perf_counter()
    start_mono = time.monotonic()

    async def sample() -> None:
        first = True
        async with target.open_stream(request) as deltas:
            async for delta in deltas:
                if first and delta.token_ids:
                    ttft.append(time.perf_counter() - start)
                    first = False
                tokens[0] += delta.num_tokens

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(sample)
    wall = time.perf_counter() - start
    computed = sum(e.prefill_tokens for e in engines) - computed0
    # when the engine handed the vote's requests to transformers: (s after the
    # start, how many), the submitter thread's own record
    handed = [
        (round(t - start_mono, 4), count)
        for e in engines
        for t, count in list(e._bursts)
        if t >= start_mono
    ]
    return {
        "computed_per_request": computed / n,
        "ttft_median_s": statistics.median(ttft),
        "ttft_max_s": max(ttft),
        "tokens_per_s": tokens[0] / wall,
        "wall_s": wall,
        "ttft_s": sorted(round(x, 4) for x in ttft),  # type: ignore[dict-item]
        "handed_to_transformers": handed,  # type: ignore[dict-item]
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engines = make_engines(args)
    rng = random.Random(0)
    vocab = len(engines[0].tokenizer) if engines[0].tokenizer is not None else 32000
    results: dict[str, Any] = {}
    async with _Target(engines) as target:
        for e in engines:
            if not e.share_prefixes:
                raise SystemExit("this transformers keeps no prefix cache: nothing to share")
        # warm-up (kernels, allocator): one small vote of each arm
        for grouped in (False, True):
            ids = tuple(rng.randrange(100, vocab) for _ in range(64))
            await one_vote(target, engines, ids, 2, grouped, 4)
        for p in args.prompt_tokens:
            for n in args.samples:
                # untimed votes of each arm at this P and N first: the shapes of
                # their batches are new, and transformers captures a CUDA graph
                # for each new one (a server that has run a while has them)
                await alternate(target, engines, rng, vocab, p, n, args.warmup, args.max_tokens)
                arms = await alternate(target, engines, rng, vocab, p, n, args.repeats, args.max_tokens)
                summary: dict[str, Any] = {}
                for arm, runs in arms.items():
                    summary[arm] = {
                        key: round(statistics.median(run[key] for run in runs), 4)
                        for key in runs[0]
                        if key not in ("ttft_s", "handed_to_transformers")
                    }
                    # the first run's timeline: each sample's first token, each burst
                    summary[arm]["first_run_ttft_s"] = runs[0]["ttft_s"]
                    summary[arm]["first_run_handed"] = runs[0]["handed_to_transformers"]
                    summary[arm]["computed_per_request_runs"] = [
                        round(run["computed_per_request"], 1) for run in runs
                    ]
                g, u = summary["grouped"], summary["ungrouped"]
                summary["tokens_per_s_ratio"] = round(g["tokens_per_s"] / u["tokens_per_s"], 3)
                summary["ttft_median_ratio"] = round(g["ttft_median_s"] / u["ttft_median_s"], 3)
                summary["bound_p_over_n_plus_block"] = p / n + 256
                summary["allowed_ratio"] = allowed_ratio(u, g)
                results[f"P={p},N={n}"] = summary
                print(json.dumps({f"P={p},N={n}": summary}), file=sys.stderr, flush=True)
    return results


async def alternate(
    target: Any, engines: list[HFEngine], rng: random.Random, vocab: int, p: int, n: int,
    repeats: int, max_tokens: int,
) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    """``repeats`` votes of each arm, alternated (ABBA), each on a fresh prompt."""
    arms: dict[str, list[dict[str, float]]] = {"ungrouped": [], "grouped": []}
    for r in range(repeats):
        order = (False, True) if r % 2 == 0 else (True, False)
        for grouped in order:
            ids = tuple(rng.randrange(100, vocab) for _ in range(p))
            arms["grouped" if grouped else "ungrouped"].append(
                await one_vote(target, engines, ids, n, grouped, max_tokens)
            )
    return arms


def allowed_ratio(u: dict[str, Any], g: dict[str, Any]) -> float:
    """The factor the saved prefill allows, from the ungrouped vote's own runs:
    its prompts are all computed by its last first token (``ttft_max_s``, which
    bounds its prefill time from above), and grouping saves that share of the
    prompt tokens, so at best its wall time falls by ``ttft_max_s`` times the
    share saved: ``wall / (wall - ttft_max * share saved)``."""
    share_saved = 1 - g["computed_per_request"] / u["computed_per_request"]
    return round(u["wall_s"] / (u["wall_s"] - u["ttft_max_s"] * share_saved), 3)


class _Target:
    """``async with`` the engines, and yield the target: the engine, or a pool
    with prefix affinity over several."""

    def __init__(self, engines: list[HFEngine]) -> None:
        self.engines = engines
        self.pool: EnginePool | None = None

    async def __aenter__(self) -> Any:
        if len(self.engines) == 1:
            return await self.engines[0].__aenter__()
        self.pool = EnginePool(self.engines, affinity=True)
        return await self.pool.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        if self.pool is not None:
            await self.pool.__aexit__(*exc)
        else:
            await self.engines[0].__aexit__(*exc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model",
        default="embedded",
        help="embedded | random-qwen2-0.5b | random-qwen2-1.5b | random-qwen2-7b | PATH",
    )
    ap.add_argument("--tokenizer", default=None, help="tokenizer folder for random-qwen2-*")
    ap.add_argument(
        "--batching",
        default="{}",
        help="extra transformers ContinuousBatchingConfig fields, JSON "
        '(e.g. \'{"max_memory_percent": 0.4}\' for two engines on one GPU)',
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-tokens", default="512", help="comma-separated prompt lengths")
    ap.add_argument("--samples", default="4,16", help="comma-separated vote sizes")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated")
    ap.add_argument(
        "--warmup", type=int, default=1,
        help="untimed runs of each arm at each P and N before the timed ones (CUDA graphs "
        "are captured for new batch shapes); 0: none",
    )  # fmt: skip
    ap.add_argument("--replicas", type=int, default=1, help="engines in an EnginePool (affinity)")
    ap.add_argument("--max-concurrent", type=int, default=64)
    ap.add_argument(
        "--kv-cache-tokens",
        type=int,
        default=65536,
        help="paged KV cache (0: transformers sizes it)",
    )
    args = ap.parse_args()
    args.prompt_tokens = [int(x) for x in args.prompt_tokens.split(",")]
    args.samples = [int(x) for x in args.samples.split(",")]
    import torch
    import transformers

    out = {
        "benchmark": "prefill_sharing",
        "model": args.model,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "replicas": args.replicas,
        "batching": json.loads(args.batching),
        "results": trio.run(run, args),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
