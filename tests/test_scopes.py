"""Execution scopes: every request a root, every parallel branch a child, seen by
handlers, and ended (``Worker.on_scope_end``) after everything in it has ended,
whatever the outcome.  What is released is read from the worker's own state."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any, ClassVar

import anyio
import pytest

from scaffold_actors import (
    AsyncScaffoldingLlm,
    ExecutionScope,
    GenerationTask,
    RequestContext,
    Task,
    TaskStatus,
    Worker,
    current_scope,
    task_context,
)
from scaffold_actors.compat import Controller, ParallelProcess, ScaffoldingLlm


class SessionWorker(Worker):
    """Opens a 'session' per execution scope on the first task in it and closes
    it in on_scope_end, like an MCP worker keeping a stateful session per branch."""

    def __init__(self, fail_end: str | None = None) -> None:
        self.sessions: dict[str, int] = {}  # scope id -> tasks served in it
        self.seen: list[str] = []  # scope of each task, as the handler saw it
        self.ended: list[str] = []
        self.fail_end = fail_end

    async def handle(self, task: GenerationTask) -> TaskStatus:
        scope = task_context().scope
        assert scope is not None and current_scope.get() == scope
        self.seen.append(scope.scope_id)
        self.sessions[scope.scope_id] = self.sessions.get(scope.scope_id, 0) + 1
        if task.input_str == "hang":
            await anyio.sleep_forever()
        if task.input_str == "boom":
            raise ValueError("boom")
        await anyio.sleep(0.01)
        task.output_str = scope.scope_id
        return TaskStatus.SUCCESS

    async def on_scope_end(self, scope_id: str) -> None:
        await anyio.sleep(0.001)  # it may block: it runs shielded
        self.ended.append(scope_id)
        self.sessions.pop(scope_id, None)
        if scope_id == self.fail_end:
            raise RuntimeError(f"could not close {scope_id}")

    task_handlers: ClassVar[dict[type[Task], Any]] = {GenerationTask: handle}


def gen(prompt: str) -> GenerationTask:
    return GenerationTask.create_from_prompt(prompt)


def test_scope_ids() -> None:
    root = ExecutionScope("req-1")
    assert root.scope_id == "req-1" and root.child(0).scope_id == "req-1:0"
    assert root.child(0).child(2).scope_id == "req-1:0.2" == str(root.with_branch_path([0, 2]))
    assert root.child(3).branch_path_list == [3]
    with pytest.raises(ValueError, match="branch_path"):
        ExecutionScope("req-1", (-1,))
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="branch_path"):
            root.child(bad)  # type: ignore[arg-type]
    # a child equals (and hashes as) the scope built from its path
    assert root.child(0).child(2) == ExecutionScope("req-1", (0, 2))
    assert hash(root.child(0).child(2)) == hash(ExecutionScope("req-1", (0, 2)))


async def test_branches_get_child_scopes_and_end_after_their_tasks(autojump_clock: object) -> None:
    worker = SessionWorker()
    seen: dict[str, str] = {}

    async def branch(ctx: RequestContext, name: str, nested: bool) -> None:
        seen[name] = ctx.scope.scope_id
        await ctx.run_all([gen("a"), gen("b")])  # tasks share their branch's scope
        if nested:
            async with ctx.parallel() as par:
                par.start(ctx.run, gen("c"))
                par.start(ctx.run, gen("d"))

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        seen["root"] = ctx.scope.scope_id
        await ctx.run(gen("x"))
        async with ctx.parallel() as par:
            par.start(branch, ctx, "first", False)
            par.start(branch, ctx, "second", True)
        task.output_str = "ok"
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        r = await llm.generate_async("q")
        await r
    root = f"req-{r.request_id}"
    assert seen == {"root": root, "first": f"{root}:0", "second": f"{root}:1"}
    assert sorted(set(worker.seen)) == sorted(
        [root, f"{root}:0", f"{root}:1", f"{root}:1.0", f"{root}:1.1"]
    )
    assert worker.sessions == {}  # every session closed
    assert worker.ended[-1] == root  # the root ends last, after its branches
    assert set(worker.ended) == set(worker.seen)


@pytest.mark.parametrize("outcome", ["error", "cancel"])
async def test_scopes_end_when_a_request_fails_or_is_cancelled(
    outcome: str, autojump_clock: object
) -> None:
    worker = SessionWorker()
    started = anyio.Event()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            par.start(ctx.run, gen("hang"))
            par.start(ctx.run, gen("a"))
            await anyio.sleep(1)
            started.set()
            if outcome == "error":
                await ctx.run(gen("boom"))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        r = await llm.generate_async("q")
        await started.wait()
        if outcome == "cancel":
            assert worker.sessions  # held while the branches run
            await r.acancel()
        else:
            with pytest.raises(ValueError, match="boom"):
                await r
        assert worker.sessions == {}  # released before the cancel / the error returned
    assert f"req-{r.request_id}" in worker.ended


async def test_a_failing_on_scope_end_fails_the_request(autojump_clock: object) -> None:
    worker = SessionWorker(fail_end="req-0:0")

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            par.start(ctx.run, gen("a"))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        with pytest.raises(RuntimeError, match="could not close req-0:0"):
            await llm.generate("q")
    assert worker.sessions == {}  # the root still ended


async def test_on_scope_end_after_an_error_is_noted_on_it(autojump_clock: object) -> None:
    worker = SessionWorker(fail_end="req-0")

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run(gen("boom"))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        with pytest.raises(ValueError, match="boom") as info:
            await llm.generate("q")
    assert any("could not close req-0" in n for n in info.value.__notes__)


def test_trtllm_style_parallel_process_forks_scopes() -> None:
    """A sync generator controller and asyncio handlers, as TensorRT-LLM writes them."""

    class ScopeReader(Worker):
        def __init__(self) -> None:
            self.ended: list[str] = []

        async def generation_handler(self, task: GenerationTask) -> TaskStatus:
            await asyncio.sleep(0)
            scope = current_scope.get()
            task.output_str = scope.scope_id if scope else "none"
            return TaskStatus.SUCCESS

        def on_scope_end(self, scope_id: str) -> None:  # a sync one is accepted too
            self.ended.append(scope_id)

        task_handlers: ClassVar[dict[type[Task], Any]] = {GenerationTask: generation_handler}

    class Leaf(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            yield tasks

    class Fork(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            subs = [gen("a"), gen("b"), gen("c")]
            yield ParallelProcess([Leaf(), Leaf(), Leaf()], [[t] for t in subs], [{}, {}, {}])
            tasks[0].output_str = ",".join(t.output_str or "" for t in subs)

    worker = ScopeReader()
    with ScaffoldingLlm(Fork(), {"generation": worker}) as llm:
        result = llm.generate("q")
    root = f"req-{result.request_id}"
    assert result.output.output_str == f"{root}:0,{root}:1,{root}:2"
    assert sorted(worker.ended) == sorted([root, f"{root}:0", f"{root}:1", f"{root}:2"])
    assert worker.ended[-1] == root


async def test_an_on_scope_end_that_outlives_cancel_grace_is_loud(autojump_clock: object) -> None:
    from scaffold_actors import CancelGraceExceededWarning

    class Stuck(SessionWorker):
        async def on_scope_end(self, scope_id: str) -> None:
            await anyio.sleep_forever()

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ctx.run(gen("a"))
        return task

    async with AsyncScaffoldingLlm(method, {"generation": Stuck()}, cancel_grace=5) as llm:
        with pytest.warns(CancelGraceExceededWarning, match=r"on_scope_end\('req-0'\)"):
            await llm.generate("q")
