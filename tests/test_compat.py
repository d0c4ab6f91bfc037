"""TensorRT-LLM style controllers and workers, run by changing only the import."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import answers

from engine_bridge import CostModel, SimulatedEngine
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker, RequestContext
from scaffold_actors.compat import (
    BestOfNController,
    Controller,
    GenerationTask,
    MajorityVoteController,
    NativeGenerationController,
    NativeRewardController,
    ParallelProcess,
    RewardTask,
    ScaffoldingLlm,
    StreamGenerationTask,
    Task,
    TaskStatus,
    TaskTimer,
    Worker,
    extract_answer_from_boxed,
    with_task_collection,
)
from scaffold_actors.methods import MajorityVote

# --- code as a TensorRT-LLM user wrote it (only the import changed) ---------------


class AsyncioWorker(Worker):
    """A worker whose handlers use asyncio, like OpenaiWorker with AsyncOpenAI."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.calls = 0

    async def generation_handler(self, task: GenerationTask) -> TaskStatus:
        await asyncio.sleep(0.001)
        i = self.calls
        self.calls += 1
        parts = await asyncio.gather(asyncio.sleep(0, "x"), asyncio.sleep(0, "y"))
        assert parts == ["x", "y"]
        task.output_str = self.replies[i % len(self.replies)]
        task.output_tokens = [0] * 5
        return TaskStatus.SUCCESS

    async def reward_handler(self, task: RewardTask) -> TaskStatus:
        await asyncio.sleep(0)
        task.scores = [float(len(c)) for c in task.candidates]  # longest wins
        return TaskStatus.SUCCESS

    task_handlers = {GenerationTask: generation_handler, RewardTask: reward_handler}


def _example(name: str) -> Any:
    """Load a module from examples/ (the tests run the shipped example code)."""
    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TokenBudgetMajorityVoteController = _example(
    "ported_trtllm_controller"
).TokenBudgetMajorityVoteController


def test_ported_majority_vote_with_asyncio_handlers() -> None:
    worker = AsyncioWorker(answers("12", "12", "13", "12", "14"))
    gen = NativeGenerationController(sampling_params={"temperature": 0.9, "max_tokens": 64})
    llm = ScaffoldingLlm(
        MajorityVoteController(gen, default_sample_num=5),
        {NativeGenerationController.WorkerTag.GENERATION: worker},
    )
    results = llm.generate(["q1", "q2"])
    llm.shutdown(shutdown_workers=True)
    assert [extract_answer_from_boxed(r.output.output_str) for r in results] == ["12", "12"]
    assert worker.calls == 10


def test_ported_token_budget_controller_counts_tokens() -> None:
    worker = AsyncioWorker(answers("5"))
    controller = TokenBudgetMajorityVoteController(
        NativeGenerationController(custom_sampling_params={"max_tokens": 16}),
        token_budget=32,
        samples_per_turn=3,
    )
    with ScaffoldingLlm(controller, {"generation": worker}) as llm:
        result = llm.generate("q")
    # 5 tokens per sample, 3 samples a turn: 15, 30, 45 >= 32 after three turns
    counter = result.task_collections["token_counter"]
    assert counter.generation_token_count == 45


def test_ported_best_of_n_uses_the_reward_worker() -> None:
    worker = AsyncioWorker(["short", "the longest answer", "medium one"])
    controller = BestOfNController(
        NativeGenerationController(), NativeRewardController(), default_sample_num=3
    )
    with ScaffoldingLlm(controller, {"generation": worker, "reward": worker}) as llm:
        result = llm.generate("q")
    assert result.output.output_str == "the longest answer"


def test_asyncio_handlers_on_the_simulated_engine_too() -> None:
    controller = MajorityVoteController(
        NativeGenerationController({"max_tokens": 32}), default_sample_num=3
    )
    with ScaffoldingLlm(
        controller, {"generation": EngineWorker(SimulatedEngine(answers("9")))}
    ) as llm:
        assert "\\boxed{9}" in llm.generate("q").output.output_str


def test_unknown_sampling_parameter_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"sampling_params\.temprature: unknown sampling parameter"
    ):
        NativeGenerationController(sampling_params={"temprature": 0.5})
    with pytest.raises(ValueError, match="max_tokens: must be >= 1"):
        NativeGenerationController(sampling_params={"max_tokens": -2})


def test_parallel_process_checks_lengths() -> None:
    with pytest.raises(ValueError, match="as many task lists"):
        ParallelProcess([NativeGenerationController()], [[], []], [{}])


# --- on the trio runtime directly --------------------------------------------------


class StreamingController(Controller):
    """The TensorRT-LLM AsyncGeneration example: stop a stream after a budget."""

    def __init__(self, budget: int, step: int) -> None:
        super().__init__()
        self.budget = budget
        self.step = step
        self.snapshots: list[int] = []

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        stream = StreamGenerationTask.create_from_generation_task(tasks[0], self.step)  # type: ignore[arg-type]
        stream.worker_tag = "generation"
        stream.max_tokens = 500
        while not stream.end_flag:
            yield [stream]
            self.snapshots.append(len(stream.output_tokens or ()))
            if len(stream.output_tokens or ()) >= self.budget:
                stream.cancel_flag = True
                yield [stream]
        tasks[0].output_str = stream.output_str
        tasks[0].customized_result_fields["snapshots"] = list(self.snapshots)


async def test_stream_generation_task_cancelled_by_flag(autojump_clock: object) -> None:
    engine = SimulatedEngine(" ".join(f"t{i}" for i in range(400)))
    async with AsyncScaffoldingLlm(
        StreamingController(budget=12, step=4), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate("q")
    assert r.output.details["snapshots"] == [4, 8, 12]
    assert (
        r.output.output_str.startswith("t0 t1 t2")
        and engine.aborted == 1
        and engine.num_active == 0
    )


async def test_stream_generation_task_to_the_end(autojump_clock: object) -> None:
    engine = SimulatedEngine("a b c d e")
    async with AsyncScaffoldingLlm(
        StreamingController(budget=100, step=2), {"generation": EngineWorker(engine)}
    ) as llm:
        r = await llm.generate("q")
    assert r.output.details["snapshots"] == [2, 4, 5]
    assert r.output.output_str == "a b c d e"


class Abandoning(Controller):
    """Starts a stream, reads one step of it and returns with it still open."""

    def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
        stream = StreamGenerationTask.create_from_generation_task(tasks[0], 2)  # type: ignore[arg-type]
        stream.worker_tag = "generation"
        stream.max_tokens = 300
        yield [stream]
        tasks[0].output_str = stream.output_str


async def test_a_stream_left_open_is_aborted_when_its_generator_returns(
    autojump_clock: object,
) -> None:
    """Where it was started: by the request's generator (aborted before the
    request ends) or by a sub-generator of a ParallelProcess (aborted when that
    sub-generator returns, before its parent goes on): the engine sees it."""
    engine = SimulatedEngine(" ".join(f"t{i}" for i in range(400)))
    seen: dict[str, int] = {}

    class Parent(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            sub = [GenerationTask(input_str="q"), GenerationTask(input_str="q")]
            yield ParallelProcess([Abandoning(), Abandoning()], [[sub[0]], [sub[1]]])
            seen["active after the sub-generators"] = engine.num_active
            seen["aborted after the sub-generators"] = engine.aborted
            tasks[0].output_str = sub[0].output_str

    async with AsyncScaffoldingLlm(Abandoning(), {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
        assert r.output.output_str == "t0 t1"
        assert engine.aborted == 1 and engine.num_active == 0
    engine = SimulatedEngine(" ".join(f"t{i}" for i in range(400)))
    async with AsyncScaffoldingLlm(Parent(), {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert r.output.output_str == "t0 t1"
    assert seen == {"active after the sub-generators": 0, "aborted after the sub-generators": 2}


@pytest.mark.parametrize("collected", [False, True])
async def test_task_errors_are_thrown_into_the_generator(
    autojump_clock: object, collected: bool
) -> None:
    """Also through a task collection's hooks (they forward what is thrown)."""

    class Recovering(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            bad = GenerationTask(input_str="q", worker_tag="nowhere")
            try:
                yield [bad]
            except ValueError as e:
                tasks[0].worker_tag = "generation"
                tasks[0].customized_result_fields["recovered"] = type(e).__name__
                yield tasks

    if collected:
        Recovering = with_task_collection("timer", TaskTimer)(Recovering)
    async with AsyncScaffoldingLlm(
        Recovering(), {"generation": EngineWorker(SimulatedEngine("ok"))}
    ) as llm:
        r = await llm.generate("q")
    assert r.output.output_str == "ok" and r.output.details["recovered"] == "UnknownWorkerTagError"


@pytest.mark.parametrize("collected", [False, True])
async def test_generators_are_closed_on_cancel(autojump_clock: object, collected: bool) -> None:
    """The driver closes the generator itself: the test keeps a reference to it, so
    garbage collection cannot close it in the driver's place (also through a task
    collection's hooks)."""
    closed: list[str] = []
    alive: list[Generator[Any, Any, Any]] = []

    class Slow(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            try:
                for t in tasks:
                    t.worker_tag = "generation"
                    t.max_tokens = 500
                yield tasks
            finally:
                closed.append("closed")

        def generate(self, prompt: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            gen = super().generate(prompt, **kwargs)
            alive.append(gen)
            return gen

    if collected:
        Slow = with_task_collection("timer", TaskTimer)(Slow)
    engine = SimulatedEngine(" ".join(["w"] * 500))
    async with AsyncScaffoldingLlm(Slow(), {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate_async("q")
        await trio.sleep(0.1)
        await r.acancel()
        assert closed == ["closed"] and engine.num_active == 0
    assert len(alive) == 1


async def test_yielding_something_else_fails_clearly(autojump_clock: object) -> None:
    class Wrong(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            yield "not tasks"

    async with AsyncScaffoldingLlm(Wrong(), {"generation": EngineWorker(SimulatedEngine())}) as llm:
        with pytest.raises(
            TypeError, match="must yield a list of Task objects or a ParallelProcess, got str"
        ):
            await llm.generate("q")


async def test_generator_controller_composes_inside_a_native_one(autojump_clock: object) -> None:
    """Native majority vote over the compat NativeGenerationController sampler."""
    engine = SimulatedEngine(answers("4", "4", "5"))
    mv = MajorityVote(
        sampler=NativeGenerationController({"max_tokens": 16}), samples=3, early_stop=False
    )
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("q")
    assert r.output.details["votes"] == {"4": 2, "5": 1}


async def test_task_timer_collects_durations(autojump_clock: object) -> None:
    @with_task_collection("timer", TaskTimer)
    class Timed(NativeGenerationController):
        pass

    async with AsyncScaffoldingLlm(
        Timed(), {"generation": EngineWorker(SimulatedEngine("a b"))}
    ) as llm:
        r = await llm.generate("q")
    assert list(r.task_collections["timer"].durations) == ["GenerationTask"]


def test_with_task_collection_only_decorates_controllers() -> None:
    with pytest.raises(TypeError):
        with_task_collection("x", TaskTimer)(int)  # type: ignore[arg-type]


def test_compat_and_native_share_task_types() -> None:
    import scaffold_actors

    assert GenerationTask is scaffold_actors.GenerationTask
    assert isinstance(RequestContext, type)


def test_best_of_n_with_a_process_reward_controller() -> None:
    """TensorRT-LLM's PRMController: steps scored by the reward worker, the
    product ranks the samples."""
    from scaffold_actors.compat import PRMController

    class StepReward(Worker):
        """A process reward stand-in: each step scores 0.9, a step that says
        'wrong' 0.1."""

        async def reward_handler(self, task: RewardTask) -> TaskStatus:
            await asyncio.sleep(0)
            assert task.step_separator == "\n\n"
            task.step_scores = [
                [0.1 if "wrong" in step else 0.9 for step in c.split(task.step_separator)]
                for c in task.candidates
            ]
            task.scores = [min(s) for s in task.step_scores]
            return TaskStatus.SUCCESS

        task_handlers = {RewardTask: reward_handler}

    replies = ["a\n\nwrong\n\nc", "a\n\nb", "a\n\nb\n\nc\n\nd"]
    controller = BestOfNController(
        NativeGenerationController(), PRMController(tokenizer=None), default_sample_num=3
    )
    with ScaffoldingLlm(
        controller, {"generation": AsyncioWorker(replies), "reward": StepReward()}
    ) as llm:
        result = llm.generate("q")
    assert result.output.output_str == "a\n\nb"  # 0.81 beats 0.729 and 0.081

    class NoSteps(StepReward):
        async def reward_handler(self, task: RewardTask) -> TaskStatus:
            task.scores = [1.0 for _ in task.candidates]
            return TaskStatus.SUCCESS

        task_handlers = {RewardTask: reward_handler}

    with ScaffoldingLlm(
        controller, {"generation": AsyncioWorker(replies), "reward": NoSteps()}
    ) as llm:
        with pytest.raises(ValueError, match="no step scores"):
            llm.generate("q")


def test_a_controller_built_from_a_json_or_yaml_config(tmp_path: Path) -> None:
    from scaffold_actors.compat import (
        build_controller,
        load_controller_config,
        register_controller,
    )

    config = {
        "controller": {
            "type": "MajorityVoteController",
            "args": {
                "default_sample_num": 3,
                "generation_controller": {
                    "type": "NativeGenerationController",
                    "args": {"sampling_params": {"max_tokens": 16, "temperature": 0.9}},
                },
            },
        }
    }
    (tmp_path / "mv.json").write_text(json.dumps(config))
    yaml_text = (
        "controller:\n  type: BestOfNController\n  args:\n    default_sample_num: 2\n"
        "    generation_controller: {type: NativeGenerationController}\n"
        "    reward_controller: {type: PRMController, args: {tokenizer: {$ref: tok}}}\n"
    )
    (tmp_path / "bon.yaml").write_text(yaml_text)
    mv = load_controller_config(tmp_path / "mv.json")
    assert isinstance(mv, MajorityVoteController) and mv.default_sample_num == 3
    assert mv.generation_controller.sampling_params == {"max_tokens": 16, "temperature": 0.9}
    tok = object()
    bon = load_controller_config(tmp_path / "bon.yaml", objects={"tok": tok})
    assert bon.reward_controller.tokenizer is tok
    with ScaffoldingLlm(mv, {"generation": AsyncioWorker(answers("7"))}) as llm:
        assert extract_answer_from_boxed(llm.generate("q").output.output_str) == "7"

    with pytest.raises(
        ValueError, match=r"controller\.args\.generation_controller: unknown controller type 'Nope'"
    ):
        build_controller(
            {"type": "MajorityVoteController", "args": {"generation_controller": {"type": "Nope"}}}
        )
    with pytest.raises(KeyError, match="unknown object reference 'tok'"):
        build_controller({"type": "PRMController", "args": {"tokenizer": {"$ref": "tok"}}})
    with pytest.raises(ValueError, match="unexpected keys"):
        build_controller({"type": "PRMController", "sample_num": 3})
    with pytest.raises(TypeError, match="NativeGenerationController"):
        build_controller({"type": "NativeGenerationController", "args": {"bogus": 1}})
    with pytest.raises(TypeError, match="controller class"):
        register_controller("x", int)
    register_controller("MyVote", MajorityVoteController)
    with pytest.raises(ValueError, match="already registered"):
        register_controller("MyVote", BestOfNController)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_controller_config(tmp_path / "bad.json")


def test_metrics_collectors_in_trtllm_style(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scaffold_actors.compat import (
        ChatTask,
        ChatTokenCounter,
        NativeChatController,
        TaskMetricsCollector,
        TaskTimer,
    )

    TaskMetricsCollector.reset()

    @with_task_collection(
        "metrics", TaskMetricsCollector, controller_name="gen", capture_messages=True
    )
    @with_task_collection("chat_tokens", ChatTokenCounter, statistics_name="chat")
    @with_task_collection("timer", TaskTimer, statistics_name="t", task_types=[ChatTask])
    class Chat(NativeChatController):
        pass

    @with_task_collection(
        "metrics", TaskMetricsCollector, controller_name="vote", enable_print=False
    )
    class Vote(MajorityVoteController):
        pass

    engine = SimulatedEngine(answers("5"))
    with ScaffoldingLlm(
        Vote(Chat({"max_tokens": 16}), default_sample_num=3), {"generation": EngineWorker(engine)}
    ) as llm:
        llm.generate("q")
    stats = TaskMetricsCollector.get_statistics()
    # the vote hands its GenerationTask to each sample's controller; a task is
    # recorded once, by the collector of the controller that yielded it
    assert [r["task_type"] for r in stats["gen"]] == ["GenerationTask"] * 3
    assert stats["vote"] == []
    assert all(r["completion_tokens"] > 0 for r in stats["gen"])
    with ScaffoldingLlm(Chat({"max_tokens": 16}), {"generation": EngineWorker(engine)}) as llm:
        llm.generate("q")
    record = TaskMetricsCollector.get_statistics("gen")["gen"][-1]
    assert record["task_type"] == "ChatTask"
    assert record["total_tokens"] > record["completion_tokens"] > 0
    assert [m["role"] for m in record["new_messages"]] == ["assistant"]
    assert record["message_count_after"] == record["message_count_before"] + 1
    assert "[gen] ChatTask START" in capsys.readouterr().out
    assert len(ChatTokenCounter.get_global_info()["chat"]) >= 1
    assert len(TaskTimer.get_global_info()["t"][ChatTask]) >= 1
    summary = TaskMetricsCollector.summary()["gen"]
    assert summary["GenerationTask"]["count"]["n"] == 3 and summary["ChatTask"]["count"]["n"] == 1
    TaskMetricsCollector.export_to_json(tmp_path / "m.json", "gen")
    assert len(json.loads((tmp_path / "m.json").read_text())) == 4
    TaskMetricsCollector.reset("gen")
    assert TaskMetricsCollector.get_statistics("gen") == {"gen": []}


def test_async_scaffolding_benchmark_in_trtllm_style() -> None:
    from scaffold_actors.compat import (
        GenerationTokenCounter,
        ScaffoldingBenchRequest,
        async_scaffolding_benchmark,
    )

    class ScopedWorker(AsyncioWorker):
        def __init__(self, replies: list[str]) -> None:
            super().__init__(replies)
            self.scope_params: dict[str, dict[str, Any]] = {}

        def set_scope_params(self, scope_id: str, **params: Any) -> None:
            self.scope_params[scope_id] = params

    class Vote(MajorityVoteController):  # the benchmark decorates the class in place
        pass

    worker = ScopedWorker(answers("3"))
    controller = Vote(NativeGenerationController(), default_sample_num=2)
    requests = [
        ScaffoldingBenchRequest(prompt=f"q{i}", scope_params={"k": str(i)}) for i in range(6)
    ]
    with ScaffoldingLlm(controller, {"generation": worker}) as llm:
        results, durations, total = asyncio.run(
            async_scaffolding_benchmark(
                llm, {"tokens": GenerationTokenCounter}, requests, concurrency=2
            )
        )
        assert llm.output_task_collection
        with pytest.raises(ValueError, match="concurrency"):
            asyncio.run(async_scaffolding_benchmark(llm, {}, requests))
    assert len(results) == len(durations) == 6 and total >= max(durations)
    assert all(r.task_collections["tokens"].generation_token_count == 10 for r in results)
    assert sorted(p["k"] for p in worker.scope_params.values()) == [str(i) for i in range(6)]
    # a second runtime numbers its requests from req-1 again: its scopes are its own
    worker.scope_params.clear()
    with ScaffoldingLlm(controller, {"generation": worker}) as llm:  # a second run: no double count
        again, *_ = asyncio.run(
            async_scaffolding_benchmark(
                llm, {"tokens": GenerationTokenCounter}, requests[:2], concurrency=2
            )
        )
    assert all(r.task_collections["tokens"].generation_token_count == 10 for r in again)
    assert sorted(p["k"] for p in worker.scope_params.values()) == ["0", "1"]


def test_compat_accepts_any_prompt_the_way_tensorrt_llm_does() -> None:
    """What a prompt means is the controller's business: the empty string reaches
    the worker (the native API refuses it at submission)."""
    seen: list[str | None] = []

    class Recorder(Worker):
        async def generation_handler(self, task: GenerationTask) -> TaskStatus:
            seen.append(task.input_str)
            task.output_str = "ok"
            return TaskStatus.SUCCESS

        task_handlers = {GenerationTask: generation_handler}

    with ScaffoldingLlm(NativeGenerationController(), {"generation": Recorder()}) as llm:
        assert [r.output.output_str for r in llm.generate(["", "  "])] == ["ok", "ok"]
    assert seen == ["", "  "]
    import scaffold_actors

    with scaffold_actors.ScaffoldingLlm(
        NativeGenerationController(), {"generation": Recorder()}
    ) as llm:
        with pytest.raises(scaffold_actors.InvalidTaskError, match="non-empty"):
            llm.generate("")


def test_system_prompt_keeps_its_id_through_formatting_and_copies() -> None:
    import copy
    import pickle
    import uuid

    from scaffold_actors.compat import SystemMessage, system_prompt

    template = system_prompt("Today is {date}. Be brief.", name="demo.brief")
    expected = str(uuid.uuid5(uuid.UUID("4f9c4d4e-1c7e-4d8a-9f8a-3c1c0e1c1f3d"), "demo.brief"))
    rendered = template.format(date="Monday")
    assert rendered == "Today is Monday. Be brief."
    for value in (template, rendered, template.format_map({"date": "x"}), copy.deepcopy(rendered)):
        assert value.system_prompt_id == expected  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(rendered)).system_prompt_id == expected
    assert not hasattr(rendered + "!", "system_prompt_id")  # other text, no identity
    assert SystemMessage(rendered).content == rendered
    with pytest.raises(TypeError):
        system_prompt(3, name="x")  # type: ignore[arg-type]


def test_execution_tracing_in_trtllm_style(tmp_path: Path) -> None:
    from scaffold_actors.compat import (
        ChatTask,
        ExecutionTrace,
        NativeChatController,
        with_execution_tracing,
    )

    @with_execution_tracing("vote")
    class Vote(MajorityVoteController):
        pass

    engine = SimulatedEngine(answers("4"))
    with ScaffoldingLlm(
        Vote(NativeChatController({"max_tokens": 16}), default_sample_num=3),
        {"generation": EngineWorker(engine)},
    ) as llm:
        result = llm.generate("2 + 2?")
    trace = result.task_collections["execution_tracer"].export_trace()
    kinds = [(e.event_type, e.role, e.branch_path) for e in trace.events]
    assert kinds[0] == ("parallel_start", None, []) and kinds[-1] == ("parallel_end", None, [])
    assert trace.events[0].num_branches == 3
    for i in range(3):  # each sample: its prompt, then its answer, on its own branch
        assert ("message", "user", [i]) in kinds and ("message", "assistant", [i]) in kinds
    answer = next(e for e in trace.events if e.role == "assistant")
    assert answer.completion_tokens and answer.finish_reason and answer.duration_ms >= 0

    @with_execution_tracing("pair")
    class Pair(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            chats = [ChatTask.create_from_prompt(f"q{i}") for i in range(2)]
            for c in chats:
                c.worker_tag, c.max_tokens = "generation", 8
            yield chats  # two tasks at once: a fork of their own
            chats[0].add_message(UserMessage("and?"))
            yield [chats[0]]  # only the new message is recorded again
            tasks[0].output_str = chats[0].output_str

    from scaffold_actors.compat import UserMessage

    with ScaffoldingLlm(Pair(), {"generation": EngineWorker(engine)}) as llm:
        result = llm.generate("q")
    trace = result.task_collections["execution_tracer"].export_trace()
    kinds = [(e.event_type, e.role, e.conversation_id, e.branch_path) for e in trace.events]
    assert kinds == [  # two tasks at once: a fork, each task's messages on its branch
        ("parallel_start", None, None, []),
        ("message", "user", 0, [0]),
        ("message", "assistant", 0, [0]),
        ("message", "user", 1, [1]),
        ("message", "assistant", 1, [1]),
        ("parallel_end", None, None, []),
        ("message", "user", 0, []),
        ("message", "assistant", 0, []),
    ]
    trace.save(tmp_path / "full.json", full=True)
    assert ExecutionTrace.load(tmp_path / "full.json") == trace
    trace.save(tmp_path / "compact.json")
    events = json.loads((tmp_path / "compact.json").read_text())["events"]
    assert "conversation_id" not in events[0]  # unset fields are left out
    assert all("content" not in e for e in events)  # compact: no message text
    assert trace.events[1].content == "q0" and trace.events[1].message_index == 0


def test_tokenize_trace_scope_counts_the_traced_messages() -> None:
    from scaffold_actors.compat import (
        ChatTask,
        NativeChatController,
        SystemMessage,
        tokenize_trace_scope,
        with_execution_tracing,
    )

    @tokenize_trace_scope()
    @with_execution_tracing("chat")
    class Chat(NativeChatController):
        def generate(self, prompt: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
            chat = ChatTask.create_from_prompt(prompt, [SystemMessage("Be brief.")])
            yield from self.process([chat], **kwargs)
            return chat.create_scaffolding_output()

    engine = SimulatedEngine(answers("4"))
    worker = EngineWorker(engine)
    with ScaffoldingLlm(Chat({"max_tokens": 8}), {"generation": worker, "tokenize": worker}) as llm:
        result = llm.generate("2 + 2?")
    system, user, reply = result.task_collections["execution_tracer"].events
    assert (system.role, user.role, reply.role) == ("system", "user", "assistant")
    assert user.tokens == engine.tokenizer.count("2 + 2?")
    assert user.tokens_source == "tokenize_endpoint"
    assert system.tokens == reply.prompt_tokens - user.tokens


def test_sub_request_markers_and_tokenize_in_trtllm_style(monkeypatch: pytest.MonkeyPatch) -> None:
    from scaffold_actors.compat import (
        ChatTask,
        NativeChatController,
        TokenizeTask,
        TokenizeWorkerTag,
        sub_request_node,
    )

    monkeypatch.setenv("ENABLE_SUB_REQUEST_MARKER", "1")
    marks: list[list[tuple[str, int]]] = []

    @sub_request_node("inner")
    class Inner(NativeChatController):
        pass

    @sub_request_node("outer", is_top_level=True)
    class Outer(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            chat = ChatTask.create_from_prompt("q")
            yield from Inner({"max_tokens": 8}).process([chat])
            marks.append(list(chat.sub_request_markers))
            count = TokenizeTask(content="How many tokens?", worker_tag=TokenizeWorkerTag.TOKENIZE)
            yield [count]
            tasks[0].output_str = str(count.token_count)

    worker = EngineWorker(SimulatedEngine(answers("1")))
    with ScaffoldingLlm(Outer(), {"generation": worker, "tokenize": worker}) as llm:
        result = llm.generate("q")
    (path,) = marks
    assert [name for name, _ in path] == ["LeafNode", "inner", "outer"]
    assert path[0] == ("LeafNode", 0)  # renumbered from 0 by the node that saw it
    assert int(result.output.output_str) > 0


async def test_streaming_output_flag_streams_partial_outputs_in_trtllm_style(
    autojump_clock: object,
) -> None:
    """NativeGenerationController(streaming=True): the result streams the task's
    partial outputs while it generates, then the final output."""
    text = " ".join(f"w{i}" for i in range(12))
    engine = SimulatedEngine(text, cost=CostModel(0.0, 0.005, 0.0))
    controller = NativeGenerationController({"max_tokens": 32}, streaming=True)
    async with AsyncScaffoldingLlm(controller, {"generation": EngineWorker(engine)}) as llm:
        result = await llm.generate_async("q")
        outputs = [o async for o in result]
    partial = [o for o in outputs if not o.finished]
    assert outputs[-1].finished and outputs[-1].output_str == text
    sizes = [len(o.output_tokens or ()) for o in partial]
    assert sizes == list(range(1, 12))  # every step, growing, before the end
    assert all(text.startswith(o.output_str or "") for o in partial)


def test_benchmark_and_trace_refusals(tmp_path: Path) -> None:
    from scaffold_actors.compat import ExecutionTrace, async_scaffolding_benchmark

    with ScaffoldingLlm(NativeGenerationController(), {"generation": AsyncioWorker(["x"])}) as llm:
        with pytest.raises(TypeError, match="LoadGenerationStrategy"):
            asyncio.run(async_scaffolding_benchmark(llm, {}, [], concurrency=1, strategy=object()))
    (tmp_path / "t.json").write_text('{"events": 3}')
    with pytest.raises(ValueError, match="not an execution trace"):
        ExecutionTrace.load(tmp_path / "t.json")


def test_a_cloned_generation_controller_shares_nothing_it_may_change() -> None:
    """TensorRT-LLM deep-copies a controller per sample; our fast clone of
    NativeGenerationController must be as independent (a subclass, or one with
    task collections, still gets the deep copy)."""
    original = NativeGenerationController({"max_tokens": 8, "stop": ["\n"]}, streaming=True)
    twin = original.clone()
    assert type(twin) is NativeGenerationController and vars(twin) == vars(original)
    twin.sampling_params["stop"].append("x")  # type: ignore[attr-defined]
    twin.sampling_params["max_tokens"] = 9
    twin.task_collections["timer"] = TaskTimer()
    assert original.sampling_params == {"max_tokens": 8, "stop": ["\n"]}
    assert original.task_collections == {}

    class Mine(NativeGenerationController):
        def __init__(self) -> None:
            super().__init__({"max_tokens": 8})
            self.seen: list[str] = []

    mine = Mine()
    copy = mine.clone()
    assert type(copy) is Mine and copy.seen is not mine.seen


@pytest.mark.parametrize("then", ["returns", "cancels"])
async def test_a_background_streams_error_is_not_lost(autojump_clock: object, then: str) -> None:
    """A stream fails in the background while its generator does something else;
    the generator then returns without stepping it, or sets ``cancel_flag`` and
    yields it: either way the request fails with the stream's own error."""
    from engine_bridge import EngineError, SimulatedOutput

    def reply(call: Any) -> Any:
        if "stream" in call.prompt:
            return SimulatedOutput(
                " ".join(f"s{i}" for i in range(50)), error=EngineError("stream broke"), error_after=4
            )
        return " ".join(f"w{i}" for i in range(30))  # long enough for the stream to break

    class Distracted(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            stream = StreamGenerationTask(input_str="stream please", max_tokens=50)
            stream.streaming_step = 2
            yield [stream]
            yield [GenerationTask(input_str="other", max_tokens=30)]
            if then == "cancels":
                stream.cancel_flag = True
                yield [stream]
            tasks[0].output_str = "done"

    engine = SimulatedEngine(reply)  # type: ignore[arg-type]
    async with AsyncScaffoldingLlm(Distracted(), {"generation": EngineWorker(engine)}) as llm:
        with pytest.raises(EngineError, match="stream broke"):
            await llm.generate("q")
    assert engine.num_active == 0
