"""One conformance suite, run against every engine available here.

Each engine must: generate (text that decodes its token ids), stream (deltas that
add up to the same output), abort on leaving ``open_stream`` early, return one
logprob per token, honour stop strings, reject bad requests before admitting them,
and turn its own death into :class:`EngineError` for live and later requests.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import collect, free_port

from engine_bridge import (
    EngineClosedError,
    EngineError,
    EngineRequest,
    InvalidRequestError,
    NotSupportedError,
    RayEngine,
    SamplingParams,
    SimulatedEngine,
)

FRUITS = "Apples, bananas, cherries, dates, figs, grapes, kiwis, lemons, mangoes and plums."
PROMPT = "List some fruits."


def simulated() -> Any:
    return SimulatedEngine(FRUITS, max_context=256)


def hf() -> Any:
    pytest.importorskip("transformers")
    from engine_bridge import HFEngine

    return HFEngine(max_context=512, kv_cache_tokens=4096)


STANDINS = Path(__file__).parent / "standins"


def trtllm() -> Any:
    """The real tensorrt_llm with SCAFFOLD_TRTLLM_MODEL, else the API stand-in."""
    from engine_bridge import TRTLLMEngine

    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is not None and not str(spec.origin or "").startswith(str(STANDINS)):
        model = os.environ.get("SCAFFOLD_TRTLLM_MODEL")
        if not model:
            pytest.skip(
                "tensorrt_llm is installed: set SCAFFOLD_TRTLLM_MODEL to a model to test it"
            )
        return TRTLLMEngine(model, max_context=512)
    if str(STANDINS) not in sys.path:
        sys.path.insert(0, str(STANDINS))
    return TRTLLMEngine("standin-model", llm_kwargs={"max_seq_len": 256})


class ServerProcess:
    """A server in a child process on a loopback port: waits until its /health
    answers (a hang guard of ``startup_s``, not a budget), ``url``, ``kill``."""

    port: int
    proc: Any

    def wait_healthy(self, what: str, startup_s: float) -> None:
        import time

        import httpx

        deadline = time.monotonic() + startup_s
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read()[-2000:] if self.proc.stderr else ""
                raise RuntimeError(f"{what} did not start: {err!r}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class LoopbackServer(ServerProcess):
    """``python -m engine_bridge.openai_server`` (simulated engine) on a free loopback port."""

    def __init__(
        self,
        port: int | None = None,
        reply: str = FRUITS,
        max_context: int = 512,
        prefix_cache_blocks: int = 0,
    ) -> None:
        import subprocess

        self.port = port if port is not None else free_port()
        args = [sys.executable, "-m", "engine_bridge.openai_server", "--engine", "simulated"]
        args += ["--simulated-reply", reply, "--port", str(self.port)]
        args += ["--max-context", str(max_context)]
        args += ["--prefix-cache-blocks", str(prefix_cache_blocks)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_healthy("server", 30)


SERVERS: list[LoopbackServer] = []


def openai() -> Any:
    pytest.importorskip("starlette")
    from engine_bridge import OpenAIEngine

    server = LoopbackServer()
    SERVERS.append(server)

    class KillableOpenAIEngine(OpenAIEngine):
        def inject_failure(self) -> None:
            server.kill()  # the server dies mid-stream

        def revive(self) -> None:
            SERVERS.append(LoopbackServer(server.port))  # a new server, same address

    return KillableOpenAIEngine(server.url, "scaffold", backoff=0.01, max_retries=2)


def process() -> Any:
    pytest.importorskip("starlette")
    import os
    import signal

    from engine_bridge import ProcessEngine

    class KillableProcessEngine(ProcessEngine):
        def inject_failure(self) -> None:
            assert self.pid is not None
            os.kill(self.pid, signal.SIGKILL)  # the child dies mid-stream

    return KillableProcessEngine(
        "simulated", extra_args=["--simulated-reply", FRUITS, "--max-context", "512"]
    )


class TransformersServe(ServerProcess):
    """``transformers serve --continuous-batching`` (the OpenAI-compatible server
    that ships with transformers; fastapi) on a free loopback port, holding the
    embedded model's weights: a third-party server, started by the test."""

    def __init__(self, port: int | None = None) -> None:
        import subprocess

        from engine_bridge import HFEngine, conversion_cache_folder

        folder = conversion_cache_folder(HFEngine().model_path)
        if not (folder / "config.json").is_file():
            HFEngine().load()  # converts the embedded GGUF into the cache once
        self.model = str(folder)
        self.port = port if port is not None else free_port()
        exe = Path(sys.executable).with_name("transformers")
        args = [str(exe), "serve", self.model, "--continuous-batching", "--device", "cpu"]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--cb-num-blocks", "16"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.wait_healthy("transformers serve", 180)  # the model loads first


_TS: list[TransformersServe] = []


def transformers_serve() -> Any:
    pytest.importorskip("transformers")
    pytest.importorskip("fastapi")
    from engine_bridge import OpenAIEngine

    if not _TS or _TS[-1].proc.poll() is not None:
        _TS.append(TransformersServe())
    server = _TS[-1]

    class KillableOpenAIEngine(OpenAIEngine):
        def inject_failure(self) -> None:
            server.kill()  # the server dies mid-stream

        def revive(self) -> None:
            _TS.append(TransformersServe(server.port))  # restarted, same address

    return KillableOpenAIEngine(server.url, server.model, backoff=0.01, max_retries=2)


#: what transformers serve (5.x) does not do; its tests check that each is a clear
#: error instead of a silent gap, or skip where nothing can be observed
transformers_serve.lacks = {  # type: ignore[attr-defined]
    "token_ids",  # no token ids in its answers
    "logprobs",  # ignores `logprobs`
    "server_counts",  # no request counts to read
    "context_check",  # the model's own 8k context, no /tokenize to count against it
    "continuation",  # rejects continue_final_message
    "tokenize",  # no /tokenize
    "ignore_eos",  # rejects the extension
}


def lacks(make_engine: Callable[[], Any], feature: str) -> bool:
    return feature in getattr(make_engine, "lacks", ())


def ray_actor() -> Any:
    """The simulated engine hosted in a Ray actor on a worker node of a real
    loopback cluster (inside test_ray.py's namespace only)."""
    import functools

    import raycluster

    raycluster.need_cluster()
    import ray

    from engine_bridge import RayEngine

    class KillableRayEngine(RayEngine):
        def inject_failure(self) -> None:
            ray.kill(self.actor, no_restart=True)  # the actor's process dies mid-stream

    factory = functools.partial(SimulatedEngine, FRUITS, max_context=256)
    return KillableRayEngine(factory, resources={"node-1": 1}, abort_timeout=30)


ENGINES: dict[str, Callable[[], Any]] = {
    "simulated": simulated,
    "hf": hf,
    "trtllm": trtllm,
    "openai": openai,
    "process": process,
    "transformers-serve": transformers_serve,
    "ray": ray_actor,
}
if os.environ.get("SCAFFOLD_RAY_NETNS") == "1":  # the Ray run of test_ray.py: Ray alone
    ENGINES = {"ray": ray_actor}


@pytest.fixture(scope="module", autouse=True)
def _stop_transformers_serve() -> Any:
    """One transformers serve per module (its model loads once), stopped at the end."""
    yield
    while _TS:
        _TS.pop().kill()


@pytest.fixture(params=list(ENGINES), ids=list(ENGINES))
def make_engine(request: pytest.FixtureRequest) -> Callable[[], Any]:
    # (tests/conftest.py marks the hf and transformers-serve ones slow_model)
    def stop_servers() -> None:
        while SERVERS:
            SERVERS.pop().kill()

    request.addfinalizer(stop_servers)
    return ENGINES[request.param]


def greedy(max_tokens: int = 8, **kw: Any) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)


async def test_generate_and_stream_agree(make_engine: Callable[[], Any]) -> None:
    async with make_engine() as engine:
        whole, ids, _, finish, n = await collect(
            engine, EngineRequest(greedy(), prompt=PROMPT, stream=False)
        )
        assert n == 1 and finish in ("stop", "length") and whole
        assert 1 <= len(ids) <= 8 or lacks(make_engine, "token_ids")
        streamed, sids, _, sfinish, sn = await collect(
            engine, EngineRequest(greedy(), prompt=PROMPT)
        )
        assert (streamed, sids, sfinish) == (whole, ids, finish)
        assert sn > 1  # really streamed
        assert engine.num_active == 0


async def test_chat_messages(make_engine: Callable[[], Any]) -> None:
    async with make_engine() as engine:
        text, ids, *_ = await collect(
            engine, EngineRequest(greedy(4), messages=[{"role": "user", "content": PROMPT}])
        )
        assert text and (1 <= len(ids) <= 4 or lacks(make_engine, "token_ids"))


async def engine_holds(engine: Any) -> int:
    """How many requests the engine itself still holds, read from the engine's own
    state, never from our bridge's bookkeeping: the simulated scheduler's queues,
    transformers' scheduler, the TensorRT-LLM executor (the stand-in's; the real
    executor has no public count and is checked by its final "cancelled" response
    alone), or, over HTTP, the server's engine once it saw the connection close
    (the server learns of it asynchronously, so that one is awaited)."""
    from engine_bridge import SimulatedEngine

    if isinstance(engine, SimulatedEngine):
        return int(engine.num_active)  # its own scheduler queues
    if type(engine).__name__ == "HFEngine":
        scheduler = engine._manager.batch_processor.scheduler
        return len(scheduler.active_requests) + len(scheduler.waiting_requests)
    if type(engine).__name__ == "TRTLLMEngine":
        return int(getattr(engine.llm, "live", 0))
    if isinstance(engine, RayEngine):
        return int((await engine.stats())["active"])  # the actor's engine, as it counts
    import httpx

    url = (getattr(engine, "url", None) or engine.base_url).removesuffix("/v1") + "/health"
    async with httpx.AsyncClient() as client:
        while True:  # bounded by the test's fail_after, not by a guess of its own
            health = (await client.get(url)).json()
            if health["aborted"] == 1:
                return int(health["active"])
            await trio.sleep(0.01)


async def test_leaving_early_aborts(make_engine: Callable[[], Any]) -> None:
    """Leaving mid-stream aborts the request in the engine itself before the block
    exits (checked in the engine's own state with no waiting, except over HTTP)."""
    async with make_engine() as engine:
        async with engine.open_stream(EngineRequest(greedy(64), prompt=PROMPT)) as stream:
            async for _ in stream:
                assert engine.num_active == 1
                break
        assert engine.num_active == 0 and engine.aborted == 1
        if not lacks(make_engine, "server_counts"):  # else only our side is visible
            with trio.fail_after(30):
                assert await engine_holds(engine) == 0
        text, *_ = await collect(engine, EngineRequest(greedy(3), prompt=PROMPT))
        assert text  # still serving


async def test_logprobs_one_per_token(make_engine: Callable[[], Any]) -> None:
    """One logprob per token, from the engine: sampled at temperature 1, a real
    distribution gives some token a logprob below 0, so invented zeros fail."""
    async with make_engine() as engine:
        params = SamplingParams(max_tokens=8, temperature=1.0, num_logprobs=0)
        if lacks(make_engine, "logprobs"):  # a clear error, never a silent gap
            with pytest.raises(EngineError, match="returned no logprobs"):
                await collect(engine, EngineRequest(params, prompt=PROMPT))
            return
        _, ids, lps, *_ = await collect(engine, EngineRequest(params, prompt=PROMPT))
        assert len(lps) == len(ids) > 0 and all(x <= 0.0 for x in lps)
        assert any(x < 0.0 for x in lps), lps
        _, _, none, *_ = await collect(engine, EngineRequest(greedy(), prompt=PROMPT))
        assert none == []


async def test_stop_strings(make_engine: Callable[[], Any]) -> None:
    """A stop string ends the request there, in the engine too: one that still
    had up to 200 tokens to go is no longer held by the engine itself once the
    stream is left (a cut on our side must cancel it in the engine)."""
    async with make_engine() as engine:
        base, *_ = await collect(engine, EngineRequest(greedy(12), prompt=PROMPT))
        words = base.split()
        assert len(words) >= 3, base
        stop = " " + words[2]
        text, _, _, finish, _ = await collect(
            engine, EngineRequest(greedy(200, stop=(stop,)), prompt=PROMPT)
        )
        assert finish == "stop" and stop not in text and base.startswith(text) and text
        assert engine.num_active == 0
        if type(engine).__name__ in ("SimulatedEngine", "HFEngine", "TRTLLMEngine") or isinstance(
            engine, RayEngine
        ):
            assert await engine_holds(engine) == 0  # its own state, read at once


async def test_a_stop_string_never_leaks_into_a_stream(make_engine: Callable[[], Any]) -> None:
    """A stop string of several tokens: the stream holds back text that may be its
    start, so the streamed text is the one-body text, with no piece of the stop."""
    async with make_engine() as engine:
        base, *_ = await collect(engine, EngineRequest(greedy(12), prompt=PROMPT, stream=False))
        words = base.split()
        assert len(words) >= 4, base
        stop = " " + words[2] + " " + words[3]
        assert stop in base, base
        params = greedy(12, stop=(stop,))
        one, _, _, finish, _ = await collect(
            engine, EngineRequest(params, prompt=PROMPT, stream=False)
        )
        streamed, _, _, sfinish, deltas = await collect(
            engine, EngineRequest(params, prompt=PROMPT)
        )
        assert (streamed, sfinish) == (one, finish) == (base[: base.index(stop)], "stop")
        assert deltas > 1
        assert engine.num_active == 0


async def test_bad_requests_rejected_before_admission(make_engine: Callable[[], Any]) -> None:
    if lacks(make_engine, "context_check"):
        pytest.skip("the server's model has an 8k context and no /tokenize to count against")
    async with make_engine() as engine:
        too_long = EngineRequest(SamplingParams(max_tokens=8), prompt="word " * 600)
        if engine.count_prompt_tokens(too_long):  # an engine over HTTP cannot count tokens
            with pytest.raises(InvalidRequestError) as info:
                engine.check(too_long)
            assert info.value.field == "prompt" and "context length" in str(info.value)
        with pytest.raises(InvalidRequestError) as info:
            async with engine.open_stream(too_long):
                pass
        assert info.value.field == "prompt" and "context length" in str(info.value)
        assert engine.num_active == 0
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        SamplingParams(max_tokens=-1)


async def test_requires_start(make_engine: Callable[[], Any]) -> None:
    with pytest.raises(EngineClosedError):
        await collect(make_engine(), EngineRequest(greedy(), prompt=PROMPT))


async def test_engine_death_surfaces_as_engine_error(make_engine: Callable[[], Any]) -> None:
    """The engine dies mid-batch: the live request fails with EngineError, later ones
    too, no engine request or thread is left once it is closed, and it can be
    started again and serves."""
    before = set(threading.enumerate())
    engine = make_engine()
    async with engine:
        with pytest.raises(EngineError):
            async with engine.open_stream(EngineRequest(greedy(200), prompt=PROMPT)) as stream:
                async for _ in stream:
                    engine.inject_failure()
        assert not engine.healthy and engine.num_active == 0
        with pytest.raises(EngineError):
            await collect(engine, EngineRequest(greedy(), prompt=PROMPT))
    assert await threads_settle(before) == set()
    if hasattr(engine, "revive"):
        engine.revive()  # a remote server is restarted by its operator
    async with engine:
        text, *_ = await collect(engine, EngineRequest(greedy(3), prompt=PROMPT))
        assert text and engine.healthy
    assert await threads_settle(before) == set()


async def threads_settle(before: set[threading.Thread]) -> set[threading.Thread]:
    """The threads alive now that were not before (waiting up to 5 s for exits),
    leaving out trio's cache of idle worker threads (reused, they expire on their own)
    and tqdm's process-wide monitor thread (started by the first progress bar)."""
    for _ in range(100):
        extra = {
            t
            for t in threading.enumerate()
            if t not in before
            and t.is_alive()
            and not t.name.startswith("Trio thread")
            and type(t).__name__ != "TMonitor"
        }
        if not extra:
            break
        await trio.sleep(0.05)
    return extra


async def test_continuation_is_continued(make_engine: Callable[[], Any]) -> None:
    """A request whose ``continuation`` holds the start of the response gets the
    rest of it: greedily, start + continued == one longer generation."""
    chat = [{"role": "user", "content": PROMPT}]
    async with make_engine() as engine:
        if lacks(make_engine, "continuation"):  # refused clearly by the server
            with pytest.raises(InvalidRequestError, match="continue_final_message"):
                await collect(engine, EngineRequest(greedy(3), messages=chat, continuation="A"))
            return
        start, *_ = await collect(engine, EngineRequest(greedy(3), messages=chat))
        whole, *_ = await collect(engine, EngineRequest(greedy(6), messages=chat))
        rest, ids, *_ = await collect(
            engine, EngineRequest(greedy(3), messages=chat, continuation=start)
        )
        assert start and rest and 1 <= len(ids) <= 3
        assert (start + rest).strip() == whole.strip()
        if engine.count_prompt_tokens(EngineRequest(greedy(), messages=chat)):  # not HTTP
            assert engine.count_prompt_tokens(
                EngineRequest(greedy(), messages=chat, continuation=start)
            ) > engine.count_prompt_tokens(EngineRequest(greedy(), messages=chat))


async def test_engine_can_be_started_again(make_engine: Callable[[], Any]) -> None:
    engine = make_engine()
    for _ in range(2):  # e.g. `scaffold bench --compare` runs one method after another
        async with engine:
            text, *_ = await collect(engine, EngineRequest(greedy(3), prompt=PROMPT))
            assert text and engine.healthy
        assert engine.num_active == 0


async def test_counts_tokens_as_its_own_usage_reports_them(make_engine: Callable[[], Any]) -> None:
    """``count_tokens`` is the engine's own count (an HTTP engine asks its server's
    /tokenize): it equals the prompt tokens the engine reports when it generates."""
    chat = [{"role": "user", "content": PROMPT}]
    async with make_engine() as engine:
        if lacks(make_engine, "tokenize"):
            with pytest.raises(NotSupportedError, match="does not serve /tokenize"):
                await engine.count_tokens(EngineRequest(greedy(2), messages=chat))
            return
        for request in (
            EngineRequest(greedy(2), prompt=PROMPT),
            EngineRequest(greedy(2), messages=chat),
        ):
            counted = await engine.count_tokens(request)
            reported = 0
            async with engine.open_stream(request) as deltas:
                async for d in deltas:
                    reported = d.prompt_tokens or reported
            assert counted == reported > 0


async def test_offered_tools_reach_the_model(make_engine: Callable[[], Any]) -> None:
    """Every engine offers a chat's ``tools`` to the model: the prompt the engine
    counts (its own tokenizer, or its server's /tokenize) grows by them."""
    chat = [{"role": "user", "content": PROMPT}]
    tool = {"type": "function", "function": {"name": "lookup", "description": "looks a word up"}}
    if lacks(make_engine, "tokenize"):
        pytest.skip("no /tokenize to count the offered tools with")
    async with make_engine() as engine:
        without = await engine.count_tokens(EngineRequest(greedy(2), messages=chat))
        with_tools = await engine.count_tokens(
            EngineRequest(greedy(2), messages=chat, tools=[tool])
        )
        assert with_tools > without


async def test_ignore_eos_generates_to_max_tokens(make_engine: Callable[[], Any]) -> None:
    """Past the reply's end (its end-of-sequence token), to exactly max_tokens;
    a stop string still ends it."""
    limit, prompt = 40, "What is 2+2? Answer with a number only."  # a short natural answer
    async with make_engine() as engine:
        if lacks(make_engine, "ignore_eos"):  # refused clearly by the server
            with pytest.raises(InvalidRequestError, match="ignore_eos"):
                await collect(engine, EngineRequest(greedy(4, ignore_eos=True), prompt=prompt))
            return
        _, natural, _, _, _ = await collect(engine, EngineRequest(greedy(limit), prompt=prompt))
        text, ids, _, finish, _ = await collect(
            engine, EngineRequest(greedy(limit, ignore_eos=True), prompt=prompt)
        )
        assert len(natural) < limit  # the engine's own reply ends before the limit ...
        assert (len(ids), finish) == (limit, "length")  # ... and here goes on past it
        assert ids[: len(natural)] == natural  # the same reply, then past its end
        stop = " " + text.split()[3]  # a whole token where stops are matched by token
        cut, ids, _, finish, _ = await collect(
            engine, EngineRequest(greedy(limit, ignore_eos=True, stop=[stop]), prompt=prompt)
        )
        assert finish == "stop" and len(ids) < limit and stop not in cut


@pytest.mark.slow_model
def test_scaffold_run_against_transformers_serve() -> None:
    """The issue's case: `scaffold run --engine openai` against transformers serve
    holding the embedded model.  A question is a chat turn: real answers.  With
    --raw-completions this instruct model ends at once (empty one-token answers,
    as the server really gives them): the CLI says so in words."""
    import json
    import subprocess

    transformers_serve()  # starts the server, or reuses this module's
    server = _TS[-1]
    args = [
        sys.executable, "-m", "scaffold_actors.cli", "run", "What is 2 + 2?",
        "--engine", "openai", "--base-url", server.url, "--model", server.model,
        "--samples", "2", "--max-tokens", "24",
    ]  # fmt: skip
    p = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    data = json.loads(p.stdout)
    assert data["usage"]["tasks"] == 2 and data["usage"]["completion_tokens"] > 2
    assert not data["details"]["unanswered"]["empty"], data["details"]
    raw = subprocess.run([*args, "--raw-completions"], capture_output=True, text=True, timeout=300)
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert (
        "no answer: none of 2 samples gave an answer that could be extracted (2 empty)"
        in raw.stdout
    ), raw.stdout


# --- streams started without a task ----------------------------------------------------


class _Reader:
    """Reads a started stream as the runtime does: on each wake, every queued
    delta; records the end."""

    def __init__(self) -> None:
        self.text = ""
        self.finish: str | None = None
        self.over = False
        self.woke = trio.Event()

    def __call__(self) -> None:
        self.woke.set()

    async def read(self, stream: Any) -> None:
        while not self.over:
            await self.woke.wait()
            self.woke = trio.Event()
            try:
                while (delta := stream.next_nowait()) is not None:
                    self.text += delta.text
                    self.finish = delta.finish_reason or self.finish
            except StopAsyncIteration:
                self.over = True

    async def close(self, stream: Any) -> None:
        """Close it and wait until the engine released it (or gave up)."""
        stream.close()
        while not stream.released:
            await self.woke.wait()
            self.woke = trio.Event()
        stream.close()


def _starts_streams(make_engine: Callable[[], Any], engine: Any) -> None:
    if getattr(type(engine), "start_stream", None) is None:
        pytest.skip(
            f"{type(engine).__name__} reads each response in a task of its own (HTTP); "
            "it does not start streams"
        )


async def test_a_started_stream_gives_what_open_stream_gives(
    make_engine: Callable[[], Any],
) -> None:
    """``start_stream`` (no task per request): the same greedy text as
    ``open_stream``, and at its end the engine holds nothing (its own state)."""
    async with make_engine() as engine:
        _starts_streams(make_engine, engine)
        base, *_ = await collect(engine, EngineRequest(greedy(8), prompt=PROMPT))
        reader = _Reader()
        stream = engine.start_stream(EngineRequest(greedy(8), prompt=PROMPT), reader)
        with trio.fail_after(120):  # a hang guard
            await reader.read(stream)
            await reader.close(stream)
        assert reader.text == base and reader.finish in ("stop", "length")
        assert engine.num_active == 0 and await engine_holds(engine) == 0


async def test_closing_a_started_stream_aborts_it_in_the_engine(
    make_engine: Callable[[], Any],
) -> None:
    """Closed after its first delta, a started request (64 tokens to go) is
    dropped by the engine itself once the stream reads released; a stop string
    cut on our side ends it there too."""
    async with make_engine() as engine:
        _starts_streams(make_engine, engine)
        reader = _Reader()
        stream = engine.start_stream(EngineRequest(greedy(64), prompt=PROMPT), reader)
        with trio.fail_after(120):  # a hang guard
            while not stream.done and not reader.text:
                await reader.woke.wait()
                reader.woke = trio.Event()
                delta = stream.next_nowait()
                reader.text += delta.text if delta is not None else ""
            await reader.close(stream)
        assert engine.num_active == 0 and engine.aborted == 1
        assert await engine_holds(engine) == 0

        base, *_ = await collect(engine, EngineRequest(greedy(12), prompt=PROMPT))
        stop = " " + base.split()[2]
        reader = _Reader()
        request = EngineRequest(greedy(200, stop=(stop,)), prompt=PROMPT)
        stream = engine.start_stream(request, reader)
        with trio.fail_after(120):  # a hang guard
            await reader.read(stream)
            await reader.close(stream)
        assert reader.finish == "stop" and stop not in reader.text and base.startswith(reader.text)
        assert engine.num_active == 0 and await engine_holds(engine) == 0
        assert engine.aborted == 1  # a stop string's end is no abort
