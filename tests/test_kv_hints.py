"""KV-cache hints: a finished chat's prefix-cache blocks released in the engine.

Every release is read back from the engine's own cache (``cached_blocks``: the
simulated engine's block LRU, transformers' block ledger, a server's engine via
its ``/health``), never from a count of ours.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import httpx
import pytest

from engine_bridge import (
    ChatMessage,
    EngineClosedError,
    EngineError,
    EnginePool,
    InvalidRequestError,
    KVCacheDrop,
    NotSupportedError,
    OpenAIEngine,
    SamplingParams,
    SimulatedEngine,
    TRTLLMEngine,
)
from scaffold_actors import (
    AsyncScaffoldingLlm,
    ChatTask,
    DropKVCacheTask,
    EngineWorker,
    GenerationTask,
    InvalidTaskError,
    RequestContext,
    SystemMessage,
    UserMessage,
)

SYSTEM = "You answer in one short sentence and never use lists. " * 4
QUESTION = "Which river runs through the middle of the old town? " * 4
REPLY = "The Vltava runs through it."


def sim(**kw: Any) -> SimulatedEngine:
    return SimulatedEngine(REPLY, prefix_cache_blocks=64, block_size=4, **kw)


def conversation(reply: str = REPLY) -> list[ChatMessage]:
    return [
        ChatMessage("system", SYSTEM),
        ChatMessage("user", QUESTION),
        ChatMessage("assistant", reply),
    ]


async def chat_once(engine: Any, max_tokens: int = 8) -> str:
    from engine_bridge import EngineRequest

    request = EngineRequest(
        SamplingParams(max_tokens=max_tokens, temperature=0), messages=conversation()[:2]
    )
    async with engine.open_stream(request) as deltas:
        return "".join([d.text async for d in deltas])


def test_a_drop_is_checked_where_it_is_made() -> None:
    with pytest.raises(InvalidRequestError, match="messages"):
        KVCacheDrop([])
    for keep in (-1, 4, 1.0, True):
        with pytest.raises(InvalidRequestError, match="keep_messages"):
            KVCacheDrop(conversation(), keep)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="messages"):
        KVCacheDrop([{"role": "user"}])
    assert (
        KVCacheDrop.leading_system([{"role": "system"}, {"role": "system"}, {"role": "user"}]) == 2
    )
    assert KVCacheDrop.leading_system([{"role": "user"}, {"role": "system"}]) == 0
    # the conversation as the engine cached it: the reply continues the prompt
    request = KVCacheDrop(conversation()).conversation()
    assert request.continuation == REPLY and request.messages is not None
    assert [m.role for m in request.messages] == ["system", "user"]


async def test_the_simulated_engine_frees_the_chat_past_its_system_blocks(
    autojump_clock: object,
) -> None:
    engine = sim()
    async with engine:
        reply = await chat_once(engine)
        cached = engine.cached_blocks
        assert cached > 0
        freed = await engine.drop_kv_cache(KVCacheDrop(conversation(reply), keep_messages=1))
        assert freed is not None and 0 < freed < cached
        assert engine.cached_blocks == cached - freed  # the system blocks stay
        assert await engine.drop_kv_cache(KVCacheDrop(conversation(reply), 1)) == 0  # gone
        assert await engine.drop_kv_cache(KVCacheDrop(conversation(reply), 0)) == cached - freed
        assert engine.cached_blocks == 0


async def test_engines_without_a_releasable_cache_say_so(autojump_clock: object) -> None:
    async with SimulatedEngine(REPLY) as plain:
        with pytest.raises(NotSupportedError, match="prefix_cache_blocks"):
            await plain.drop_kv_cache(KVCacheDrop(conversation()))
    with pytest.raises(EngineClosedError):
        await sim().drop_kv_cache(KVCacheDrop(conversation()))
    with pytest.raises(NotSupportedError, match="LLM API"):
        await TRTLLMEngine("unused").drop_kv_cache(KVCacheDrop(conversation()))


async def test_a_pool_asks_every_replica_and_sums(autojump_clock: object) -> None:
    a, b = sim(), sim()
    async with EnginePool([a, b]) as pool:
        for _ in range(4):  # wherever the pool routes them
            await chat_once(pool)
        before = a.cached_blocks + b.cached_blocks
        freed = await pool.drop_kv_cache(KVCacheDrop(conversation(), 1))
        assert freed == before - (a.cached_blocks + b.cached_blocks) and freed > 0
    async with EnginePool([SimulatedEngine(REPLY)]) as plain:
        with pytest.raises(NotSupportedError):
            await plain.drop_kv_cache(KVCacheDrop(conversation()))


# -- the task, natively ---------------------------------------------------------------


def finished_chat() -> ChatTask:
    chat = ChatTask.create_from_prompt(QUESTION, [SystemMessage(SYSTEM)])
    chat.max_tokens = 8
    return chat


async def test_a_drop_task_frees_the_finished_chat(autojump_clock: object) -> None:
    engine = sim()
    seen: dict[str, int | None] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = finished_chat()
        await ctx.run(chat)
        seen["cached"] = engine.cached_blocks
        drop = DropKVCacheTask(chat)
        assert [m.role for m in drop.messages_to_retain] == ["system"]  # TensorRT-LLM's default
        await ctx.run(drop)
        seen["freed"], seen["after"] = drop.freed_blocks, engine.cached_blocks
        task.output_str = chat.messages[-1].content
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    assert seen["cached"] and seen["freed"]
    assert seen["after"] == seen["cached"] - seen["freed"] > 0  # system blocks kept


async def test_bad_drop_tasks_are_refused_at_submission(autojump_clock: object) -> None:
    engine = sim()
    errors: list[str] = []

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = finished_chat()
        await ctx.run(chat)
        for bad in (
            DropKVCacheTask(chat, messages_to_retain=[UserMessage("not the first")]),
            DropKVCacheTask(None),
            DropKVCacheTask(ChatTask()),
        ):
            with pytest.raises(InvalidTaskError) as info:
                await ctx.run(bad)
            errors.append(str(info.value))
        await ctx.run(DropKVCacheTask(chat))  # the engine and the chat are untouched
        task.output_str = "ok"
        return task

    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        assert (await llm.generate("q")).output.output_str == "ok"
    assert "messages_to_retain" in errors[0] and "chat_task" in errors[1]
    assert "messages" in errors[2]


async def test_a_drop_the_engine_cannot_take_fails_its_task(autojump_clock: object) -> None:
    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = finished_chat()
        await ctx.run(chat)
        await ctx.run(DropKVCacheTask(chat))
        return task

    async with AsyncScaffoldingLlm(
        method, {"generation": EngineWorker(SimulatedEngine(REPLY))}
    ) as llm:
        with pytest.raises(NotSupportedError):
            await llm.generate("q")


# -- TensorRT-LLM style: drop_kv_cache_scope -----------------------------------------


def test_trtllm_style_drop_kv_cache_scope_drops_each_chat_once() -> None:
    from scaffold_actors.compat import (
        Controller,
        DropKVCacheWorkerTag,
        ScaffoldingLlm,
        Task,
        drop_kv_cache_scope,
    )

    engine = sim()
    drops: list[DropKVCacheTask] = []
    cached: list[int] = []

    class Counting(EngineWorker):
        async def drop(self, task: DropKVCacheTask) -> Any:
            drops.append(task)
            cached.append(engine.cached_blocks)
            return await self.drop_kv_cache_handler(task)

        task_handlers = {**EngineWorker.task_handlers, DropKVCacheTask: drop}

    worker = Counting(engine)

    @drop_kv_cache_scope()
    class Inner(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            chat = finished_chat()
            chat.worker_tag = "generation"
            yield [chat]

    @drop_kv_cache_scope()
    class Outer(Controller):
        def process(self, tasks: list[Task], **kwargs: Any) -> Generator[Any, Any, None]:
            yield from Inner().process(tasks)
            chat = ChatTask.create_from_prompt("Another question entirely, about rivers " * 3)
            chat.worker_tag, chat.max_tokens = "generation", 8
            yield [chat]
            tasks[0].output_str = "done"

    with ScaffoldingLlm(
        Outer(), {"generation": worker, DropKVCacheWorkerTag.DROP_KV_CACHE.value: worker}
    ) as llm:
        assert llm.generate("q").output.output_str == "done"
    assert len(drops) == 2  # the inner scope's chat once (there), the outer's own once
    assert all(d.worker_tag is DropKVCacheWorkerTag.DROP_KV_CACHE for d in drops)
    assert all(d.freed_blocks for d in drops)
    assert engine.cached_blocks == cached[-1] - (drops[-1].freed_blocks or 0)


# -- over HTTP: OpenAIEngine -> /_control/kv_cache/truncate -----------------------------


async def test_the_hint_reaches_a_servers_engine() -> None:
    pytest.importorskip("starlette")
    import trio
    from test_engine_conformance import LoopbackServer

    server = LoopbackServer(reply=REPLY, prefix_cache_blocks=64)

    def cached() -> int:
        return int(httpx.get(f"http://127.0.0.1:{server.port}/health").json()["cached_blocks"])

    try:
        async with OpenAIEngine(server.url, "scaffold") as engine:
            reply = await chat_once(engine)
            before = await trio.to_thread.run_sync(cached)
            freed = await engine.drop_kv_cache(KVCacheDrop(conversation(reply), 1))
            assert freed is not None and freed > 0
            assert await trio.to_thread.run_sync(cached) == before - freed
    finally:
        server.kill()


def test_the_server_refuses_bad_hints() -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from engine_bridge.openai_server import create_app

    good = [m.to_dict() for m in conversation()]
    with (
        TestClient(create_app(sim())) as client,
        TestClient(create_app(SimulatedEngine(REPLY))) as plain,
    ):
        url = "/_control/kv_cache/truncate"
        ok = client.post(url, json={"messages": good, "messages_to_retain": good[:1]})
        assert ok.status_code == 200 and ok.json() == {"freed_blocks": 0}  # nothing cached yet
        for body, param in (
            ({"messages": good, "messages_to_retain": good[1:2]}, "messages_to_retain"),
            ({"messages": "x"}, "messages"),
            ({"messages": []}, "messages"),
            ({"messages": good, "messages_to_retain": {}}, "messages_to_retain"),
            ({"messages": good, "action": "evict"}, "action"),
            ([1], "body"),
        ):
            r = client.post(url, json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
        r = plain.post(url, json={"messages": good})
        assert r.status_code == 501 and "prefix_cache_blocks" in r.json()["error"]["message"]


async def test_every_way_a_server_can_fail_the_hint_is_clear(flaky: Any) -> None:
    pytest.importorskip("starlette")
    port = flaky(0)
    drop = KVCacheDrop(conversation(), 1)
    async with OpenAIEngine(f"http://127.0.0.1:{port}/bad/v1", "m", max_retries=0) as engine:
        assert await engine.drop_kv_cache(drop) is None  # taken, no count: not made up
    for base, error, match in (
        (f"http://127.0.0.1:{port}/v1", NotSupportedError, "takes no KV-cache hints"),
        (f"http://127.0.0.1:{port}/broken/v1", EngineError, "HTTP 500 .*control queue closed"),
        ("http://127.0.0.1:9/v1", EngineError, "cannot reach"),
    ):
        async with OpenAIEngine(base, "m", max_retries=0) as engine:
            with pytest.raises(error, match=match):
                await engine.drop_kv_cache(drop)
    with pytest.raises(EngineClosedError):
        await OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m").drop_kv_cache(drop)
