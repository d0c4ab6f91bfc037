"""OpenAIEngine and the OpenAI-compatible server, over real HTTP on loopback."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

pytest.importorskip("starlette")

from helpers import collect
from test_engine_conformance import FRUITS, LoopbackServer

from engine_bridge import EngineError, EngineRequest, OpenAIEngine, SamplingParams
from scaffold_actors import AsyncScaffoldingLlm, EngineWorker
from scaffold_actors.methods import MajorityVote, Sampler


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    s = LoopbackServer()
    yield s
    s.kill()


def test_the_official_openai_client_talks_to_the_server(server: LoopbackServer) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key="unused")
    done = client.completions.create(
        model="scaffold", prompt="List some fruits.", max_tokens=4, logprobs=0
    )
    assert done.choices[0].text == "Apples, bananas, cherries, dates,"
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 4
    chunks = list(
        client.chat.completions.create(
            model="scaffold",
            messages=[{"role": "user", "content": "fruits?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FRUITS and chunks[-1].usage.completion_tokens == len(FRUITS.split())
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="scaffold", prompt="x", max_tokens=-1)


async def test_leaving_early_aborts_on_the_server(server: LoopbackServer) -> None:
    async with OpenAIEngine(server.url, "scaffold") as engine:
        req = EngineRequest(SamplingParams(max_tokens=8), prompt="q")
        async with engine.open_stream(req) as stream:
            async for _ in stream:
                break
        assert engine.num_active == 0 and engine.aborted == 1
    with trio.fail_after(60):  # a hang guard: the server sees the disconnect soon after
        while await active(server.port):  # noqa: ASYNC110 (polls another process)
            await trio.sleep(0.01)
    assert await server_aborted(server.port) == 1  # aborted there, not run to its end


async def active(port: int) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"http://127.0.0.1:{port}/health")).json()["active"])


async def server_aborted(port: int) -> int:
    """Requests the server's own engine aborted (its /health reports them)."""
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"http://127.0.0.1:{port}/health")).json()["aborted"])


async def test_a_one_body_request_left_early_is_aborted_on_the_server() -> None:
    server = LoopbackServer(reply="word " * 400, max_context=1024)  # 400 steps of 10 ms
    try:
        async with OpenAIEngine(server.url, "scaffold") as engine:
            req = EngineRequest(SamplingParams(max_tokens=400), prompt="q", stream=False)
            with trio.move_on_after(10) as scope:
                async with engine.open_stream(req) as stream:
                    while not await active(server.port):  # noqa: ASYNC110 (polls another process)
                        await trio.sleep(0.01)
                    scope.cancel()  # the server is generating; leave before the answer
                    async for _ in stream:
                        pass
            assert scope.cancelled_caught and engine.aborted == 1 and engine.num_active == 0
            with trio.fail_after(60):  # a hang guard, not a budget
                while await active(server.port):  # noqa: ASYNC110 (polls another process)
                    await trio.sleep(0.01)
            assert await server_aborted(server.port) == 1  # aborted, not run to its 400 tokens
    finally:
        server.kill()


async def test_a_one_body_answer_carries_text_ids_logprobs_and_usage(
    server: LoopbackServer,
) -> None:
    from engine_bridge import ChatMessage

    for kw in ({"prompt": "q"}, {"messages": (ChatMessage("user", "fruits?"),)}):
        params = SamplingParams(max_tokens=4, num_logprobs=0, seed=7)
        whole = OpenAIEngine(server.url, "scaffold")
        streamed = OpenAIEngine(server.url, "scaffold", stream_all=True)
        got = []
        for engine in (whole, streamed):
            async with engine:
                req = EngineRequest(params, stream=False, **kw)
                assert engine.body(req)[1]["stream"] is engine.stream_all
                async with engine.open_stream(req) as stream:
                    [delta] = [d async for d in stream]
            got.append(delta)
        assert got[0] == got[1]
        assert got[0].text == "Apples, bananas, cherries, dates,"
        assert got[0].finish_reason == "length" and got[0].num_tokens == 4
        assert got[0].logprobs is not None and len(got[0].logprobs) == 4
        assert got[0].prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_top_k_logprobs_cross_the_wire(server: LoopbackServer, stream: bool) -> None:
    """The engine's top-k alternatives reach the client on both APIs, streamed
    or whole, one set per token, as the engine behind the server gave them."""
    import math

    from engine_bridge import ChatMessage

    for kw in ({"prompt": "q"}, {"messages": (ChatMessage("user", "fruits?"),)}):
        params = SamplingParams(max_tokens=4, num_logprobs=3, seed=7)
        async with OpenAIEngine(server.url, "scaffold") as engine:
            req = EngineRequest(params, stream=stream, **kw)
            async with engine.open_stream(req) as deltas:
                got = [d async for d in deltas]
        lps = [x for d in got for x in d.logprobs or ()]
        top = [a for d in got for a in d.top_logprobs or ()]
        assert len(lps) == len(top) == 4, kw
        for lp, alts in zip(lps, top, strict=True):
            assert len(alts) == 3 and alts[0][1] == pytest.approx(lp)  # the sampled token first
            assert math.fsum(math.exp(x) for _, x in alts) <= 1.0 + 1e-9
        # without num_logprobs > 0 no alternatives are invented
        async with OpenAIEngine(server.url, "scaffold") as engine:
            req = EngineRequest(SamplingParams(max_tokens=2, num_logprobs=0), stream=stream, **kw)
            async with engine.open_stream(req) as deltas:
                plain = [d async for d in deltas]
            assert plain and all(d.top_logprobs is None for d in plain)


def test_the_server_asks_the_engine_for_the_final_output_only() -> None:
    from engine_bridge.openai_protocol import parse_request
    from engine_bridge.openai_server import engine_request

    def stream(body: dict[str, Any], chat: bool) -> bool:
        return engine_request(parse_request(body, chat)).stream

    assert stream({"prompt": "x"}, chat=False) is False
    assert stream({"prompt": "x", "stream": True}, chat=False) is True
    assert stream({"messages": [{"role": "user", "content": "x"}], "stream": False}, True) is False


def test_response_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="response_timeout"):
        OpenAIEngine("http://127.0.0.1:9", "m", response_timeout=0)


async def test_unreachable_server_is_retried_then_fails_clearly() -> None:
    async with OpenAIEngine("http://127.0.0.1:9/v1", "m", max_retries=2, backoff=0.05) as engine:
        for stream in (True, False):
            start = time.monotonic()
            with pytest.raises(EngineError, match=re.escape("cannot reach http://127.0.0.1:9/v1")):
                await read_all(engine, stream=stream)
            assert time.monotonic() - start >= 0.05 + 0.1  # two backoffs
            assert not engine.healthy and engine.num_active == 0


async def test_http_errors_are_clear(server: LoopbackServer) -> None:
    async with OpenAIEngine(f"http://127.0.0.1:{server.port}", "scaffold") as engine:  # no /v1
        with pytest.raises(EngineError, match="HTTP 404"):
            async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")):
                pass


async def test_majority_vote_over_http(server: LoopbackServer) -> None:
    engine = OpenAIEngine(server.url, "scaffold")
    mv = MajorityVote(
        Sampler(max_tokens=16), samples=4, extract=lambda s: (s or "").split(",")[0] or None
    )
    async with AsyncScaffoldingLlm(mv, {"generation": EngineWorker(engine)}) as llm:
        r = await llm.generate("fruits?")
    assert r.output.details["answer"] == "Apples" and r.usage.completion_tokens > 0


async def calls(port: int) -> int:
    async with httpx.AsyncClient() as client:
        return int((await client.get(f"http://127.0.0.1:{port}/health")).json()["calls"])


async def test_5xx_answers_are_retried_with_backoff(flaky: Any) -> None:
    port = flaky(2)
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", max_retries=3, backoff=0.05
    ) as engine:
        start = time.monotonic()
        text = ""
        async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")) as stream:
            async for d in stream:
                text += d.text
                last = d
        assert text == "ok done" and last.finish_reason == "stop"
        assert time.monotonic() - start >= 0.05 + 0.1  # backoff 0.05, then 0.1
        assert engine.healthy
    assert await calls(port) == 3


async def test_persistent_5xx_fails_clearly_after_the_retries(flaky: Any) -> None:
    port = flaky(100, 500)
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01
    ) as engine:
        with pytest.raises(EngineError, match=r"HTTP 500 .*busy \(3\)"):
            async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")):
                pass
    assert await calls(port) == 3


async def test_429_is_retried_with_backoff(flaky: Any) -> None:
    port = flaky(2, 429)
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01
    ) as engine:
        async with engine.open_stream(
            EngineRequest(SamplingParams(), prompt="q", stream=False)
        ) as stream:
            [delta] = [d async for d in stream]
        assert delta.text == "ok done"
    assert await calls(port) == 3


async def read_all(engine: OpenAIEngine, *, stream: bool) -> str:
    text = ""
    async with engine.open_stream(
        EngineRequest(SamplingParams(), prompt="q", stream=stream)
    ) as deltas:
        async for d in deltas:
            text += d.text
    return text


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stalled_stream_is_opened_again(flaky: Any, stream: bool) -> None:
    port = flaky(2, "stall")  # headers, then no token: nothing reached the consumer
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1",
        "m",
        timeout=0.3,
        response_timeout=0.3,  # the one-body answer (stream=False)
        max_retries=2,
        backoff=0.01,
    ) as engine:
        start = time.monotonic()
        assert await read_all(engine, stream=stream) == "ok done"
        assert time.monotonic() - start >= 2 * 0.3  # two stalls waited out
        assert engine.retried == 2 and engine.healthy and engine.num_active == 0
    assert await calls(port) == 3


async def test_a_stream_that_keeps_stalling_fails_after_the_retries(flaky: Any) -> None:
    port = flaky(100, "stall")
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", timeout=0.2, max_retries=2, backoff=0.01
    ) as engine:
        with pytest.raises(EngineError, match=r"stalled for 0.2s \(3 attempts\)"):
            await read_all(engine, stream=True)
        assert engine.num_active == 0
    assert await calls(port) == 3


async def test_a_one_body_answer_that_never_comes_fails_after_the_retries(flaky: Any) -> None:
    port = flaky(100, "stall")
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", response_timeout=0.2, max_retries=1, backoff=0.01
    ) as engine:
        with pytest.raises(EngineError, match=r"no answer from .* within 0.2s \(2 attempts\)"):
            await read_all(engine, stream=False)
        assert engine.num_active == 0 and engine.healthy  # slow, not unreachable
    assert await calls(port) == 2


async def test_a_stall_after_output_was_delivered_fails_at_once(flaky: Any) -> None:
    port = flaky(1, "stall-after-token")
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", timeout=0.2, max_retries=3, backoff=0.01
    ) as engine:
        seen = []
        with pytest.raises(EngineError, match=r"stalled for 0.2s$"):
            async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")) as deltas:
                async for d in deltas:
                    seen.append(d.text)
        assert seen == ["ok"]  # the consumer has "ok": a replay would repeat it
        assert engine.retried == 0
        # a non-streaming request can be replayed: it is, and the engine serves again
        assert await read_all(engine, stream=False) == "ok done"
    assert await calls(port) == 2


async def test_a_connection_dropped_mid_stream(flaky: Any) -> None:
    port = flaky(2, "drop")  # one chunk, then the connection is cut
    async with OpenAIEngine(
        f"http://127.0.0.1:{port}/v1", "m", max_retries=3, backoff=0.01
    ) as engine:
        # streaming: "ok" already reached the consumer, so it fails clearly
        with pytest.raises(EngineError, match="broke mid-stream"):
            await read_all(engine, stream=True)
        assert not engine.healthy
        # not streaming: nothing was delivered, so it is opened again and succeeds
        assert await read_all(engine, stream=False) == "ok done"
        assert engine.retried == 1 and engine.healthy and engine.num_active == 0
    assert await calls(port) == 3


async def answer_ok(conn: trio.SocketStream, *, stream: bool) -> None:
    """Answer the request read from ``conn`` with "ok" (SSE or one JSON body), then
    close the connection: the raw-socket servers below."""
    chunk = json.dumps({"choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})
    if stream:
        body, kind = f"data: {chunk}\n\ndata: [DONE]\n\n", "text/event-stream"
    else:
        body, kind = chunk, "application/json"
    data = body.encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(data)}\r\n"
    await conn.send_all(head.encode() + b"Connection: close\r\n\r\n" + data)
    await conn.aclose()


@pytest.mark.parametrize("stream", [True, False])
async def test_a_connection_reset_before_the_answer_is_retried(stream: bool) -> None:
    """A server that resets the connection (RST) after reading the request, twice:
    the request is sent again and completes; it never escapes as an httpx error."""
    import socket
    import struct

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    seen = []

    async def handle(conn: trio.SocketStream) -> None:
        seen.append(await conn.receive_some(65536))
        if len(seen) <= 2:
            conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await conn.aclose()  # linger 0: a reset, not a clean close
            return
        await answer_ok(conn, stream=stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        async with OpenAIEngine(
            f"http://127.0.0.1:{port}/v1", "m", max_retries=2, backoff=0.01
        ) as engine:
            assert await read_all(engine, stream=stream) == "ok"
            assert engine.healthy and engine.num_active == 0
        nursery.cancel_scope.cancel()
    assert len(seen) == 3


def test_continuation_maps_to_the_servers_extension_or_the_prompt() -> None:
    from engine_bridge import EngineRequest, InvalidRequestError, OpenAIEngine, SamplingParams

    engine = OpenAIEngine("http://127.0.0.1:9", "m")
    p = SamplingParams(max_tokens=4)
    path, body = engine.body(
        EngineRequest(p, messages=[{"role": "user", "content": "q"}], continuation="Step 1:")
    )
    assert path == "/chat/completions"
    assert body["messages"][-1] == {"role": "assistant", "content": "Step 1:"}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    path, body = engine.body(EngineRequest(p, prompt="Q: 2+2?\nA:", continuation=" It is"))
    assert path == "/completions" and body["prompt"] == "Q: 2+2?\nA: It is"
    with pytest.raises(InvalidRequestError, match="continuation"):
        engine.check(EngineRequest(p, prompt_token_ids=[1, 2], continuation="x"))


async def test_max_concurrent_requests_are_all_on_the_wire_at_once() -> None:
    """``max_concurrent`` above httpx's default pool (100 connections) still puts
    every request on the wire: the server answers only once all 150 are open.
    (The pool used to hold 50 back, so a batching server saw requests trickle in.)"""
    n = 150
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    arrived = 0
    all_open = trio.Event()

    async def handle(conn: trio.SocketStream) -> None:
        nonlocal arrived
        await conn.receive_some(65536)
        arrived += 1
        if arrived == n:
            all_open.set()
        await all_open.wait()
        await answer_ok(conn, stream=False)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handle, listeners)
        async with OpenAIEngine(
            f"http://127.0.0.1:{port}/v1", "m", max_concurrent=n, max_retries=0
        ) as engine:
            texts: list[str] = []

            async def one() -> None:
                texts.append(await read_all(engine, stream=False))

            with trio.fail_after(60):  # hangs at 100 when the pool holds requests back
                async with trio.open_nursery() as requests:
                    for _ in range(n):
                        requests.start_soon(one)
            assert texts == ["ok"] * n and engine.retried == 0
        nursery.cancel_scope.cancel()


def test_trtllm_style_openai_worker_with_an_async_openai_client(server: LoopbackServer) -> None:
    """TensorRT-LLM's ``OpenaiWorker(AsyncOpenAI(...), model)``, unchanged, on our server."""
    openai = pytest.importorskip("openai")
    from scaffold_actors.compat import (
        MajorityVoteController,
        NativeChatController,
        NativeGenerationController,
        OpenaiWorker,
        ScaffoldingLlm,
    )

    client = openai.AsyncOpenAI(base_url=server.url, api_key="unused")
    worker = OpenaiWorker(client, "scaffold")
    controller = MajorityVoteController(
        NativeGenerationController({"max_tokens": 16}), default_sample_num=3
    )
    with ScaffoldingLlm(controller, {"generation": worker}) as llm:
        result = llm.generate("Name a fruit.")
    assert result.output.output_str
    with ScaffoldingLlm(
        NativeChatController({"max_tokens": 8}), {"generation": OpenaiWorker(client, "scaffold")}
    ) as llm:
        assert llm.generate("Name a fruit.").output.output_str
    with pytest.raises(TypeError, match="AsyncOpenAI"):
        OpenaiWorker(object(), "scaffold")


async def test_counting_tokens_on_a_server_without_tokenize_is_a_clear_error(
    flaky: Any,
) -> None:
    """A server that does not serve /tokenize (the flaky stand-in serves only the
    completion routes): EngineError naming it, never a made-up count."""
    port = flaky(0)
    async with OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m") as engine:
        with pytest.raises(EngineError, match="does not serve /tokenize"):
            await engine.count_tokens(EngineRequest(SamplingParams(), prompt="q"))


TOOL_REPLY = 'Adding. <tool_call>{"name": "add", "arguments": {"a": 20, "b": 22}}</tool_call>'
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "adds two integers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
    },
}


@pytest.fixture
def tool_server() -> Iterator[LoopbackServer]:
    s = LoopbackServer(reply=TOOL_REPLY, max_context=2048)
    yield s
    s.kill()


def test_the_official_client_gets_tool_calls(tool_server: LoopbackServer) -> None:
    """Our server answers a chat with ``tools`` in the OpenAI shape, whole and
    streamed; without tools the same text is plain content."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=tool_server.url, api_key="unused")
    messages = [{"role": "user", "content": "20 + 22?"}]
    r = client.chat.completions.create(
        model="scaffold", messages=messages, tools=[ADD_TOOL], max_tokens=64
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Adding."
    (call,) = choice.message.tool_calls
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 20, "b": 22}
    chunks = list(
        client.chat.completions.create(
            model="scaffold", messages=messages, tools=[ADD_TOOL], max_tokens=64, stream=True
        )
    )
    streamed = [
        c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls
    ]
    assert streamed[0][0].function.name == "add"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    plain = client.chat.completions.create(model="scaffold", messages=messages, max_tokens=64)
    assert plain.choices[0].message.tool_calls is None
    assert "<tool_call>" in (plain.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="scaffold", messages=messages, tools=[{"type": "function"}]
        )


@pytest.mark.parametrize("stream", [True, False])
async def test_the_http_engine_passes_tools_and_reads_tool_calls(
    tool_server: LoopbackServer, stream: bool
) -> None:
    """OpenAIEngine sends ``tools`` to the server and reports the server's tool
    calls on the final delta (assembled from stream fragments); a chat over it
    gets them as the AssistantMessage's calls."""
    from scaffold_actors import ChatTask, GenerationTask, RequestContext, ToolCall

    request = EngineRequest(
        SamplingParams(max_tokens=64),
        messages=[{"role": "user", "content": "20 + 22?"}],
        tools=[ADD_TOOL],
        stream=stream,
    )
    async with OpenAIEngine(tool_server.url, "scaffold") as engine:
        final = None
        async with engine.open_stream(request) as deltas:
            async for d in deltas:
                final = d
        assert final is not None and final.finish_reason == "tool_calls"
        (call,) = final.tool_calls or ()
        assert call.function.name == "add" and call.parsed_arguments() == {"a": 20, "b": 22}

    seen: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = ChatTask.create_from_prompt("20 + 22?", tools=[ADD_TOOL])
        chat.max_tokens = 64
        await ctx.run(chat)
        seen["chat"] = chat
        return task

    worker = EngineWorker(OpenAIEngine(tool_server.url, "scaffold"))
    async with AsyncScaffoldingLlm(method, {"generation": worker}) as llm:
        await llm.generate("q")
    chat = seen["chat"]
    assert chat.finish_reason == "tool_calls" and isinstance(chat.tool_calls[0], ToolCall)
    assert chat.messages[-1].tool_calls[0].function.name == "add"


@pytest.mark.parametrize("stream", [True, False])
async def test_reasoning_apart_from_the_answer_is_kept_apart(flaky: Any, stream: bool) -> None:
    """A server's ``reasoning_content`` (and its reasoning token count) reach the
    assistant message, not the answer; nothing is counted the server did not report."""
    from scaffold_actors import ChatTask, GenerationTask, RequestContext

    port = flaky(0)
    seen: dict[str, Any] = {}

    async def method(ctx: RequestContext, task: GenerationTask) -> GenerationTask:
        chat = ChatTask.create_from_prompt("2 + 2?")
        chat.max_tokens = 32
        await ctx.run(chat)
        seen["chat"] = chat
        return task

    # stream_all: the engine reads the answer as a stream of pieces
    engine = OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m", chat=True, stream_all=stream)
    async with AsyncScaffoldingLlm(method, {"generation": EngineWorker(engine)}) as llm:
        await llm.generate("q")
    chat = seen["chat"]
    reply = chat.messages[-1]
    assert (reply.content, reply.reasoning_content) == ("4", "Let me think.")
    assert chat.output_str == "4" and chat.reasoning_tokens_num == 4
    assert chat.completion_tokens_num == 6


async def test_token_counts_are_never_made_up(flaky: Any) -> None:
    """Every way /tokenize can fail is an EngineError naming it; a stopped engine
    is an EngineClosedError."""
    from engine_bridge import EngineClosedError, ProcessEngine

    request = EngineRequest(SamplingParams(), prompt="q")
    port = flaky(0)
    for base, match in (
        (f"http://127.0.0.1:{port}/bad/v1", "without an integer 'count'"),
        (f"http://127.0.0.1:{port}/broken/v1", "HTTP 500 .*tokenizer exploded"),
        ("http://127.0.0.1:9/v1", "cannot reach"),
    ):
        async with OpenAIEngine(base, "m", max_retries=0) as engine:
            with pytest.raises(EngineError, match=match):
                await engine.count_tokens(request)
    with pytest.raises(EngineClosedError):
        await OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m").count_tokens(request)
    with pytest.raises(EngineClosedError):
        await ProcessEngine(engine="simulated").count_tokens(request)


def test_a_server_answer_missing_a_logprob_or_with_bad_tool_calls_is_an_engine_error() -> None:
    from engine_bridge._bridge import RequestStream
    from engine_bridge._engines._openai import _delta, _StreamState

    asked = EngineRequest(
        SamplingParams(num_logprobs=0), messages=[{"role": "user", "content": "q"}]
    )
    choice = {"delta": {"content": "a"}, "logprobs": {"content": [{"token": "a"}]}}
    with pytest.raises(EngineError, match="without its logprob"):
        _delta(choice, True, asked)
    state = _StreamState(asked, RequestStream())
    for fragment, match in (
        ("not an object", "bad tool call"),
        ({"index": 99, "function": {"name": "f"}}, "index out of range"),
        ({"index": 0, "function": {"arguments": "x" * 300_000}}, "exceed 256 KB"),
    ):
        with pytest.raises(EngineError, match=match):
            state.tool_fragments({"delta": {"tool_calls": [fragment]}})


async def test_a_client_closed_under_a_request_is_an_engine_error(server: LoopbackServer) -> None:
    """A replica closed while a request is being sent (its child process was
    killed) fails that request with EngineClosedError, not httpx's RuntimeError."""
    from engine_bridge import EngineClosedError

    async with OpenAIEngine(server.url, "scaffold", max_retries=0) as engine:
        for client in engine._clients:
            await client.aclose()  # as the engine's own close does, mid-request
        with pytest.raises(EngineClosedError, match="closed while sending"):
            async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")) as s:
                async for _ in s:
                    pass


async def test_a_stop_string_matched_here_aborts_the_request_on_the_server(flaky: Any) -> None:
    """A server that ignores ``stop`` streams on; the client cuts the text at the
    stop string, ends the request and closes the connection: the server's own
    count says the stream was left, not read to its end."""
    port = flaky(0, "ignore-stop")
    async with OpenAIEngine(f"http://127.0.0.1:{port}/v1", "m") as engine:
        params = SamplingParams(max_tokens=200, stop=(" w5",))
        text, _, _, finish, _ = await collect(engine, EngineRequest(params, prompt="q"))
        assert (text, finish) == (" w0 w1 w2 w3 w4", "stop")
        assert engine.num_active == 0
    async with httpx.AsyncClient() as client:
        with trio.fail_after(60):  # a hang guard: the server counts the stream's end
            while True:
                health = (await client.get(f"http://127.0.0.1:{port}/health")).json()
                if health["completed"] + health["aborted"]:
                    break
                await trio.sleep(0.02)
    assert (health["aborted"], health["completed"]) == (1, 0), health
