"""ReAct agent and tools: a scripted model with a real sandboxed Python tool."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from engine_bridge import SimulatedCall, SimulatedEngine
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    InvalidTaskError,
    PythonTool,
    ToolCallTask,
    ToolWorker,
)
from scaffold_actors.methods import ReActAgent


def scripted(turns: list[str]) -> SimulatedEngine:
    """Turn i of the transcript (counted by observations so far) says turns[i]."""

    def reply(call: SimulatedCall) -> str:
        return turns[min((call.request.continuation or "").count("Observation:"), len(turns) - 1)]

    return SimulatedEngine(reply)


def workers(engine: SimulatedEngine, tools: ToolWorker) -> dict[str, Any]:
    return {"generation": EngineWorker(engine), "tool": tools}


async def test_agent_runs_python_and_answers() -> None:
    tools = ToolWorker({"python": PythonTool(timeout=20)})
    engine = scripted(
        [
            'Thought: compute it.\nAction: python\nAction Input: {"code": "print(6 * 7)"}\nObservation: made up',
            "Thought: the tool said 42.\nFinal Answer: 42",
        ]
    )
    agent = ReActAgent(tools.specs())
    async with AsyncScaffoldingLlm(agent, workers(engine, tools)) as llm:
        r = await llm.generate("What is 6 times 7?")
    d = r.output.details
    assert r.output.output_str == "42" and d["finished"] and d["turns"] == 2
    assert d["tool_calls"] == [
        {
            "name": "python",
            "arguments": {"code": "print(6 * 7)"},
            "result": "42\n",
            "is_error": False,
        }
    ]
    assert "Observation: 42" in d["transcript"] and "made up" not in d["transcript"]


async def test_registered_async_function_and_model_mistakes() -> None:
    tools = ToolWorker()

    @tools.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    assert tools.specs() == {"add": "Add two integers. Arguments: a, b."}
    engine = scripted(
        [
            "Action: multiply\nAction Input: {}",  # unknown tool
            "Action: add\nAction Input: not json",  # bad arguments
            'Action: add\nAction Input: {"a": 1}',  # missing argument
            'Action: add\nAction Input: {"a": 2, "b": 40} and some chatter',
            "Final Answer: 42",
        ]
    )
    async with AsyncScaffoldingLlm(
        ReActAgent(tools.specs(), max_turns=8), workers(engine, tools)
    ) as llm:
        r = await llm.generate("2 + 40?")
    calls = r.output.details["tool_calls"]
    assert [c["is_error"] for c in calls] == [True, True, True, False]
    assert "unknown tool 'multiply'" in calls[0]["result"]
    assert "not a JSON object" in calls[1]["result"]
    assert "bad arguments" in calls[2]["result"]
    assert calls[3]["result"] == "42" and r.output.output_str == "42"


async def test_agent_stops_after_max_turns() -> None:
    tools = ToolWorker({"python": PythonTool()})
    engine = scripted(['Action: python\nAction Input: {"code": "print(1)"}'])
    async with AsyncScaffoldingLlm(
        ReActAgent(tools.specs(), max_turns=3), workers(engine, tools)
    ) as llm:
        r = await llm.generate("loop")
    assert r.output.details["turns"] == 3 and not r.output.details["finished"]
    assert r.output.finish_reason == "length"


async def test_unknown_tool_task_is_rejected_at_submission() -> None:
    tools = ToolWorker({"python": PythonTool()})

    async def controller(ctx: Any, task: Any) -> Any:
        return await ctx.run(ToolCallTask(tool_name="shell", arguments={}))

    async with AsyncScaffoldingLlm(
        controller, {"tool": tools, "generation": EngineWorker(SimulatedEngine())}
    ) as llm:
        with pytest.raises(InvalidTaskError, match="unknown tool 'shell'"):
            await llm.generate("x")


ADD_EXAMPLE = """Question: How much is 10 plus 20?
Thought: The add tool adds.
Action: add
Action Input: {"a": 10, "b": 20}
Observation: 30
Final Answer: 30"""


async def test_a_worked_example_of_the_callers_own_is_shown_for_any_tool() -> None:
    """``example=`` a str: the system message shows that exchange (not the python
    one, not the described format) and the question is asked as in it."""
    tools = ToolWorker()

    @tools.register
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    seen: list[str] = []

    def reply(call: SimulatedCall) -> str:
        seen.append(call.prompt)
        if "Observation:" in (call.request.continuation or ""):
            return " The tool returned 42.\nFinal Answer: 42"
        return ' I will add.\nAction: add\nAction Input: {"a": 2, "b": 40}\n'

    agent = ReActAgent(tools.specs(), example=ADD_EXAMPLE)
    async with AsyncScaffoldingLlm(agent, workers(SimulatedEngine(reply), tools)) as llm:
        r = await llm.generate("What is 2 + 40?")
    assert r.output.output_str == "42"
    assert r.output.details["tool_calls"][0]["result"] == "42"
    assert ADD_EXAMPLE in seen[0] and "Question: What is 2 + 40?" in seen[0]
    assert "To use a tool, write exactly" not in seen[0]  # the described format is not shown
    # without an example and with no python tool: the format described
    async with AsyncScaffoldingLlm(
        ReActAgent(tools.specs()), workers(SimulatedEngine(reply), tools)
    ) as llm:
        seen.clear()
        await llm.generate("What is 2 + 40?")
    assert "To use a tool, write exactly" in seen[0] and "Question:" not in seen[0]


def test_a_worked_example_must_be_whole() -> None:
    with pytest.raises(ValueError, match="no 'Final Answer:'"):
        ReActAgent({"add": "Add."}, example="Action: add\nAction Input: {}")
    with pytest.raises(TypeError, match="must be a bool or a str"):
        ReActAgent({"add": "Add."}, example=3)  # type: ignore[arg-type]


def test_tool_registration_errors() -> None:
    tools = ToolWorker()
    with pytest.raises(TypeError, match="async"):
        tools.register(lambda: 1)  # type: ignore[arg-type,return-value]

    async def f() -> None: ...

    tools.register(f)
    with pytest.raises(ValueError, match="twice"):
        tools.register(f)
    with pytest.raises(ValueError):
        ReActAgent({})


async def test_python_tool_limits() -> None:
    tool = PythonTool(timeout=1.0, memory_mb=256)
    assert await tool("import os; print(os.getcwd().startswith(os.environ['TMPDIR']))") == "True\n"
    out = await tool("raise SystemExit(3)")
    assert out.endswith("exit code 3")
    assert "timed out after 1 s" in await tool("while True: pass")
    assert "MemoryError" in await tool("x = bytearray(1024 * 1024 * 1024)")
    assert "more characters" in await PythonTool(max_output=10)("print('x' * 100)")


async def test_python_tool_shows_a_last_bare_expression() -> None:
    """As a Python prompt: a last bare expression's value is printed (a model
    that writes `2**20 - 1` gets the number back), not None, not twice."""
    tool = PythonTool(timeout=20)
    assert await tool("2**20 - 1") == "1048575\n"
    assert await tool("x = 6\nx * 7") == "42\n"
    assert await tool("print('hi')") == "hi\n"  # print() returns None: nothing more
    assert await tool("'a' + 'b'") == "'ab'\n"
    assert await tool("x = 1") == ""


async def test_cancelling_the_tool_kills_its_process(tmp_path: Any) -> None:
    pidfile = tmp_path / "pid"
    tool = PythonTool(timeout=60, confine_writes=False)  # it reports its pid in a file
    code = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)"
    with trio.move_on_after(3):
        await tool(code)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


WRITES_OUTSIDE = """
import os, sys
target = {target!r}
results = []
def attempt(name, fn):
    try:
        fn()
        results.append(name + ":done")
    except OSError as e:
        results.append(name + ":" + type(e).__name__)
attempt("create", lambda: open(os.path.join(target, "new.txt"), "w").write("x"))
attempt("append", lambda: open(os.path.join(target, "existing.txt"), "a").write("x"))
attempt("truncate", lambda: os.truncate(os.path.join(target, "existing.txt"), 0))
attempt("remove", lambda: os.remove(os.path.join(target, "existing.txt")))
attempt("rename", lambda: os.rename(os.path.join(target, "existing.txt"), "stolen.txt"))
attempt("mkdir", lambda: os.mkdir(os.path.join(target, "d")))
attempt("symlink", lambda: os.symlink("/etc/passwd", os.path.join(target, "l")))
rc = __import__("subprocess").run(
    ["/bin/sh", "-c", "echo x > " + os.path.join(target, "child.txt")], stderr=-3).returncode
results.append("child:" + ("done" if rc == 0 else "denied"))
attempt("inside", lambda: open("mine.txt", "w").write("x"))
attempt("devnull", lambda: open(os.devnull, "w").write("x"))
attempt("read", lambda: open(os.path.join(target, "existing.txt")).read())
print(" ".join(results))
"""


async def test_python_tool_cannot_write_outside_its_directory(tmp_path: Any) -> None:
    from scaffold_actors._sandbox import landlock_abi

    if landlock_abi() < 1:
        pytest.skip("this kernel offers no Landlock")
    (tmp_path / "existing.txt").write_text("keep")
    code = WRITES_OUTSIDE.format(target=str(tmp_path))
    out = await PythonTool()(code)
    denied = "PermissionError"
    assert out.split() == [
        f"create:{denied}", f"append:{denied}", f"truncate:{denied}", f"remove:{denied}",
        f"rename:{denied}", f"mkdir:{denied}", f"symlink:{denied}",
        "child:denied",  # a child process inherits the confinement
        "inside:done", "devnull:done", "read:done",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]
    assert (tmp_path / "existing.txt").read_text() == "keep"
    # the control: without confinement the same code changes the directory
    out = await PythonTool(confine_writes=False)(code)
    assert "create:done" in out and "child:done" in out
    assert (tmp_path / "new.txt").exists()


async def test_a_protection_the_system_cannot_give_is_refused(monkeypatch: Any) -> None:
    from scaffold_actors import _tools

    monkeypatch.setattr(_tools, "landlock_abi", lambda: 0)
    monkeypatch.setattr(_tools, "network_isolation_available", lambda: False)
    with pytest.raises(OSError, match=r"cannot confine writes.*confine_writes=False"):
        PythonTool()
    with pytest.raises(OSError, match=r"cannot isolate the network.*isolate_network=False"):
        PythonTool(confine_writes=False)
    assert await PythonTool(confine_writes=False, isolate_network=False)("print(1)") == "1\n"


async def test_python_tool_cannot_signal_outside_processes() -> None:
    from scaffold_actors._sandbox import landlock_abi

    if landlock_abi() < 6:
        pytest.skip("this kernel's Landlock does not scope signals (ABI < 6)")
    victim = await trio.lowlevel.open_process(["sleep", "30"])
    code = f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)"
    try:
        assert "PermissionError" in await PythonTool()(code)
        assert victim.poll() is None
    finally:
        victim.kill()
        await victim.wait()


async def test_landlock_alone_denies_tcp(monkeypatch: Any) -> None:
    """Without a network namespace (e.g. where user namespaces are disabled), a
    Landlock ABI >= 4 kernel still denies every TCP connect."""
    from scaffold_actors import _tools
    from scaffold_actors._sandbox import landlock_abi

    if landlock_abi() < 4:
        pytest.skip("this kernel's Landlock has no network rules (ABI < 4)")
    monkeypatch.setattr(_tools, "network_isolation_available", lambda: False)
    await check_network_denied(PythonTool())


async def test_a_network_namespace_alone_cuts_the_network(monkeypatch: Any) -> None:
    from scaffold_actors import _tools

    if not _tools.network_isolation_available():
        pytest.skip("this system does not allow unprivileged network namespaces")
    abi = min(_tools.landlock_abi(), 3)  # Landlock without network rules
    monkeypatch.setattr(_tools, "landlock_abi", lambda: abi)
    await check_network_denied(PythonTool())


async def check_network_denied(tool: PythonTool) -> None:
    """``tool`` cannot connect to a listening loopback socket; without network
    isolation the same code can (the control)."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    code = (
        "import socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        f"print('reached' if s.connect_ex(('127.0.0.1', {port})) == 0 else 'unreachable')"
    )
    try:
        assert await tool(code) == "unreachable\n"
        assert await PythonTool(isolate_network=False)(code) == "reached\n"  # the control
    finally:
        server.close()
