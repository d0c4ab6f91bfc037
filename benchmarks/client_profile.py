"""Where the client's CPU per request goes, with one process replica.

A majority vote of 16 over 16 prompts (256 requests of 64 tokens) through
``AsyncScaffoldingLlm`` and an ``EnginePool`` of one ``ProcessEngine`` (an
``openai_server`` child over a simulated engine at ``--step-seconds`` per decode
step), profiled with cProfile in the client process after a warm-up run.  Prints
one JSON object: the client's CPU per request (``time.process_time``, with the
profiler on, so inflated) and each package's share of the profiled CPU (the
event loop's idle wait left out).

    python benchmarks/client_profile.py [--step-seconds 0.05]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import pstats
import time
from typing import Any

import anyio
from scale_out import Borrowed, prompts, vote_run

from engine_bridge import EnginePool, ProcessEngine


def _package(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/")[-1].split("/")[0]
    if "/src/" in filename:
        return filename.split("/src/")[-1].split("/")[0]  # engine_bridge, scaffold_actors
    if filename == "~":
        return "builtins"
    return "stdlib"


async def main(step: float) -> dict[str, Any]:
    reply = " ".join(["token"] * 128)
    engine = ProcessEngine(
        "simulated",
        max_concurrent=256,
        extra_args=["--simulated-step-seconds", str(step), "--simulated-reply", reply],
    )
    async with EnginePool([engine]):
        members = [Borrowed(engine)]
        async with EnginePool(members) as pool:
            await vote_run(pool, prompts(8), 16, 64)  # warm: connections open
        profile = cProfile.Profile()
        async with EnginePool(members) as pool:
            cpu = time.process_time()
            profile.enable()
            run = await vote_run(pool, prompts(16), 16, 64)
            profile.disable()
            cpu = time.process_time() - cpu
    stats = pstats.Stats(profile)
    shares: collections.Counter[str] = collections.Counter()
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "poll" in name and filename == "~":
            continue  # the loop waiting for I/O: idle, not work
        shares[_package(filename)] += tottime
    total = sum(shares.values())
    return {
        "benchmark": "client_profile",
        "requests": 256,
        "tokens_per_s": round(run["tokens_per_s"], 1),
        "client_cpu_ms_per_request_profiled": round(cpu / 256 * 1000, 2),
        "share_of_profiled_cpu": {k: round(v / total, 3) for k, v in shares.most_common()},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step-seconds", type=float, default=0.05)
    args = ap.parse_args()
    print(json.dumps(anyio.run(main, args.step_seconds, backend="trio"), indent=2))
