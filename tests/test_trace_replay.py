"""TensorRT-LLM's trace replay (ReplayEngine, QueueManager, QueueExecutor,
ReplayGenerationStats): a recorded agent run played back as load.

What the replay did is read from the engine (its requests, batch, prefix-cache
hits, the tokens it generated) and from the virtual clock, never from the
replay's own bookkeeping alone."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
import trio

from engine_bridge import SimulatedEngine
from scaffold_actors import EngineWorker
from scaffold_actors.compat import (
    ChatTask,
    Controller,
    ExecutionTrace,
    NativeChatController,
    ParallelProcess,
    QueueManager,
    ReplayEngine,
    ReplayGenerationStats,
    ScaffoldingLlm,
    SystemMessage,
    Task,
    TraceEvent,
    make_seeded_rng_factory,
    system_prompt,
    tokenize_trace_scope,
    with_execution_tracing,
)

TEMPLATE = system_prompt("You are a careful researcher. Cite sources. " * 3, name="researcher")


def recorded_trace() -> ExecutionTrace:
    """A real run: a planning chat, then two research chats in parallel."""

    class Research(Controller):
        def __init__(self, topic: str) -> None:
            super().__init__()
            self.topic = topic

        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            chat = ChatTask.create_from_prompt(f"Research {self.topic}.", [SystemMessage(TEMPLATE)])
            chat.worker_tag, chat.max_tokens = "generation", 16
            yield [chat]

    @tokenize_trace_scope()
    @with_execution_tracing("supervisor")
    class Supervisor(NativeChatController):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            plan = ChatTask.create_from_prompt("Plan the study.", [SystemMessage(TEMPLATE)])
            plan.worker_tag, plan.max_tokens = "generation", 16
            yield [plan]
            workers = [Research("rivers"), Research("lakes")]
            yield ParallelProcess(workers, [[], []], [{}, {}])
            tasks[0].output_str = "done"

    engine = SimulatedEngine("a finding about water, with a source " * 2)
    worker = EngineWorker(engine)
    with ScaffoldingLlm(
        Supervisor({"max_tokens": 16}), {"generation": worker, "tokenize": worker}
    ) as llm:
        result = llm.generate("q")
    return result.task_collections["execution_tracer"].export_trace()


def test_a_recorded_run_is_replayed_branch_by_branch(tmp_path: Any) -> None:
    trace = recorded_trace()
    trace.save(tmp_path / "trace.json", full=False)  # compact: no text, token counts only
    trace = ExecutionTrace.load(tmp_path / "trace.json")
    kinds = [(e.event_type, e.role, e.branch_path) for e in trace.events]
    assert ("parallel_start", None, []) in kinds and ("message", "assistant", [1]) in kinds
    assistants = [e for e in trace.events if e.role == "assistant"]
    systems = [e for e in trace.events if e.role == "system"]
    assert len({e.system_prompt_id for e in systems}) == 1 and systems[0].tokens

    async def replay() -> tuple[SimulatedEngine, ReplayGenerationStats, list[dict[str, Any]]]:
        engine = SimulatedEngine("x", prefix_cache_blocks=256, block_size=4)
        passes = []
        stats = ReplayGenerationStats(session_index=0)
        cache: dict[str, list[int]] = {}
        worker = EngineWorker(engine)
        async with worker.lifespan():
            for _ in range(2):  # the same session twice, as a cache-retention experiment does
                before = engine.cached_prompt_tokens
                replay = ReplayEngine(worker, stats, cache, make_seeded_rng_factory("s", 0))
                await replay.launch_trace(trace)
                passes.append(
                    {"reused": engine.cached_prompt_tokens - before, "peak": engine.peak_batch}
                )
        return engine, stats, passes

    engine, stats, passes = trio.run(replay, clock=trio.testing.MockClock(autojump_threshold=0))
    assert engine.completed == 2 * len(assistants)  # one generation per assistant message
    entries = stats.entries
    assert len(entries) == 2 * len(assistants)
    n = len(assistants)
    ordered = sorted(assistants, key=lambda e: e.branch_path)
    by_path = [
        *sorted(entries[:n], key=lambda e: e["branch_path"]),
        *sorted(entries[n:], key=lambda e: e["branch_path"]),
    ]  # branches ran at once
    for entry, event in zip(by_path, ordered * 2, strict=True):
        # ignore_eos: the engine generated exactly what the trace recorded, by its own count
        assert entry["trace_completion_tokens"] == event.completion_tokens
        assert entry["replay_output_token_len"] == event.completion_tokens
        assert entry["usage_completion_tokens"] == event.completion_tokens
        assert entry["branch_path"] == event.branch_path and entry["session_index"] == 0
        assert entry["ttft_s"] is None  # not measured, so not reported
    assert stats.sum_replay_output_tokens() == stats.sum_trace_completion_tokens()
    assert passes[0]["peak"] == 2  # the two research branches ran at once
    # one system template: its tokens are shared by the three conversations ...
    assert passes[0]["reused"] > 0
    # ... and the seeded second pass sends the same prompts: far more is reused
    assert passes[1]["reused"] > passes[0]["reused"]


async def test_tool_calls_take_their_recorded_time_and_forks_wait_for_the_parent(
    autojump_clock: object,
) -> None:
    events = [
        TraceEvent("message", [], 0, "user", tokens=8, message_index=0),
        TraceEvent("message", [], 0, "assistant", completion_tokens=5, message_index=1),
        TraceEvent("tool_call", [], tool_name="search", duration_ms=1500.0),
        TraceEvent("parallel_start", [], num_branches=2),
        TraceEvent("message", [0], 1, "user", tokens=4, message_index=0),
        TraceEvent("message", [0], 1, "assistant", completion_tokens=3, message_index=1),
        TraceEvent("message", [1], 2, "user", tokens=4, message_index=0),
        TraceEvent("message", [1], 2, "assistant", completion_tokens=3, message_index=1),
        TraceEvent("parallel_end", []),
        TraceEvent("drop_kv_cache", []),
    ]
    engine = SimulatedEngine("y")
    stats = ReplayGenerationStats()
    start = trio.current_time()
    await ReplayEngine(EngineWorker(engine), stats).launch_trace(ExecutionTrace(events=events))
    assert trio.current_time() - start >= 1.5  # the tool call's recorded duration
    assert engine.completed == 3 and engine.peak_batch == 2
    # the worker was not running: the replay started it and stopped it
    assert not engine.healthy
    assert [e["usage_prompt_tokens"] for e in stats.entries] == [8, 4, 4]


async def test_a_trace_that_cannot_be_replayed_fails_clearly(autojump_clock: object) -> None:
    worker = EngineWorker(SimulatedEngine("z"))
    bad = {
        "completion_tokens": [TraceEvent("message", [], 0, "assistant")],
        "never opened": [TraceEvent("message", [3], 0, "user", tokens=2)],
        "without its start": [TraceEvent("parallel_end", [])],
    }
    for match, events in bad.items():
        with pytest.raises(ValueError, match=match):
            await ReplayEngine(worker).launch_trace(ExecutionTrace(events=events))
    with pytest.raises(RuntimeError, match="launch_trace"):
        QueueManager(worker, {}, make_seeded_rng_factory()).allocate_queue("t", ())


async def test_a_failing_engine_fails_the_replay_as_itself(autojump_clock: object) -> None:
    from engine_bridge import EngineError

    engine = SimulatedEngine("w")
    events = [
        TraceEvent("message", [], 0, "user", tokens=3),
        TraceEvent("message", [], 0, "assistant", completion_tokens=50),
    ]

    async def fail_soon() -> None:
        await trio.sleep(0.05)  # mid-generation
        engine.inject_failure(EngineError("the engine died"))

    async def replay() -> None:
        with pytest.raises(EngineError, match="died"):  # as itself, not in a group
            await ReplayEngine(EngineWorker(engine)).launch_trace(ExecutionTrace(events=events))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fail_soon)
        nursery.start_soon(replay)
    assert engine.num_active == 0


def test_seeded_generators_repeat_per_branch() -> None:
    one, two = make_seeded_rng_factory("a", 1), make_seeded_rng_factory("a", 1)
    assert one((0,)).random() == two((0,)).random()
    assert one((0,)).random() != one((1,)).random()
    assert make_seeded_rng_factory("a", 2)(()).random() != one(()).random()
