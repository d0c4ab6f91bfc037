"""A loopback OpenAI-style server that misbehaves a given number of times first.

python tests/flaky_server.py PORT FAILURES [MODE]

MODE is an HTTP status to answer with (default 503), or one of:
``stall`` (send the headers, then nothing), ``stall-after-token`` (one chunk, then
nothing), ``drop`` (one chunk, then the connection is cut mid-body).  A request with
``"stream": false`` gets one JSON body; ``stall`` then sends nothing at all, and
``stall-after-token`` / ``drop`` send the first half of the body.  Chat
completions always succeed, with the reasoning apart in ``reasoning_content``.
``ignore-stop`` streams 200 words ``w0 w1 ...`` whatever ``stop`` says (as a server
that does not honour it), one every 10 ms; ``/health`` counts the streams that ran
to their end (``completed``) and those the client left (``aborted``).
"""

from __future__ import annotations

import json
import sys

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

PORT, FAILURES = int(sys.argv[1]), int(sys.argv[2])
MODE = sys.argv[3] if len(sys.argv) > 3 else "503"
calls = {"n": 0, "completed": 0, "aborted": 0}


async def health(request: Request) -> JSONResponse:
    return JSONResponse(
        {"calls": calls["n"], "completed": calls["completed"], "aborted": calls["aborted"]}
    )


def ignoring_stop() -> StreamingResponse:
    async def events():  # type: ignore[no-untyped-def]
        done = False
        try:
            for i in range(200):
                finish = "length" if i == 199 else None
                chunk = {"choices": [{"index": 0, "text": f" w{i}", "finish_reason": finish}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await anyio.sleep(0.01)
            yield "data: [DONE]\n\n"
            done = True
        finally:
            calls["completed" if done else "aborted"] += 1

    return StreamingResponse(events(), media_type="text/event-stream")


async def completions(request: Request) -> object:
    calls["n"] += 1
    if MODE == "ignore-stop":
        return ignoring_stop()
    failing = calls["n"] <= FAILURES
    if failing and MODE.isdigit():
        return JSONResponse(
            {"error": {"message": f"busy ({calls['n']})", "type": "server_error"}},
            status_code=int(MODE),
        )

    if not (await request.json()).get("stream"):
        answer = json.dumps(
            {
                "choices": [{"index": 0, "text": "ok done", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2},
            }
        )
        if not failing:
            return JSONResponse(json.loads(answer))
        if MODE == "stall":
            await anyio.sleep(3600)

        async def half():  # type: ignore[no-untyped-def]
            yield answer[: len(answer) // 2]
            if MODE == "stall-after-token":
                await anyio.sleep(3600)
            raise ConnectionAbortedError("dropped mid-body")

        return StreamingResponse(half(), media_type="application/json")

    async def events():  # type: ignore[no-untyped-def]
        if failing and MODE == "stall":
            await anyio.sleep(3600)
        for word, finish in (("ok", None), (" done", "stop")):
            if failing and word == " done":
                if MODE == "stall-after-token":
                    await anyio.sleep(3600)
                raise ConnectionAbortedError("dropped mid-stream")  # uvicorn cuts the connection
            chunk = {"choices": [{"index": 0, "text": word, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 1, 'completion_tokens': 2}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


REASONING_USAGE = {
    "prompt_tokens": 5,
    "completion_tokens": 6,
    "completion_tokens_details": {"reasoning_tokens": 4},
}


async def chat_completions(request: Request) -> object:
    """A chat answer with the reasoning apart (``reasoning_content``), as
    servers with a reasoning parser send it: whole, or streamed in pieces."""
    calls["n"] += 1
    if not (await request.json()).get("stream"):
        message = {"role": "assistant", "content": "4", "reasoning_content": "Let me think."}
        return JSONResponse(
            {
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": REASONING_USAGE,
            }
        )

    async def events():  # type: ignore[no-untyped-def]
        pieces = [
            ({"reasoning_content": "Let me "}, None),
            ({"reasoning_content": "think."}, None),
            ({"content": "4"}, "stop"),
        ]
        for delta, finish in pieces:
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': REASONING_USAGE})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def tokenize_without_count(request: Request) -> JSONResponse:
    return JSONResponse({"tokens": [1, 2]})  # no "count": a malformed answer


async def tokenize_failing(request: Request) -> JSONResponse:
    return JSONResponse({"error": {"message": "tokenizer exploded"}}, status_code=500)


async def truncate_without_count(request: Request) -> JSONResponse:
    return JSONResponse({})  # the hint taken, no count said (as trtllm-serve may answer)


async def truncate_failing(request: Request) -> JSONResponse:
    return JSONResponse({"error": {"message": "control queue closed"}}, status_code=500)


app = Starlette(
    routes=[
        Route("/bad/_control/kv_cache/truncate", truncate_without_count, methods=["POST"]),
        Route("/broken/_control/kv_cache/truncate", truncate_failing, methods=["POST"]),
        Route("/bad/tokenize", tokenize_without_count, methods=["POST"]),
        Route("/broken/tokenize", tokenize_failing, methods=["POST"]),
        Route("/health", health),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
)
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
