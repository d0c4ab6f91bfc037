"""An OpenAI-compatible HTTP server over any engine.

    python -m engine_bridge.openai_server --engine hf --port 8000        # embedded model
    python -m engine_bridge.openai_server --engine simulated --port 8000 # no model

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` and
``POST /v1/chat/completions`` (``stream`` with server-sent events,
``stream_options.include_usage``, ``logprobs``/``top_logprobs``, ``stop``, ``seed``,
``top_k`` as an extension).  Each choice also carries ``token_ids`` (an extension, as
vLLM offers).  Bad requests get a 400 with ``{"error": {"message", "type", "param"}}``;
an unhealthy engine a 503.  A request with ``stream: false`` asks the engine for
the final output only (no message per token).  When a client disconnects, mid-stream
or while it waits for a one-body answer, the engine request is aborted.  Needs the ``server`` extra (starlette, uvicorn).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._protocol import Engine
from ._types import EngineDelta, EngineError, EngineRequest, InvalidRequestError, SamplingParams

__all__ = ["create_app", "main"]

LISTENING = "engine_bridge.openai_server listening on"  # the first line on stdout


def _error(
    status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": None}},
        status_code=status,
    )


def _request_from_body(body: Any, chat: bool) -> tuple[EngineRequest, bool, bool]:
    """(engine request, stream?, include usage in the stream?) from a JSON body."""
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    logprobs: int | None
    if chat:
        if body.get("logprobs"):
            top = body.get("top_logprobs") or 0
            logprobs = int(top) if isinstance(top, int) else top
        else:
            logprobs = None
    else:
        logprobs = body.get("logprobs")
    try:
        params = SamplingParams(
            max_tokens=body.get("max_tokens")
            or body.get("max_completion_tokens")
            or (256 if chat else 16),
            temperature=1.0 if body.get("temperature") is None else body["temperature"],
            top_p=1.0 if body.get("top_p") is None else body["top_p"],
            top_k=body.get("top_k") or 0,
            stop=body.get("stop"),
            seed=body.get("seed"),
            num_logprobs=logprobs,
        )
    except TypeError as e:
        raise InvalidRequestError("body", str(e)) from None
    if chat:
        messages = body.get("messages")
        continuation = None
        if body.get("continue_final_message") and isinstance(messages, list) and messages:
            last = messages[-1]
            if not isinstance(last, dict) or last.get("role") != "assistant":
                raise InvalidRequestError(
                    "continue_final_message", "the last message must be the assistant's"
                )
            messages, continuation = messages[:-1], last.get("content")
    stream = bool(body.get("stream", False))
    if chat:
        request = EngineRequest(params, messages=messages, stream=stream, continuation=continuation)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            request = EngineRequest(params, prompt_token_ids=tuple(prompt), stream=stream)
        elif isinstance(prompt, str):
            request = EngineRequest(params, prompt=prompt, stream=stream)
        else:
            raise InvalidRequestError("prompt", "must be a string or a list of token ids")
    options = body.get("stream_options") or {}
    return request, stream, bool(isinstance(options, Mapping) and options.get("include_usage"))


def create_app(engine: Engine, model_name: str = "scaffold") -> Any:
    """A Starlette app serving ``engine`` (started and stopped with the app)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with engine:
            yield

    async def health(request: Request) -> Any:
        ok = engine.healthy
        return JSONResponse(
            {
                "status": "ok" if ok else "unhealthy",
                "active": engine.num_active,
                "aborted": getattr(engine, "aborted", None),
            },
            status_code=200 if ok else 503,
        )

    async def models(request: Request) -> Any:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": model_name, "object": "model", "owned_by": "scaffold-actors"}],
            }
        )

    def chunk_choice(chat: bool, d: EngineDelta, text: str) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": d.finish_reason,
            "token_ids": list(d.token_ids),
        }
        if chat:
            choice["delta"] = {"content": text} if text or d.finish_reason is None else {}
            if d.logprobs is not None:
                choice["logprobs"] = {
                    "content": [
                        {"token": "", "logprob": lp, "top_logprobs": []} for lp in d.logprobs
                    ]
                }
        else:
            choice["text"] = text
            if d.logprobs is not None:
                choice["logprobs"] = {
                    "tokens": ["" for _ in d.logprobs],
                    "token_logprobs": list(d.logprobs),
                }
        return choice

    async def complete(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "the body is not valid JSON", "body")
        try:
            ereq, stream, include_usage = _request_from_body(body, chat)
            engine.check(ereq)
        except InvalidRequestError as e:
            return _error(400, str(e), e.field)
        if not engine.healthy:
            return _error(503, "the engine is not healthy", kind="server_error")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:16]
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        if stream:

            async def events() -> AsyncIterator[str]:
                prompt_tokens = completion_tokens = 0
                try:
                    async with engine.open_stream(ereq) as deltas:
                        async for d in deltas:
                            prompt_tokens = d.prompt_tokens or prompt_tokens
                            completion_tokens += d.num_tokens
                            payload = {
                                "id": rid,
                                "object": obj,
                                "created": created,
                                "model": model_name,
                                "choices": [chunk_choice(chat, d, d.text)],
                            }
                            yield f"data: {json.dumps(payload)}\n\n"
                except (EngineError, InvalidRequestError) as e:
                    yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
                    return
                if include_usage:
                    usage = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    yield f"data: {json.dumps({'id': rid, 'object': obj, 'created': created, 'model': model_name, 'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        text, finish, prompt_tokens, count = "", None, 0, 0
        ids: list[int] = []
        lps: list[float] = []
        failed: Any = None
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                # the body is read, so the next message is the client leaving
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()  # aborts the engine request

            tg.start_soon(watch)
            try:
                async with engine.open_stream(ereq) as deltas:
                    async for d in deltas:
                        text += d.text
                        ids += d.token_ids
                        lps += d.logprobs or ()
                        finish = d.finish_reason or finish
                        prompt_tokens = d.prompt_tokens or prompt_tokens
                        count += d.num_tokens
            except InvalidRequestError as e:
                failed = _error(400, str(e), e.field)
            except EngineError as e:
                failed = _error(503, str(e), kind="server_error")
            tg.cancel_scope.cancel()
        if failed is not None:
            return failed
        if finish is None:  # the client left; nobody reads this
            return Response(status_code=499)
        final = EngineDelta(
            text, tuple(ids), tuple(lps) if ereq.params.num_logprobs is not None else None, finish
        )
        choice = chunk_choice(chat, final, text)
        if chat:
            choice.pop("delta", None)
            choice["message"] = {"role": "assistant", "content": text}
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": count,
            "total_tokens": prompt_tokens + count,
        }
        return JSONResponse(
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model_name,
                "choices": [choice],
                "usage": usage,
            }
        )

    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible server over an engine")
    ap.add_argument("--engine", choices=["hf", "simulated"], default="hf")
    ap.add_argument(
        "--model", default=None, help="model folder for --engine hf (default: embedded)"
    )
    ap.add_argument("--model-name", default="scaffold")
    ap.add_argument("--device", default="cpu", help="torch device for --engine hf (cuda:1, ...)")
    ap.add_argument("--dtype", default="float32", help="torch dtype for --engine hf")
    ap.add_argument("--max-concurrent", type=int, default=64, help="requests in the engine at once")
    ap.add_argument(
        "--kv-cache-tokens", type=int, default=32768, help="KV cache size (0: from free memory)"
    )
    ap.add_argument(
        "--admission-window",
        type=float,
        default=0.005,
        help="--engine hf: quiet gap (s) that closes a burst of arriving requests",
    )
    ap.add_argument(
        "--admission-window-max",
        type=float,
        default=0.05,
        help="--engine hf: the longest (s) a burst gathers",
    )
    ap.add_argument("--simulated-reply", default=None, help="fixed reply of the simulated engine")
    ap.add_argument(
        "--max-context", type=int, default=512, help="context length of the simulated engine"
    )
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: a free port (printed on stdout)")
    args = ap.parse_args(argv)
    import uvicorn

    engine: Any
    if args.engine == "simulated":
        from ._simulated import SimulatedEngine

        engine = SimulatedEngine(args.simulated_reply, max_context=args.max_context)
    else:
        from ._hf import HFEngine

        engine = HFEngine(
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_concurrent=args.max_concurrent,
            kv_cache_tokens=args.kv_cache_tokens or None,
            admission_window=args.admission_window,
            admission_window_max=args.admission_window_max,
        )
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    # bind first, so ``--port 0`` takes a free port and says which (ProcessEngine reads it)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"{LISTENING} http://{host}:{port}", flush=True)
    if args.port == 0:  # started by a program that read the line: the rest goes to stderr
        os.dup2(2, 1)
    config = uvicorn.Config(create_app(engine, args.model_name), log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])


def _exit_with_parent(pid: int) -> None:
    """Stop this server (SIGTERM to itself) once process ``pid`` is no longer its
    parent: a parent killed outright must not leave a server holding a GPU."""
    import signal
    import threading

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    main()
