"""Start time and memory of the embedded model: the GGUF conversion cache and the
CLI's CPU sizing.

Each configuration runs in a fresh process (no per-process memo): the engine is
started, the README's question is answered by a majority vote of 16 samples of
up to 64 tokens, and the child reports its engine start, generation time and peak
resident memory.  Configurations, in this order:

* ``no-cache``: the GGUF converted at start (``conversion_cache=False``), the
  engine's default KV cache (32,768 tokens, 8,192-token batches): before;
* ``first-start``: an empty conversion cache: converts, stores;
* ``cached``: the stored conversion read back;
* ``cached-cpu-sizing``: the same, with the CLI's CPU sizing (8,192 KV tokens,
  2,048-token batches).

Prints one JSON object.  ``--repeats`` runs the last two again (best of).

    python benchmarks/engine_start.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
import trio
from engine_bridge import HFEngine, SamplingParams
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.cli._registry import build_method

cache, kv, batch = json.loads(sys.argv[1])

async def main():
    t0 = time.perf_counter()
    engine = HFEngine(seed=0, conversion_cache=cache, kv_cache_tokens=kv,
                      batching={"max_batch_tokens": batch})
    method = build_method("majority-vote", samples=16, max_tokens=64, temperature=0.7)
    workers = {"generation": EngineWorker(engine, default_params=SamplingParams(max_tokens=64))}
    async with AsyncScaffoldingLlm(method, workers) as llm:
        t1 = time.perf_counter()
        r = await (await llm.generate_async("What is 12 + 7?"))
        t2 = time.perf_counter()
    print(json.dumps({
        "engine_start_s": round(t1 - t0, 2), "generate_s": round(t2 - t1, 2),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "answer": r.output.details.get("answer"), "loaded_from_cache": engine.loaded_from != engine.model_path,
    }))

trio.run(main)
"""


def child(cache: bool, kv: int, batch: int, env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps([cache, kv, batch])],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scaffold-start-") as cache_dir:
        env = {**os.environ, "SCAFFOLD_ACTORS_CACHE": cache_dir, "TQDM_DISABLE": "1"}
        runs: dict[str, object] = {
            "no-cache": child(False, 32768, 8192, env),
            "first-start": child(True, 32768, 8192, env),
        }
        for name, kv, batch in (("cached", 32768, 8192), ("cached-cpu-sizing", 8192, 2048)):
            tries = [child(True, kv, batch, env) for _ in range(args.repeats)]
            runs[name] = min(tries, key=lambda r: float(r["engine_start_s"]))  # type: ignore[arg-type]
    print(json.dumps({"cpu_count": os.cpu_count(), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
