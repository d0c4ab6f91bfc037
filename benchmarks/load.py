"""Load: many concurrent requests (majority vote of 8) on the simulated engine.

Checks and reports:

* every request gets exactly one result, and the right one (each prompt's samples
  answer with the prompt's own number): ``lost``, ``duplicated``, ``mixed_up``;
* peak memory (tracemalloc) of runs with every request in flight, for several
  in-flight caps, and the slope: bytes per in-flight request (a straight line
  means memory grows linearly and is bounded by the cap);
* CPU per task, of the whole process and of the event loop's thread, in a saturated
  run without the latency probe (the probe wakes every millisecond: in a long run,
  a real engine's, its wake-ups would be most of the loop's CPU);
* the event loop's scheduling latency while loaded: a probe sleeps 1 ms over and
  over and records how late it wakes (p50, p99, max), in two more runs: with every
  request submitted at once (the loop saturated: latency is then the length of the
  run queue), and with requests arriving at a steady ``--rate`` per second, as a
  server sees them (``at_rate``).

Prints one JSON object.  ``--requests 10000`` is the full setting (the stress test
runs a smaller one).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from collections import Counter
from typing import Any

import anyio

from engine_bridge import CostModel, SimulatedCall, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler

BACKEND = ["trio"]
RATE_KEYS = (
    "requests", "wall_s", "requests_per_s", "lost", "duplicated", "mixed_up", "left_after",
    "scheduling_latency_ms",
)  # fmt: skip


def reply(call: SimulatedCall) -> str:
    number = call.prompt.rsplit("#", 1)[-1].split()[0]
    # lengths vary (1-16 words of reasoning), so completions spread over engine steps
    # as they do on a real engine
    return "so " * (1 + (call.index * 7) % 16) + f"It is \\boxed{{{number}}}."


class OpenStreamOnly(SimulatedEngine):
    """The simulated engine read through ``open_stream`` only, as the bridged
    engines (transformers, TensorRT-LLM) are: each sample runs in a runner task."""

    start_stream = None  # type: ignore[assignment]


ENGINE: list[Any] = [SimulatedEngine]
#: the engine kind (--engine): simulated, trtllm (the TensorRT-LLM API stand-in of
#: tests/standins where tensorrt_llm is not installed) or hf (the embedded model)
KIND = ["simulated"]
MAX_TOKENS = [32]


def make_engine(step: float) -> Any:
    if KIND[0] == "trtllm":
        from engine_bridge import TRTLLMEngine

        def standin_reply(prompt: str) -> str:  # the prompt's own number, as reply()
            number = prompt.rsplit("#", 1)[-1].split()[0]
            return "so " * (1 + len(prompt) % 16) + f"It is \\boxed{{{number}}}."

        return TRTLLMEngine(
            "standin-model",
            max_concurrent=1 << 20,
            llm_kwargs={"_standin_reply": standin_reply, "_standin_step_s": step},
        )
    if KIND[0] == "hf":
        from engine_bridge import HFEngine

        return HFEngine(max_concurrent=512)  # (a 32k-token KV cache: --in-flight 50 fits)
    if KIND[0] == "process":  # a simulated engine served over HTTP by a child process
        from engine_bridge import ProcessEngine

        return ProcessEngine(
            "simulated",
            max_concurrent=1 << 16,
            extra_args=["--simulated-step-seconds", str(step), "--max-context", "4096"],
        )
    return ENGINE[0](
        reply, cost=CostModel(0.0, step, 0.0), max_batch_size=1 << 20, kv_capacity=1 << 40
    )


def _use_trtllm_standin() -> str:
    """Where ``tensorrt_llm`` comes from: the real package, else the stand-in."""
    import importlib.util
    import os

    if importlib.util.find_spec("tensorrt_llm") is not None:
        return "tensorrt_llm (installed)"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, os.pardir, "tests", "standins"))
    return "tests/standins (the LLM API stand-in)"


async def run(
    requests: int,
    in_flight: int,
    samples: int,
    step: float,
    probe: bool,
    rate: float | None = None,
) -> dict[str, Any]:
    engine = make_engine(step)
    method = MajorityVote(Sampler(max_tokens=MAX_TOKENS[0]), samples=samples, early_stop=False)
    worker = EngineWorker(engine, max_concurrency=1 << 20, inbox_size=1 << 20)
    seen: dict[int, int] = {}
    mixed = 0
    lateness: list[float] = []
    async with AsyncScaffoldingLlm(method, {"generation": worker}, max_in_flight=in_flight) as llm:

        async def one(i: int) -> None:
            nonlocal mixed
            result = await (await llm.generate_async(f"Question #{i} please"))
            seen[i] = seen.get(i, 0) + 1
            if result.output is None:
                mixed += 1
            elif KIND[0] in ("simulated", "trtllm") and result.output.details.get("answer") != str(i):
                mixed += 1  # (a real model's answer is not checked)

        async def probe_loop() -> None:
            while True:
                t0 = time.perf_counter()
                await anyio.sleep(0.001)
                lateness.append(time.perf_counter() - t0 - 0.001)

        start = time.perf_counter()
        cpu0, loop0 = time.process_time(), time.thread_time()
        t0 = anyio.current_time()
        async with anyio.create_task_group() as outer:
            if probe:
                outer.start_soon(probe_loop)
            async with anyio.create_task_group() as tg:
                for i in range(requests):
                    tg.start_soon(one, i)
                    if rate:
                        await anyio.sleep_until(t0 + (i + 1) / rate)
            outer.cancel_scope.cancel()
        wall = time.perf_counter() - start
        cpu, loop_cpu = time.process_time() - cpu0, time.thread_time() - loop0
        stats = llm.stats()
    out: dict[str, Any] = {
        "requests": requests,
        "tasks": requests * samples,
        "wall_s": round(wall, 3),
        "requests_per_s": round(requests / wall, 1),
    }
    if not probe:  # (the probe's own wake-ups would be counted)
        out |= {
            # the process's CPU (every thread: an engine's bridge thread included)
            "cpu_s": round(cpu, 3),
            "cpu_us_per_task": round(cpu / (requests * samples) * 1e6, 1),
            # the event loop's thread alone (the runtime, and an engine's loop side; the
            # simulated engine's scheduler runs there too, a bridged engine's does not)
            "loop_cpu_us_per_task": round(loop_cpu / (requests * samples) * 1e6, 1),
        }
    out |= {
        "lost": sum(1 for i in range(requests) if i not in seen),
        "duplicated": sum(1 for c in seen.values() if c > 1),
        "mixed_up": mixed,
        "left_after": {
            k: stats[k]
            for k in ("requests_in_flight", "tasks_running", "tasks_queued", "engine_requests")
        },
    }
    if lateness:
        xs = sorted(lateness)
        out["scheduling_latency_ms"] = {
            "samples": len(xs),
            "p50": round(xs[len(xs) // 2] * 1e3, 3),
            "p99": round(xs[int(len(xs) * 0.99)] * 1e3, 3),
            "max": round(xs[-1] * 1e3, 3),
        }
    return out


def peak_bytes(in_flight: int, samples: int, step: float, requests: int | None = None) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    n = in_flight if requests is None else requests
    anyio.run(run, n, in_flight, samples, step, False, backend=BACKEND[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - base


class FullCollections:
    """A ``gc.callbacks`` entry: how many full collections ran, and for how long;
    and the event loop's thread's CPU in collections of any generation (the
    collector runs in whichever thread allocates: a real engine's threads too)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.loop_cpu_s = 0.0
        self._start = 0.0
        self._loop_start = 0.0
        self._loop = threading.get_ident()

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() == self._loop:
            if phase == "start":
                self._loop_start = time.thread_time()
            else:
                self.loop_cpu_s += time.thread_time() - self._loop_start
        if info["generation"] != 2:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._start


def breakdown(in_flight: int, samples: int, step: float, top: int = 12) -> dict[str, Any]:
    """Where an in-flight request's bytes are: a tracemalloc snapshot taken at the
    run's peak (every request in flight), the live bytes per request by package
    and the largest allocation sites (file:line, bytes per request, count)."""
    gc.collect()
    base_objects = Counter(type(o).__qualname__ for o in gc.get_objects())
    tracemalloc.start(1)
    base = tracemalloc.get_traced_memory()[0]
    best: dict[str, Any] = {"bytes": 0, "snapshot": None, "objects": Counter()}

    async def sampled() -> None:
        async def watch() -> None:
            while True:
                await anyio.sleep(0.05)
                now = tracemalloc.get_traced_memory()[0]
                if now > best["bytes"]:
                    best["bytes"], best["snapshot"] = now, tracemalloc.take_snapshot()
                    # what the collector walks: its tracked objects, by type
                    best["objects"] = Counter(type(o).__qualname__ for o in gc.get_objects())

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await run(in_flight, in_flight, samples, step, False)
            tg.cancel_scope.cancel()

    anyio.run(sampled, backend=BACKEND[0])
    tracemalloc.stop()
    objects = best["objects"] - base_objects
    stats = best["snapshot"].statistics("lineno")
    by_package: dict[str, int] = {}
    for stat in stats:
        path = stat.traceback[0].filename.replace("\\", "/")
        name = next(
            (
                p
                for p in ("scaffold_actors", "engine_bridge", "trio", "anyio")
                if f"/{p}/" in path or path.startswith(f"<attrs generated methods {p}.")
            ),
            "other (Python, attrs, ...)",
        )
        by_package[name] = by_package.get(name, 0) + stat.size
    sites = []
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = "/".join(frame.filename.replace("\\", "/").split("/")[-2:])
        sites.append([f"{where}:{frame.lineno}", round(stat.size / in_flight), stat.count])
    return {
        "in_flight": in_flight,
        "bytes_per_request": round((best["bytes"] - base) / in_flight),
        "by_package": {
            k: round(v / in_flight) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "largest_sites": sites,
        # every one of them is visited by each full collection (the collector's
        # share of the saturated run, and its pauses)
        "gc_tracked_objects_per_request": round(sum(objects.values()) / in_flight, 1),
        "gc_tracked_by_type": [[k, round(v / in_flight, 1)] for k, v in objects.most_common(top)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--step", type=float, default=0.002, help="simulated seconds per engine step")
    ap.add_argument("--in-flight", type=int, default=1000, help="requests in flight at once")
    ap.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    ap.add_argument(
        "--rate", type=float, default=150.0, help="arrivals per second for the at-rate run"
    )
    ap.add_argument(
        "--rate-requests", type=int, default=None, help="requests in the at-rate run (--requests)"
    )
    ap.add_argument(
        "--memory-caps", default="250,500,1000,2000", help="in-flight caps for the memory runs"
    )
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="print only where an in-flight request's bytes are (a peak snapshot at --in-flight)",
    )
    ap.add_argument(
        "--saturated-only",
        action="store_true",
        help="run only the saturated run (no at-rate or memory runs): for A/B timing",
    )
    ap.add_argument(
        "--open-stream-only",
        action="store_true",
        help="read the engine through open_stream only (a runner task per sample, as on "
        "the bridged engines) instead of starting its streams without a task",
    )
    ap.add_argument(
        "--engine",
        choices=("simulated", "trtllm", "hf", "process"),
        default="simulated",
        help="simulated; trtllm: TRTLLMEngine over tensorrt_llm, or over the LLM API "
        "stand-in of tests/standins where it is not installed; hf: HFEngine over the "
        "embedded model on the CPU (use small --in-flight and --max-tokens); process: the "
        "simulated engine served over HTTP by a child process (OpenAIEngine: a reader task "
        "per response; the server's memory is not counted)",
    )
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per sample at most")
    ap.add_argument(
        "--gc-off",
        action="store_true",
        help="disable the cyclic garbage collector during the saturated run (its share of the time)",
    )
    ap.add_argument(
        "--gc-freeze",
        action="store_true",
        help="gc.freeze() once the engine is loaded, before the runs: the collector then "
        "leaves everything alive at that point (a real engine's model and library "
        "objects) out of its walks",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="requests in an untimed run before the measured ones (first-use costs: "
        "imports, caches, a real engine's warm-up)",
    )
    args = ap.parse_args()
    BACKEND[0] = args.backend
    KIND[0] = args.engine
    MAX_TOKENS[0] = args.max_tokens
    engine_info: dict[str, Any] = {"engine": args.engine}
    if args.engine == "trtllm":
        engine_info["tensorrt_llm"] = _use_trtllm_standin()
    if args.engine == "hf":  # loaded (and its imports done) before any measurement
        make_engine(args.step).load()
    if args.open_stream_only:
        if args.engine != "simulated":
            ap.error("--open-stream-only is for the simulated engine")
        ENGINE[0] = OpenStreamOnly
    if args.breakdown:
        out = breakdown(args.in_flight, args.samples, args.step)
        print(json.dumps({"benchmark": "load-memory-breakdown", **engine_info, **out}, indent=2))
        return
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    if args.gc_off:
        gc.collect()
        gc.disable()
    if args.warmup:  # untimed: first-use costs (imports, caches, the engine's warm-up)
        anyio.run(run, args.warmup, args.in_flight, args.samples, args.step, False, backend=args.backend)
    full = FullCollections()
    gc.callbacks.append(full)
    try:
        load = anyio.run(
            run, args.requests, args.in_flight, args.samples, args.step, False, backend=args.backend
        )
    finally:
        gc.callbacks.remove(full)
        gc.enable()
    saturated = {
        "benchmark": "load",
        **engine_info,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "samples_per_request": args.samples,
        "backend": args.backend,
        "in_flight_cap": args.in_flight,
        "gc_off_in_saturated_run": args.gc_off,
        "gc_frozen_after_load": args.gc_freeze,
        "warmup_requests": args.warmup,
        **load,
        # the cyclic collector's full (generation 2) collections in the saturated
        # run: each walks every tracked object alive, so their time grows with the
        # objects each in-flight request holds
        "gc_full_collections": full.count,
        "gc_full_collections_s": round(full.seconds, 3),
        # the loop thread's CPU per task less its collections (the collector walks
        # every tracked object alive: with a real engine, the library's too)
        "loop_cpu_us_per_task_outside_gc": round(
            load["loop_cpu_us_per_task"] - full.loop_cpu_s / load["tasks"] * 1e6, 1
        ),
    }
    if args.saturated_only:
        print(json.dumps(saturated, indent=2))
        return
    # the loop's lateness when saturated, in a run of its own (the probe costs CPU)
    probed = anyio.run(
        run, args.requests, args.in_flight, args.samples, args.step, True, backend=args.backend
    )
    saturated["scheduling_latency_ms"] = probed["scheduling_latency_ms"]
    n_rate = args.rate_requests or args.requests
    at_rate = anyio.run(
        run, n_rate, args.in_flight, args.samples, args.step, True, args.rate,
        backend=args.backend,
    )  # fmt: skip
    caps = [int(c) for c in args.memory_caps.split(",") if c]
    peaks = [peak_bytes(c, args.samples, args.step) for c in caps]
    # four times more requests than the cap: memory must stay near the cap's figure
    over = peak_bytes(caps[-1], args.samples, args.step, requests=4 * caps[-1])
    slope = statistics.linear_regression(caps, peaks).slope if len(caps) > 1 else peaks[0] / caps[0]
    fit = statistics.correlation(caps, peaks) if len(caps) > 2 else None
    print(
        json.dumps(
            {
                **saturated,
                "at_rate": {
                    "arrivals_per_s": args.rate,
                    **{k: at_rate[k] for k in RATE_KEYS},
                },
                "memory": {
                    "in_flight_caps": caps,
                    "peak_bytes": peaks,
                    "bytes_per_in_flight_request": round(slope),
                    "linear_fit_r": None if fit is None else round(fit, 4),
                    "peak_bytes_4x_requests_at_largest_cap": over,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
