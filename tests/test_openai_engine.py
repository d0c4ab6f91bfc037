"""OpenAIEngine and the OpenAI-compatible server, over real HTTP on loopback."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

pytest.importorskip("starlette")

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
    with trio.fail_after(5):
        while httpx.get(f"http://127.0.0.1:{server.port}/health").json()["active"]:  # noqa: ASYNC110,ASYNC210
            await trio.sleep(0.01)


async def test_unreachable_server_is_retried_then_fails_clearly() -> None:
    async with OpenAIEngine("http://127.0.0.1:9/v1", "m", max_retries=2, backoff=0.05) as engine:
        start = time.monotonic()
        with pytest.raises(EngineError, match=re.escape("cannot reach http://127.0.0.1:9/v1")):
            async with engine.open_stream(EngineRequest(SamplingParams(), prompt="q")):
                pass
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


@pytest.fixture
def flaky() -> Iterator[Any]:
    """Start tests/flaky_server.py with (failures, mode) on a free loopback port."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    procs: list[subprocess.Popen[bytes]] = []

    def start(failures: int, mode: int | str = 503) -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        script = Path(__file__).parent / "flaky_server.py"
        procs.append(
            subprocess.Popen([sys.executable, str(script), str(port), str(failures), str(mode)])
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                return port
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("flaky server did not start")

    yield start
    for p in procs:
        p.kill()
        p.wait(10)


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
        f"http://127.0.0.1:{port}/v1", "m", timeout=0.3, max_retries=2, backoff=0.01
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
