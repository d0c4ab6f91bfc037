"""engine_bridge.openai_protocol: one parser, one set of bodies and errors, under
both servers (an engine as a server, methods as models)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engine_bridge import InvalidRequestError, SimulatedEngine
from engine_bridge.openai_protocol import (
    ResponseMeta,
    choice,
    chunk_choice,
    parse_request,
    sse,
    usage,
)
from scaffold_actors import EngineWorker

MSG = [{"role": "user", "content": "x"}]

BAD = [
    # (body, chat, field named in the error)
    ([1, 2], False, "body"),
    ({"prompt": ""}, False, "prompt"),
    ({"prompt": [1, True]}, False, "prompt"),
    ({"messages": []}, True, "messages"),
    ({"messages": [{"content": "x"}]}, True, "messages"),
    ({"messages": MSG, "model": 3}, True, "model"),
    ({"prompt": "x", "max_tokens": 0}, False, "max_tokens"),
    ({"prompt": "x", "max_completion_tokens": "9"}, False, "max_completion_tokens"),
    ({"prompt": "x", "temperature": -1}, False, "temperature"),
    ({"prompt": "x", "top_p": 0}, False, "top_p"),
    ({"prompt": "x", "top_k": 1.5}, False, "top_k"),
    ({"prompt": "x", "seed": -1}, False, "seed"),
    ({"prompt": "x", "n": 2}, False, "n"),
    ({"prompt": "x", "stop": ["a", ""]}, False, "stop"),
    ({"prompt": "x", "stream": "yes"}, False, "stream"),
    ({"prompt": "x", "stream_options": []}, False, "stream_options"),
    ({"prompt": "x", "logprobs": 21}, False, "logprobs"),
    ({"messages": MSG, "logprobs": 1}, True, "logprobs"),
    ({"messages": MSG, "logprobs": True, "top_logprobs": -1}, True, "top_logprobs"),
    ({"messages": MSG, "continue_final_message": True}, True, "continue_final_message"),
]


@pytest.mark.parametrize(("body", "chat", "field"), BAD)
def test_a_bad_value_is_refused_naming_its_field(body: Any, chat: bool, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(body, chat)
    assert info.value.field == field


def test_a_good_request_keeps_every_value() -> None:
    r = parse_request(
        {
            "model": "m",
            "messages": [*MSG, {"role": "assistant", "content": "The answer"}],
            "max_completion_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 4,
            "seed": 3,
            "stop": ["\n"],
            "logprobs": True,
            "top_logprobs": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
            "continue_final_message": True,
            "samples": 8,
        },
        chat=True,
    )
    assert (r.model, r.max_tokens, r.temperature, r.top_p, r.top_k, r.seed) == (
        "m",
        7,
        0.5,
        0.9,
        4,
        3,
    )
    assert (r.stop, r.logprobs, r.stream, r.include_usage) == (("\n",), 2, True, True)
    assert r.continue_final_message and r.body["samples"] == 8
    assert parse_request({"prompt": [1, 2]}, chat=False).prompt == (1, 2)


def test_bodies_and_chunks() -> None:
    meta = ResponseMeta.new(True, "m")
    assert meta.id.startswith("chatcmpl-") and not ResponseMeta.new(False, "m").id.startswith(
        "chat"
    )
    whole = meta.completion([choice(True, "hi", "stop", logprobs=[-0.5])], usage(3, 1))
    assert whole["object"] == "chat.completion" and whole["usage"]["total_tokens"] == 4
    assert whole["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert whole["choices"][0]["logprobs"]["content"][0]["logprob"] == -0.5
    last = chunk_choice(True, "", "stop")
    assert last["delta"] == {} and chunk_choice(False, "a", None, token_ids=[5])["token_ids"] == [5]
    assert meta.role_chunk()["choices"][0]["delta"] == {"role": "assistant"}
    assert sse({"a": 1}) == 'data: {"a": 1}\n\n'


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[str, Any]]:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from engine_bridge.openai_server import create_app as engine_app
    from scaffold_actors.cli import build_method, create_app

    method_app = create_app(
        {"cot": build_method("cot", samples=1, max_tokens=4, temperature=0.7)},
        {"generation": EngineWorker(SimulatedEngine(max_context=256))},
        max_body_bytes=10_000,
    )
    engine = engine_app(SimulatedEngine(max_context=1024), "cot", max_body_bytes=10_000)
    with TestClient(method_app) as m, TestClient(engine) as e:
        yield {"methods": m, "engine": e}


@pytest.mark.parametrize("server", ["methods", "engine"])
@pytest.mark.parametrize(("body", "chat", "field"), BAD[1:])
def test_both_servers_answer_a_bad_body_the_same_way(
    clients: dict[str, Any], server: str, body: Any, chat: bool, field: str
) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    r = clients[server].post(path, json={"model": "cot", **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("server", ["methods", "engine"])
def test_both_servers_bound_the_body(clients: dict[str, Any], server: str) -> None:
    r = clients[server].post("/v1/completions", content=b"{" + b" " * 20_000 + b"}")
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"
    r = clients[server].post("/v1/completions", content=b"\xff")
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


@pytest.mark.parametrize("server", ["methods", "engine"])
def test_both_servers_answer_in_one_shape(clients: dict[str, Any], server: str) -> None:
    r = clients[server].post("/v1/chat/completions", json={"model": "cot", "messages": MSG})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "cot"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    with clients[server].stream(
        "POST", "/v1/completions", json={"model": "cot", "prompt": "q", "stream": True}
    ) as s:
        lines = [line for line in s.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 2


def test_tools_are_checked_where_they_are_given() -> None:
    from engine_bridge import SamplingParams as Params

    bad_tool = {"messages": MSG, "tools": [{"type": "function"}]}
    with pytest.raises(InvalidRequestError) as info:
        parse_request(bad_tool, chat=True)
    assert info.value.field == "tools"
    with pytest.raises(InvalidRequestError) as info:
        parse_request({"prompt": "x", "tools": []}, chat=False)
    assert info.value.field == "tools"
    from engine_bridge import EngineRequest

    with pytest.raises(InvalidRequestError) as info:  # tools are offered in chats
        EngineRequest(Params(), prompt="x", tools=[{"function": {"name": "f"}}])
    assert info.value.field == "tools"
    with pytest.raises(InvalidRequestError) as info:
        EngineRequest(Params(), messages=MSG, tools="f")
    assert info.value.field == "tools"
