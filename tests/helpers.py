"""Shared test helpers (workers and controllers used across tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, NamedTuple

import anyio
import attrs

from engine_bridge import EngineDelta, EngineRequest, SimulatedEngine
from scaffold_actors import GenerationTask, RequestContext, Task, Worker, current_scope
from scaffold_actors._worker import Handler


class EchoWorker(Worker):
    """Answers ``echo: <prompt>``; prompts containing 'boom' raise ValueError; 'slow'
    sleeps an hour (virtual)."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.cancelled = 0

    async def handle(self, task: GenerationTask) -> None:
        self.started += 1
        try:
            prompt = task.input_str or ""
            if "boom" in prompt:
                raise ValueError(f"boom in {prompt!r}")
            if "slow" in prompt:
                await anyio.sleep(3600)
            await anyio.sleep(0.01)
            task.output_str = f"echo: {prompt}"
            task.output_tokens = [1, 2, 3]
            task.completion_tokens_num = 3
            task.prompt_tokens_num = 1
            self.finished += 1
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]


class OrderedEchoWorker(EchoWorker):
    """An :class:`EchoWorker` that records the prompts in the order it starts them,
    one at a time, with room for one task in its inbox (backpressure tests)."""

    max_concurrency = 1
    inbox_size = 1

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    async def handle_in_order(self, task: GenerationTask) -> None:
        self.order.append(task.input_str or "")
        await self.handle(task)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle_in_order}  # type: ignore[dict-item]


class ScopedEchoWorker(EchoWorker):
    """An :class:`EchoWorker` that records the execution scope each task ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[str] = []

    async def handle_in_scope(self, task: GenerationTask) -> None:
        scope = current_scope.get()
        assert scope is not None
        self.scopes.append(scope.scope_id)
        await self.handle(task)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle_in_scope}  # type: ignore[dict-item]


class RunnerEngine(SimulatedEngine):
    """A simulated engine read only through ``open_stream``, as the bridged
    engines are: an engine worker runs its generations in runner tasks (the
    handler path) instead of starting their streams without one."""

    start_stream = None  # type: ignore[assignment]


async def left_for_the_collector(llm: Any, requests: int = 20) -> int:
    """Our own objects (of ``scaffold_actors`` and ``engine_bridge`` classes) that
    only the cyclic garbage collector would free after ``requests`` requests run
    one after another on ``llm`` (after a warm-up one): what finished requests
    left in reference cycles.  Garbage that anything else in the process makes
    meanwhile (another test's threads, pytest itself) is not counted."""
    import gc

    await llm.generate("warm")
    gc.collect()
    gc.disable()
    try:
        for i in range(requests):
            await llm.generate(f"q{i}")
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = sum(1 for o in gc.garbage if _is_ours(o))
        return ours
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _is_ours(obj: object) -> bool:
    module = getattr(type(obj), "__module__", "") or ""
    return module.split(".", 1)[0] in ("scaffold_actors", "engine_bridge")


def reached(engine: SimulatedEngine) -> int:
    """Requests the engine ever saw (finished, aborted or alive)."""
    return engine.completed + engine.aborted + engine.failed + engine.num_active


class StuckWorker(Worker):
    """Its handler ignores cancellation for an hour (a shielded clean-up that hangs)."""

    async def handle(self, task: GenerationTask) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(3600)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {GenerationTask: handle}  # type: ignore[dict-item]


async def one_shot(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
    """The simplest native controller: one generation."""
    return await ctx.run(task)


def answers(*texts: str) -> list[str]:
    return [f"Let me think. The answer is \\boxed{{{t}}}." for t in texts]


def kwargs_of(**kw: Any) -> dict[str, Any]:
    return kw


class Collected(NamedTuple):
    text: str
    ids: list[int]
    logprobs: list[float]
    finish: str | None
    deltas: int


async def collect(engine: Any, request: EngineRequest) -> Collected:
    """Read one request's whole stream from any engine; checks that nothing follows
    the final delta."""
    text, ids, lps, finish, deltas = "", [], [], None, 0
    async with engine.open_stream(request) as stream:
        async for d in stream:
            assert finish is None, "no delta after the final one"
            deltas += 1
            text += d.text
            ids += d.token_ids
            lps += d.logprobs or ()
            finish = d.finish_reason
    return Collected(text, ids, lps, finish, deltas)


class Stripped:
    """An engine whose deltas lose some fields (``Stripped(engine, logprobs=None)``):
    a server that ignores part of what was asked.  Everything else is the inner
    engine's (start it with ``async with inner:``)."""

    def __init__(self, inner: Any, **cleared: Any) -> None:
        self.inner = inner
        self.cleared = cleared

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @asynccontextmanager
    async def open_stream(
        self, request: EngineRequest
    ) -> AsyncIterator[AsyncIterator[EngineDelta]]:
        async with self.inner.open_stream(request) as deltas:

            async def strip() -> AsyncIterator[EngineDelta]:
                async for d in deltas:
                    yield attrs.evolve(d, **self.cleared)

            yield strip()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``scaffold serve ARGS`` in a child process on a free loopback port.

    The constructor returns once the server says its engine is ready (its own
    ``engine ready`` line, read by a thread that drains its stderr) and answers
    ``/health``; it raises :class:`RuntimeError` with the server's output if the
    process exits first, or after ``hang_guard`` seconds (a bound on a hang, not
    a budget: the embedded model's start on a busy machine stays far inside it).
    """

    def __init__(self, *args: str, hang_guard: float = 900.0) -> None:
        import subprocess
        import sys
        import threading
        import time
        from pathlib import Path

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scaffold_actors.cli", "serve", "--port", str(self.port),
             *args],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.stderr: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                if line.strip() == "engine ready":
                    ready.set()
            ready.set()  # (the process ended: the wait below says so)

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + hang_guard
        ready.wait(hang_guard)
        while True:  # the port is bound just after the engine is up
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not start:\n" + "".join(self.stderr))
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)

    def health(self) -> dict[str, object]:
        import httpx

        data: dict[str, object] = httpx.get(self.url + "/health", timeout=5).json()
        return data

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
