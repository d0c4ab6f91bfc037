"""Scale-out: majority-vote throughput with 1 vs N engine replicas (one per GPU),
and the prefill tokens computed per request with prefix affinity on vs off.

Every run is ``MajorityVote(Sampler(), samples=S, early_stop=False)`` over ``--prompts``
prompts through ``AsyncScaffoldingLlm`` and one ``EngineWorker`` over an
``EnginePool``; the same pool object is kept warm and runs alternate 1-replica and
N-replica pools (ABAB...), so drift hits both.  Throughput is generated tokens per
second; the figure is the ratio N-replica / 1-replica (target >= 1.9 for 2 GPUs).

Replicas (``--replica-kind``):

* ``thread``: an ``HFEngine`` per GPU in this process (one bridge thread each);
* ``process``: a ``ProcessEngine`` per GPU (an ``engine_bridge.openai_server`` child
  on loopback; no shared interpreter lock between replicas); each sample is answered
  in one JSON body, or, with ``--stream-all``, streamed token by token;
* ``ray`` (``--engine simulated``): a ``RayEngine`` per replica, an actor hosting a
  simulated engine, placed by Ray on the cluster at ``--ray-address`` (default: a
  local one started for the run, one logical CPU per replica); deltas stream back
  through Ray's streaming generators.

Prefill per request is measured in the engine: transformers' continuous-batching
cache reports each prefix match (``search_prefix_match``), so prefill computed =
prompt tokens - matched tokens.  With ``--engine simulated`` (CPU) the same figures
come from the simulated engine's prefix cache.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Self

import anyio
from _random_model import random_qwen2

from engine_bridge import CostModel, EnginePool, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

SYSTEM = (
    "You are a careful math tutor. Read the problem, reason step by step, check the "
    "arithmetic twice, and end with the final answer in a box. "
)
TOPICS = [
    "clips",
    "babysitting",
    "a wallet",
    "letters",
    "a robe",
    "a book",
    "pizzas",
    "jelly beans",
]

PREFIX_MATCHED = [0]  # tokens transformers reused from its prefix cache (all engines in process)
PREFIX_HOOKED = [False]


def prompts(n: int, repeats: int = 3, start: int = 0) -> list[str]:
    # distinct from their first words; ``repeats`` sets the length (about 33 tokens each)
    return [
        f"Problem {i}: a question about {TOPICS[i % len(TOPICS)]}. " + SYSTEM * repeats
        for i in range(start, start + n)
    ]


def count_prefix_matches() -> None:
    """Wrap transformers' prefix search to count the prompt tokens it reuses."""
    try:
        from transformers.generation.continuous_batching import cache
    except ImportError:
        return
    cls = cache.PagedAttentionCache
    original = getattr(cls, "search_prefix_match", None)
    if original is None:
        return

    def counted(self: Any, request_id: str, prompt_ids: list[int]) -> int:
        n = int(original(self, request_id, prompt_ids))
        PREFIX_MATCHED[0] += n
        return n

    cls.search_prefix_match = counted
    PREFIX_HOOKED[0] = True


def hf_replica(args: argparse.Namespace, device: str) -> Any:
    from engine_bridge import HFEngine

    model, tokenizer = random_qwen2(args.tokenizer, args.dtype, device)
    return HFEngine(
        "random-qwen2-0.5b", preloaded=(model, tokenizer), device=device, dtype=args.dtype,
        chat_template=False, max_concurrent=args.max_concurrent,
        kv_cache_tokens=args.kv_cache_tokens or None,
    )  # fmt: skip


def process_replica(args: argparse.Namespace, device: str) -> Any:
    """A ProcessEngine (an openai_server child) serving the random model saved once."""
    from engine_bridge import ProcessEngine

    folder = "/tmp/scale-out-model"
    if not os.path.exists(os.path.join(folder, "config.json")):
        model, tokenizer = random_qwen2(args.tokenizer, args.dtype, "cpu")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return ProcessEngine(
        "hf", model=folder, device=device, dtype=args.dtype, max_concurrent=args.max_concurrent,
        kv_cache_tokens=args.kv_cache_tokens or None, stream_all=args.stream_all,
        extra_args=["--admission-window", str(args.admission_window),
                    "--admission-window-max", str(args.admission_window_max)],
    )  # fmt: skip


class Borrowed:
    """An engine started elsewhere: a pool's start and close leave it running."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


async def vote_run(
    pool: EnginePool, qs: list[str], samples: int, max_tokens: int, concurrency: int | None = None
) -> dict[str, Any]:
    method = MajorityVote(
        Sampler(max_tokens=max_tokens, temperature=1.0),
        samples=samples,
        early_stop=False,
        concurrency=concurrency,
    )
    worker = EngineWorker(pool, manage_engine=False, max_concurrency=100_000, inbox_size=100_000)
    async with AsyncScaffoldingLlm(method, {"generation": worker}, max_in_flight=len(qs)) as llm:
        start = time.perf_counter()
        results = await llm.generate(qs)
        wall = time.perf_counter() - start
    tokens = sum(r.usage.completion_tokens for r in results)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall}


async def simulated_prefill(args: argparse.Namespace) -> dict[str, Any]:
    """Prefill per request, affinity on vs off, on simulated replicas (CPU)."""
    out: dict[str, Any] = {}
    qs = prompts(args.prompts)
    for affinity in (True, False):
        engines = [
            SimulatedEngine(
                cost=CostModel(2e-6, 0.001, 1e-5),
                prefix_cache_blocks=1 << 16,
                max_batch_size=1 << 16,
                kv_capacity=1 << 40,
            )
            for _ in range(args.replicas)
        ]
        pool = EnginePool(engines, affinity=affinity, saturation=args.saturation)
        async with pool:
            await vote_run(pool, qs, args.samples, args.max_tokens)
        requests = len(qs) * args.samples
        computed = sum(e.prefill_tokens for e in engines)
        reused = sum(e.cached_prompt_tokens for e in engines)
        out["on" if affinity else "off"] = {
            "prompt_tokens_per_request": round((computed + reused) / requests, 1),
            "prefill_tokens_per_request": round(computed / requests, 1),
            "affinity_hits": pool.affinity_hits,
        }
    return out


async def gpu(args: argparse.Namespace) -> dict[str, Any]:
    devices = args.devices.split(",")[: args.replicas]
    qs = prompts(args.prompts)
    count_prefix_matches()
    if args.replica_kind == "process":
        engines = [process_replica(args, d) for d in devices]
    else:
        engines = [hf_replica(args, d) for d in devices]
    async with EnginePool(engines):  # starts them all at once; kept warm for the runs
        engines = [Borrowed(e) for e in engines]
        n = str(len(engines))
        runs: dict[str, list[dict[str, Any]]] = {"1": [], n: []}
        sizes = {"1": engines[:1], n: engines}
        for members in sizes.values() if args.repeats else ():  # warm-up, not counted
            async with EnginePool(members, saturation=args.saturation) as pool:
                await vote_run(pool, qs, args.samples, args.max_tokens)
        for _ in range(args.repeats):  # alternate: drift hits both sizes
            for label, members in sizes.items():
                async with EnginePool(members, saturation=args.saturation) as pool:
                    runs[label].append(await vote_run(pool, qs, args.samples, args.max_tokens))
                print(json.dumps({label: runs[label][-1]}), file=sys.stderr, flush=True)
        # prefill per request, affinity on vs off, measured in the real engines.  Each
        # vote keeps only a few samples in flight (as an early-stopping vote does), so
        # later samples arrive when the prompt's blocks are computed (samples of one
        # burst are prefilled together and share nothing).  The prompts are longer
        # here, since transformers shares whole KV blocks of 256 tokens, and new for
        # each arm, since the engines keep the blocks of the prompts they saw.
        prefill: dict[str, Any] = {}
        if args.replica_kind == "thread" and PREFIX_HOOKED[0]:
            arm = 0
            for in_flight in (int(x) for x in args.prefill_in_flight.split(",")):
                for affinity in (True, False):
                    arm += 1
                    long_qs = prompts(args.prompts, args.prefill_repeats, arm * 10_000)
                    before = PREFIX_MATCHED[0]
                    async with EnginePool(
                        engines, affinity=affinity, saturation=args.saturation
                    ) as pool:
                        await vote_run(pool, long_qs, args.samples, args.max_tokens, in_flight)
                    requests = len(long_qs) * args.samples
                    prompt_tokens = args.samples * sum(
                        engines[0].count_prompt_tokens(_request(q)) for q in long_qs
                    )
                    matched = PREFIX_MATCHED[0] - before
                    arms = prefill.setdefault(f"samples_in_flight_per_vote_{in_flight}", {})
                    arms["on" if affinity else "off"] = {
                        "prompt_tokens_per_request": round(prompt_tokens / requests, 1),
                        "prefill_tokens_per_request": round(
                            (prompt_tokens - matched) / requests, 1
                        ),
                        "affinity_hits": pool.affinity_hits,
                    }
    out: dict[str, Any] = {
        "replicas": len(engines),
        "replica_kind": args.replica_kind,
        "wire": None if args.replica_kind == "thread" else ("sse" if args.stream_all else "body"),
        "devices": devices,
        "prefill_real_engine": prefill or None,
    }
    if args.repeats:
        tp = {k: [r["tokens_per_s"] for r in v] for k, v in runs.items()}
        pairs = [b / a for a, b in zip(tp["1"], tp[n], strict=True)]
        out |= {
            "tokens_per_s": {k: [round(x, 1) for x in v] for k, v in tp.items()},
            "median_tokens_per_s": {k: round(statistics.median(v), 1) for k, v in tp.items()},
            "ratio_of_medians": round(statistics.median(tp[n]) / statistics.median(tp["1"]), 3),
            "pair_ratios": [round(x, 3) for x in pairs],
            "ratio_of_totals": round(rate(runs[n]) / rate(runs["1"]), 3),
        }
    return out


async def simulated_processes(args: argparse.Namespace) -> dict[str, Any]:
    """The client's side of N process replicas, with no GPU: each replica is an
    ``openai_server`` child over a simulated engine that takes
    ``--simulated-step-seconds`` per decode step of its whole batch (a GPU's
    pace), so N replicas can serve N times the tokens and any shortfall is the
    client's (one process, one event loop).  The workload grows with the
    replicas (``--prompts`` per replica); runs of all sizes alternate.  Reports
    tokens/s, the ratio to one replica, and the client's CPU seconds per request
    (``time.process_time`` of this process: the children not counted)."""
    sizes = [int(x) for x in args.sizes.split(",")]
    reply = " ".join(["token"] * (args.max_tokens * 2))  # cut by max_tokens
    engines = (
        ray_replicas(args, max(sizes), reply)
        if args.replica_kind == "ray"
        else process_replicas(args, max(sizes), reply)
    )
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    async with EnginePool(engines):  # all started once, kept warm
        members = [Borrowed(e) for e in engines]
        for repeat in range(args.repeats + 1):  # the first round warms up, not counted
            for n in sizes:
                qs = prompts(args.prompts * n, start=repeat * 100_000 + n * 1_000)
                async with EnginePool(members[:n], saturation=args.saturation) as pool:
                    cpu = time.process_time()
                    run = await vote_run(pool, qs, args.samples, args.max_tokens)
                    run["client_cpu_s"] = time.process_time() - cpu
                run["requests"] = len(qs) * args.samples
                if repeat:
                    runs[n].append(run)
                print(json.dumps({n: run}), file=sys.stderr, flush=True)
    one = rate(runs[sizes[0]])
    return {
        "replica_kind": f"{args.replica_kind} (simulated engine)",
        "wire": "sse" if args.stream_all else "body",
        "simulated_step_seconds": args.simulated_step_seconds,
        "cpus": os.cpu_count(),
        "sizes": {
            str(n): {
                "tokens_per_s": [round(r["tokens_per_s"], 1) for r in rs],
                "ratio_of_totals_to_one": round(rate(rs) / one, 3),
                "client_cpu_us_per_request": round(
                    1e6 * sum(r["client_cpu_s"] for r in rs) / sum(r["requests"] for r in rs), 1
                ),
                "client_cpu_share_of_wall": round(
                    sum(r["client_cpu_s"] for r in rs) / sum(r["wall_s"] for r in rs), 3
                ),
            }
            for n, rs in runs.items()
        },
    }


def process_replicas(args: argparse.Namespace, count: int, reply: str) -> list[Any]:
    from engine_bridge import ProcessEngine

    return [
        ProcessEngine(
            "simulated", max_concurrent=args.max_concurrent, stream_all=args.stream_all,
            extra_args=["--simulated-step-seconds", str(args.simulated_step_seconds),
                        "--simulated-reply", reply, "--max-context", "4096"],
        )
        for _ in range(count)
    ]  # fmt: skip


def ray_replicas(args: argparse.Namespace, count: int, reply: str) -> list[Any]:
    """Simulated engines in Ray actors, one bundle of a placement group each."""
    import functools

    import ray

    from engine_bridge import RayEngine

    if args.ray_address:
        ray.init(address=args.ray_address, log_to_driver=False)
    else:  # a local cluster for the run: one logical CPU per replica
        ray.init(num_cpus=count, include_dashboard=False, log_to_driver=False)
    factory = functools.partial(
        SimulatedEngine,
        reply,
        cost=CostModel(0.0, args.simulated_step_seconds, 0.0),
        max_batch_size=max(256, args.max_concurrent),
        max_context=4096,
    )
    return RayEngine.replicas(count, factory, max_concurrent=args.max_concurrent)


def rate(runs: list[dict[str, Any]]) -> float:
    return float(sum(r["tokens"] for r in runs) / sum(r["wall_s"] for r in runs))


def _request(prompt: str) -> Any:
    from engine_bridge import EngineRequest, SamplingParams

    return EngineRequest(SamplingParams(), prompt=prompt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=("hf", "simulated"), default="hf")
    ap.add_argument("--replica-kind", choices=("thread", "process", "ray"), default="thread")
    ap.add_argument(
        "--ray-address", default=None, help="ray replicas: a running cluster (default: a local one)"
    )
    ap.add_argument(
        "--stream-all",
        action="store_true",
        help="process replicas: stream every request over SSE (default: one JSON body each)",
    )
    ap.add_argument("--devices", default="cuda:0,cuda:1")
    ap.add_argument("--admission-window", type=float, default=0.005, help="process replicas")
    ap.add_argument("--admission-window-max", type=float, default=0.05, help="process replicas")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument(
        "--sizes", default="1,2,4,8", help="simulated process replicas: the replica counts"
    )
    ap.add_argument(
        "--simulated-step-seconds",
        type=float,
        default=0.02,
        help="simulated process replicas: seconds per decode step of a replica's batch",
    )
    ap.add_argument("--tokenizer", default=".bench_assets/smollm2-tokenizer")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument(
        "--prefill-repeats", type=int, default=18, help="prompt length for prefill_real_engine"
    )
    ap.add_argument("--max-concurrent", type=int, default=256)
    ap.add_argument("--kv-cache-tokens", type=int, default=0)
    ap.add_argument("--saturation", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=4, help="pairs of runs (0: prefill only)")
    ap.add_argument(
        "--prefill-in-flight",
        default="4",
        help="samples in flight per vote for prefill_real_engine (comma-separated)",
    )
    args = ap.parse_args()
    out: dict[str, Any] = {
        "benchmark": "scale_out",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "prompts": args.prompts,
        "samples": args.samples,
        "max_tokens": args.max_tokens,
    }
    if args.engine == "simulated" and args.replica_kind in ("process", "ray"):
        out.update(anyio.run(simulated_processes, args, backend="trio"))
        print(json.dumps(out, indent=2))
        return
    out["prefill_simulated"] = anyio.run(simulated_prefill, args, backend="trio")
    if args.engine == "hf":
        import torch

        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        out.update(anyio.run(gpu, args, backend="trio"))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
