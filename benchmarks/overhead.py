"""Runtime overhead: majority vote of 8 samples over N prompts on an instant engine.

Three runs on the same simulated engine (which answers at once, so every second
measured is framework time):

* ``direct``: the same requests driven straight into the engine (8 concurrent
  streams per prompt, at most ``--in-flight`` prompts at a time) — the floor;
* ``native``: the native ``MajorityVote`` controller through the whole runtime;
* ``compat``: TensorRT-LLM style ``MajorityVoteController(NativeGenerationController)``.

Prints one JSON object: tasks/second for each, and per-task overhead in
microseconds ((runtime time - direct time) / tasks), measured in the same process.

``--workload instant`` measures the framework alone, with no engine at all: a
worker whose ``GenerationTask`` handler sets the answer and returns at once, under
TensorRT-LLM style ``MajorityVoteController(NativeGenerationController)`` through
``scaffold_actors.compat.ScaffoldingLlm.generate(prompts)`` (``compat-asyncio``,
as a TensorRT-LLM program runs) and the native ``MajorityVote`` through
``AsyncScaffoldingLlm`` on trio and on asyncio (``native-trio``,
``native-asyncio``): every second measured is per-task framework cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import sniffio
import trio

from engine_bridge import CostModel, EngineRequest, SamplingParams, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, GenerationTask, Worker
from scaffold_actors.compat import (
    MajorityVoteController,
    NativeGenerationController,
    ScaffoldingLlm,
    TaskStatus,
)
from scaffold_actors.methods import MajorityVote, Sampler

ANSWER = "The answer is \\boxed{4}."


def make_engine() -> SimulatedEngine:
    return SimulatedEngine(ANSWER, cost=CostModel.instant(), max_batch_size=4096)


async def run_direct(prompts: list[str], samples: int, in_flight: int) -> float:
    engine = make_engine()
    params = SamplingParams(max_tokens=64)
    limiter = anyio.CapacityLimiter(in_flight)

    async def one_sample(prompt: str) -> None:
        async with engine.open_stream(EngineRequest(params, prompt=prompt, stream=False)) as s:
            async for _ in s:
                pass

    async def one_prompt(prompt: str) -> None:
        async with limiter, anyio.create_task_group() as tg:
            for _ in range(samples):
                tg.start_soon(one_sample, prompt)

    async with engine:
        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for p in prompts:
                tg.start_soon(one_prompt, p)
        return time.perf_counter() - start


async def run_runtime(controller: Any, prompts: list[str], in_flight: int, **kwargs: Any) -> float:
    engine = make_engine()
    worker = EngineWorker(engine, max_concurrency=4096, inbox_size=4096)
    async with AsyncScaffoldingLlm(
        controller, {"generation": worker}, max_in_flight=in_flight
    ) as llm:
        start = time.perf_counter()
        results = await llm.generate(prompts, **kwargs)
        elapsed = time.perf_counter() - start
    assert all("\\boxed{4}" in (r.output.output_str or "") for r in results)
    assert engine.completed == len(prompts) * kwargs.get("sample_num", kwargs.get("samples", 8))
    return elapsed


class InstantWorker(Worker):
    """Answers every generation at once: all time measured is the framework's."""

    max_concurrency = 4096
    inbox_size = 4096

    async def generate(self, task: GenerationTask) -> TaskStatus:
        task.output_str = ANSWER
        return TaskStatus.SUCCESS

    task_handlers = {GenerationTask: generate}


async def loop_floor(
    prompts: int, samples: int, hop: bool, native: bool, batch: bool = False
) -> float:
    """The event loop alone, shaped as the runtime's work: a task per prompt, a
    task per sample under it and, with ``hop``, each sample handed through a
    queue to a server task that spawns a handler task per sample, which sets an
    event the sample waits on (the actor hop).  With ``batch`` there is no task
    per sample: the prompt's task hands its samples through the queue itself and
    waits until the last handler sets one event (the shape of
    ``Parallel.submit``).  No framework code at all: what the loop charges for
    that shape, on the loop's own primitives (``native``: trio's nursery, event
    and channel; asyncio's TaskGroup, Event and Queue) or on anyio's portable
    ones (needed on asyncio for cancel scopes)."""
    loop = sniffio.current_async_library()
    if native and loop == "trio":
        group: Any = trio.open_nursery
        event: Any = trio.Event
        checkpoint: Any = trio.lowlevel.checkpoint
        send, recv = trio.open_memory_channel[Any](prompts * samples)
        put: Any = send.send_nowait
    elif native:
        group, event, checkpoint = asyncio.TaskGroup, asyncio.Event, lambda: asyncio.sleep(0)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        put = queue.put_nowait
    else:
        group, event, checkpoint = anyio.create_task_group, anyio.Event, anyio.lowlevel.checkpoint
        send, recv = anyio.create_memory_object_stream[Any](prompts * samples)
        put = send.send_nowait

    class Batch:
        def __init__(self) -> None:
            self.left = samples
            self.event = event()

        def set(self) -> None:
            self.left -= 1
            if not self.left:
                self.event.set()

    async def handler(done: Any) -> None:
        done.set()

    async def serve(tg: Any) -> None:
        if native and loop == "asyncio":
            while True:
                tg.create_task(handler(await queue.get()))
        async for done in recv:
            tg.start_soon(handler, done)

    def spawn(tg: Any, fn: Any, *args: Any) -> None:
        if native and loop == "asyncio":
            tg.create_task(fn(*args))
        else:
            tg.start_soon(fn, *args)

    async def sample() -> None:
        if hop:
            done = event()
            put(done)
            await done.wait()
        else:
            await checkpoint()

    async def prompt() -> None:
        if batch:
            done = Batch()
            for _ in range(samples):
                put(done)
            await done.event.wait()
            return
        async with group() as tg:
            for _ in range(samples):
                spawn(tg, sample)

    try:
        async with group() as outer:
            spawn(outer, serve, outer)
            start = time.perf_counter()
            async with group() as tg:
                for _ in range(prompts):
                    spawn(tg, prompt)
            elapsed = time.perf_counter() - start
            raise _Done
    except* _Done:
        pass
    return elapsed


class _Done(Exception):
    """Stops the floor's server task (every loop's group cancels on an error)."""


def breakdown(args: argparse.Namespace) -> dict[str, Any]:
    """Where a task's microseconds go on the instant workload: the same 8 tasks
    per prompt through less and less of the stack, best of ``--repeats``, on
    trio and on asyncio (``--workload breakdown``).

    * ``vote``: ``MajorityVote(Sampler())`` (what ``instant`` measures natively);
    * ``vote-no-extraction``: the same with an answer extractor that returns a
      constant (what parsing the answers costs);
    * ``parallel-run``: a controller that starts 8 ``ctx.parallel()`` children,
      each ``await ctx.run(GenerationTask(...))`` (the runtime alone: a branch task,
      an execution scope, validation, the actor, accounting);
    * ``parallel-submit``: 8 ``par.submit(GenerationTask(...))`` in a
      ``ctx.parallel()`` block (no task of the request's own per child);
    * ``sequential-run``: 8 ``ctx.run`` one after another (no branch task);
    * and the loop's floors for the same shape (see ``instant``).
    """
    prompts = [f"Question {i}: what is 2 + 2?" for i in range(args.prompts)]
    n = args.samples

    async def parallel_run(ctx: Any, task: GenerationTask) -> GenerationTask:
        async def one() -> None:
            await ctx.run(GenerationTask(input_str=task.input_str, max_tokens=64))

        async with ctx.parallel() as par:
            for _ in range(n):
                par.start(one)
        return task

    async def parallel_submit(ctx: Any, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            for _ in range(n):
                par.submit(GenerationTask(input_str=task.input_str, max_tokens=64))
        return task

    async def sequential_run(ctx: Any, task: GenerationTask) -> GenerationTask:
        for _ in range(n):
            await ctx.run(GenerationTask(input_str=task.input_str, max_tokens=64))
        return task

    shapes = {
        "vote": MajorityVote(Sampler(max_tokens=64), samples=n, early_stop=False),
        "vote-no-extraction": MajorityVote(
            Sampler(max_tokens=64), samples=n, early_stop=False, extract=lambda _: "4"
        ),
        "parallel-run": parallel_run,
        "parallel-submit": parallel_submit,
        "sequential-run": sequential_run,
    }

    async def timed(controller: Any) -> float:
        async with AsyncScaffoldingLlm(controller, {"generation": InstantWorker()}) as llm:
            await llm.generate(prompts[:50])
            start = time.perf_counter()
            await llm.generate(prompts)
            return time.perf_counter() - start

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for backend in ("trio", "asyncio"):
            for name, controller in shapes.items():
                gc.collect()
                key = f"{name}-{backend}"
                best[key] = min(
                    best.get(key, float("inf")), anyio.run(timed, controller, backend=backend)
                )
            for own, label, batch in (
                (True, "", False),
                (False, "-anyio", False),
                (True, "", True),
            ):
                key = f"floor-{backend}{label}-{'batch' if batch else 'hop'}"
                took = anyio.run(loop_floor, args.prompts, n, True, own, batch, backend=backend)
                best[key] = min(best.get(key, float("inf")), took)
    tasks = args.prompts * n
    return {
        "benchmark": "overhead",
        "workload": "breakdown",
        "prompts": args.prompts,
        "samples_per_prompt": n,
        "tasks": tasks,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "per_task_us": {k: round(v / tasks * 1e6, 1) for k, v in best.items()},
    }


@contextlib.contextmanager
def _collector(off: bool) -> Iterator[None]:
    """With ``off``, the garbage collector is disabled for the block."""
    if not off:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def instant(args: argparse.Namespace) -> dict[str, Any]:
    """tasks/s of the three instant-handler modes, best of ``--repeats``."""
    prompts = [f"Question {i}: what is 2 + 2?" for i in range(args.prompts)]
    n_tasks = args.prompts * args.samples

    def compat_controller() -> MajorityVoteController:
        return MajorityVoteController(
            NativeGenerationController({"max_tokens": 64}), default_sample_num=args.samples
        )

    def compat_asyncio() -> float:
        with ScaffoldingLlm(compat_controller(), {"generation": InstantWorker()}) as llm:
            llm.generate(prompts[:50])  # warm
            with _collector(args.gc_off):
                start = time.perf_counter()
                results = llm.generate(prompts)
                elapsed = time.perf_counter() - start
        assert all("\\boxed{4}" in (r.output.output_str or "") for r in results)
        return elapsed

    async def native() -> float:
        method = MajorityVote(Sampler(max_tokens=64), samples=args.samples, early_stop=False)
        async with AsyncScaffoldingLlm(method, {"generation": InstantWorker()}) as llm:
            await llm.generate(prompts[:50])
            with _collector(args.gc_off):
                start = time.perf_counter()
                results = await llm.generate(prompts)
                elapsed = time.perf_counter() - start
        assert all("\\boxed{4}" in (r.output.output_str or "") for r in results)
        return elapsed

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in (
            ("compat-asyncio", compat_asyncio),
            ("native-trio", lambda: anyio.run(native, backend="trio")),
            ("native-asyncio", lambda: anyio.run(native, backend="asyncio")),
        ):
            gc.collect()
            best[name] = min(best.get(name, float("inf")), run())
        for backend in ("trio", "asyncio"):
            for own in (True, False):
                for hop in (False, True):
                    name = f"floor-{backend}{'' if own else '-anyio'}-{'hop' if hop else 'spawn'}"
                    gc.collect()
                    took = anyio.run(
                        loop_floor, args.prompts, args.samples, hop, own, backend=backend
                    )
                    best[name] = min(best.get(name, float("inf")), took)
            name = f"floor-{backend}-batch"
            gc.collect()
            took = anyio.run(
                loop_floor, args.prompts, args.samples, True, True, True, backend=backend
            )
            best[name] = min(best.get(name, float("inf")), took)
    return {
        "benchmark": "overhead",
        "workload": "instant",
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "tasks": n_tasks,
        "gc_off": args.gc_off,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "tasks_per_second": {k: round(n_tasks / v) for k, v in best.items()},
        "per_task_us": {k: round(v / n_tasks * 1e6, 1) for k, v in best.items()},
    }


#: where a profiled function's time is counted (first match on its file's path)
_LAYERS = (
    ("/scaffold_actors/_worker.py", "worker actor: runner, hand-off, slot, cancel scope"),
    ("/scaffold_actors/_task_context.py", "worker actor: runner, hand-off, slot, cancel scope"),
    ("/scaffold_actors/_controller.py", "generator driver (compat): stepping, fan-out"),
    ("/scaffold_actors/compat/", "TensorRT-LLM controllers: clone, deepcopy, process, vote"),
    ("/copy.py", "TensorRT-LLM controllers: clone, deepcopy, process, vote"),
    ("/scaffold_actors/methods/", "native method: vote bookkeeping, sampler, answers"),
    ("/scaffold_actors/_runtime.py", "runtime: request start and end, result"),
    ("/scaffold_actors/_result.py", "runtime: request start and end, result"),
    ("/scaffold_actors/", "request: submission, validation, jobs, accounting"),
    ("/attr/", "attrs: validation on assignment, copies"),
    ("/trio/", "event loop (trio / asyncio / anyio)"),
    ("/asyncio/", "event loop (trio / asyncio / anyio)"),
    ("/anyio/", "event loop (trio / asyncio / anyio)"),
    ("/sniffio/", "event loop (trio / asyncio / anyio)"),
    ("overhead.py", "the benchmark: handler, prompts"),
)


#: functions counted apart from their file's layer: a task's deep copy is what a
#: TensorRT-LLM controller asks for (copy.deepcopy per sample)
_FUNCTION_LAYERS = {"__deepcopy__": "TensorRT-LLM controllers: clone, deepcopy, process, vote"}


def _layer(filename: str, function: str = "") -> str:
    if function in _FUNCTION_LAYERS:
        return _FUNCTION_LAYERS[function]
    filename = filename.replace("\\", "/")
    for part, layer in _LAYERS:
        if part in filename:
            return layer
    return "other"


def profile(args: argparse.Namespace) -> dict[str, Any]:
    """Where a task's microseconds go, per layer: each mode runs unprofiled (best
    of ``--repeats``) and once under cProfile; a layer's share of the profiled
    time (a built-in's time counted where it was called from) times the
    unprofiled time per task.  cProfile weighs Python calls more than C ones, so
    the split is approximate; the totals are measured."""
    import cProfile
    import pstats

    prompts = [f"Question {i}: what is 2 + 2?" for i in range(args.prompts)]
    n_tasks = args.prompts * args.samples
    methods = {
        "compat": lambda: MajorityVoteController(
            NativeGenerationController({"max_tokens": 64}), default_sample_num=args.samples
        ),
        "native": lambda: MajorityVote(
            Sampler(max_tokens=64), samples=args.samples, early_stop=False
        ),
    }

    async def timed(method: Any, profiler: cProfile.Profile | None) -> float:
        async with AsyncScaffoldingLlm(method, {"generation": InstantWorker()}) as llm:
            await llm.generate(prompts[:50])
            gc.collect()
            start = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            await llm.generate(prompts)
            if profiler is not None:
                profiler.disable()
            return time.perf_counter() - start

    per_task: dict[str, float] = {}
    layers: dict[str, dict[str, float]] = {}
    top: dict[str, list[tuple[str, float]]] = {}
    for key, method, backend in (
        ("compat-asyncio", "compat", "asyncio"),
        ("native-trio", "native", "trio"),
        ("native-asyncio", "native", "asyncio"),
    ):
        best = min(
            anyio.run(timed, methods[method](), None, backend=backend) for _ in range(args.repeats)
        )
        profiler = cProfile.Profile()
        anyio.run(timed, methods[method](), profiler, backend=backend)
        stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        own: dict[str, float] = {}
        functions: dict[str, float] = {}
        for (filename, line, name), (_cc, _nc, tottime, _ct, callers) in stats.items():
            if filename == "~" and callers:  # a built-in: counted where it was called from
                called = sum(c[2] for c in callers.values()) or 1.0
                for caller, c in callers.items():
                    layer = _layer(caller[0], caller[2])
                    own[layer] = own.get(layer, 0.0) + tottime * c[2] / called
            else:
                layer = _layer(filename, name)
                own[layer] = own.get(layer, 0.0) + tottime
            where = f"{filename.rsplit('/', 1)[-1]}:{line}({name})"
            functions[where] = functions.get(where, 0.0) + tottime
        total = sum(own.values())
        us = best / n_tasks * 1e6
        per_task[key] = round(us, 1)
        layers[key] = {
            k: round(v / total * us, 1) for k, v in sorted(own.items(), key=lambda kv: -kv[1])
        }
        top[key] = [
            (f, round(t / total * us, 2))
            for f, t in sorted(functions.items(), key=lambda kv: -kv[1])[:12]
        ]
    return {
        "benchmark": "overhead",
        "workload": "profile",
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "tasks": n_tasks,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "per_task_us": per_task,
        "per_task_us_by_layer": layers,
        "top_functions_us": top,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs for each mode")
    ap.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    ap.add_argument(
        "--workload",
        choices=["engine", "instant", "breakdown", "profile"],
        default="engine",
        help="engine: the simulated instant engine; instant: handlers answer at once; "
        "breakdown: the instant workload through less and less of the stack; "
        "profile: where the instant workload's microseconds go, per layer",
    )
    ap.add_argument(
        "--gc-off",
        action="store_true",
        help="instant: the garbage collector disabled during the timed runs (its share)",
    )
    args = ap.parse_args()
    workloads = {"instant": instant, "breakdown": breakdown, "profile": profile}
    if args.workload in workloads:
        print(json.dumps(workloads[args.workload](args), indent=2))
        return

    prompts = [f"Question {i}: what is 2 + 2?" for i in range(args.prompts)]
    n_tasks = args.prompts * args.samples
    native = MajorityVote(Sampler(max_tokens=64), samples=args.samples, early_stop=False)
    compat = MajorityVoteController(
        NativeGenerationController({"max_tokens": 64}), default_sample_num=args.samples
    )

    async def bench() -> dict[str, float]:
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, coro in (
                ("direct", lambda: run_direct(prompts, args.samples, args.in_flight)),
                (
                    "native",
                    lambda: run_runtime(native, prompts, args.in_flight, samples=args.samples),
                ),
                (
                    "compat",
                    lambda: run_runtime(compat, prompts, args.in_flight, sample_num=args.samples),
                ),
            ):
                gc.collect()
                t = await coro()
                best[name] = min(best.get(name, float("inf")), t)
        return best

    best = anyio.run(bench, backend=args.backend)
    out: dict[str, Any] = {
        "benchmark": "overhead",
        "backend": args.backend,
        "prompts": args.prompts,
        "samples_per_prompt": args.samples,
        "tasks": n_tasks,
        "max_in_flight": args.in_flight,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "seconds": {k: round(v, 4) for k, v in best.items()},
        "tasks_per_second": {k: round(n_tasks / v) for k, v in best.items()},
        "per_task_overhead_us": {
            k: round((best[k] - best["direct"]) / n_tasks * 1e6, 2) for k in ("native", "compat")
        },
        "per_task_total_us": {k: round(v / n_tasks * 1e6, 2) for k, v in best.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
