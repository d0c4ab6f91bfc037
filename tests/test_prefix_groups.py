"""Prefix groups: requests sharing a prompt prefix compute it once.

The simulated engine models a real prefix cache (a block is reusable once the
prefill step that computed it is over; at least a prompt's last token is
computed), so these tests read its own count of prompt tokens computed.  The
transformers test reads transformers' own prefix search."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from helpers import collect

from engine_bridge import (
    CostModel,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    PrefixGroup,
    SamplingParams,
    SimulatedEngine,
)
from scaffold_actors import (
    AsyncScaffoldingLlm,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RewardTask,
    Task,
    Worker,
)
from scaffold_actors._worker import Handler
from scaffold_actors.methods import BeamSearch, MajorityVote, Sampler, StepSearch

BLOCK = 16
PROMPT = "Consider the problem below carefully and reason about it step by step please. " * 20


def engine(**kw: Any) -> SimulatedEngine:
    kw.setdefault("cost", CostModel(prefill_per_token=1e-3, step_base=0.01, step_per_seq=1e-3))
    kw.setdefault("prefix_cache_blocks", 4096)
    return SimulatedEngine(kw.pop("reply", "so the answer is \\boxed{7}"), block_size=BLOCK, **kw)


def req(group: PrefixGroup | None, tokens: int = 8, prompt: str = PROMPT) -> EngineRequest:
    return EngineRequest(SamplingParams(max_tokens=tokens), prompt=prompt, group=group)


def tail(n: int) -> int:
    """What a member computes after its leader: the prompt past its reusable
    full blocks (at least its last token)."""
    return n - ((n - 1) // BLOCK) * BLOCK


async def run_group(e: SimulatedEngine, n: int, group: PrefixGroup | None) -> None:
    """``n`` requests admitted together (before the engine's next step), then read."""
    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(e.open_stream(req(group))) for _ in range(n)]
        async with trio.open_nursery() as nursery:
            for s in streams:
                nursery.start_soon(drain, s)


async def collect_under(scope: trio.CancelScope, target: Any, request: EngineRequest) -> None:
    """``collect`` inside ``scope`` (the test cancels that one member)."""
    with scope:
        await collect(target, request)


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


def test_a_group_is_checked_at_submission() -> None:
    with pytest.raises(InvalidRequestError, match="group"):
        EngineRequest(SamplingParams(), prompt="hi", group="vote-1")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="size"):
        PrefixGroup(0)
    task = GenerationTask(input_str="hi")
    with pytest.raises(InvalidTaskError, match="prefix_group"):
        task.prefix_group = "vote-1"  # type: ignore[assignment]
    # a group keeps its identity across a copy (a Ray actor, a child process)
    import pickle

    g = PrefixGroup(4)
    assert pickle.loads(pickle.dumps(g)) == g and PrefixGroup(4) != g


async def test_samples_arriving_together_share_nothing_without_a_group(
    autojump_clock: object,
) -> None:
    """The engine's model of a real prefix cache: prompts prefilled in the same
    step share nothing (the gap the groups close)."""
    async with engine() as e:
        n = e.count_prompt_tokens(req(None))
        await run_group(e, 16, None)
        assert e.prefill_tokens == 16 * n and e.cached_prompt_tokens == 0


async def test_a_group_computes_its_prompt_once(autojump_clock: object) -> None:
    async with engine() as e:
        n = e.count_prompt_tokens(req(None))
        await run_group(e, 16, PrefixGroup(16))
        assert e.prefill_tokens == n + 15 * tail(n)
        assert e.prefill_tokens / 16 <= n / 16 + BLOCK  # the bound
        assert e.num_active == 0 and e.completed == 16


async def test_a_prompt_shorter_than_a_block_is_not_held(autojump_clock: object) -> None:
    """Nothing of it could be reused: its group's members go at once."""
    async with engine() as e:
        short = "What is 1?"
        async with contextlib.AsyncExitStack() as stack:
            group = PrefixGroup(3)
            for _ in range(3):
                await stack.enter_async_context(e.open_stream(req(group, prompt=short)))
            assert e.num_active == 3 and len(e._waiting) == 3  # all queued, none held


async def test_members_wait_for_the_leaders_prefill(autojump_clock: object) -> None:
    async with engine() as e:
        group = PrefixGroup(4)
        n = e.count_prompt_tokens(req(None))
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(collect, e, req(group))
            await trio.testing.wait_all_tasks_blocked()
            # the leader is prefilling; the three others are held, counted as active
            assert e.num_active == 4 and e.prefill_tokens == n
        assert e.cached_prompt_tokens == 3 * (n - tail(n))


async def test_a_held_member_cancelled_never_reaches_the_engine(autojump_clock: object) -> None:
    async with engine() as e:
        group = PrefixGroup(3)
        n = e.count_prompt_tokens(req(None))
        cancel_me = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, e, req(group))  # the leader
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(collect_under, cancel_me, e, req(group))
            nursery.start_soon(collect, e, req(group))
            await trio.testing.wait_all_tasks_blocked()
            assert e.num_active == 3  # the leader prefilling, two held
            cancel_me.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # it left without reaching the scheduler: nothing of it was computed
            assert e.num_active == 2 and e.aborted == 1 and e.prefill_tokens == n
        assert e.completed == 2 and e.num_active == 0
        assert e.prefill_tokens == n + tail(n)  # the other member reused the prompt


async def test_a_leader_cancelled_before_its_prefill_hands_over(autojump_clock: object) -> None:
    async with engine() as e:
        group = PrefixGroup(4)
        n = e.count_prompt_tokens(req(None))
        leader = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_under, leader, e, req(group))
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(3):
                nursery.start_soon(collect, e, req(group))
            await trio.testing.wait_all_tasks_blocked()
            leader.cancel()  # mid-prefill: the next member leads and computes the prompt
        assert e.aborted == 1 and e.completed == 3 and e.num_active == 0
        # the step computing the cancelled leader's prompt ran to its end and
        # cached it: the new leader and the other two reused it, nothing was lost
        assert e.prefill_tokens == n + 3 * tail(n)


async def test_an_engine_failure_fails_the_held_members(autojump_clock: object) -> None:
    async with engine() as e:
        group = PrefixGroup(3)
        errors: list[BaseException] = []

        async def member() -> None:
            try:
                await collect(e, req(group))
            except EngineError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(member)
            await trio.testing.wait_all_tasks_blocked()
            e.inject_failure()
        assert len(errors) == 3 and e.num_active == 0


async def test_a_majority_vote_is_one_group(autojump_clock: object) -> None:
    """The runtime tells the engine which requests share a prefix: a vote's
    samples compute the question once."""
    e = engine()
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(), samples=16, early_stop=False), {"generation": EngineWorker(e)}
    ) as llm:
        result = await (await llm.generate_async(PROMPT)).aresult()
    n = e.count_prompt_tokens(req(None))
    assert result.outputs[0].text.endswith("\\boxed{7}")
    assert e.prefill_tokens == n + 15 * tail(n)


async def test_an_early_stopped_vote_aborts_the_rest_of_its_group(autojump_clock: object) -> None:
    e = engine(max_batch_size=4)
    async with AsyncScaffoldingLlm(
        MajorityVote(Sampler(), samples=16), {"generation": EngineWorker(e)}
    ) as llm:
        result = await (await llm.generate_async(PROMPT)).aresult()
        assert result.outputs[0].text.endswith("\\boxed{7}")
        finished = result.outputs[0].details["samples_finished"]
        assert finished < 16
        # the rest of the group left the engine (running, waiting or held)
        assert e.num_active == 0 and e.completed + e.aborted == 16


class ConstantReward(Worker):
    async def score(self, task: RewardTask) -> None:
        task.scores = [0.5] * len(task.candidates)

    task_handlers: ClassVar[dict[type[Task], Handler]] = {RewardTask: score}  # type: ignore[dict-item]


async def test_a_tree_node_s_children_are_one_group(autojump_clock: object) -> None:
    """A beam search's expansion: the node's children share its text."""
    e = engine()
    search = BeamSearch(StepSearch(Sampler(), max_steps=1), beam_width=1, expansions=4)
    async with AsyncScaffoldingLlm(
        search, {"generation": EngineWorker(e), "reward": ConstantReward()}
    ) as llm:
        await (await llm.generate_async(PROMPT)).aresult()
    n = e.count_prompt_tokens(req(None))
    assert e.completed == 4  # one expansion of the root: 4 children at once
    assert e.cached_prompt_tokens == 3 * (n - tail(n))


async def test_an_http_group_is_sent_after_its_first_member_s_first_chunk() -> None:
    """Over HTTP the client holds the others until the first member's first
    streamed chunk (the server computed the prompt): the server's engine then
    reuses its blocks for the other three (the server's own count, /health)."""
    pytest.importorskip("starlette")
    import httpx
    from test_engine_conformance import LoopbackServer

    from engine_bridge import OpenAIEngine

    server = LoopbackServer(prefix_cache_blocks=4096)

    def reused() -> int:
        health = httpx.get(f"http://127.0.0.1:{server.port}/health").json()
        return int(health["cached_prompt_tokens"])

    try:
        async with OpenAIEngine(server.url, "scaffold") as http:
            group = PrefixGroup(4)
            request = req(group)  # not streamed: the first member is, for the group
            before = await trio.to_thread.run_sync(reused)
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(collect, http, request)
            n = engine().count_prompt_tokens(request)  # (the server's tokenizer)
            assert await trio.to_thread.run_sync(reused) - before == 3 * (n - tail(n))
            assert http.num_active == 0
    finally:
        server.kill()


async def test_an_http_member_held_then_cancelled_is_never_sent(flaky: Any) -> None:
    """A server that stalls its first answer (headers, then nothing): the
    group's first member waits for its first chunk, so the others are held in
    the client.  A held one cancelled is never sent; the first one cancelled
    hands over to the next, which is sent then (the server counts its calls)."""
    pytest.importorskip("starlette")
    import httpx

    from engine_bridge import OpenAIEngine

    port = flaky(1, "stall")  # the first call stalls, the others answer

    def calls() -> int:
        return int(httpx.get(f"http://127.0.0.1:{port}/health").json()["calls"])

    async with OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", max_retries=0) as http:
        group = PrefixGroup(3)
        scopes = [trio.CancelScope() for _ in range(3)]
        texts: list[str] = []

        async def member(i: int) -> None:
            with scopes[i]:
                texts.append((await collect(http, req(group))).text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(member, 0)
            while await trio.to_thread.run_sync(calls) < 1:  # noqa: ASYNC110 - the server's own count
                await trio.sleep(0.01)
            nursery.start_soon(member, 1)
            nursery.start_soon(member, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert await trio.to_thread.run_sync(calls) == 1  # the two others are held
            scopes[1].cancel()  # held: it leaves without a call
            await trio.testing.wait_all_tasks_blocked()
            scopes[0].cancel()  # the stalled first one: member 2 leads and is sent now
        assert len(texts) == 1 and texts[0]
        assert await trio.to_thread.run_sync(calls) == 2 and http.num_active == 0


async def test_an_http_member_held_when_the_engine_closes_finds_it_closed(flaky: Any) -> None:
    """A member still held back when its engine closes is let go and fails as
    :class:`EngineClosedError` (what a pool retries elsewhere), not with an
    error of the closed client."""
    pytest.importorskip("starlette")

    from engine_bridge import EngineClosedError, OpenAIEngine

    port = flaky(1, "stall")  # the first member stalls: the second stays held
    http = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", max_retries=0)
    await http.__aenter__()
    group = PrefixGroup(2)
    leader = trio.CancelScope()
    held_error: list[BaseException] = []
    held_done = trio.Event()

    async def first() -> None:
        with leader:
            try:
                await collect(http, req(group))
            except Exception:
                pass  # (its stalled stream ends with the engine: any error)

    async def second() -> None:
        try:
            await collect(http, req(group))
        except Exception as exc:
            held_error.append(exc)
        held_done.set()

    with trio.fail_after(60):  # a hang guard: a held member must be let go
        await _close_with_one_held(http, port, first, second, held_done, leader)
    assert len(held_error) == 1 and isinstance(held_error[0], EngineClosedError)


async def _close_with_one_held(
    http: Any, port: int, first: Any, second: Any, held_done: trio.Event, leader: trio.CancelScope
) -> None:
    import httpx

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        while httpx.get(f"http://127.0.0.1:{port}/health").json()["calls"] < 1:  # noqa: ASYNC110,ASYNC210 - the server's own count
            await trio.sleep(0.01)
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        await http.__aexit__(None, None, None)
        await held_done.wait()
        leader.cancel()
