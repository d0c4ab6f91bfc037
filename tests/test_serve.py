"""``scaffold serve`` run as a user runs it, queried with the official openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")

from helpers import ServeProcess  # noqa: E402

from scaffold_actors.cli._registry import METHODS  # noqa: E402


class Server(ServeProcess):
    """``scaffold serve`` on the simulated engine, with an OpenAI client."""

    def __init__(self, *args: str) -> None:
        super().__init__("--engine", "simulated", *args)

    def client(self, **kw: object) -> object:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, **kw)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server("--max-in-flight", "4")
    yield s
    s.stop()


@pytest.fixture
def slow_server() -> Iterator[Server]:
    # 5 s per engine step: a request of ~10 tokens would take about 50 s, far past
    # the 1 s request timeout (what decides the outcome is that gap, not a race)
    s = Server("--max-in-flight", "1", "--request-timeout", "1", "--simulated-step-seconds", "5")
    yield s
    s.stop()


@pytest.fixture
def held_server() -> Iterator[Server]:
    # one slot, a request that holds it for minutes, no server-side timeout to race
    s = Server("--max-in-flight", "1", "--request-timeout", "600", "--simulated-step-seconds", "30")
    yield s
    s.stop()


def wait_until(condition: Any, what: str, bound: float = 120.0) -> None:
    """Wait for a server's state to say ``condition`` (polled; the bound only
    keeps a broken server from hanging the suite, nothing is timed)."""
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.02)


def test_models_are_methods(server: Server) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert ids[0] == "majority-vote" and {"cot", "dynasor", "deepconf"} <= set(ids)
    assert set(ids) == set(METHODS)  # scoring methods judge with the generation model


def test_chat_majority_vote(server: Server) -> None:
    r = server.client().chat.completions.create(
        model="majority-vote",
        messages=[{"role": "user", "content": "What is 2 + 2?"}],
        max_tokens=32,
        extra_body={"samples": 5},
    )
    choice = r.choices[0]
    assert "\\boxed{" in choice.message.content
    details = choice.model_extra["scaffold"]
    assert sum(details["votes"].values()) == details["samples_finished"] <= 5
    assert details["samples_requested"] == 5 and r.usage.completion_tokens > 0


def test_completions_and_streaming(server: Server) -> None:
    client = server.client()
    r = client.completions.create(model="cot", prompt="What is 3 + 4?", max_tokens=16)
    assert r.choices[0].text
    chunks = list(
        client.chat.completions.create(
            model="majority-vote",
            messages=[{"role": "user", "content": "What is 5 + 1?"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "\\boxed{" in text and chunks[-1].usage.completion_tokens > 0


def test_a_single_sample_method_streams_its_tokens(server: Server) -> None:
    """cot streams its text as the engine generates it (several content chunks,
    each a few tokens), not in one chunk at the end; the pieces add up to the
    answer and the last chunk carries the method's details."""
    client = server.client()
    chunks = list(
        client.chat.completions.create(
            model="cot",
            messages=[{"role": "user", "content": "What is 5 + 1?"}],
            max_tokens=24,
            stream=True,
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 2, pieces  # the simulated reply: 9 tokens, 4 a step
    whole = client.chat.completions.create(
        model="cot", messages=[{"role": "user", "content": "What is 5 + 1?"}], max_tokens=24
    )
    assert len("".join(pieces)) == len(whole.choices[0].message.content)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "scaffold" in (chunks[-1].choices[0].model_extra or {})
    text = client.completions.create(
        model="cot", prompt="What is 5 + 1?", max_tokens=24, stream=True
    )
    assert sum(1 for c in text if c.choices and c.choices[0].text) >= 2


def test_clear_errors(server: Server) -> None:
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model="cot", messages=[{"role": "user", "content": "x"}], temperature=-1
        )
    with pytest.raises(openai.BadRequestError, match="samples"):
        client.completions.create(model="cot", prompt="x", extra_body={"samples": 0})
    r = httpx.post(
        server.url + "/v1/completions", content=b"{" + b" " * 2_000_000 + b"}", timeout=10
    )
    assert r.status_code == 413
    r = httpx.post(server.url + "/v1/completions", content=b"\xff\xfe", timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    # the rule of `scaffold run`: a question must say something
    for path, body, param in (
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": " "}]}, "messages"),
        ("/v1/completions", {"prompt": "  "}, "prompt"),
    ):
        r = httpx.post(server.url + path, json={"model": "cot", **body}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    # a task's refusal names the request's own field, not the task's
    long = {"role": "user", "content": "word " * 20_000}
    r = httpx.post(
        server.url + "/v1/chat/completions", json={"model": "cot", "messages": [long]}, timeout=30
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "messages", r.text
    assert "GenerationTask" not in error["message"]
    assert server.health()["status"] == "ok"


def test_a_request_past_its_timeout_is_cancelled(slow_server: Server) -> None:
    """The server's request timeout (1 s, against an engine needing ~50 s) answers
    504 and cancels the request: nothing is left in flight or in the engine."""
    body = {"model": "cot", "prompt": "q", "max_tokens": 10}
    with httpx.Client(base_url=slow_server.url, timeout=120) as http:
        r = http.post("/v1/completions", json=body)
    assert r.status_code == 504, r.text
    wait_until(lambda: slow_server.health()["requests_in_flight"] == 0, "the request ended")
    assert slow_server.health()["engine_requests"] == 0


def test_saturation_and_a_client_that_gives_up(held_server: Server) -> None:
    """While the one slot is held (the server says so), another request is
    refused with 429 at once; the holder's client then gives up (closes its
    stream), and the server cancels its request: its own counts go back to zero."""
    body = {"model": "cot", "prompt": "q", "max_tokens": 10}
    with httpx.Client(base_url=held_server.url, timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as held:
            assert held.status_code == 200
            wait_until(lambda: held_server.health()["requests_in_flight"] == 1, "the slot taken")
            with httpx.Client(base_url=held_server.url, timeout=30) as other:
                second = other.post("/v1/completions", json=body)  # saturated
            assert second.status_code == 429, second.text
            assert second.json()["error"]["type"] == "rate_limit_error"
        # (leaving the stream closed the connection: the client gave up)
    wait_until(lambda: held_server.health()["requests_in_flight"] == 0, "the request cancelled")
    assert held_server.health()["engine_requests"] == 0


def test_each_request_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The access log: one line per completion request, with its method, status,
    seconds and completion tokens (a stream's when it ends)."""
    import logging

    from starlette.testclient import TestClient

    from engine_bridge import SimulatedEngine
    from scaffold_actors import EngineWorker
    from scaffold_actors.cli import build_method
    from scaffold_actors.cli._serve import create_app

    app = create_app(
        {"cot": build_method("cot", samples=1, max_tokens=8, temperature=0.7)},
        {"generation": EngineWorker(SimulatedEngine("So \\boxed{4}."))},
    )
    caplog.set_level(logging.INFO, logger="scaffold_actors.serve")
    with TestClient(app) as client:
        ok = client.post("/v1/completions", json={"model": "cot", "prompt": "2+2?"})
        bad = client.post("/v1/completions", json={"model": "nope", "prompt": "2+2?"})
        refused = client.post("/v1/completions", json={"model": "cot", "prompt": 7})
        with client.stream(
            "POST", "/v1/completions", json={"model": "cot", "prompt": "2+2?", "stream": True}
        ) as s:
            s.read()
    assert (ok.status_code, bad.status_code, refused.status_code) == (200, 404, 400)
    lines = [r.getMessage() for r in caplog.records if r.name == "scaffold_actors.serve"]
    assert len(lines) == 4, lines
    assert lines[0].startswith("/v1/completions model=cot status=200 seconds=")
    assert "completion_tokens=" in lines[0] and "completion_tokens=-" not in lines[0]
    assert "model=nope status=404" in lines[1] and "completion_tokens=-" in lines[1]
    assert "model=cot status=400" in lines[2]  # the model it named, though refused
    assert lines[3].endswith(" stream") and "status=200" in lines[3]


@pytest.mark.trio
async def test_the_server_freezes_what_is_alive_once_its_engine_is_up() -> None:
    """Once the engine is up, the server moves everything alive (a real engine's
    model and libraries) out of the collector's walks (``gc.freeze``), and gives
    them back when it stops; read off the collector itself."""
    import gc

    from engine_bridge import SimulatedEngine
    from scaffold_actors import EngineWorker
    from scaffold_actors.cli._serve import _lifespan, create_app
    from scaffold_actors.methods import Sampler

    app = create_app(
        {"cot": Sampler(max_tokens=4)}, {"generation": EngineWorker(SimulatedEngine())}
    )
    assert gc.get_freeze_count() == 0
    async with _lifespan(app):
        assert gc.get_freeze_count() > 0
        assert app.state.llm.healthy()
    assert gc.get_freeze_count() == 0
