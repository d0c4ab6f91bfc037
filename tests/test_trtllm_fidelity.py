"""Behaviours of TensorRT-LLM's Scaffolding API that programs written for it rely
on, each tested here in our own words: tasks as dataclasses, every released form
of outputs and results, the answer helpers, the config loader's messages, the
workers used standalone, the contrib projects, load strategies, and the
``tensorrt_llm.scaffolding`` alias (``pytest --trtllm-alias``, ``scaffold
port-run``) that runs such a program with no edit."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine_bridge import EngineError, SimulatedEngine
from scaffold_actors import EngineWorker, InvalidTaskError
from scaffold_actors.compat import (
    ChatTask,
    ChatWithMCPController,
    Controller,
    DropKVCacheTask,
    GenerationTask,
    NativeGenerationController,
    OpenaiWorker,
    RoleMessage,
    ScaffoldingBenchRequest,
    ScaffoldingLlm,
    ScaffoldingOutput,
    StreamGenerationTask,
    Task,
    TaskStatus,
    Worker,
    async_scaffolding_benchmark,
    build_controller,
    get_digit_majority_vote_result,
    get_majority_result,
    load_controller_config,
)

ROOT = Path(__file__).resolve().parent.parent


def _clean_env() -> dict[str, str]:
    """The environment of a child that must not see tests/standins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(),
        timeout=120,
    )


# --- tasks are dataclasses ----------------------------------------------------------


def test_tasks_are_dataclasses_with_class_level_defaults() -> None:
    """dataclasses.fields/replace/asdict work; a subclass whose __init__ never
    calls super().__init__() still reads every plain default (a class attribute),
    and a @dataclass subclass inherits every field."""
    task = GenerationTask(input_str="q", max_tokens=7)
    names = [f.name for f in dataclasses.fields(task)]
    assert names[:5] == [
        "worker_tag",
        "streaming_output_flag",
        "streaming_output_list",
        "custom_input_params",
        "custom_output_params",
    ]
    assert {"input_str", "max_tokens", "output_str", "frequency_penalty"} <= set(names)
    twin = dataclasses.replace(task, max_tokens=9)
    assert twin.max_tokens == 9 and twin.input_str == "q" and task.max_tokens == 7
    assert dataclasses.asdict(task)["max_tokens"] == 7
    with pytest.raises(InvalidTaskError, match="max_tokens"):
        dataclasses.replace(task, max_tokens=0)  # still validated

    class Bare(Task):
        def __init__(self) -> None:
            self.turns = 2  # no super().__init__(), as TensorRT-LLM's own tests write

    bare = Bare()
    assert bare.worker_tag is None and bare.streaming_output_flag is False
    assert bare.custom_input_params is None

    @dataclasses.dataclass
    class Probe(GenerationTask):
        depth: int = 0

    probe = Probe(input_str="q", max_tokens=3, depth=2)
    assert (probe.max_tokens, probe.depth, probe.worker_tag) == (3, 2, "generation")
    assert [f.name for f in dataclasses.fields(Probe)][-1] == "depth"
    assert isinstance(StreamGenerationTask(), GenerationTask)


def test_a_dataclass_subclass_of_a_task_runs_through_the_runtime() -> None:
    """The contrib pattern: a @dataclass subclass of GenerationTask (eq=True, so
    unhashable, as dataclasses make it) goes through a worker and a controller."""

    @dataclasses.dataclass
    class Scored(GenerationTask):
        score: float = 0.0

    class ScoringWorker(Worker):
        async def handle(self, task: Scored) -> TaskStatus:
            task.output_str = f"{task.input_str}!"
            task.score = 0.5
            return TaskStatus.SUCCESS

        task_handlers = {Scored: handle}

    class Scoring(Controller):
        def generate(self, prompt: str, **kwargs: Any) -> Any:
            task = Scored(input_str=prompt)
            yield [task]
            assert task.score == 0.5
            return task.create_scaffolding_output()

    with ScaffoldingLlm(Scoring(), {"generation": ScoringWorker()}) as llm:
        assert llm.generate("hi").outputs[0].text == "hi!"


def test_sampling_fields_no_engine_takes_are_refused_unless_at_their_default() -> None:
    """TensorRT-LLM's OpenAI-style fields exist; a value that would change
    sampling is refused at submission (never dropped silently)."""
    from scaffold_actors._tasks import check_not_taken_yet

    task = GenerationTask(input_str="q", frequency_penalty=0.0, echo=False, user="me")
    check_not_taken_yet(task)
    task.presence_penalty = 0.5
    with pytest.raises(InvalidTaskError, match=r"GenerationTask\.presence_penalty"):
        check_not_taken_yet(task)
    task.validate()  # a worker of one's own may take it: only engine workers refuse

    class Biased(Controller):
        def process(self, tasks: list[Any], **kwargs: Any) -> Any:
            tasks[0].logit_bias = {"1": 2.0}
            yield tasks

    with ScaffoldingLlm(Biased(), {"generation": EngineWorker(SimulatedEngine())}) as llm:
        with pytest.raises(InvalidTaskError, match=r"logit_bias.*not supported"):
            llm.generate("q")


def test_generation_result_alias() -> None:
    """``task.result`` (TensorRT-LLM 2025's name) is ``output_str``."""
    task = GenerationTask(input_str="q")
    task.result = "Yes."
    assert task.output_str == "Yes." and task.result == "Yes."


# --- outputs and results --------------------------------------------------------------


def test_scaffolding_output_accepts_every_released_form() -> None:
    empty = ScaffoldingOutput()  # 2025: built empty, filled after
    assert empty.output_str is None and empty.text == ""
    empty.output_str = "a"
    assert empty.text == "a"
    pair = ScaffoldingOutput("b", [1, 2])  # 1.2+: (text, token_ids)
    assert (pair.text, pair.token_ids, pair.output_tokens) == ("b", [1, 2], [1, 2])
    triple = ScaffoldingOutput("c", [3], {"k": 1})
    assert triple.data == {"k": 1}
    ours = ScaffoldingOutput("d", [4], finish_reason="stop", details={"votes": 2})
    assert ours.finish_reason == "stop" and ours.details == {"votes": 2}
    ours.text = "e"
    assert ours.output_str == "e" and ours.outputs[0] is ours
    assert ScaffoldingOutput("x", [1]) == ScaffoldingOutput(output_str="x", output_tokens=[1])


class EchoWorker(Worker):
    async def generate(self, task: GenerationTask) -> TaskStatus:
        await asyncio.sleep(0)
        task.output_str = f"echo {task.input_str}"
        task.output_tokens = [1, 2]
        return TaskStatus.SUCCESS

    task_handlers = {GenerationTask: generate}


def test_results_read_as_every_release_reads_them() -> None:
    """``result.outputs[0].text`` (1.2+), ``result.cur_output`` compared to a
    string (2025) and its ``.outputs``, ``result.output.output_str`` (ours);
    iterating a compat result yields the result itself."""
    with ScaffoldingLlm(NativeGenerationController(), {"generation": EchoWorker()}) as llm:
        result = llm.generate("q")
        assert result.outputs[0].text == "echo q"
        assert result.outputs[0].token_ids == [1, 2]
        assert result.cur_output == "echo q"
        assert result.cur_output.outputs[0].text == "echo q"
        assert result.output is not None and result.output.output_str == "echo q"
        pending = llm.generate_async("r")
        seen = list(pending)
        assert seen and all(item is pending for item in seen)
        assert pending.outputs[0].text == "echo r"

        async def iterate() -> list[Any]:
            later = llm.generate_async("s")
            return [item async for item in later]

        items = asyncio.run(iterate())
        assert items and items[-1].outputs[0].text == "echo s"


def test_a_result_before_any_output_reads_empty() -> None:
    from scaffold_actors._result import ScaffoldingResult

    class Loop:
        def Event(self) -> Any:
            import threading

            return threading.Event()

    fresh = ScaffoldingResult(1, "q", Loop())  # type: ignore[arg-type]
    assert fresh.outputs[0].text == "" and fresh.cur_output == ""


def test_shutdown_takes_tensorrt_llms_spelling() -> None:
    class Closing(EchoWorker):
        closed = 0

        def shutdown(self) -> None:
            Closing.closed += 1

    llm = ScaffoldingLlm(NativeGenerationController(), {"generation": Closing()})
    llm.shutdown(shutdown_wokers=True)
    assert Closing.closed == 1
    other = ScaffoldingLlm(NativeGenerationController(), {"generation": Closing()})
    with pytest.raises(TypeError, match="shutdown_everything"):
        other.shutdown(shutdown_everything=True)
    other.shutdown()


# --- answer helpers -------------------------------------------------------------------


def test_majority_helpers_return_index_and_answer() -> None:
    assert get_majority_result(["p", "q", "q"]) == (1, "q")
    assert get_majority_result(["p", "p", "q"]) == (0, "p")
    assert get_majority_result([]) == (None, None)
    assert get_majority_result([None, 3], result_validator=lambda a: a > 5) == (None, None)
    assert get_majority_result(["A1", "b2", "B2"], result_extractor=str.lower) == (1, "b2")
    boxed = ["so \\boxed{-4}", "\\boxed{9}", "hence \\boxed{-4}"]
    assert get_digit_majority_vote_result(boxed) == (0, "-4")
    assert get_digit_majority_vote_result(["\\boxed{2.5}", "\\boxed{x}", "none"]) == (0, None)
    assert get_digit_majority_vote_result(["\\boxed{x}", "\\boxed{12}"]) == (1, "12")


# --- controller configs ----------------------------------------------------------------


def test_config_errors_say_what_tensorrt_llm_says(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="unknown object reference 'tok'"):
        build_controller({"type": "PRMController", "args": {"tokenizer": {"$ref": "tok"}}})
    with pytest.raises(ValueError, match="missing required 'type'"):
        build_controller({"args": {}})
    with pytest.raises(TypeError, match="cannot construct NativeGenerationController"):
        build_controller({"type": "NativeGenerationController", "args": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"controller\.args\.generation_controller: unknown"):
        build_controller(
            {"type": "MajorityVoteController", "args": {"generation_controller": {"type": "No"}}}
        )
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"other": {}}))
    with pytest.raises(ValueError, match="missing required top-level 'controller'"):
        load_controller_config(str(path))


def test_chat_with_mcp_controller_is_buildable_from_a_config() -> None:
    tools = [{"name": "add"}]
    built = build_controller(
        {
            "type": "ChatWithMCPController",
            "args": {
                "generation_controller": {
                    "type": "NativeGenerationController",
                    "args": {"sampling_params": {"max_tokens": 5}},
                },
                "tools": {"$ref": "tools"},
                "max_iterations": 3,
            },
        },
        objects={"tools": tools},
    )
    assert isinstance(built, ChatWithMCPController)
    assert built.tools is tools and built.max_iterations == 3
    assert built.generation.sampling_params == {"max_tokens": 5}
    assert ChatWithMCPController.WorkerTag.TOOLCALL.value == "mcp"


# --- workers used standalone ---------------------------------------------------------


def test_an_engine_worker_runs_a_task_without_a_runtime() -> None:
    """``asyncio.run(worker.run_task(task))``: the engine is started for the
    call and closed after (the engine's own state says so), twice in a row."""
    engine = SimulatedEngine()
    worker = EngineWorker(engine)
    for _ in range(2):
        task = GenerationTask.create_from_prompt("hello there")
        task.max_tokens = 4
        assert asyncio.run(worker.run_task(task)) == TaskStatus.SUCCESS
        assert task.output_str and task.completion_tokens_num == 4
        assert engine.completed >= 1 and engine.num_active == 0
    with pytest.raises(EngineError):  # closed after each call
        asyncio.run(_open_stream_once(engine))


async def _open_stream_once(engine: SimulatedEngine) -> None:
    from engine_bridge import EngineRequest, SamplingParams

    async with engine.open_stream(EngineRequest(SamplingParams(max_tokens=1), prompt="x")):
        pass


def _drop_task() -> tuple[DropKVCacheTask, list[RoleMessage]]:
    messages = [
        RoleMessage(role="system", content="rules"),
        RoleMessage(role="user", content="q1"),
        RoleMessage(role="assistant", content="a1"),
    ]
    return DropKVCacheTask(ChatTask.create_from_messages(messages), worker_tag="drop"), messages


def test_openai_worker_attaches_the_kv_cache_hint_to_its_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client gets ``create_kv_cache_hint(task, params)``, which posts the
    drop to the server root's control endpoint (``/v1`` and slashes stripped),
    ``extra_body`` merged, the key as a bearer token."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"freed_blocks": 3})

    real = httpx.AsyncClient
    monkeypatch.setattr(
        httpx, "AsyncClient", lambda *a, **k: real(transport=httpx.MockTransport(handler))
    )
    for base, key in (("http://h:1/v1/", "k"), ("http://h:1", None)):
        client = type("Client", (), {"base_url": base, "api_key": key})()
        OpenaiWorker(client, "m", kv_cache_hint_enabled=True)
        task, messages = _drop_task()
        params = {"model": "m", "extra_body": {"chat_template_kwargs": {"x": 1}}}
        response = asyncio.run(client.create_kv_cache_hint(task, params))
        assert response.status_code == 200
        request = sent[-1]
        assert str(request.url) == "http://h:1/_control/kv_cache/truncate"
        assert json.loads(request.content) == {
            "action": "truncate",
            "messages": [m.to_dict() for m in messages],
            "messages_to_retain": [messages[0].to_dict()],
            "model": "m",
            "chat_template_kwargs": {"x": 1},
        }
        assert request.headers.get("authorization") == (f"Bearer {key}" if key else None)
    plain = type("Client", (), {"base_url": "http://h:1", "api_key": None})()
    OpenaiWorker(plain, "m")
    assert not hasattr(plain, "create_kv_cache_hint")  # only when hints are on


def test_openai_worker_runs_a_drop_through_the_clients_hook() -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []

    class Response:
        def __init__(self, status: int) -> None:
            self.status_code = status

        def json(self) -> Any:
            return {"freed_blocks": 2}

    status = 200

    async def hook(task: Any, params: dict[str, Any]) -> Response:
        calls.append((task, params))
        return Response(status)

    client = type("Client", (), {"base_url": "http://h:1/v1", "api_key": None})()
    worker = OpenaiWorker(client, "m", kv_cache_hint_enabled=True)
    client.create_kv_cache_hint = hook
    task, messages = _drop_task()
    assert asyncio.run(worker.run_task(task)) == TaskStatus.SUCCESS
    assert task.freed_blocks == 2
    sent, params = calls[-1]
    assert sent is task and params["messages"] == [m.to_dict() for m in messages]
    status = 503
    with pytest.raises(EngineError, match="HTTP 503"):
        asyncio.run(worker.run_task(_drop_task()[0]))


# --- load strategies and the benchmark ----------------------------------------------


def test_load_strategies_say_when_each_request_goes() -> None:
    from scaffold_actors.compat.load_generation_strategy import (
        ConcurrentStrategy,
        ConstantRateStrategy,
        PoissonRateStrategy,
        ThroughputStrategy,
    )

    async def first(strategy: Any, n: int) -> list[float]:
        out = []
        async for t in strategy.request_times():
            out.append(t)
            if len(out) == n:
                break
        return out

    steady = ConstantRateStrategy(rate=4.0, start_time=100.0)
    assert asyncio.run(first(steady, 3)) == [100.0, 100.25, 100.5]
    burst = ConstantRateStrategy(rate=2.0, initial_burst=True, start_time=0.0)
    assert asyncio.run(first(burst, 4)) == [0.0, 0.0, 0.5, 1.0]
    a = asyncio.run(first(PoissonRateStrategy(rate=5.0, start_time=0.0, random_seed=1), 5))
    b = asyncio.run(first(PoissonRateStrategy(rate=5.0, start_time=0.0, random_seed=1), 5))
    assert a == b and a == sorted(a) and a[0] == 0.0
    assert asyncio.run(first(ThroughputStrategy(start_time=7.0), 3)) == [7.0] * 3
    assert str(ConcurrentStrategy(concurrency=3)) == "concurrent@3"
    with pytest.raises(ValueError, match="rate"):
        ConstantRateStrategy(rate=0)


def test_the_benchmark_returns_three_values_and_takes_a_strategy() -> None:
    from scaffold_actors.compat.load_generation_strategy import ConcurrentStrategy

    requests = [ScaffoldingBenchRequest(prompt=f"p{i}") for i in range(5)]
    with ScaffoldingLlm(NativeGenerationController(), {"generation": EchoWorker()}) as llm:
        results, times, total = asyncio.run(
            async_scaffolding_benchmark(
                llm, {}, requests, strategy=ConcurrentStrategy(concurrency=2)
            )
        )
        assert len(results) == len(times) == 5 and total >= max(times)
        assert sorted(r.outputs[0].text for r in results) == [f"echo p{i}" for i in range(5)]
        with pytest.raises(ValueError, match="concurrency"):
            asyncio.run(async_scaffolding_benchmark(llm, {}, requests))


# --- contrib projects ------------------------------------------------------------------


class Agent:
    def __init__(self, name: str, fail: bool = False) -> None:
        from scaffold_actors.compat.contrib.a2a import AgentInfo

        self.info = AgentInfo(name=name, description=f"{name} agent", skills=["s"])
        self.fail = fail
        self.closed = False

    def get_agent_info(self) -> Any:
        return self.info

    async def send_message(self, message: str) -> str:
        if self.fail:
            raise ConnectionError(f"{self.info.name} is down")
        return f"{self.info.name}: {message.upper()}"

    async def cleanup(self) -> None:
        self.closed = True


class Call:
    def __init__(self, name: str, arguments: str) -> None:
        self.function = type("F", (), {"name": name, "arguments": arguments})()


def _delegating_worker(arguments: str) -> Worker:
    from scaffold_actors.compat.contrib.mcp.chat_task import ChatTask as ContribChat

    class Delegating(Worker):
        async def chat(self, task: ContribChat) -> TaskStatus:
            if len(task.messages) == 2:  # system + user: delegate
                assert task.tools and task.tools[0]["function"]["name"] == "math"
                task.output_str, task.finish_reason = "asking math", "tool_calls"
                task.tool_calls = [Call("math", arguments)]
            else:  # the agent's reply came back as the user's turn
                task.output_str, task.finish_reason = (
                    f"final: {task.messages[-1]['content']}",
                    "stop",
                )
            return TaskStatus.SUCCESS

        task_handlers = {ContribChat: chat}

    return Delegating()


def test_a2a_controller_delegates_and_answers_from_the_reply() -> None:
    from scaffold_actors.compat.contrib.a2a import A2AController, A2AWorker

    for arguments, sent in (
        (json.dumps({"message": "two plus two"}), "TWO PLUS TWO"),
        ("not json", "NOT JSON"),
    ):
        agents = A2AWorker([Agent("math")])
        workers = {"generation": _delegating_worker(arguments), "a2a": agents}
        with ScaffoldingLlm(A2AController(), workers) as llm:
            assert llm.generate("q").outputs[0].text == f"final: math: {sent}"


def test_a2a_worker_alone_and_its_failures() -> None:
    from scaffold_actors.compat.contrib.a2a import (
        A2AController,
        A2AListTask,
        A2ASendTask,
        A2AWorker,
    )

    agents = [Agent("a"), Agent("b")]
    worker = A2AWorker(agents)
    listing = A2AListTask.create_a2a_task()
    assert asyncio.run(worker.run_task(listing)) == TaskStatus.SUCCESS
    assert [a.name for a in listing.result_agents or ()] == ["a", "b"]
    missing = A2ASendTask.create_a2a_task("zzz", "hi")
    assert asyncio.run(worker.run_task(missing)) == TaskStatus.WORKER_NOT_SUPPORTED
    assert "zzz" in (missing.output_str or "")
    asyncio.run(worker.async_shutdown())
    assert all(a.closed for a in agents)
    # an agent's error reaches the request as itself
    workers = {"generation": _delegating_worker("{}"), "a2a": A2AWorker([Agent("math", fail=True)])}
    with ScaffoldingLlm(A2AController(), workers) as llm:
        with pytest.raises(ConnectionError, match="math is down"):
            llm.generate("q")


def test_contrib_chat_task_appends_the_prompt() -> None:
    from scaffold_actors.compat.contrib.mcp import ChatTask as ContribChat
    from scaffold_actors.compat.contrib.mcp import MCPCallTask as ContribCall

    messages = [{"role": "system", "content": "s"}]
    chat = ContribChat.create_from_prompt(messages, "u", [{"type": "function"}])
    assert chat.messages is messages and messages[-1] == {"role": "user", "content": "u"}
    assert chat.request_inputs()["tools"] == [{"type": "function"}]
    call = ContribCall.create_mcptask("add", {"a": 1}, retry=3)
    assert (call.tool_name, call.args, call.retry) == ("add", {"a": 1}, 3)


# --- the tensorrt_llm.scaffolding alias ---------------------------------------------------


def test_the_alias_serves_every_submodule_and_names_what_it_lacks() -> None:
    out = _python(
        """
        from scaffold_actors.compat import install_trtllm_alias, real_trtllm_installed
        assert not real_trtllm_installed()
        assert install_trtllm_alias() and install_trtllm_alias()
        import scaffold_actors.compat as compat
        from tensorrt_llm.scaffolding import ScaffoldingLlm, NativeGenerationController
        from tensorrt_llm.scaffolding.task import GenerationTask, ChatTask
        from tensorrt_llm.scaffolding.worker import OpenaiWorker, Worker
        from tensorrt_llm.scaffolding.math_utils import get_majority_result
        from tensorrt_llm.scaffolding.result import ScaffoldingOutput
        from tensorrt_llm.scaffolding.load_generation_strategy import PoissonRateStrategy
        from tensorrt_llm.scaffolding.contrib.a2a import A2AController
        from tensorrt_llm.scaffolding.contrib.mcp.chat_task import ChatTask as C
        import tensorrt_llm
        assert GenerationTask is compat.GenerationTask and ScaffoldingLlm is compat.ScaffoldingLlm
        assert C is not ChatTask and tensorrt_llm.scaffolding.Worker is Worker
        for stmt in ("import tensorrt_llm.scaffolding.nope",
                     "from tensorrt_llm import LLM",
                     "import tensorrt_llm.llmapi",
                     "import tensorrt_llm.scaffolding.contrib.nope"):
            try:
                exec(stmt)
            except ImportError as e:
                print(type(e).__name__, "|", e)
            else:
                raise AssertionError(stmt)
        """
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4
    assert "tensorrt_llm.scaffolding and its submodules" in lines[0]
    assert "only tensorrt_llm.scaffolding" in lines[1] and "LLM" in lines[1]
    assert "only tensorrt_llm.scaffolding" in lines[2]
    assert "no such contrib module" in lines[3]


def test_the_alias_never_shadows_a_real_install() -> None:
    """With a tensorrt_llm importable (the stand-in here), nothing is installed
    and init_with_new_llm goes to it; without one, it fails in one line."""
    out = _python(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT / "tests" / "standins")!r})
        from scaffold_actors.compat import install_trtllm_alias, real_trtllm_installed
        assert real_trtllm_installed() and install_trtllm_alias() is False
        import tensorrt_llm
        assert not hasattr(tensorrt_llm, "__scaffold_actors_alias__")
        print("real kept")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "real kept"
    out = _python(
        """
        from scaffold_actors.compat import TRTLLMWorker
        try:
            TRTLLMWorker.init_with_new_llm("/models/x")
        except ImportError as e:
            print(e)
        """
    )
    assert out.returncode == 0, out.stderr
    message = out.stdout.strip()
    assert "\\n" not in message and "needs TensorRT-LLM" in message and "HFEngine" in message


def test_pytest_runs_tensorrt_llm_style_tests_through_the_alias(tmp_path: Path) -> None:
    """``pytest --trtllm-alias``: a test file written against
    tensorrt_llm.scaffolding runs unchanged; one that needs TensorRT-LLM's test
    tree or source files is skipped, saying which; a real failure still fails."""
    (tmp_path / "test_program.py").write_text(
        textwrap.dedent(
            """
            from tensorrt_llm.scaffolding import (NativeGenerationController, ScaffoldingLlm,
                                                  TaskStatus, Worker, GenerationTask)

            class Fixed(Worker):
                async def gen(self, task):
                    task.result = "ok"
                    return TaskStatus.SUCCESS
                task_handlers = {GenerationTask: gen}

            def test_runs():
                llm = ScaffoldingLlm(NativeGenerationController(),
                                     {NativeGenerationController.WorkerTag.GENERATION: Fixed()})
                assert llm.generate("q").outputs[0].text == "ok"
                llm.shutdown(shutdown_wokers=True)

            def test_fails():
                assert False, "a real failure"
            """
        )
    )
    (tmp_path / "test_needs_tree.py").write_text(
        "from utils.llm_data import llm_models_root\n\ndef test_x():\n    pass\n"
    )
    # mcp 1.x's FastMCP, as TensorRT-LLM's MCP tests import it: mcp 2's MCPServer
    (tmp_path / "test_old_mcp_name.py").write_text(
        "from mcp.server.fastmcp import FastMCP\nfrom mcp.server.mcpserver import MCPServer\n\n"
        "def test_named():\n    assert FastMCP is MCPServer\n"
    )
    (tmp_path / "test_needs_source.py").write_text(
        textwrap.dedent(
            """
            import importlib.util
            from pathlib import Path

            def test_reads_a_source_file():
                path = Path(__file__).parent / "tensorrt_llm" / "scaffolding" / "x.py"
                spec = importlib.util.spec_from_file_location("x", path)
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            """
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "--trtllm-alias",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        timeout=300,
    )
    report = out.stdout
    assert "1 failed, 2 passed, 2 skipped" in report, report
    assert "a real failure" in report
    assert "needs TensorRT-LLM's source tree (its test package 'utils')" in report
    assert "needs TensorRT-LLM's source tree (" in report and "x.py is not there" in report
    # without the flag, the same files do not import at all
    plain = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_program.py"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(),
        timeout=300,
    )
    assert plain.returncode != 0 and "tensorrt_llm" in plain.stdout


def test_port_run_runs_a_tensorrt_llm_script_unchanged(tmp_path: Path) -> None:
    script = tmp_path / "program.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from tensorrt_llm.scaffolding import (MajorityVoteController,
                NativeGenerationController, ScaffoldingLlm, TaskStatus, Worker, GenerationTask)

            class Boxed(Worker):
                async def gen(self, task):
                    task.output_str = "so \\\\boxed{" + sys.argv[1] + "}"
                    return TaskStatus.SUCCESS
                task_handlers = {GenerationTask: gen}

            if __name__ == "__main__":
                vote = MajorityVoteController(NativeGenerationController(), default_sample_num=3)
                llm = ScaffoldingLlm(vote, {NativeGenerationController.WorkerTag.GENERATION: Boxed()})
                print("answer:", llm.generate("q").outputs[0].text, sys.argv[2:])
                llm.shutdown()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "scaffold_actors.cli", "port-run", str(script), "42", "--flag"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "answer: so \\boxed{42} ['--flag']"
    missing = subprocess.run(
        [sys.executable, "-m", "scaffold_actors.cli", "port-run", str(tmp_path / "nope.py")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )
    assert missing.returncode != 0 and "nope.py" in missing.stderr


def test_an_mcp_worker_started_in_the_callers_asyncio_loop() -> None:
    """``MCPWorker(urls=...)`` / ``init_in_asyncio_event_loop()`` / ``run_task``
    / ``await shutdown()``: tools called with no runtime, the server (a real one,
    over stdio here) answers, and shutting down ends the session."""
    from scaffold_actors.compat import MCPCallTask, MCPWorker

    server = [sys.executable, str(ROOT / "tests" / "mcp_server.py"), "stdio"]

    async def session() -> tuple[list[str], bool]:
        worker = MCPWorker({"tools": server})
        await worker.init_in_asyncio_event_loop()
        with pytest.raises(RuntimeError, match="already started"):
            await worker.init_in_asyncio_event_loop()
        results = []
        for a, b in ((5, 3), (10, 20)):
            task = MCPCallTask()
            task.tool_name, task.args = "add", json.dumps({"a": a, "b": b})
            assert await worker.run_task(task) == TaskStatus.SUCCESS
            results.append(task.result_str or "")
        standalone = worker._standalone
        await worker.shutdown()
        assert standalone is not None and standalone.task.done()
        await worker.shutdown()  # again: nothing left to close
        return results, worker._tg is None

    results, closed = asyncio.run(session())
    assert results == ["8", "30"] and closed
    assert MCPWorker(urls=["http://h:1/sse", "http://h:2/mcp"]).servers == {
        "server0": "http://h:1/sse",
        "server1": "http://h:2/mcp",
    }

    async def unreachable() -> None:
        worker = MCPWorker({"gone": [sys.executable, "-c", "import sys; sys.exit(3)"]})
        worker.connect_timeout = 20
        await worker.init_in_asyncio_event_loop()

    with pytest.raises(Exception, match="gone"):
        asyncio.run(unreachable())


def test_a_trtllm_worker_runs_on_a_substituted_engine() -> None:
    """``set_trtllm_worker_engine``: init_with_new_llm builds its worker on the
    given engine, the earlier releases' sampling keywords become the worker's
    defaults, an unknown keyword is refused; ``None`` restores the default."""
    from scaffold_actors.compat import (
        TRTLLMWorker,
        set_trtllm_worker_engine,
        worker_engine_factory,
    )

    engines: list[SimulatedEngine] = []

    def make(model_dir: str) -> SimulatedEngine:
        engines.append(SimulatedEngine())
        return engines[-1]

    set_trtllm_worker_engine(make)
    try:
        worker = TRTLLMWorker.init_with_new_llm("some/model", temperature=0.5, topk=3)
        assert (worker.default_params.temperature, worker.default_params.top_k) == (0.5, 3)
        with pytest.raises(TypeError, match="'bogus'"):
            TRTLLMWorker.init_with_new_llm("some/model", bogus=1)
        with ScaffoldingLlm(NativeGenerationController(), {"generation": worker}) as llm:
            assert llm.generate("hello").outputs[0].text
        assert engines[0].completed == 1 and engines[0].num_active == 0
    finally:
        set_trtllm_worker_engine(None)
    with pytest.raises(ValueError, match="'hf', 'pytorch' or 'openai=URL'"):
        worker_engine_factory("trt")  # (the pytorch spec: see the DeepConf tests)
    with pytest.raises(ValueError, match="http"):
        worker_engine_factory("openai=localhost:1")


def test_port_run_serves_trtllm_workers_from_an_openai_server(tmp_path: Path) -> None:
    """``scaffold port-run --worker-engine openai=URL``: a program built on
    TRTLLMWorker.init_with_new_llm, with a stream it cancels past a threshold
    (TensorRT-LLM's AsyncGeneration pattern), runs unchanged against a server on
    loopback; the server's own counts show the cancelled stream was aborted."""
    pytest.importorskip("starlette")
    from test_engine_conformance import LoopbackServer

    script = tmp_path / "streams.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse
            from enum import Enum
            from tensorrt_llm.scaffolding import Controller, ScaffoldingLlm, TRTLLMWorker
            from tensorrt_llm.scaffolding.contrib import (StreamGenerationTask,
                                                          stream_generation_handler)

            class Streamer(Controller):
                class WorkerTag(Enum):
                    STREAM = "stream"

                def process(self, tasks, **kwargs):
                    stream = StreamGenerationTask.create_from_generation_task(tasks[0], 2)
                    stream.worker_tag = self.WorkerTag.STREAM
                    stream.max_tokens = 400
                    while not stream.end_flag:
                        yield [stream]
                        if len(stream.output_tokens) >= 6:
                            stream.cancel_flag = True
                    tasks[0].output_str = stream.output_str

            parser = argparse.ArgumentParser()
            parser.add_argument("--model_dir", required=True)
            args = parser.parse_args()
            worker = TRTLLMWorker.init_with_new_llm(args.model_dir, temperature=0.9)
            worker.register_task_handler(StreamGenerationTask, stream_generation_handler)
            llm = ScaffoldingLlm(Streamer(), {Streamer.WorkerTag.STREAM: worker})
            text = llm.generate("tell me about fruit").outputs[0].text
            print("words:", len(text.split()) >= 6)
            llm.shutdown(shutdown_workers=True)
            """
        )
    )
    server = LoopbackServer()
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "scaffold_actors.cli",
                "port-run",
                "--worker-engine",
                f"openai={server.url}",
                str(script),
                "--model_dir",
                "scaffold",
            ],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "words: True"
        # the server sees the client leave when it next writes: wait for its count
        for _ in range(1200):
            health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10).json()
            if health["aborted"]:
                break
            time.sleep(0.05)
        assert health["aborted"] == 1 and health["active"] == 0, health
    finally:
        server.kill()


@pytest.fixture(scope="module")
def smol_folder() -> str:
    """The embedded SmolLM2, converted once to a transformers folder."""
    pytest.importorskip("transformers")
    from engine_bridge._engines._hf import (
        EMBEDDED_GGUF,
        _load,
        conversion_cache_folder,
        embedded_model_path,
    )

    _load(embedded_model_path(), EMBEDDED_GGUF, "cpu", "float32", "sdpa")  # converts once
    folder = conversion_cache_folder(embedded_model_path())
    assert (folder / "config.json").is_file()
    return str(folder)


@pytest.mark.slow_model
def test_pytorch_worker_generates_streams_and_scores(smol_folder: str) -> None:
    """TensorRT-LLM's PyTorchWorker on the embedded model: handlers called
    directly (greedy is repeatable, logprobs are the model's with ranks, context
    logits per prompt token, a stop string ends and is cut, token-id prompts,
    a task with no input is WORKER_EXECEPTION), a stream stepped and cancelled,
    the worker behind a ScaffoldingLlm, and a classifier head scoring."""
    import torch

    from scaffold_actors.compat import PyTorchWorker, RewardTask

    worker = PyTorchWorker.from_pretrained(smol_folder, device="cpu", torch_dtype=torch.float32)
    assert str(worker.device) == "cpu" and worker.tokenizer is not None

    def greedy(prompt: str, **fields: Any) -> GenerationTask:
        task = GenerationTask.create_from_prompt(prompt)
        task.max_tokens, task.temperature = 4, 0.0
        for k, v in fields.items():
            setattr(task, k, v)
        assert asyncio.run(worker.generation_handler(task)) == TaskStatus.SUCCESS
        return task

    a = greedy("The capital of France is", num_logprobs=2, return_context_logits=True)
    b = greedy("The capital of France is")
    assert a.output_str == b.output_str and a.output_tokens and len(a.output_tokens) <= 4
    assert len(a.logprobs or []) == len(a.output_tokens)
    for token, entry in zip(a.output_tokens, a.logprobs or [], strict=True):
        assert entry[token].logprob <= 0.0 and entry[token].rank == 1  # greedy: the top token
    prompt_len = len(worker.tokenizer.encode("The capital of France is"))
    assert tuple(a.context_logits.shape) == (prompt_len, worker.model.config.vocab_size)
    assert b.context_logits is None and b.logprobs is None
    counting = greedy("1, 2, 3, 4, 5,", max_tokens=12, stop=[","])
    assert "," not in (counting.output_str or "") and counting.finish_reason == "stop"
    tokens = greedy("", input_str=None, input_tokens=worker.tokenizer.encode("Hello world"))
    assert tokens.output_str is not None
    empty = GenerationTask()
    empty.input_str = None
    assert asyncio.run(worker.generation_handler(empty)) == TaskStatus.WORKER_EXECEPTION

    stream = StreamGenerationTask(input_str="Once upon a time", max_tokens=6, temperature=0.0)
    stream.streaming_step = 2
    seen = []
    for _ in range(10):
        assert asyncio.run(worker.stream_generation_handler(stream)) == TaskStatus.SUCCESS
        seen.append(len(stream.output_tokens or []))
        if stream.end_flag:
            break
    assert seen[0] == 2 and stream.end_flag and seen == sorted(seen)
    cut = StreamGenerationTask(input_str="Once upon a time", max_tokens=50, temperature=0.0)
    cut.streaming_step = 2
    asyncio.run(worker.stream_generation_handler(cut))
    cut.cancel_flag = True
    asyncio.run(worker.stream_generation_handler(cut))
    assert cut.end_flag and len(cut.output_tokens or []) == 2

    controller = NativeGenerationController(sampling_params={"max_tokens": 3, "temperature": 0.7})
    with ScaffoldingLlm(controller, {"generation": worker}) as llm:
        results = llm.generate(["Hello, my name is", "The weather today is"])
    assert all(r.outputs[0].text and r.outputs[0].token_ids for r in results)

    judge = PyTorchWorker.from_pretrained_reward_model(smol_folder, torch_dtype=torch.float32)
    scored = RewardTask(input_str="What is 2 + 2?", candidates=["4", "five"])
    assert asyncio.run(judge.reward_handler(scored)) == TaskStatus.SUCCESS
    assert scored.scores is not None and all(0.0 <= s <= 1.0 for s in scored.scores)
    alone = RewardTask(input_tokens=worker.tokenizer.encode("This is a test."))
    assert asyncio.run(judge.reward_handler(alone)) == TaskStatus.SUCCESS
    assert 0.0 <= (alone.custom_output_params or {})["score"] <= 1.0
    judge.shutdown()
    assert next(judge.model.parameters()).device.type == "cpu"


def test_dynasor_generation_controller_stops_when_probes_agree() -> None:
    """TensorRT-LLM's contrib Dynasor controller: chunks of reasoning, a probe
    after each; once ``certainty_threshold`` probes agree with no hesitation it
    answers; hesitant probes run it to ``max_tokens``.  A model name that is no
    folder has its prompt counted by the worker (TokenizeTask), not guessed."""
    from scaffold_actors.compat.contrib.Dynasor import DynasorGenerationController, equal_group

    def reply(hesitant: bool) -> Any:
        def answer(call: Any) -> str:
            if "**Final Answer**" in call.prompt:
                return "wait 7} maybe" if hesitant else "7} so"
            return "step by step reasoning goes on here"

        return answer

    assert equal_group(["7", " 7 ", "7.0", "7."]) and not equal_group(["7", "8"])
    assert DynasorGenerationController.obtain_answer("{a}b} rest") == "{a}b"
    for hesitant in (False, True):
        engine = SimulatedEngine(reply(hesitant))  # type: ignore[arg-type]
        controller = DynasorGenerationController(
            "served-model-name", max_tokens=60, certainty_threshold=2, chunk_size=8
        )
        assert controller.tokenizer is None
        workers = {DynasorGenerationController.WorkerTag.GENERATION: EngineWorker(engine)}
        with ScaffoldingLlm(controller, workers) as llm:
            text = llm.generate("What is 3 + 4?").outputs[0].text
        if hesitant:
            assert "\\boxed" not in text and text.count("reasoning goes on") >= 3
        else:
            assert text.endswith("Final Answer:**\n\\[\n \\boxed{7}\n\\]")
            # two rounds: the second probe agreed with the first before its chunk was kept
            assert text.count("reasoning goes on") == 1
        assert engine.num_active == 0


# --- contrib DeepConf ----------------------------------------------------------------

#: a token's alternatives when the model is sure (confidence 4.337) and unsure (1.1)
_SURE = (("a", -0.01), ("b", -6.0), ("c", -7.0))
_UNSURE = (("a", -1.0), ("b", -1.1), ("c", -1.2))


def _trace(sure: int, unsure: int, answer: str = "") -> Any:
    """A responder output: ``sure`` confident words, then ``unsure`` hesitant ones,
    then the boxed answer (one confident token)."""
    from engine_bridge import SimulatedOutput

    words = [f"w{i}" for i in range(sure + unsure)] + ([f"\\boxed{{{answer}}}"] if answer else [])
    top = [_SURE] * sure + [_UNSURE] * unsure + ([_SURE] if answer else [])
    return SimulatedOutput(" ".join(words), logprobs=[-0.01] * len(words), top_logprobs=top)


def test_deepconf_confidence_windows_and_vote_policies() -> None:
    """Token confidence is minus the mean of its alternatives' logprobs; a window's
    mean joins the list each time the window is full; the statistics and each
    vote policy pick what their names say."""
    from scaffold_actors.compat.contrib.DeepConf import ConfidenceInfo, majority_vote
    from scaffold_actors.compat.contrib.DeepConf._confidence import token_logprobs

    info = ConfidenceInfo(conf_group_size=2, conf_threshold=3.0)
    info.update_confidence_info({1: -0.01, 2: -6.0, 3: -7.0}, 1)
    assert info.conf_list == [4.337] and not info.should_stop() and not info.avg_conf_group_list
    info.update_confidence_info(_UNSURE)
    assert info.avg_conf_group_list == [pytest.approx((4.337 + 1.1) / 2)] and info.should_stop()
    info.update_confidence_info([-1.1])  # bare logprobs
    assert info.avg_conf_group_list[-1] == pytest.approx(1.1)
    assert info.get_min_conf_grouped() == pytest.approx(1.1)
    info.get_statistics(tail_tokens=2)
    assert info.mean_conf == pytest.approx((4.337 + 2.2) / 3)
    assert info.tail_mean_conf == pytest.approx(1.1)
    assert info.min_window_conf == info.bottom_window_mean_conf == pytest.approx(1.1)
    with pytest.raises(ValueError, match="no logprobs"):
        info.update_confidence_info({})
    with pytest.warns(UserWarning, match="filled no window"):
        assert ConfidenceInfo(conf_group_size=4, conf_threshold=0.7).get_min_conf_grouped() == 0.7

    def task(answer: str, conf: float, tokens: int = 1) -> Any:
        t = GenerationTask(input_str="q")
        t.output_str = f"so \\boxed{{{answer}}}" if answer else "no answer"
        c = ConfidenceInfo(conf_group_size=1)
        for _ in range(tokens):
            c.add(conf)
        t.customized_result_fields["confidence_info"] = c
        return [t]

    # three weak traces say 1, two strong ones say 2, one says nothing
    traces = [
        task("1", 0.5),
        task("1", 0.4),
        task("1", 0.3),
        task("2", 3.0),
        task("2", 2.0),
        task("", 9.0),
    ]
    assert majority_vote(traces, "majority").result.endswith("{1}")
    for policy in ("mean_confidence_weighted", "min_window_weighted", "top10_tail_filtered"):
        assert majority_vote(traces, policy).result.endswith("{2}"), policy
    assert traces[5][0].customized_result_fields["extracted_answer"] is None
    with pytest.warns(UserWarning, match="no trace has a boxed answer"):
        assert majority_vote([task("", 1.0)], "majority").result == "no answer"
    with pytest.raises(NotImplementedError, match="'best'"):
        majority_vote(traces, "best")

    # the confidence reads TensorRT-LLM's logprobs ({token_id: Logprob}) when given
    from scaffold_actors.compat._pytorch_worker import Logprob

    t = GenerationTask(input_str="q")
    t.output_tokens, t.logprobs = [5], [{5: Logprob(-0.5, 1), 6: Logprob(-1.5, 2)}]  # type: ignore[list-item]
    assert token_logprobs(t) == [[-0.5, -1.5]]
    t.logprobs, t.output_str = None, "x"
    with pytest.raises(ValueError, match="set num_logprobs"):
        token_logprobs(t)


def _deepconf_llm(controller: Any, engine: Any) -> Any:
    from scaffold_actors import AsyncScaffoldingLlm

    return AsyncScaffoldingLlm(
        controller, {NativeGenerationController.WorkerTag.GENERATION: EngineWorker(engine)}
    )


def _generation(**extra: Any) -> NativeGenerationController:
    return NativeGenerationController(
        sampling_params={"max_tokens": 2000, "num_logprobs": 3, "temperature": 0.6, **extra}
    )


async def test_deepconf_online_cancels_a_trace_in_the_engine_once_unsure(
    autojump_clock: object,
) -> None:
    """The online controller streams in windows and aborts the generation in the
    engine (the engine's own count) once a window's confidence falls below the
    threshold; a sure trace runs to its end.  The offline one measures the
    whole trace."""
    from scaffold_actors.compat.contrib.DeepConf import (
        DeepConfOfflineController,
        DeepConfOnlineController,
    )

    engine = SimulatedEngine(lambda call: _trace(16, 1500))  # type: ignore[arg-type]
    online = DeepConfOnlineController(_generation(), conf_group_size=8, conf_threshold=2.0)
    async with _deepconf_llm(online, engine) as llm:
        r = await llm.generate("q")
    info = r.output.details["confidence_info"]
    # the window of 8 ending at token 22 (16 sure, 6 unsure) is the first below
    # 2.0; the stream had delivered 3 steps of 8 tokens, which are kept
    assert len(info.conf_list) == 22 and info.should_stop()
    assert len(r.output.output_str.split()) == 24
    assert engine.aborted == 1 and engine.num_active == 0 and engine.completed == 0

    engine = SimulatedEngine(lambda call: _trace(30, 0, "7"))  # type: ignore[arg-type]
    online = DeepConfOnlineController(_generation(), conf_group_size=8, conf_threshold=2.0)
    async with _deepconf_llm(online, engine) as llm:
        r = await llm.generate("q")
    assert r.output.output_str.endswith("\\boxed{7}") and engine.aborted == 0
    assert len(r.output.details["confidence_info"].conf_list) == 31

    engine = SimulatedEngine(lambda call: _trace(8, 8))  # type: ignore[arg-type]
    offline = DeepConfOfflineController(_generation(), conf_group_size=4, conf_threshold=2.0)
    async with _deepconf_llm(offline, engine) as llm:
        r = await llm.generate("q")
    info = r.output.details["confidence_info"]
    assert len(info.conf_list) == 16 and len(info.avg_conf_group_list) == 13
    assert engine.aborted == 0 and info.should_stop()


async def test_deepconf_votes_set_the_online_threshold_from_the_warmup(
    autojump_clock: object,
) -> None:
    """Online majority vote: the warm-up traces' weakest windows set the final
    traces' threshold (its percentile), the weak final traces are cut in the
    engine, and the vote's answer is the task's result."""
    from scaffold_actors.compat.contrib.DeepConf import (
        DeepConfOfflineController,
        DeepConfOfflineMajorityVoteController,
        DeepConfOnlineController,
        DeepConfOnlineMajorityVoteController,
    )

    def responder(call: Any) -> Any:
        # the warm-up (first 2 requests) and 2 of the final 4 are sure and say 42;
        # the other final traces hesitate at length
        return _trace(24, 0, "42") if call.index in (0, 1, 2, 4) else _trace(8, 1500, "13")

    engine = SimulatedEngine(responder)  # type: ignore[arg-type]
    kw = {"generation_controller": _generation(), "conf_group_size": 8, "conf_threshold": 0.0}
    vote = DeepConfOnlineMajorityVoteController(
        warmup_generation_controller=DeepConfOfflineController(**kw),
        final_generation_controller=DeepConfOnlineController(**kw),
        sample_num=6,
        warmup_sample_num=2,
        vote_policy="majority",
        confidence_percentile=90,
    )
    async with _deepconf_llm(vote, engine) as llm:
        r = await llm.generate("q")
    assert r.output.output_str.endswith("\\boxed{42}")
    assert engine.aborted == 2 and engine.completed == 4 and engine.num_active == 0

    engine = SimulatedEngine(lambda call: _trace(4, 0, "5" if call.index < 3 else "6"))  # type: ignore[arg-type]
    offline = DeepConfOfflineMajorityVoteController(
        DeepConfOfflineController(**kw), sample_num=5, vote_policy="mean_confidence_weighted"
    )
    async with _deepconf_llm(offline, engine) as llm:
        assert (await llm.generate("q")).output.output_str.endswith("\\boxed{5}")

    with pytest.raises(ValueError, match="must be at least warmup_sample_num"):
        DeepConfOnlineMajorityVoteController(
            DeepConfOfflineController(**kw), DeepConfOnlineController(**kw), sample_num=2
        )
    with pytest.raises(NotImplementedError, match="'loudest'"):
        DeepConfOfflineMajorityVoteController(DeepConfOfflineController(**kw), 4, "loudest")
    with pytest.raises(ValueError, match="conf_group_size"):
        DeepConfOnlineController(_generation(), conf_group_size=0, conf_threshold=1.0)


async def test_deepconf_without_logprobs_fails_the_request(autojump_clock: object) -> None:
    """No logprobs asked: the controller fails the request (nothing made up)."""
    from scaffold_actors.compat.contrib.DeepConf import DeepConfOfflineController

    engine = SimulatedEngine("a b c")
    plain = NativeGenerationController(sampling_params={"max_tokens": 8})
    controller = DeepConfOfflineController(plain, conf_group_size=2, conf_threshold=1.0)
    async with _deepconf_llm(controller, engine) as llm:
        with pytest.raises(ValueError, match="set num_logprobs"):
            await llm.generate("q")


@pytest.mark.slow_model
def test_port_run_pytorch_worker_engine_gives_top_logprobs(smol_folder: str) -> None:
    """``--worker-engine pytorch``: init_with_new_llm returns a PyTorchWorker,
    whose logprobs carry each token's alternatives (what DeepConf reads)."""
    from scaffold_actors.compat import PyTorchWorker, TRTLLMWorker
    from scaffold_actors.compat._workers import set_trtllm_worker_engine, worker_engine_factory

    set_trtllm_worker_engine(worker_engine_factory("pytorch"))
    try:
        worker = TRTLLMWorker.init_with_new_llm(smol_folder, backend="pytorch", max_batch_size=4)
    finally:
        set_trtllm_worker_engine(None)
    assert isinstance(worker, PyTorchWorker)
    task = GenerationTask(input_str="Hello", max_tokens=3, num_logprobs=4, temperature=0.6)
    assert asyncio.run(worker.run_task(task)) == TaskStatus.SUCCESS
    assert task.logprobs and all(len(d) >= 4 for d in task.logprobs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'hf', 'pytorch' or 'openai=URL'"):
        worker_engine_factory("vllm")


@pytest.mark.slow_model
def test_port_run_hf_worker_engine_serves_a_reward_model_folder(
    smol_folder: str, tmp_path: Path
) -> None:
    """``--worker-engine hf`` on a token-classification folder gives a process
    reward worker (loaded at once, its tokenizer set, as TensorRT-LLM's worker
    has it), so run_best_of_n_with_reward's pattern runs: samples from the
    generation worker, step scores from the reward model, the best kept."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForTokenClassification

    from scaffold_actors import RewardWorker
    from scaffold_actors.compat import BestOfNController, PRMController, TRTLLMWorker
    from scaffold_actors.compat._workers import (
        _reward_kind,
        set_trtllm_worker_engine,
        worker_engine_factory,
    )

    tokenizer = AutoTokenizer.from_pretrained(smol_folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=2,
    )  # fmt: skip
    prm = tmp_path / "prm"
    LlamaForTokenClassification(config).save_pretrained(prm)
    tokenizer.save_pretrained(prm)
    assert _reward_kind(str(prm)) == "process" and _reward_kind(smol_folder) is None
    assert _reward_kind("served-name") is None

    set_trtllm_worker_engine(worker_engine_factory("hf"))
    try:
        reward = TRTLLMWorker.init_with_new_llm(str(prm), disable_overlap_scheduler=True)
    finally:
        set_trtllm_worker_engine(None)
    assert isinstance(reward, RewardWorker) and reward.kind == "process"
    assert reward.tokenizer is not None

    seen: list[list[float]] = []

    class Recording(PRMController):
        def process(self, tasks: list[Task], **kwargs: Any) -> Any:
            yield from super().process(tasks, **kwargs)
            seen.append(list(self.scores or []))

    replies = ["step one\n\nso 4", "step one\n\nstep two\n\nso 5"]
    engine = SimulatedEngine(lambda call: replies[call.index % 2])  # type: ignore[arg-type]
    controller = BestOfNController(
        NativeGenerationController(sampling_params={"max_tokens": 16}),
        Recording(tokenizer=reward.tokenizer),
        default_sample_num=2,
    )
    workers = {
        NativeGenerationController.WorkerTag.GENERATION: EngineWorker(engine),
        PRMController.WorkerTag.REWARD: reward,
    }
    with ScaffoldingLlm(controller, workers) as llm:
        text = llm.generate("q").outputs[0].text
    # (4 samples: BestOfNController takes the larger of process()'s sample_num and
    # its default, as TensorRT-LLM's does)
    assert len(seen) == 1 and len(seen[0]) == 4 and all(0.0 < x < 1.0 for x in seen[0])
    assert text == replies[seen[0].index(max(seen[0])) % 2]  # the reward model's pick
