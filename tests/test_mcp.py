"""MCPWorker against real MCP servers written with the official SDK
(tests/mcp_server.py), over stdio (a child process) and streamable HTTP (a
loopback server).  What a cancel or a death did is read from the server itself."""

from __future__ import annotations

import functools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

pytest.importorskip("mcp")

from scaffold_actors import (
    AsyncScaffoldingLlm,
    GenerationTask,
    InvalidTaskError,
    MCPCallTask,
    MCPListTask,
    MCPServerError,
    MCPWorker,
    RequestContext,
    Task,
    ToolCallTask,
)

SERVER = str(Path(__file__).resolve().parent / "mcp_server.py")
STDIO = [sys.executable, SERVER, "stdio"]


def _serve(kind: str, path: str) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [sys.executable, SERVER, kind, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # a hang guard: the server answers long before
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"the MCP {kind} server exited"
                assert time.monotonic() < deadline, f"the MCP {kind} server never listened"
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    yield from _serve("http", "/mcp")


@pytest.fixture(scope="module")
def sse_url() -> Iterator[str]:
    """An Apiary-like SSE server that reports its open connections."""
    yield from _serve("sse", "/sse")


@pytest.fixture(params=["stdio", "http"])
def server(request: pytest.FixtureRequest, http_url: str) -> Any:
    return STDIO if request.param == "stdio" else http_url


async def call(ctx: RequestContext, name: str, **args: Any) -> MCPCallTask:
    return await ctx.run(MCPCallTask.create_mcptask(name, args, "mcp"))


async def run(worker: MCPWorker, method: Any) -> Any:
    async with AsyncScaffoldingLlm(method, {"mcp": worker, "tool": worker}) as llm:
        return await llm.generate("q")


async def test_tools_are_listed_and_called(server: Any) -> None:
    out: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        listing = await ctx.run(MCPListTask())
        out["tools"] = {t["name"] for t in listing.result_tools or ()}
        out["add"] = (await call(ctx, "add", a=2, b=3)).result_str
        out["fail"] = await call(ctx, "fail")
        native = await ctx.run(ToolCallTask(tool_name="add", arguments={"a": 1, "b": 1}))
        out["native"] = native.result_str
        return task

    await run(MCPWorker({"tools": server}), method)
    assert {"add", "fail", "slow", "count", "die"} <= out["tools"]
    assert out["add"] == "5" and out["native"] == "2"
    assert out["fail"].is_error and "Error executing tool fail" in out["fail"].result_str


@pytest.mark.parametrize(
    ("name", "args", "match"),
    [
        ("nope", {}, "unknown tool 'nope'"),
        ("add", {"a": "x", "b": 1}, "add: a: 'x' is not of type 'integer'"),
        ("add", {"a": 1}, "'b' is a required property"),
        ("add", {"a": 1, "b": 2, "pad": "x" * 70_000}, "more than 64000"),
    ],
)
async def test_bad_calls_are_refused_before_the_call_and_lose_nothing(
    name: str, args: dict[str, Any], match: str
) -> None:
    worker = MCPWorker({"tools": STDIO})

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        if task.input_str == "good":
            task.output_str = (await call(ctx, "add", a=2, b=3)).result_str
        else:
            await call(ctx, name, **args)
        return task

    async with AsyncScaffoldingLlm(method, {"mcp": worker}) as llm:
        good = await llm.generate_async("good")  # accepted before the bad one
        with pytest.raises(InvalidTaskError, match=match):
            await llm.generate("bad")
        assert (await good).output.output_str == "5"  # nothing accepted is lost


async def test_a_cancelled_call_is_cancelled_on_the_server(server: Any) -> None:
    seen: dict[str, str | None] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        with anyio.fail_after(60):  # a hang guard
            before = int((await call(ctx, "cancelled")).result_str or 0)
            async with anyio.create_task_group() as tg:
                started = int((await call(ctx, "started")).result_str or 0)
                tg.start_soon(functools.partial(call, ctx, "slow", seconds=3600))
                # the server's own counters are only seen by asking it
                while int((await call(ctx, "started")).result_str or 0) <= started:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            while int((await call(ctx, "cancelled")).result_str or 0) <= before:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            seen["cancelled"] = (await call(ctx, "cancelled")).result_str
        return task

    await run(MCPWorker({"tools": server}), method)
    assert seen["cancelled"] is not None and int(seen["cancelled"]) >= 1


async def test_a_server_that_dies_mid_call_fails_that_call_and_is_reconnected() -> None:
    worker = MCPWorker({"tools": STDIO})
    out: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        with pytest.raises(MCPServerError, match=r"'tools'.*connection lost during die") as info:
            await call(ctx, "die")
        out["server"] = info.value.server
        out["after"] = (await call(ctx, "add", a=1, b=1)).result_str  # a new process
        return task

    await run(worker, method)
    assert out == {"server": "tools", "after": "2"}


async def test_a_dead_server_leaves_the_other_servers_calls_running() -> None:
    """Two servers; one dies while a call on the other is in flight: that call
    finishes, the dead one's call fails naming it, and the dead one is reconnected."""

    def prefixed(prefix: str) -> list[str]:
        return ["env", f"TOOL_PREFIX={prefix}", sys.executable, SERVER, "stdio"]

    worker = MCPWorker({"a": prefixed("a_"), "b": prefixed("b_")})
    out: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async def slow_on_b() -> None:
            out["b"] = (await call(ctx, "b_slow", seconds=1.0)).result_str

        with anyio.fail_after(60):  # a hang guard
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_on_b)
                # the server's own counter says b's call is running
                while int((await call(ctx, "b_started")).result_str or 0) < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
                with pytest.raises(MCPServerError) as info:
                    await call(ctx, "a_die")
                out["dead"] = info.value.server
        out["a_again"] = (await call(ctx, "a_add", a=1, b=2)).result_str
        return task

    await run(worker, method)
    assert out == {"b": "done", "dead": "a", "a_again": "3"}


async def test_sessions_per_scope_are_separate_and_closed_at_scope_end() -> None:
    worker = MCPWorker({"tools": STDIO}, per_scope=True)
    counts: dict[int, list[str | None]] = {}
    live: dict[str, int] = {}

    async def branch(ctx: RequestContext, i: int) -> None:
        counts[i] = [(await call(ctx, "count")).result_str for _ in range(2)]

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            par.start(branch, ctx, 0)
            par.start(branch, ctx, 1)
        live["after_branches"] = worker.stats()["mcp_sessions"]
        return task

    async with AsyncScaffoldingLlm(method, {"mcp": worker}) as llm:
        live["start"] = llm.stats()["mcp_sessions"]
        await llm.generate("q")
        live["end"] = llm.stats()["mcp_sessions"]
    assert counts == {0: ["1", "2"], 1: ["1", "2"]}  # each branch its own session
    assert live == {"start": 1, "after_branches": 1, "end": 1}  # branch sessions closed


def test_trtllm_style_controller_calls_an_mcp_tool() -> None:
    from scaffold_actors.compat import Controller, ScaffoldingLlm

    class AddController(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            t = MCPCallTask.create_mcptask("add", {"a": 20, "b": 22}, "mcp")
            yield [t]
            tasks[0].output_str = t.result_str

    with ScaffoldingLlm(AddController(), {"mcp": MCPWorker({"tools": STDIO})}) as llm:
        assert llm.generate("q").output.output_str == "42"


async def test_an_unreachable_server_fails_start_up_naming_it() -> None:
    worker = MCPWorker(
        {"gone": [sys.executable, "-c", "import sys; sys.exit(1)"]}, connect_timeout=30
    )

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        return task

    with pytest.raises(MCPServerError, match="'gone': cannot connect"):
        async with AsyncScaffoldingLlm(method, {"mcp": worker}):
            pass


async def test_a_react_agent_uses_mcp_tools_and_sees_its_mistakes() -> None:
    from engine_bridge import SimulatedCall, SimulatedEngine
    from scaffold_actors import EngineWorker
    from scaffold_actors.methods import ReActAgent

    turns = [
        'Thought: add.\nAction: add\nAction Input: {"a": "twenty", "b": 22}',
        'Thought: integers.\nAction: add\nAction Input: {"a": 20, "b": 22}',
        "Thought: done.\nFinal Answer: 42",
    ]

    def reply(call: SimulatedCall) -> str:
        seen = (call.request.continuation or "").count("Observation:")
        return turns[min(seen, len(turns) - 1)]

    servers = {"tools": STDIO}
    agent = ReActAgent(await MCPWorker.discover(servers))
    workers = {"generation": EngineWorker(SimulatedEngine(reply)), "tool": MCPWorker(servers)}
    async with AsyncScaffoldingLlm(agent, workers) as llm:
        r = await llm.generate("What is 20 + 22?")
    calls = r.output.details["tool_calls"]
    assert r.output.output_str == "42"
    # the schema refusal is shown to the model, which corrects itself
    assert calls[0]["is_error"] and "'twenty' is not of type 'integer'" in calls[0]["result"]
    assert calls[1] == {
        "name": "add",
        "arguments": {"a": 20, "b": 22},
        "result": "42",
        "is_error": False,
    }


def test_trtllm_style_chat_with_mcp_tools() -> None:
    """TensorRT-LLM's ChatWithMCPController: the model's tool calls run on a real MCP
    server; a call with bad arguments is answered as an error the model corrects."""
    from engine_bridge import SimulatedCall, SimulatedEngine
    from scaffold_actors import EngineWorker
    from scaffold_actors.compat import ChatWithMCPController, ScaffoldingLlm

    turns = [
        '<tool_call>{"name": "add", "arguments": {"a": "twenty", "b": 22}}</tool_call>',
        '<tool_call>{"name": "add", "arguments": {"a": 20, "b": 22}}</tool_call>',
        "The answer is 42.",
    ]
    seen: list[list[str]] = []
    offered: list[list[str]] = []

    def reply(call: SimulatedCall) -> str:
        messages = call.request.messages or ()
        seen.append([m.role for m in messages])
        offered.append([t["function"]["name"] for t in call.request.tools or ()])
        return turns[min(sum(m.role == "tool" for m in messages), len(turns) - 1)]

    workers = {
        "generation": EngineWorker(SimulatedEngine(reply, max_context=4096)),
        "mcp": MCPWorker({"tools": STDIO}),
    }
    with ScaffoldingLlm(ChatWithMCPController({"max_tokens": 64}), workers) as llm:
        result = llm.generate("What is 20 + 22?")
    assert result.output.output_str == "The answer is 42."
    assert seen[-1] == ["user", "assistant", "tool", "assistant", "tool"]
    assert all("add" in names and "die" in names for names in offered)  # the MCP tools


def test_mcp_call_arguments_are_refused_when_they_are_not_a_json_object() -> None:
    from scaffold_actors.compat import ChatWithMCPController

    assert MCPCallTask(tool_name="add", args='{"a": 1}').arguments() == {"a": 1}
    for args, match in (
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ("x" * 70_000, "more than"),
    ):
        with pytest.raises(InvalidTaskError, match=match) as info:
            MCPCallTask(tool_name="add", args=args).validate()
        assert info.value.field == "MCPCallTask.args"
    with pytest.raises(ValueError, match="max_iterations"):
        ChatWithMCPController(max_iterations=0)
    with pytest.raises(ValueError, match="at least one"):
        MCPWorker({})
    with pytest.raises(ValueError, match="URL or a non-empty command"):
        MCPWorker({"x": []})


# -- ApiaryMCPWorker (TensorRT-LLM's per-scope SSE sandbox worker) -------------------


async def open_connections(ctx: RequestContext) -> list[str]:
    return list(json.loads((await call(ctx, "connections")).result_str or "{}")["open"])


async def test_apiary_gives_each_scope_its_own_sandbox_connection(sse_url: str) -> None:
    from scaffold_actors.compat import ApiaryMCPWorker

    worker = ApiaryMCPWorker(sse_url)
    ready = trio.Event()
    seen: dict[str, Any] = {}

    async def branch(ctx: RequestContext, i: int) -> None:
        seen[f"branch{i}"] = await open_connections(ctx)
        ran = await call(ctx, "sandbox_run", cmd=f"ls {i}")
        seen[f"run{i}"] = (ran.result_str, ran.result_stdout, ran.result_stderr, ran.is_error)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await ready.wait()
        seen["root"] = await open_connections(ctx)
        async with ctx.parallel() as par:
            par.start(branch, ctx, 0)
            par.start(branch, ctx, 1)
        with trio.fail_after(30):  # a hang guard: the server sees the closes soon after
            while len(after := await open_connections(ctx)) > 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        seen["after"] = after
        seen["unknown"] = (await call(ctx, "no_such_tool")).is_error
        with pytest.raises(InvalidTaskError, match="must be JSON"):
            await call(ctx, "sandbox_run", cmd=object())
        return task

    async with AsyncScaffoldingLlm(method, {"mcp": worker}) as llm:
        handle = await llm.generate_async("q")
        worker.set_scope_params(handle.id, base_image=["/layer/base", "/layer/top"])
        ready.set()
        await handle
        assert worker.stats()["mcp_sessions"] == 0  # the request's scope ended: all closed
    rid = handle.id
    layers = "base_image=%2Flayer%2Fbase&base_image=%2Flayer%2Ftop"
    assert seen["root"] == [f"client_id=coder-{rid}&{layers}"]
    for i in (0, 1):
        mine = f"client_id=coder-{rid}%3A{i}&{layers}"
        assert mine in seen[f"branch{i}"]  # its own connection, with the request's params
        assert seen[f"run{i}"] == (f"ran ls {i}", f"ls {i}: ok\n", "", False)  # the envelope
    assert seen["after"] == seen["root"]  # the branches' connections were closed
    assert seen["unknown"] is True  # not listed at start: the server says it is unknown


async def test_apiary_waits_for_a_free_connection(sse_url: str) -> None:
    from scaffold_actors.compat import ApiaryMCPWorker

    worker = ApiaryMCPWorker(sse_url, max_connections=1)
    most: list[int] = []

    async def branch(ctx: RequestContext, i: int) -> None:
        most.append(worker.stats()["mcp_sessions"])
        await call(ctx, "sandbox_run", cmd=str(i))
        most.append(worker.stats()["mcp_sessions"])

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        async with ctx.parallel() as par:
            for i in range(3):
                par.start(branch, ctx, i)
        task.output_str = "all ran"
        return task

    async with AsyncScaffoldingLlm(method, {"mcp": worker}) as llm:
        assert (await llm.generate("q")).output.output_str == "all ran"
    assert max(most) == 1  # one sandbox at a time, each scope in turn


async def test_an_unreachable_apiary_fails_the_call_naming_it() -> None:
    from scaffold_actors.compat import ApiaryMCPWorker

    worker = ApiaryMCPWorker("http://127.0.0.1:9/sse", connect_timeout=30)

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        await call(ctx, "sandbox_run", cmd="ls")
        return task

    async with AsyncScaffoldingLlm(method, {"mcp": worker}) as llm:
        with pytest.raises(MCPServerError, match="'apiary': cannot connect"):
            await llm.generate("q")
        assert worker.stats()["mcp_sessions"] == 0
    with pytest.raises(ValueError, match="http"):
        ApiaryMCPWorker("localhost:8082/sse")
    with pytest.raises(ValueError, match="base_image"):
        ApiaryMCPWorker("http://x/sse").set_scope_params("req-1", base_image=3)  # type: ignore[arg-type]


def test_trtllm_style_apiary_controller(sse_url: str) -> None:
    from scaffold_actors.compat import ApiaryMCPWorker, Controller, ScaffoldingLlm

    class Coder(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            t = MCPCallTask.create_mcptask("sandbox_run", '{"cmd": "pytest"}', "sandbox")
            yield [t]
            tasks[0].output_str = f"{t.result_str} | {t.result_stdout}"

    with ScaffoldingLlm(Coder(), {"sandbox": ApiaryMCPWorker(sse_url)}) as llm:
        assert llm.generate("q").output.output_str == "ran pytest | pytest: ok\n"
