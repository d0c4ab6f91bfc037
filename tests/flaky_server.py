"""A loopback OpenAI-style server that answers 503 a given number of times first.

python tests/flaky_server.py PORT FAILURES [STATUS]
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

PORT, FAILURES = int(sys.argv[1]), int(sys.argv[2])
STATUS = int(sys.argv[3]) if len(sys.argv) > 3 else 503
calls = {"n": 0}


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"calls": calls["n"]})


async def completions(request: Request) -> object:
    calls["n"] += 1
    if calls["n"] <= FAILURES:
        return JSONResponse(
            {"error": {"message": f"busy ({calls['n']})", "type": "server_error"}},
            status_code=STATUS,
        )

    async def events():  # type: ignore[no-untyped-def]
        for word, finish in (("ok", None), (" done", "stop")):
            chunk = {"choices": [{"index": 0, "text": word, "finish_reason": finish}]}
            yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 1, 'completion_tokens': 2}})}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


app = Starlette(
    routes=[Route("/health", health), Route("/v1/completions", completions, methods=["POST"])]
)
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
